import { readdir, readFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { GatewayError } from '../src/errors.ts'
import { UpstreamClient } from '../src/upstream/client.ts'
import { isConnectionFailure } from '../src/upstream/pool.ts'
import { makeCert, makeSigningKey, type TestCert } from './helpers/tls.ts'

const timeouts = { connectTimeoutMs: 2000, headersTimeoutMs: 2000, bodyTimeoutMs: 2000 }
const signingKey = makeSigningKey()

interface TlsServer { url: string, hits: number }

async function serve (name: string, cert: TestCert, chain: TestCert[] = []): Promise<TlsServer> {
  const state = { url: '', hits: 0 }
  const server: Server = createServer({ key: cert.keyPem, cert: [cert.certPem, ...chain.map((c) => c.certPem)].join('') }, (req, res) => {
    state.hits++
    req.resume()
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ server: name }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  state.url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`
  return state
}

function clientFor (url: string, pinned?: TestCert): UpstreamClient {
  const client = new UpstreamClient({ url, teeId: '0xtest', publicKeyPem: signingKey.publicKeyPem, tlsCertPem: pinned?.certPem }, timeouts)
  t.teardown(() => client.close())
  return client
}

async function refusal (client: UpstreamClient): Promise<GatewayError> {
  try {
    const res = await client.post('/v1/chat/completions', '{}')
    throw new Error(`expected a TLS refusal, got HTTP ${res.status}`)
  } catch (err) {
    if (!(err instanceof GatewayError)) throw err
    return err
  }
}

const certA = makeCert()
const certB = makeCert()
const otherCa = makeCert({ ca: true })
const leafFromOtherCa = makeCert({ issuer: otherCa })

const serverA = await serve('A', certA)
const serverB = await serve('B', certB)
const serverC = await serve('C', leafFromOtherCa, [otherCa])
const serverCLeafOnly = await serve('C-leaf', leafFromOtherCa)

t.test('a client pinned to certificate A talks to the server presenting A', async (t) => {
  const res = await clientFor(serverA.url, certA).post('/v1/chat/completions', '{}')
  t.equal(res.status, 200)
  t.same(JSON.parse(await res.body.text()), { server: 'A' })
})

t.test('the same client is refused by a server presenting another self-signed certificate', async (t) => {
  const before = serverB.hits
  const err = await refusal(clientFor(serverB.url, certA))
  t.equal(err.code, 'UPSTREAM_UNAVAILABLE')
  t.comment(`reason: ${String(err.metadata.reason)}`)
  t.ok(isConnectionFailure(err), 'classified as a connection failure, so the pool may fail over')
  t.equal(serverB.hits, before, 'no request reached the impostor')
})

t.test('and by a server presenting a certificate for the same IP issued by another CA', async (t) => {
  for (const server of [serverC, serverCLeafOnly]) {
    const before = server.hits
    const err = await refusal(clientFor(server.url, certA))
    t.equal(err.code, 'UPSTREAM_UNAVAILABLE')
    t.comment(`reason: ${String(err.metadata.reason)}`)
    t.ok(isConnectionFailure(err))
    t.equal(server.hits, before)
  }
})

t.test('without a pin the default CA store applies, so a self-signed enclave is refused', async (t) => {
  const err = await refusal(clientFor(serverA.url))
  t.equal(err.code, 'UPSTREAM_UNAVAILABLE')
  t.comment(`reason: ${String(err.metadata.reason)}`)
})

t.test('the pin, not the name in the certificate, is the trust anchor', async (t) => {
  // Enclaves are reached by IP and their certificates need not name that IP.
  const elsewhere = makeCert({ ip: '10.9.9.9' })
  const server = await serve('elsewhere', elsewhere)
  const res = await clientFor(server.url, elsewhere).post('/v1/chat/completions', '{}')
  t.equal(res.status, 200)
  await res.body.text()
})

t.test('certificate verification is never switched off in the shipped code', async (t) => {
  t.not(process.env.NODE_TLS_REJECT_UNAUTHORIZED, '0', 'not disabled process-wide for this test either')
  const root = join(import.meta.dirname, '..')
  const offenders: string[] = []
  let scanned = 0
  for (const dir of ['src', 'plugins', 'routes', 'config']) {
    let entries: string[]
    try {
      entries = await readdir(join(root, dir), { recursive: true })
    } catch {
      continue
    }
    for (const rel of entries.filter((e) => /\.(ts|js|mjs|cjs|json)$/.test(e))) {
      const text = await readFile(join(root, dir, rel), 'utf8')
      scanned++
      if (/rejectUnauthorized\s*:\s*(false|0|!)/.test(text)) offenders.push(`${dir}/${rel}: rejectUnauthorized disabled`)
      if (text.includes('NODE_TLS_REJECT_UNAUTHORIZED')) offenders.push(`${dir}/${rel}: NODE_TLS_REJECT_UNAUTHORIZED`)
    }
  }
  t.ok(scanned > 5, `scanned ${scanned} files`)
  t.same(offenders, [])
  const client = await readFile(join(root, 'src', 'upstream', 'client.ts'), 'utf8')
  t.match(client, /rejectUnauthorized: true/, 'the pinned connection sets verification on explicitly')
})
