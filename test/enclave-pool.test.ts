import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { GatewayError } from '../src/errors.ts'
import { UpstreamClient, type UpstreamTarget } from '../src/upstream/client.ts'
import { EnclavePool, type EnclaveClient } from '../src/upstream/pool.ts'
import { makeCert, makeSigningKey } from './helpers/tls.ts'

const timeouts = { connectTimeoutMs: 1000, headersTimeoutMs: 400, bodyTimeoutMs: 400 }
const { publicKeyPem } = makeSigningKey()

interface Backend { name: string, target: UpstreamTarget, hits: Record<string, number>, kill (): Promise<void> }

// Paths select the behaviour, so one backend can play healthy, failing and hanging enclaves.
async function backend (t: Test, name: string): Promise<Backend> {
  const hits: Record<string, number> = {}
  const server = createServer((req, res) => {
    const path = req.url ?? '/'
    hits[path] = (hits[path] ?? 0) + 1
    req.resume()
    switch (path) {
      case '/ok': return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ server: name }))
      case '/slow': return void setTimeout(() => res.writeHead(200).end(JSON.stringify({ server: name })), 50)
      case '/500': return void res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"boom"}')
      case '/hang': return
      case '/reset': return void req.socket.destroy()
      case '/midbody':
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write('data: {"partial":')
        return void setTimeout(() => req.socket.destroy(), 20)
      default: return void res.writeHead(404).end()
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  let dead = false
  const kill = async () => {
    if (dead) return
    dead = true
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  t.teardown(kill)
  return { name, target: { url, teeId: `0x${name}`, publicKeyPem }, hits, kill }
}

function poolOf (t: Test, backends: Backend[], warnings: unknown[] = []): EnclavePool {
  const pool = new EnclavePool({ timeouts, logger: { warn: (obj) => { warnings.push(obj) } } })
  pool.update(backends.map((b) => b.target))
  t.teardown(() => pool.close())
  return pool
}

/** Reads the whole body so the connection goes back to the pool; throws like a route would on 5xx. */
async function call (client: EnclaveClient, path: string): Promise<{ status: number, body: string, teeId: string }> {
  const res = await client.post(path, '{}')
  const body = await res.body.text()
  if (res.status >= 500) throw new GatewayError('UPSTREAM_ERROR', { status: res.status })
  return { status: res.status, body, teeId: client.target.teeId }
}

const total = (backends: Backend[], path: string) => backends.reduce((n, b) => n + (b.hits[path] ?? 0), 0)

t.test('requests are spread across the enclaves', async (t) => {
  const a = await backend(t, 'a')
  const b = await backend(t, 'b')
  const pool = poolOf(t, [a, b])

  for (let i = 0; i < 10; i++) await pool.withFailover((c) => call(c, '/ok'))
  t.same([a.hits['/ok'], b.hits['/ok']], [5, 5], 'sequential requests alternate')

  await Promise.all(Array.from({ length: 10 }, () => pool.withFailover((c) => call(c, '/slow'))))
  t.same([a.hits['/slow'], b.hits['/slow']], [5, 5], 'concurrent requests go to the least busy')

  const picked = new Set([pool.pick().target.teeId, pool.pick().target.teeId])
  t.same([...picked].sort(), ['0xa', '0xb'])
  t.equal(pool.pick(new Set(['0xa'])).target.teeId, '0xb', 'exclusion is honoured')
})

t.test('a dead enclave fails over to the live one without an error', async (t) => {
  const a = await backend(t, 'a')
  const b = await backend(t, 'b')
  const warnings: Record<string, unknown>[] = []
  const pool = poolOf(t, [a, b], warnings)
  await pool.withFailover((c) => call(c, '/ok'))
  await pool.withFailover((c) => call(c, '/ok'))
  t.same([a.hits['/ok'], b.hits['/ok']], [1, 1], 'both warm')

  await a.kill()
  const served: string[] = []
  for (let i = 0; i < 8; i++) served.push((await pool.withFailover((c) => call(c, '/ok'))).teeId)
  t.same(served, Array(8).fill('0xb'), 'every request answered, all by b')
  t.equal(b.hits['/ok'], 9)
  t.equal(warnings.length, 1, 'the dead enclave cost one failed attempt, then sat out its cooldown')
  t.match(warnings[0], { teeId: '0xa', reason: /ECONNREFUSED|UND_ERR_SOCKET|ECONNRESET/ })
})

