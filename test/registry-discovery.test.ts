import { X509Certificate, generateKeyPairSync } from 'node:crypto'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { keccak256, toHex, type Hex } from 'viem'
import { startLocalChain } from '../local-stack/chain.ts'
import { deployTeeRegistry, disableEnclave, heartbeatEnclave, registerEnclave } from '../local-stack/registry.ts'
import { TEE_REGISTRY_ABI } from '../src/upstream/registry-abi.ts'
import {
  createRegistryDiscovery,
  normaliseEndpoint,
  selectEnclaves,
  type Clock,
  type EnclaveInfo,
  type RegistryEntry,
} from '../src/upstream/registry.ts'
import { makeCert, makeSigningKey } from './helpers/tls.ts'

const PCR_1 = keccak256(toHex('image v1'))
const PCR_2 = keccak256(toHex('image v2'))

const chain = await startLocalChain()
t.teardown(() => chain.stop())
const registry = await deployTeeRegistry(chain)

// Sits between discovery and anvil so a test can break the RPC without touching the chain.
let rpcMode: 'ok' | 'down' | 'garbage' = 'ok'
const readBody = async (req: IncomingMessage) => {
  let s = ''
  for await (const chunk of req) s += chunk
  return s
}
const rpcProxy = createServer((req, res) => {
  void readBody(req).then(async (body) => {
    if (rpcMode === 'down') return res.writeHead(503).end('maintenance')
    if (rpcMode === 'garbage') {
      const { id } = JSON.parse(body) as { id: number }
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: '0x1234' }))
    }
    const upstream = await fetch(chain.rpcUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
    res.writeHead(upstream.status, { 'content-type': 'application/json' }).end(await upstream.text())
  })
})
await new Promise<void>((resolve) => rpcProxy.listen(0, '127.0.0.1', resolve))
t.teardown(() => new Promise<void>((resolve) => rpcProxy.close(() => resolve())))
const rpcUrl = `http://127.0.0.1:${(rpcProxy.address() as AddressInfo).port}`

const keyA = makeSigningKey()
const keyB = makeSigningKey()
const certA = makeCert()
const certB = makeCert()
const payee = chain.accounts[5].address

// OpenGradient registers raw IPs; one without a scheme, one as a URL with a trailing slash.
const teeA = await registerEnclave(chain, registry, { endpoint: '127.0.0.1:8443', publicKeyDer: keyA.publicKeyDer, tlsCertDer: certA.certDer, pcrHash: PCR_1, paymentAddress: payee })
const teeB = await registerEnclave(chain, registry, { endpoint: 'https://127.0.0.1:9443/', publicKeyDer: keyB.publicKeyDer, tlsCertDer: certB.certDer, pcrHash: PCR_2 })

const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256
const byId = (list: EnclaveInfo[]) => new Map(list.map((e) => [e.teeId, e]))

function capture () {
  const logs: Record<string, unknown>[] = []
  return { logs, logger: { warn: (obj: object, msg: string) => { logs.push({ ...obj, msg }) } } }
}

t.test('discovers both registered enclaves with their ids, keys and pinned certificates', async (t) => {
  const discovery = createRegistryDiscovery({ rpcUrl, registryAddress: registry })
  const list = await discovery.refresh()
  t.equal(list.length, 2)
  t.equal(teeA, keccak256(keyA.publicKeyDer), 'teeId is keccak256 of the DER SPKI key')

  const a = byId(list).get(teeA)!
  const b = byId(list).get(teeB)!
  t.ok(a && b, 'both teeIds present')
  t.equal(a.endpoint, 'https://127.0.0.1:8443', 'scheme defaulted to https')
  t.equal(b.endpoint, 'https://127.0.0.1:9443', 'trailing slash dropped')
  t.equal(a.publicKeyPem, keyA.publicKeyPem)
  t.equal(b.publicKeyPem, keyB.publicKeyPem)
  t.equal(fingerprint(a.tlsCertPem), fingerprint(certA.certPem))
  t.equal(fingerprint(b.tlsCertPem), fingerprint(certB.certPem))
  t.match(a.tlsCertPem, /^-----BEGIN CERTIFICATE-----\n/)
  t.equal(a.pcrHash, PCR_1)
  t.equal(a.paymentAddress, payee)
  t.equal(b.paymentAddress, chain.accounts[0].address)
  t.same(discovery.current(), list)
})

