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

// Serve until stdin closes (the test closes it when done).
process.stdin.resume()
process.stdin.on('end', async () => {
  await helia.stop()
  process.exit(0)
})
