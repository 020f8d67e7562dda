import t, { type Test } from 'tap'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import { payerAccount } from '../src/ledger/accounts.ts'

// Real parallelism (four threads, four connections, one file) against the new limits: the key cap,
// the reservation cap, single-use nonces, idempotency begins, and settle-versus-reverse of one
// provisional deposit. Each must be decided inside the store's transaction, not in JavaScript.

const T0 = Date.now()
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))
const THREADS = 4

interface Call { method: string, args: unknown[] }

// Each thread runs its calls in order and reports, per call, the result or the error code.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads')
import('tsx/esm/api').then((api) => { api.register(); return import(workerData.module) }).then(async ({ openSqliteLedger }) => {
  const ledger = await openSqliteLedger(workerData.path, { busyTimeoutMs: 10000 })
  const gate = new Int32Array(workerData.gate)
  Atomics.add(gate, 0, 1)
  while (Atomics.load(gate, 0) < workerData.threads) Atomics.wait(gate, 0, Atomics.load(gate, 0), 5)
  const out = []
  for (const c of workerData.calls) {
    try { out.push({ ok: await ledger[c.method](...c.args) }) } catch (err) { out.push({ code: err.code ?? String(err) }) }
  }
  await ledger.close()
  parentPort.postMessage(out)
}).catch((err) => parentPort.postMessage('error: ' + err.stack))
`

async function race (path: string, callsFor: (thread: number) => Call[]): Promise<Array<{ ok?: unknown, code?: string }>> {
  const module = new URL('../src/ledger/sqlite.ts', import.meta.url).href
  const gate = new SharedArrayBuffer(4)
  const outs = await Promise.all(Array.from({ length: THREADS }, (_, w) => new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, { eval: true, workerData: { module, path, gate, threads: THREADS, calls: callsFor(w) } })
    worker.once('message', resolve)
    worker.once('error', reject)
  })))
  for (const o of outs) if (!Array.isArray(o)) throw new Error(String(o))
  return (outs as Array<Array<{ ok?: unknown, code?: string }>>).flat()
}

async function fileLedger (t: Test) {
  const path = join(t.testdir(), 'ledger.db')
  const ledger = await openSqliteLedger(path)
  t.teardown(() => ledger.close())
  return { path, ledger }
}

t.test('racing key creation never exceeds maxPerAccount', async (t) => {
  const { path, ledger } = await fileLedger(t)
  const results = await race(path, (w) => Array.from({ length: 8 }, (_, j) => ({
    method: 'createApiKey',
    args: [{ id: `k${w}-${j}`, account: alice, name: null, prefix: 'sk', hash: `h${w}-${j}`, createdAt: T0, maxPerAccount: 5 }],
  })))
  t.equal(results.filter((r) => r.ok).length, 5)
  t.equal(results.filter((r) => r.code === 'LEDGER_TOO_MANY_KEYS').length, THREADS * 8 - 5)
  t.equal((await ledger.listApiKeys(alice)).length, 5)
})

t.test('racing capped reserves never exceed maxOpen', async (t) => {
  const { path, ledger } = await fileLedger(t)
  await ledger.deposit({ id: 'd', account: alice, amount: 10_000n, reference: 'r' })
  const results = await race(path, (w) => Array.from({ length: 15 }, (_, j) => ({
    method: 'reserve',
    args: [{ id: `p${w}-${j}`, account: alice, amount: 1n, timeoutAt: T0 + 600_000, reference: 'q', maxOpen: 7 }],
  })))
  t.equal(results.filter((r) => (r.ok as { ok: boolean }).ok).length, 7)
  t.equal((await ledger.pendingReservations(alice)).length, 7)
  await ledger.checkInvariants()
})

t.test('racing nonce uses and idempotency begins: exactly one winner each', async (t) => {
  const { path } = await fileLedger(t)
  const results = await race(path, (w) => [
    ...Array.from({ length: 10 }, (_, j) => ({ method: 'useNonce', args: ['siwx', `n${j}`, T0 + 60_000] })),
    ...Array.from({ length: 10 }, (_, j) => ({
      method: 'beginIdempotent',
      args: [{ account: 'a', key: `k${j}`, bodyHash: 'b', requestId: `r${w}`, now: T0, expiresAt: T0 + 60_000 }],
    })),
  ])
  t.equal(results.filter((r) => r.ok === true).length, 10, 'one true per nonce')
  t.equal(results.filter((r) => (r.ok as { state?: string })?.state === 'started').length, 10, 'one start per key')
  t.equal(results.filter((r) => (r.ok as { state?: string })?.state === 'in_flight').length, (THREADS - 1) * 10)
})

t.test('settle and reverse of one provisional deposit racing: one outcome, credited at most once', async (t) => {
  const { path, ledger } = await fileLedger(t)
  const keys = Array.from({ length: 12 }, (_, i) => ({ network: 'eip155:8453', asset: 'usdc', payer: '0xab', nonce: `0x${i}` }))
  for (const [i, k] of keys.entries()) {
    await ledger.claimPayment({ ...k, requestId: `req-${i}`, amount: 100n })
    await ledger.provisionalDeposit(k, { depositId: `dep-${i}`, account: alice, amount: 100n })
  }
  const results = await race(path, (w) => keys.map((k, i) => w % 2 === 0
    ? { method: 'settlePaymentAndDeposit', args: [k, { txHash: '0xt', depositId: `dep-${i}`, account: alice, amount: 100n }] }
    : { method: 'reverseProvisionalDeposit', args: [k, { id: `rev-${i}`, reason: 'failed', now: T0 }] }))
  t.notOk(results.some((r) => r.code && !['LEDGER_CLAIM_SETTLED', 'LEDGER_CLAIM_STATE'].includes(r.code)), JSON.stringify(results.filter((r) => r.code)))
  let expected = 0n
  for (const k of keys) {
    const c = (await ledger.getPaymentClaim(k))!
    t.ok(c.status === 'settled' || (c.status === 'failed' && c.reversal?.reversed === 100n), `${k.nonce}: ${c.status}`)
    if (c.status === 'settled') expected += 100n
  }
  t.equal((await ledger.balance(alice)).available, expected)
  await ledger.checkInvariants()
})
