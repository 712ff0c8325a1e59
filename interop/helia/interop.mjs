// Helia (IPFS in JavaScript) against a medmesh node, by bitswap over TCP + Noise +
// Yamux: fetches a medmesh block by CID and serves a block of its own for medmesh to
// fetch. Used by medmesh's interop test; prints one JSON object per line.
//
//   node interop.mjs MEDMESH_MULTIADDR CID_TO_FETCH
//
// Node 20 lacks Promise.withResolvers, which libp2p 3 uses.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createHeliaLight } = await import('helia')
const { withLibp2pLight } = await import('@helia/libp2p')
const { withBitswap } = await import('@helia/bitswap')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { multiaddr } = await import('@multiformats/multiaddr')
const { CID } = await import('multiformats/cid')
const { sha256 } = await import('multiformats/hashes/sha2')
const raw = await import('multiformats/codecs/raw')
const { createHash, randomBytes } = await import('node:crypto')

const [target, wanted] = process.argv.slice(2)
if (target == null || wanted == null) {
  console.error('usage: node interop.mjs MEDMESH_MULTIADDR CID_TO_FETCH')
  process.exit(2)
}
const say = (obj) => console.log(JSON.stringify(obj))

// Blockstores may answer with bytes, a Uint8ArrayList or a stream of chunks.
async function collect (value) {
  if (value instanceof Uint8Array) return value
  if (typeof value?.subarray === 'function') return value.subarray()
  const parts = []
  for await (const part of value) parts.push(part instanceof Uint8Array ? part : part.subarray())
  return Buffer.concat(parts)
}

const helia = await withBitswap(withLibp2pLight(createHeliaLight(), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify() }
})).start()

await helia.libp2p.dial(multiaddr(target))
const cid = CID.parse(wanted)
const bytes = await collect(await helia.blockstore.get(cid, { signal: AbortSignal.timeout(30000) }))
say({
  fetched: cid.toString(),
  len: bytes.length,
  sha256: createHash('sha256').update(bytes).digest('hex')
})

// A block of Helia's own for medmesh to fetch.
const mine = randomBytes(200000)
const mineCid = CID.createV1(raw.code, await sha256.digest(mine))
await helia.blockstore.put(mineCid, mine)
say({
  added: mineCid.toString(),
  len: mine.length,
  sha256: createHash('sha256').update(mine).digest('hex'),
  peer: helia.libp2p.peerId.toString(),
  addrs: helia.libp2p.getMultiaddrs().map(a => a.toString())
})

// Then steps the test asks for, one a line on stdin; each answers with one line.
let closes = 0
helia.libp2p.addEventListener('connection:close', () => { closes++ })
const medmesh = multiaddr(target)
const hex = (bytes) => createHash('sha256').update(bytes).digest('hex')

// Large blocks of Helia's own (1 MiB, the most medmesh accepts) for medmesh to fetch at
// once: Helia answers with bitswap messages of up to 4 MiB.
async function big (count) {
  const blocks = []
  for (let i = 0; i < count; i++) {
    const bytes = randomBytes(1 << 20)
    const cid = CID.createV1(raw.code, await sha256.digest(bytes))
    await helia.blockstore.put(cid, bytes)
    blocks.push({ cid: cid.toString(), sha256: hex(bytes) })
  }
  return { big: blocks }
}

// `mib` MiB of well-formed bitswap messages (3 unrequested 1 MiB blocks each, under
// the 4 MiB message limit) on one stream, as fast as yamux lets us: once medmesh's
// receive window has grown, js-libp2p's yamux sends one data frame per window.
async function push (mib) {
  const varint = (n) => { const out = []; while (n >= 0x80) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128) } out.push(n); return Buffer.from(out) }
  const field = (tag, bytes) => Buffer.concat([Buffer.from([tag]), varint(bytes.length), bytes])
  const prefix = field(0x0a, Buffer.from([0x01, raw.code, 0x12, 0x20])) // CIDv1, raw, sha2-256
  const stream = await helia.libp2p.dialProtocol(medmesh, '/ipfs/bitswap/1.2.0', { signal: AbortSignal.timeout(10000) })
  let pushed = 0
  let error
  try {
    while (pushed < mib * (1 << 20)) {
      const blocks = [0, 1, 2].map(() => field(0x1a, Buffer.concat([prefix, field(0x12, randomBytes(1 << 20))])))
      const body = Buffer.concat(blocks)
      const message = Buffer.concat([varint(body.length), body])
      if (!stream.send(message)) await stream.onDrain({ signal: AbortSignal.timeout(30000) })
      pushed += message.length
    }
    await stream.close({ signal: AbortSignal.timeout(30000) })
  } catch (err) {
    error = err instanceof Error ? err.message : `stream ${err?.type ?? err}`
  }
  await new Promise(resolve => setTimeout(resolve, 500)) // a connection error arrives now
  return { pushed, error, connected: helia.libp2p.getConnections().length > 0, closes }
}

// /ipfs/ping/1.0.0 as @libp2p/ping's client does it (32 random bytes, close the write
// side, expect them back), from a node that serves no ping handler of its own, as a
// light js-libp2p node.
async function pingOnce () {
  const stream = await helia.libp2p.dialProtocol(medmesh, '/ipfs/ping/1.0.0', { signal: AbortSignal.timeout(10000) })
  const data = randomBytes(32)
  const received = []
  let length = 0
  const start = Date.now()
  const pong = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no pong within 5 s')), 5000)
    stream.addEventListener('message', (evt) => {
      const chunk = evt.data.subarray()
      received.push(chunk)
      length += chunk.length
      if (length >= 32) { clearTimeout(timer); resolve() }
    })
    stream.addEventListener('close', () => {
      clearTimeout(timer)
      if (length < 32) reject(new Error(`ping stream closed after ${length} bytes`))
    }, { once: true })
  })
  stream.send(data)
  await stream.close()
  await pong
  await stream.closeRead()
  if (!Buffer.concat(received).subarray(0, 32).equals(data)) throw new Error('wrong pong')
  return Date.now() - start
}

async function ping (count) {
  const rtts = []
  try {
    for (let i = 0; i < count; i++) rtts.push(await pingOnce())
    return { ping: rtts, closes }
  } catch (err) {
    return { ping: rtts, error: String(err), closes }
  }
}

const steps = { big, push, ping }
const { createInterface } = await import('node:readline')
const commands = createInterface({ input: process.stdin })
for await (const line of commands) {
  const [step, arg] = line.trim().split(/\s+/)
  if (steps[step] == null) {
    say({ error: `unknown step ${step}` })
    continue
  }
  say(await steps[step](Number(arg)))
}
// stdin closed: the test is done.
await helia.stop()
process.exit(0)
