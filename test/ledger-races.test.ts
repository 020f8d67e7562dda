import t, { type Test } from 'tap'
import { Worker } from 'node:worker_threads'
import { payerAccount } from '../src/ledger/accounts.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import { forEachStore, type SharedDatabase, type StoreFixture } from './helpers/ledger-stores.ts'

// Real parallelism against the limits: the key cap, the reservation cap, single-use nonces,
// idempotency begins, payment claims, settlements, and settle-versus-reverse of one provisional
// deposit. Each must be decided inside the store's transaction, not in JavaScript.
// SQLite: four threads, four connections, one file, each thread's calls in order.
// PostgreSQL: four replicas (separate pools) on one database, every call of every replica in flight at once.

const T0 = Date.now()
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))
const THREADS = 4

interface Call { method: string, args: unknown[] }
type Outcome = { ok?: unknown, code?: string }

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

async function raceThreads (path: string, callsFor: (thread: number) => Call[]): Promise<Outcome[]> {
  const module = new URL('../src/ledger/sqlite.ts', import.meta.url).href
  const gate = new SharedArrayBuffer(4)
  const outs = await Promise.all(Array.from({ length: THREADS }, (_, w) => new Promise((resolve, reject) => {
    const worker = new Worker(WORKER, { eval: true, workerData: { module, path, gate, threads: THREADS, calls: callsFor(w) } })
    worker.once('message', resolve)
    worker.once('error', reject)
  })))
  for (const o of outs) if (!Array.isArray(o)) throw new Error(String(o))
  return (outs as Outcome[][]).flat()
}

async function raceReplicas (db: SharedDatabase, callsFor: (replica: number) => Call[]): Promise<Outcome[]> {
  const replicas = await Promise.all(Array.from({ length: THREADS }, () => db.open({ poolSize: 4 })))
  const outs = await Promise.all(replicas.map((ledger, w) => Promise.all(callsFor(w).map(async (c): Promise<Outcome> => {
    try {
      return { ok: await (ledger as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[c.method](...c.args) }
    } catch (err) {
      return { code: (err as { code?: string }).code ?? String(err) }
    }
  }))))
  return outs.flat()
}

forEachStore(t, (t, store: StoreFixture) => {
  async function shared (t: Test): Promise<{ db: SharedDatabase, ledger: LedgerStore, race: (callsFor: (n: number) => Call[]) => Promise<Outcome[]> }> {
    const db = await store.shared(t)
    const ledger = await db.open()
    const race = (callsFor: (n: number) => Call[]): Promise<Outcome[]> =>
      store.kind === 'sqlite' ? raceThreads(db.location, callsFor) : raceReplicas(db, callsFor)
    return { db, ledger, race }
  }

  t.test('racing key creation never exceeds maxPerAccount', async (t) => {
    const { ledger, race } = await shared(t)
    const results = await race((w) => Array.from({ length: 8 }, (_, j) => ({
      method: 'createApiKey',
      args: [{ id: `k${w}-${j}`, account: alice, name: null, prefix: 'sk', hash: `h${w}-${j}`, createdAt: T0, maxPerAccount: 5 }],
    })))
    t.equal(results.filter((r) => r.ok).length, 5)
    t.equal(results.filter((r) => r.code === 'LEDGER_TOO_MANY_KEYS').length, THREADS * 8 - 5)
    t.equal((await ledger.listApiKeys(alice)).length, 5)
  })

  t.test('racing capped reserves never exceed maxOpen', async (t) => {
    const { ledger, race } = await shared(t)
    await ledger.deposit({ id: 'd', account: alice, amount: 10_000n, reference: 'r' })
    const results = await race((w) => Array.from({ length: 15 }, (_, j) => ({
      method: 'reserve',
      args: [{ id: `p${w}-${j}`, account: alice, amount: 1n, timeoutAt: T0 + 600_000, reference: 'q', maxOpen: 7 }],
    })))
    t.equal(results.filter((r) => (r.ok as { ok: boolean }).ok).length, 7)
    t.equal((await ledger.pendingReservations(alice)).length, 7)
    await ledger.checkInvariants()
  })

  t.test('racing nonce uses and idempotency begins: exactly one winner each', async (t) => {
    const { race } = await shared(t)
    const results = await race((w) => [
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

  t.test('racing claims of one payment nonce: exactly one winner each, and every loser sees it', async (t) => {
    const { ledger, race } = await shared(t)
    const keys = Array.from({ length: 5 }, (_, i) => ({ network: 'eip155:8453', asset: 'usdc', payer: '0xab', nonce: `0x${i}` }))
    const results = await race((w) => keys.map((k, i) => ({
      method: 'claimPayment', args: [{ ...k, requestId: `req-${w}-${i}`, amount: 100n }],
    })))
    t.equal(results.filter((r) => (r.ok as { claimed?: boolean })?.claimed === true).length, keys.length)
    t.equal(results.filter((r) => (r.ok as { claimed?: boolean })?.claimed === false).length, keys.length * (THREADS - 1))
    for (const k of keys) {
      const { requestId } = (await ledger.getPaymentClaim(k))!
      const losers = results.filter((r) => (r.ok as { existing?: { requestId: string } })?.existing?.requestId === requestId)
      t.equal(losers.length, THREADS - 1, `${k.nonce}: won by ${requestId}`)
    }
  })

  t.test('racing settlements of one claim from every connection credit once', async (t) => {
    const { ledger, race } = await shared(t)
    const keys = Array.from({ length: 5 }, (_, i) => ({ network: 'eip155:8453', asset: 'usdc', payer: '0xab', nonce: `0x${i}` }))
    for (const [i, k] of keys.entries()) await ledger.claimPayment({ ...k, requestId: `req-${i}`, amount: 100n })
    const results = await race(() => keys.map((k, i) => ({
      method: 'settlePaymentAndDeposit', args: [k, { txHash: '0xt', depositId: `dep-${i}`, account: alice, amount: 100n }],
    })))
    t.same(results.filter((r) => r.code), [], 'every call returns the one deposit')
    t.equal(results.filter((r) => (r.ok as { duplicate: boolean }).duplicate === false).length, keys.length, 'posted once per claim')
    t.equal((await ledger.balance(alice)).available, 100n * BigInt(keys.length))
    await ledger.checkInvariants()
  })

  t.test('settle and reverse of one provisional deposit racing: one outcome, credited at most once', async (t) => {
    const { ledger, race } = await shared(t)
    const keys = Array.from({ length: 12 }, (_, i) => ({ network: 'eip155:8453', asset: 'usdc', payer: '0xab', nonce: `0x${i}` }))
    for (const [i, k] of keys.entries()) {
      await ledger.claimPayment({ ...k, requestId: `req-${i}`, amount: 100n })
      await ledger.provisionalDeposit(k, { depositId: `dep-${i}`, account: alice, amount: 100n })
    }
    const results = await race((w) => keys.map((k, i) => w % 2 === 0
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
})
