// Drives an ipfs-accelerate daemon through the real Kubo RPC client (npm kubo-rpc-client),
// the way applications do: version, id, add, cat, pin add/ls/rm, pubsub pub/sub.
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

await api.pin.rm(added.cid)
const pinnedAfterRm = []
for await (const pin of api.pin.ls({ type: 'recursive' })) pinnedAfterRm.push(pin.cid.toString())
report.unpinned = !pinnedAfterRm.includes(report.added)
await api.pin.add(added.cid)
const pinned = []
for await (const pin of api.pin.ls({ type: 'recursive' })) pinned.push(pin.cid.toString())
report.pinned = pinned.includes(report.added)

const topic = 'kubo-rpc-client-test'
const received = new Promise((resolve) => {
  api.pubsub.subscribe(topic, (msg) => resolve(new TextDecoder().decode(msg.data)))
})
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
