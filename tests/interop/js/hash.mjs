// CIDs as the JS UnixFS importer computes them (npm ipfs-only-hash, which wraps
// ipfs-unixfs-importer), for checking our CIDv1 layouts against a second implementation.
//
//   node hash.mjs [--cid-version 0|1] [--raw-leaves true|false] [--chunk-size N]
//                 [--max-links N] FILE...
//
// Prints one root CID per file. Files are streamed, not buffered whole.
import { createReadStream } from 'node:fs'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'

const require = createRequire(import.meta.url)
const Hash = require('ipfs-only-hash')

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    'cid-version': { type: 'string', default: '0' },
    'raw-leaves': { type: 'string' },
    'chunk-size': { type: 'string', default: '262144' },
    'max-links': { type: 'string', default: '174' }
  }
})

const cidVersion = Number(values['cid-version'])
const options = {
  cidVersion,
  // As in Kubo: raw leaves follow the CID version unless set explicitly.
  rawLeaves: values['raw-leaves'] === undefined ? cidVersion === 1 : values['raw-leaves'] === 'true',
  chunker: 'fixed',
  maxChunkSize: Number(values['chunk-size']),
  strategy: 'balanced',
  maxChildrenPerNode: Number(values['max-links'])
}

for (const file of positionals) {
  const stream = createReadStream(file, { highWaterMark: 1 << 20 })
  console.log(await Hash.of(stream, { ...options }))
}