t.test('the full ABI, ohttpConfig included, decodes the same registry', async (t) => {
  const full = await chain.publicClient.readContract({ address: registry, abi: TEE_REGISTRY_ABI, functionName: 'getActiveTEEs', args: [0] })
  t.equal(full.length, 2)
  t.equal(full[0].ohttpConfig.registeredAt, 0n, 'no OHTTP config registered locally')
  t.equal(keccak256(full[0].publicKey), teeA)
})

t.test('pins filter by PCR hash and by teeId', async (t) => {
  const byPcr = await createRegistryDiscovery({ rpcUrl, registryAddress: registry, pinPcrHash: PCR_2 }).refresh()
  t.same(byPcr.map((e) => e.teeId), [teeB])
  const upper = `0x${PCR_1.slice(2).toUpperCase()}` as Hex
  const byPcrUpper = await createRegistryDiscovery({ rpcUrl, registryAddress: registry, pinPcrHash: upper }).refresh()
  t.same(byPcrUpper.map((e) => e.teeId), [teeA], 'hex case does not matter')
  const byId = await createRegistryDiscovery({ rpcUrl, registryAddress: registry, pinTeeId: teeA }).refresh()
  t.same(byId.map((e) => e.teeId), [teeA])
  const none = await createRegistryDiscovery({ rpcUrl, registryAddress: registry, pinPcrHash: keccak256(toHex('unknown image')) }).refresh()
  t.same(none, [])
})

t.test('entries that cannot be pinned or verified are skipped with a logged reason', async (t) => {
  // A separate TEE type keeps these out of the other tests' lists.
  const teeType = 7
  const good = makeSigningKey()
  const weak = makeSigningKey(1024)
  const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({ format: 'der', type: 'spki' })
  const reg = (endpoint: string, publicKeyDer: Uint8Array, tlsCertDer: Uint8Array) =>
    registerEnclave(chain, registry, { endpoint, publicKeyDer, tlsCertDer, pcrHash: PCR_1, teeType })
  const okId = await reg('10.0.0.1', good.publicKeyDer, certA.certDer)
  const garbageKey = await reg('10.0.0.2', Buffer.from('not a key at all'), certA.certDer)
  const weakKey = await reg('10.0.0.3', weak.publicKeyDer, certA.certDer)
  const ecKey = await reg('10.0.0.4', ec, certA.certDer)
  const badCert = await reg('10.0.0.5', makeSigningKey().publicKeyDer, Buffer.from('garbage certificate'))
  const plainHttp = await reg('http://10.0.0.6', makeSigningKey().publicKeyDer, certA.certDer)

  const { logs, logger } = capture()
  const list = await createRegistryDiscovery({ rpcUrl, registryAddress: registry, teeType, logger }).refresh()
  t.same(list.map((e) => e.teeId), [okId])
  t.same(list.map((e) => e.endpoint), ['https://10.0.0.1'])
  const reasons = new Map(logs.map((l) => [l.teeId, l.reason]))
  t.equal(reasons.get(garbageKey), 'bad_public_key')
  t.equal(reasons.get(weakKey), 'bad_public_key')
  t.equal(reasons.get(ecKey), 'bad_public_key')
  t.equal(reasons.get(badCert), 'bad_tls_certificate')
  t.equal(reasons.get(plainHttp), 'bad_endpoint')
  t.match(logs.find((l) => l.teeId === weakKey), { detail: /1024 bits/ })
  t.match(logs.find((l) => l.teeId === ecKey), { detail: /not an RSA key \(ec\)/ })

  const future: Clock = { now: () => Date.now() + 30 * 86_400_000, setTimeout: () => 0, clearTimeout: () => {} }
  const expired = capture()
  const later = await createRegistryDiscovery({ rpcUrl, registryAddress: registry, teeType, logger: expired.logger, clock: future }).refresh()
  t.same(later, [], 'an expired certificate is not used')
  t.match(expired.logs.find((l) => l.teeId === okId), { reason: 'bad_tls_certificate', detail: /validity/ })
})

