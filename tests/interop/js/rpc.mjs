// Drives an ipfs-accelerate daemon through the real Kubo RPC client (npm kubo-rpc-client),
// the way applications do: version, id, add (a file and a directory tree), cat, get,
// pin add/ls/rm, bitswap stat/wantlist, pubsub pub/sub.
//
//   node rpc.mjs API_URL     prints a JSON report; exits non-zero on any failure
import { create } from 'kubo-rpc-client'

const api = create({ url: process.argv[2] })
const report = {}

report.version = (await api.version()).version
report.id = (await api.id()).id.toString()

const content = new TextEncoder().encode('hello from kubo-rpc-client\n'.repeat(20000))
const added = await api.add(content, { cidVersion: 1, rawLeaves: true })
report.added = added.cid.toString()
report.size = added.size

const chunks = []
for await (const chunk of api.cat(added.cid)) chunks.push(chunk)
const total = chunks.reduce((n, c) => n + c.length, 0)
const joined = new Uint8Array(total)
let at = 0
for (const c of chunks) { joined.set(c, at); at += c.length }
report.catMatches = total === content.length && joined.every((b, i) => b === content[i])

// A directory tree, as applications upload one: the last entry is the root.
const text = (t) => new TextEncoder().encode(t)
const tree = [
  { path: 'tree/a.txt', content: text('alpha\n') },
  { path: 'tree/sub/b.txt', content: text('beta\n'.repeat(100000)) },
  { path: 'tree/empty' },
]
let treeRoot
for await (const entry of api.addAll(tree, { cidVersion: 1, rawLeaves: true })) {
  if (entry.path === 'tree') treeRoot = entry.cid.toString()
}
report.treeRoot = treeRoot ?? null
// get answers a tar stream with the tree under its CID.
const tarChunks = []
for await (const chunk of api.get(treeRoot)) tarChunks.push(Buffer.from(chunk))
const tar = Buffer.concat(tarChunks).toString('latin1')
report.tarHasEntries = [`${treeRoot}/a.txt`, `${treeRoot}/sub/b.txt`, `${treeRoot}/empty`]
  .every((name) => tar.includes(name)) && tar.includes('alpha\n')

await api.pin.rm(added.cid)
const pinnedAfterRm = []
for await (const pin of api.pin.ls({ type: 'recursive' })) pinnedAfterRm.push(pin.cid.toString())
report.unpinned = !pinnedAfterRm.includes(report.added)
await api.pin.add(added.cid)
const pinned = []
for await (const pin of api.pin.ls({ type: 'recursive' })) pinned.push(pin.cid.toString())
report.pinned = pinned.includes(report.added)

// Bitswap's counters and wantlist, parsed by the client (it throws on a missing field).
const bitswap = await api.bitswap.stat()
report.bitswap = {
  blocksSent: Number(bitswap.blocksSent),
  blocksReceived: Number(bitswap.blocksReceived),
  wantlist: bitswap.wantlist.length,
  peers: bitswap.peers.length,
}
report.wantlist = (await api.bitswap.wantlist()).length
report.wantlistForPeer = (await api.bitswap.wantlistForPeer(report.id)).length

const topic = 'kubo-rpc-client-test'
let deliver
const received = new Promise((resolve) => { deliver = resolve })
// Resolves once the daemon answered the subscribe request, that is once it subscribed:
// listing the topics before that raced the request.
await api.pubsub.subscribe(topic, (msg) => deliver(new TextDecoder().decode(msg.data)))
const topics = await api.pubsub.ls()
report.subscribed = topics.includes(topic)
// Our own messages come back to our subscriber once the subscription is live.
let message
for (let i = 0; i < 50 && message === undefined; i++) {
  await api.pubsub.publish(topic, new TextEncoder().encode('ping'))
  message = await Promise.race([received, new Promise((resolve) => setTimeout(resolve, 200))])
}
report.pubsubSelf = message ?? null
console.log(JSON.stringify(report))
process.exit(0)
