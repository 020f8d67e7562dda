import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer } from 'node:net'
import { randomBytes } from 'node:crypto'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { generateApiKey } from '../src/auth/keys.ts'
import { withStack, chatBody } from './helpers/gateway.ts'

const ROOT = new URL('..', import.meta.url).pathname

async function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

function startServer (env: Record<string, string>): { child: ChildProcess, exited: Promise<number | null>, stderr: () => string } {
  let err = ''
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  child.stderr!.on('data', (d) => { err += String(d) })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return { child, exited, stderr: () => err }
}

// Generous: a cold tsx start on a loaded 2-core CI machine can take most of a minute.
async function waitReady (url: string, server?: { child: ChildProcess, stderr: () => string }) {
  const deadline = Date.now() + 90_000
  while (Date.now() < deadline) {
    if (server && server.child.exitCode !== null) throw new Error(`gateway exited (${server.child.exitCode}) before it was ready:\n${server.stderr().slice(-2000)}`)
    try { if ((await fetch(`${url}/health/ready`)).ok) return } catch {}
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`gateway did not become ready in 90 s:\n${server?.stderr().slice(-2000) ?? ''}`)
}

/** Opens a stream and resolves once its first bytes arrived; `done` resolves with the whole text. */
async function openStream (url: string, key: string, i: number) {
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify(chatBody(`stream ${i}`, { stream: true, max_tokens: 40 })) })
  const reader = res.body!.getReader()
  const decoder = new TextDecoder()
  let text = decoder.decode((await reader.read()).value, { stream: true })
  const done = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) break
        text += decoder.decode(value, { stream: true })
      }
    } catch { /* the connection may be cut */ }
    return text
  })()
  return { status: res.status, done }
}

// Three cold gateway starts and a 10 s wait: more than the suite's default 120 s on a loaded machine.
t.setTimeout(300_000)

t.test('SIGTERM with 50 open streams: each finishes or is cut at the grace limit, every reservation resolved, exit 0; SIGKILL then restart leaves nothing pending', async (t) => {
  const stack = await withStack(t, { chunkDelayMs: 100 })
  const dir = mkdtempSync(join(tmpdir(), 'gw-drain-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const dbPath = join(dir, 'gateway.db')
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const env = stack.gatewayEnv({ DATABASE_URL: `sqlite:${dbPath}`, PORT: String(port), HOST: '127.0.0.1', SHUTDOWN_GRACE_MS: '1500', RESERVATION_TIMEOUT_SECONDS: '10', LOG_LEVEL: 'warn' })

  let server = startServer(env)
  t.teardown(() => { server.child.kill('SIGKILL') })
  await waitReady(url, server)

  // Four payers (the per-payer cap on open reservations is 16), credit granted, keys created.
  const ledger = await openSqliteLedger(dbPath)
  const payers = Array.from({ length: 4 }, () => payerAccount(stack.chain.chainId, '0x' + randomBytes(20).toString('hex')))
  const keys: string[] = []
  for (const account of payers) {
    await ledger.grant({ id: `grant:${account}`, account, amount: 5_000_000_000n, reason: 'drain test' })
    const k = generateApiKey()
    await ledger.createApiKey({ id: k.id, account, name: null, prefix: k.prefix, hash: k.hash, createdAt: Date.now(), maxPerAccount: 5 })
    keys.push(k.secret)
  }

  const streams = await Promise.all(Array.from({ length: 50 }, (_, i) => openStream(url, keys[i % 4], i)))
  t.ok(streams.every((s) => s.status === 200), 'all 50 streams are open')
  server.child.kill('SIGTERM')
  const texts = await Promise.all(streams.map((s) => s.done))
  t.equal(await server.exited, 0, `exit 0 (stderr: ${server.stderr().slice(-500)})`)
  const finished = texts.filter((x) => x.includes('"verified":true')).length
  const cut = texts.filter((x) => x.includes('"upstream_stream_incomplete"')).length
  t.equal(finished + cut, 50, `every stream ended cleanly: ${finished} finished, ${cut} cut at the grace limit`)
  t.ok(texts.every((x) => x.trimEnd().endsWith('data: [DONE]')), 'each ends with [DONE]')
  for (const account of payers) t.same(await ledger.pendingReservations(account), [], 'no reservation left open')
  await ledger.checkInvariants()

  // SIGKILL mid-load: reservations stay open in the file until they time out; a restart after
  // the timeout expires them before serving.
  server = startServer(env)
  await waitReady(url, server)
  const more = await Promise.all(Array.from({ length: 12 }, (_, i) => openStream(url, keys[i % 4], i)))
  server.child.kill('SIGKILL')
  await server.exited
  await Promise.all(more.map((s) => s.done))
  const open = (await Promise.all(payers.map((a) => ledger.pendingReservations(a)))).flat()
  t.ok(open.length > 0, `the kill left ${open.length} reservations open`)
  await new Promise((r) => setTimeout(r, 10_500))
  server = startServer(env)
  await waitReady(url, server)
  const left = (await Promise.all(payers.map((a) => ledger.pendingReservations(a)))).flat()
  t.same(left, [], 'restart expired every reservation past its timeout')
  await ledger.checkInvariants()
  t.equal((await ledger.totals()).sumOfAllAccounts, 0n)
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0)
  await ledger.close()
})