t.test('an HTTP error is final: never retried on another enclave', async (t) => {
  const backends = [await backend(t, 'a'), await backend(t, 'b')]
  const pool = poolOf(t, backends)

  await t.rejects(pool.withFailover((c) => call(c, '/500')), { code: 'UPSTREAM_ERROR' })
  t.equal(total(backends, '/500'), 1, 'a 500 that the handler turns into an error is not retried')

  const res = await pool.withFailover(async (c) => {
    const r = await c.post('/500', '{}')
    await r.body.text()
    return r.status
  })
  t.equal(res, 500)
  t.equal(total(backends, '/500'), 2, 'a 500 returned as a value is not retried either')
})

t.test('failures after the request may have been processed are not retried', async (t) => {
  const backends = [await backend(t, 'a'), await backend(t, 'b')]
  const pool = poolOf(t, backends)

  await t.rejects(pool.withFailover((c) => call(c, '/hang')), { code: 'UPSTREAM_TIMEOUT', metadata: { reason: 'UND_ERR_HEADERS_TIMEOUT' } })
  t.equal(total(backends, '/hang'), 1, 'headers timeout: the enclave has the request')

  await t.rejects(pool.withFailover((c) => call(c, '/midbody')))
  t.equal(total(backends, '/midbody'), 1, 'connection lost mid-body: headers had arrived')
})

t.test('a connection dropped before any response is retried exactly once', async (t) => {
  const backends = [await backend(t, 'a'), await backend(t, 'b')]
  const pool = poolOf(t, backends)
  await t.rejects(pool.withFailover((c) => call(c, '/reset')), { code: 'UPSTREAM_UNAVAILABLE' })
  t.same(backends.map((b) => b.hits['/reset']), [1, 1], 'one attempt on each enclave, no more')

  const lone = poolOf(t, [await backend(t, 'c')])
  await t.rejects(lone.withFailover((c) => call(c, '/reset')), { code: 'UPSTREAM_UNAVAILABLE' }, 'no second enclave: the original error')
})

t.test('both enclaves down: the connection error surfaces', async (t) => {
  const a = await backend(t, 'a')
  const b = await backend(t, 'b')
  const pool = poolOf(t, [a, b])
  await a.kill()
  await b.kill()
  await t.rejects(pool.withFailover((c) => call(c, '/ok')), { code: 'UPSTREAM_UNAVAILABLE', metadata: { reason: 'ECONNREFUSED' } })
})

t.test('membership follows the registry list', async (t) => {
  const a = await backend(t, 'a')
  const b = await backend(t, 'b')
  const created: UpstreamClient[] = []
  const closed: string[] = []
  const pool = new EnclavePool({
    timeouts,
    createClient: (target, tm) => {
      const client = new UpstreamClient(target, tm)
      const close = client.close.bind(client)
      client.close = () => { closed.push(target.teeId); return close() }
      created.push(client)
      return client
    },
  })
  t.teardown(() => pool.close())

  t.throws(() => pool.pick(), { code: 'UPSTREAM_UNAVAILABLE', metadata: { reason: 'no_enclave' } })
  await t.rejects(pool.withFailover((c) => call(c, '/ok')), { code: 'UPSTREAM_UNAVAILABLE' })

  pool.update([a.target, b.target])
  t.equal(created.length, 2)
  pool.update([a.target, b.target])
  t.equal(created.length, 2, 'an unchanged list keeps the clients and their connections')

  pool.update([a.target])
  t.same(pool.teeIds(), ['0xa'])
  t.same(closed, ['0xb'], 'a removed enclave is closed')

  pool.update([{ ...a.target, tlsCertPem: makeCert().certPem }])
  t.equal(created.length, 3, 'a changed certificate gets a new client')
  t.same(closed, ['0xb', '0xa'])

  pool.update([b.target, b.target])
  t.same(pool.teeIds(), ['0xb'], 'duplicates collapse')
  t.equal((await pool.withFailover((c) => call(c, '/ok'))).teeId, '0xb')
})
