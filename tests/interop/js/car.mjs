// CAR v1 files through a real CAR library (npm @ipld/car), to check ours interoperate.
//
//   node car.mjs read FILE.car     validate, re-hash every block against its CID, and
//                                  print {"roots", "blocks", "bytes", "cids"} as JSON
//   node car.mjs write OUT.car FILE
//                                  import FILE with the JS UnixFS importer (CIDv1, raw
//                                  leaves, 256 KiB chunks, 174 links), write its blocks
//                                  as a CAR v1 rooted at the file, print the root CID
import { createReadStream, createWriteStream } from 'node:fs'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { CarBlockIterator, CarWriter } from '@ipld/car'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'

async function read (path) {
  const blocks = await CarBlockIterator.fromIterable(createReadStream(path))
  const roots = (await blocks.getRoots()).map(String)
  const cids = []
  let bytes = 0
  for await (const { cid, bytes: data } of blocks) {
    if (cid.multihash.code !== sha256.code) {
      throw new Error(`block ${cid}: unsupported hash 0x${cid.multihash.code.toString(16)}`)
    }
    const digest = await sha256.digest(data)
    if (!equals(digest.bytes, cid.multihash.bytes)) {
      throw new Error(`block ${cid} does not match its CID`)
    }
    cids.push(String(cid))
    bytes += data.length
  }
  console.log(JSON.stringify({ roots, blocks: cids.length, bytes, cids }))
}

async function write (out, file) {
  const blocks = []
  const blockstore = {
    put: async (cid, bytes) => { blocks.push({ cid, bytes }); return cid },
    get: async (cid) => { throw new Error(`unexpected get ${cid}`) },
    has: async () => false
  }
  let root
  const source = [{ content: createReadStream(file, { highWaterMark: 1 << 20 }) }]
  for await (const entry of importer(source, blockstore, {
    cidVersion: 1,
    rawLeaves: true,
    chunker: fixedSize({ chunkSize: 262144 }),
    layout: balanced({ maxChildrenPerNode: 174 })
  })) {
    root = entry.cid
  }
  const { writer, out: car } = CarWriter.create([root])
  const done = pipeline(Readable.from(car), createWriteStream(out))
  for (const block of blocks) {
    await writer.put(block)
  }
  await writer.close()
  await done
  console.log(String(root))
}

const [command, ...args] = process.argv.slice(2)
try {
  if (command === 'read') await read(args[0])
  else if (command === 'write') await write(args[0], args[1])
  else throw new Error('usage: car.mjs read FILE.car | car.mjs write OUT.car FILE')
} catch (err) {
  console.error(`car.mjs: ${err.message}`)
  process.exit(1)
}
