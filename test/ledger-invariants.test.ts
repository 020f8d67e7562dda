import t from 'tap'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import { Worker } from 'node:worker_threads'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import { payerAccount } from '../src/ledger/accounts.ts'

// The invariants live in the store: raw SQL cannot break them, racing writers cannot overspend, and
// the audit notices when someone removes the guards.

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))

t.test('raw SQL cannot take a payer below zero or rewrite history', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const ledger = await openSqliteLedger(path, { clock: () => T0 })
  t.teardown(() => ledger.close())
  await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
  await ledger.reserve({ id: 'p1', account: alice, amount: 30n, timeoutAt: T0 + 1000, reference: 'q' })
  await ledger.reserve({ id: 'p2', account: alice, amount: 10n, timeoutAt: T0 + 1000, reference: 'q' })
  await ledger.post({ pendingId: 'p2', id: 'post-2', amount: 10n })
  await ledger.claimPayment({ network: 'n', asset: 'a', payer: '0xab', nonce: '0x01', requestId: 'r', amount: 1n })
  await ledger.settlePaymentAndDeposit({ network: 'n', asset: 'a', payer: '0xab', nonce: '0x01' },
    { txHash: '0x', depositId: 'claim-dep', account: alice, amount: 1n })

  const raw = new Database(path)
  t.teardown(() => raw.close())
  raw.pragma('foreign_keys = ON')
  const insert = (id: string, kind: string, debit: string, credit: string, amount: number | bigint, extra = '') =>
    raw.prepare(`INSERT INTO transfers (id, kind, debit_account, credit_account, amount, created_at${extra ? ', pending_id' : ''})
      VALUES (?, ?, ?, ?, ?, 0${extra ? ', ?' : ''})`).run(...[id, kind, debit, credit, amount, ...(extra ? [extra] : [])])

  t.throws(() => raw.prepare('UPDATE accounts SET debits_posted = debits_posted + 62 WHERE id = ?').run(alice), /payer_not_negative/)
  t.throws(() => raw.prepare('UPDATE accounts SET debits_pending = debits_pending + 62 WHERE id = ?').run(alice), /payer_not_negative/)
  t.throws(() => insert('evil', 'clawback', alice, 'system:grants', 62), /payer_not_negative/, 'a transfer that overdraws is refused')
  t.throws(() => insert('float', 'grant', 'system:grants', alice, 1.5), /REAL|DATATYPE|cannot store/i, 'amounts are integers')
  t.throws(() => insert('neg', 'grant', 'system:grants', alice, -5), /CHECK/)
  t.throws(() => insert('post-again', 'post', alice, 'system:revenue', 1, 'p2'), /open pending|UNIQUE/, 'a pending resolves once')
  t.throws(() => insert('post-big', 'post', alice, 'system:revenue', 31, 'p1'), /open pending/, 'post cannot exceed the pending')
  t.throws(() => raw.prepare("UPDATE transfers SET amount = 1 WHERE id = 'd'").run(), /append-only/)
  t.throws(() => raw.prepare("UPDATE transfers SET state = 'pending' WHERE id = 'p2'").run(), /append-only/)
  t.throws(() => raw.prepare("DELETE FROM transfers WHERE id = 'd'").run(), /append-only/)
  t.throws(() => raw.prepare("INSERT INTO accounts (id, created_at) VALUES ('system:slush', 0)").run(), /system_account_known/)
  t.throws(() => raw.prepare("UPDATE payment_claims SET deposit_id = NULL, status = 'failed'").run(), /final/)
  t.throws(() => raw.prepare('DELETE FROM payment_claims').run(), /permanent/)

  t.same(await ledger.balance(alice), { account: alice, creditsPosted: 101n, debitsPosted: 10n, debitsPending: 30n, available: 61n })
  await t.resolves(ledger.checkInvariants())
})

t.test('the audit notices drift and an unbalanced ledger', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const ledger = await openSqliteLedger(path, { clock: () => T0 })
  t.teardown(() => ledger.close())
  await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
  const raw = new Database(path)
  t.teardown(() => raw.close())
  raw.prepare('UPDATE accounts SET credits_posted = credits_posted + 5 WHERE id = ?').run(alice)
  t.equal((await ledger.totals()).sumOfAllAccounts, 5n)
  await t.rejects(ledger.checkInvariants(), { code: 'LEDGER_INVARIANT_BROKEN', message: /sum to 5/ })
  raw.prepare('UPDATE accounts SET credits_posted = credits_posted - 5 WHERE id = ?').run(alice)
  await t.resolves(ledger.checkInvariants())
  raw.exec('DROP TRIGGER transfers_apply')
  raw.prepare("INSERT INTO transfers (id, kind, debit_account, credit_account, amount, created_at) VALUES ('g', 'grant', 'system:grants', ?, 7, 0)").run(alice)
  await t.rejects(ledger.checkInvariants(), { code: 'LEDGER_INVARIANT_BROKEN', message: /differ from their transfers/ })
})