t.test('an entry the registry marks disabled is skipped even if returned', async (t) => {
  const entry: RegistryEntry = {
    owner: chain.accounts[0].address,
    paymentAddress: chain.accounts[0].address,
    endpoint: '127.0.0.1:8443',
    publicKey: toHex(keyA.publicKeyDer),
    tlsCertificate: toHex(certA.certDer),
    pcrHash: PCR_1,
    teeType: 0,
    enabled: true,
    registeredAt: 1n,
    lastHeartbeatAt: 1n,
  }
  const { logs, logger } = capture()
  const now = Date.now()
  t.equal(selectEnclaves([entry], { teeType: 0, now, log: logger }).length, 1)
  t.same(selectEnclaves([{ ...entry, enabled: false }], { teeType: 0, now, log: logger }), [])
  t.same(selectEnclaves([entry, entry], { teeType: 0, now, log: logger }).length, 1, 'duplicates collapse')
  t.match(logs, [{ teeId: teeA, reason: 'disabled' }])
})

t.test('endpoint normalisation', async (t) => {
  t.equal(normaliseEndpoint('  34.1.2.3 '), 'https://34.1.2.3')
  t.equal(normaliseEndpoint('34.1.2.3:443'), 'https://34.1.2.3')
  t.equal(normaliseEndpoint('34.1.2.3:8443'), 'https://34.1.2.3:8443')
  t.equal(normaliseEndpoint('HTTPS://Enclave.Example.com/base/'), 'https://enclave.example.com/base')
  t.equal(normaliseEndpoint('2001:db8::1'), 'https://[2001:db8::1]')
  t.equal(normaliseEndpoint('[2001:db8::1]:8443'), 'https://[2001:db8::1]:8443')
  for (const bad of ['', 'http://34.1.2.3', 'ftp://x', 'https://u:p@34.1.2.3', 'https://34.1.2.3/?a=1', 'https://']) {
    t.throws(() => normaliseEndpoint(bad), `${JSON.stringify(bad)} is refused`)
  }
})

t.test('a broken RPC keeps the last good list', async (t) => {
  const { logs, logger } = capture()
  const changes: EnclaveInfo[][] = []
  const discovery = createRegistryDiscovery({ rpcUrl, registryAddress: registry, logger, onChange: (l) => changes.push(l) })
  const good = await discovery.refresh()
  t.equal(good.length, 2)
  t.equal(changes.length, 1)
  t.teardown(() => { rpcMode = 'ok' })

  rpcMode = 'down'
  await t.rejects(discovery.refresh(), 'refresh reports the failure')
  t.same(discovery.current(), good, 'list kept while the RPC answers 503')

  rpcMode = 'garbage'
  await t.rejects(discovery.refresh())
  t.same(discovery.current(), good, 'list kept when the answer does not decode')

  const wrongAddress = createRegistryDiscovery({ rpcUrl, registryAddress: chain.accounts[3].address })
  await t.rejects(wrongAddress.refresh(), 'no contract at the address is a failure, not an empty list')

  // The background loop logs instead of throwing.
  const scheduled: (() => void)[] = []
  const clock: Clock = { now: Date.now, setTimeout: (fn) => scheduled.push(fn), clearTimeout: () => {} }
  const looping = createRegistryDiscovery({ rpcUrl, registryAddress: registry, logger, clock })
  await looping.start()
  t.same(looping.current(), [])
  t.match(logs.at(-1), { msg: /keeping the last good/ })
  t.equal(scheduled.length, 1, 'next refresh still scheduled')

  rpcMode = 'ok'
  scheduled[0]()
  await looping.refresh() // joins the tick's in-flight read
  t.equal(looping.current().length, 2, 'recovers on the next tick')
  looping.stop()
  t.equal(changes.length, 1, 'no change notification for failures')
})

t.test('disabled and silent enclaves drop out; refresh reports the change', async (t) => {
  const changes: EnclaveInfo[][] = []
  const discovery = createRegistryDiscovery({ rpcUrl, registryAddress: registry, onChange: (l) => changes.push(l) })
  await discovery.refresh()
  await discovery.refresh()
  t.equal(changes.length, 1, 'unchanged list, no second notification')

  await disableEnclave(chain, registry, teeA)
  const afterDisable = await discovery.refresh()
  t.same(afterDisable.map((e) => e.teeId), [teeB])
  t.equal(changes.length, 2)

  // No heartbeat for longer than the registry's 30 minute window.
  await chain.testClient.increaseTime({ seconds: 1801 })
  await chain.testClient.mine({ blocks: 1 })
  t.same(await discovery.refresh(), [], 'an empty answer replaces the list: stale enclaves are not kept')

  await heartbeatEnclave(chain, registry, teeB)
  t.same((await discovery.refresh()).map((e) => e.teeId), [teeB], 'a heartbeat brings it back')
})