t.test('two connections to one file: interleaved reserves never overspend', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const a = await openSqliteLedger(path, { clock: () => T0 })
  const b = await openSqliteLedger(path, { clock: () => T0 })
  t.teardown(async () => { await a.close(); await b.close() })
  await a.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
  const results = []
  for (let i = 0; i < 6; i++) {
    const store = i % 2 === 0 ? a : b
    results.push(await store.reserve({ id: `p${i}`, account: alice, amount: 30n, timeoutAt: T0 + 1000, reference: 'q' }))
  }
  t.same(results.map((r) => r.ok), [true, true, true, false, false, false])
  t.match(results[3], { code: 'insufficient_credit', available: 10n })
  t.equal((await b.balance(alice)).available, 10n)
  await b.void({ pendingId: 'p0', id: 'v0', reason: 'x' })
  await t.rejects(a.post({ pendingId: 'p0', id: 'post-0', amount: 1n }), { code: 'LEDGER_PENDING_RESOLVED' }, 'A sees B\'s void')
  await a.checkInvariants()
})

t.test('a writer waits for, and never reads around, another connection\'s write lock', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const ledger = await openSqliteLedger(path, { clock: () => T0, busyTimeoutMs: 50 })
  t.teardown(() => ledger.close())
  await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
  const raw = new Database(path)
  t.teardown(() => raw.close())
  raw.exec('BEGIN IMMEDIATE')
  await t.rejects(ledger.reserve({ id: 'p', account: alice, amount: 1n, timeoutAt: T0 + 1, reference: 'q' }), { code: 'SQLITE_BUSY' })
  raw.exec('ROLLBACK')
  t.match(await ledger.reserve({ id: 'p', account: alice, amount: 1n, timeoutAt: T0 + 1, reference: 'q' }), { ok: true })
})

t.test('many concurrent reserves on one store: exactly the affordable ones succeed', async (t) => {
  const ledger = await openSqliteLedger(':memory:', { clock: () => T0 })
  t.teardown(() => ledger.close())
  await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    ledger.reserve({ id: `p${i}`, account: alice, amount: 7n, timeoutAt: T0 + 1000, reference: 'q' })))
  t.equal(results.filter((r) => r.ok).length, 14)
  t.same(await ledger.balance(alice), { account: alice, creditsPosted: 100n, debitsPosted: 0n, debitsPending: 98n, available: 2n })
  await ledger.checkInvariants()
})

// Worker threads give real parallelism: four connections in four threads race on one file.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads')
import('tsx/esm/api').then((api) => { api.register(); return import(workerData.module) }).then(async ({ openSqliteLedger }) => {
  const ledger = await openSqliteLedger(workerData.path, { busyTimeoutMs: 10000 })
  // Start together, or the first thread to load could finish before the others begin.
  const gate = new Int32Array(workerData.gate)
  Atomics.add(gate, 0, 1)
  while (Atomics.load(gate, 0) < workerData.threads) Atomics.wait(gate, 0, Atomics.load(gate, 0), 5)
  let ok = 0
  for (let j = 0; j < workerData.attempts; j++) {
    const r = await ledger.reserve({ id: workerData.prefix + j, account: workerData.account, amount: 1n, timeoutAt: Date.now() + 600000, reference: 'q' })
    if (r.ok) ok++
  }
  await ledger.close()
  parentPort.postMessage(ok)
}).catch((err) => parentPort.postMessage('error: ' + err.stack))
`

t.test('parallel writers in four threads: exactly the affordable reserves succeed', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const ledger = await openSqliteLedger(path)
  t.teardown(() => ledger.close())
  await ledger.deposit({ id: 'd', account: alice, amount: 150n, reference: 'r' })
  const module = new URL('../src/ledger/sqlite.ts', import.meta.url).href
  const gate = new SharedArrayBuffer(4)
  const counts = await Promise.all([0, 1, 2, 3].map((w) => new Promise((resolve, reject) => {
    const workerData = { module, path, gate, threads: 4, account: alice, prefix: `w${w}-`, attempts: 60 }
    const worker = new Worker(WORKER, { eval: true, workerData })
    worker.once('message', resolve)
    worker.once('error', reject)
  })))
  t.ok(counts.every((c) => typeof c === 'number'), String(counts))
  t.equal((counts as number[]).reduce((s, c) => s + c, 0), 150, `successes per thread: ${counts}`)
  t.equal((await ledger.balance(alice)).available, 0n)
  t.equal((await ledger.totals()).pendingCount, 150)
  await ledger.checkInvariants()
})
