import t from 'tap'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Worker } from 'node:worker_threads'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { forEachStore } from './helpers/ledger-stores.ts'

// The invariants live in the store: raw SQL cannot break them, racing writers cannot overspend, and
// the audit notices when someone removes the guards. Against both stores; the lock-wait and
// parallel-writer tests differ in how each store gets real concurrency (threads on one SQLite file,
// separate pools, i.e. replicas, on one PostgreSQL database).

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))

forEachStore(t, (t, store) => {
  t.test('raw SQL cannot take a payer below zero or rewrite history', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 30n, timeoutAt: T0 + 1000, reference: 'q' })
    await ledger.reserve({ id: 'p2', account: alice, amount: 10n, timeoutAt: T0 + 1000, reference: 'q' })
    await ledger.post({ pendingId: 'p2', id: 'post-2', amount: 10n })
    await ledger.claimPayment({ network: 'n', asset: 'a', payer: '0xab', nonce: '0x01', requestId: 'r', amount: 1n })
    await ledger.settlePaymentAndDeposit({ network: 'n', asset: 'a', payer: '0xab', nonce: '0x01' },
      { txHash: '0x', depositId: 'claim-dep', account: alice, amount: 1n })

    const raw = await db.raw()
    const insert = (id: string, kind: string, debit: string, credit: string, amount: string, pendingId = '', suffix = '') =>
      raw.run(`INSERT INTO transfers (id, kind, debit_account, credit_account, amount, created_at${pendingId ? ', pending_id' : ''})
        VALUES ('${id}', '${kind}', '${debit}', '${credit}', ${amount}, 0${pendingId ? `, '${pendingId}'` : ''}) ${suffix}`)

    await t.rejects(raw.run(`UPDATE accounts SET debits_posted = debits_posted + 62 WHERE id = '${alice}'`), /payer_not_negative/)
    await t.rejects(raw.run(`UPDATE accounts SET debits_pending = debits_pending + 62 WHERE id = '${alice}'`), /payer_not_negative/)
    await t.rejects(insert('evil', 'clawback', alice, 'system:grants', '62'), /payer_not_negative/, 'a transfer that overdraws is refused')
    // SQLite's STRICT table refuses a REAL; PostgreSQL's BIGINT refuses a fraction (a bare numeric literal would be rounded on assignment).
    await t.rejects(insert('float', 'grant', 'system:grants', alice, store.kind === 'sqlite' ? '1.5' : "'1.5'"),
      /REAL|DATATYPE|cannot store|invalid input syntax for type bigint/i, 'amounts are integers')
    await t.rejects(insert('neg', 'grant', 'system:grants', alice, '-5'), /check/i)
    await t.rejects(insert('post-again', 'post', alice, 'system:revenue', '1', 'p2'), /open pending|unique/i, 'a pending resolves once')
    await t.rejects(insert('post-big', 'post', alice, 'system:revenue', '31', 'p1'), /open pending/, 'post cannot exceed the pending')
    await t.resolves(insert('d', 'deposit', 'system:deposits', alice, '1000', '', 'ON CONFLICT DO NOTHING'),
      'a reused id inserted with ON CONFLICT DO NOTHING is skipped...')
    t.equal((await ledger.balance(alice)).creditsPosted, 101n, '...and moves no money')
    await t.rejects(raw.run("UPDATE transfers SET amount = 1 WHERE id = 'd'"), /append-only/)
    await t.rejects(raw.run("UPDATE transfers SET state = 'pending' WHERE id = 'p2'"), /append-only/)
    await t.rejects(raw.run("DELETE FROM transfers WHERE id = 'd'"), /append-only/)
    if (store.kind === 'postgres') await t.rejects(raw.run('TRUNCATE transfers, payment_claims'), /append-only|permanent/)
    await t.rejects(raw.run("INSERT INTO accounts (id, created_at) VALUES ('system:slush', 0)"), /system_account_known/)
    await t.rejects(raw.run("UPDATE payment_claims SET deposit_id = NULL, status = 'failed'"), /final/)
    await t.rejects(raw.run('DELETE FROM payment_claims'), /permanent/)

    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 101n, debitsPosted: 10n, debitsPending: 30n, available: 61n })
    await t.resolves(ledger.checkInvariants())
  })

  t.test('the audit notices drift and an unbalanced ledger', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    const raw = await db.raw()
    await raw.run(`UPDATE accounts SET credits_posted = credits_posted + 5 WHERE id = '${alice}'`)
    t.equal((await ledger.totals()).sumOfAllAccounts, 5n)
    await t.rejects(ledger.checkInvariants(), { code: 'LEDGER_INVARIANT_BROKEN', message: /sum to 5/ })
    await raw.run(`UPDATE accounts SET credits_posted = credits_posted - 5 WHERE id = '${alice}'`)
    await t.resolves(ledger.checkInvariants())
    await raw.run(store.kind === 'sqlite' ? 'DROP TRIGGER transfers_apply' : 'DROP TRIGGER transfers_apply ON transfers')
    await raw.run(`INSERT INTO transfers (id, kind, debit_account, credit_account, amount, created_at) VALUES ('g', 'grant', 'system:grants', '${alice}', 7, 0)`)
    await t.rejects(ledger.checkInvariants(), { code: 'LEDGER_INVARIANT_BROKEN', message: /differ from their transfers/ })
  })

  t.test('two connections to one database: interleaved reserves never overspend', async (t) => {
    const db = await store.shared(t)
    const a = await db.open({ clock: () => T0 })
    const b = await db.open({ clock: () => T0 })
    await a.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    const results = []
    for (let i = 0; i < 6; i++) {
      const ledger = i % 2 === 0 ? a : b
      results.push(await ledger.reserve({ id: `p${i}`, account: alice, amount: 30n, timeoutAt: T0 + 1000, reference: 'q' }))
    }
    t.same(results.map((r) => r.ok), [true, true, true, false, false, false])
    t.match(results[3], { code: 'insufficient_credit', available: 10n })
    t.equal((await b.balance(alice)).available, 10n)
    await b.void({ pendingId: 'p0', id: 'v0', reason: 'x' })
    await t.rejects(a.post({ pendingId: 'p0', id: 'post-0', amount: 1n }), { code: 'LEDGER_PENDING_RESOLVED' }, 'A sees B\'s void')
    await a.checkInvariants()
  })

  t.test('many concurrent reserves on one store: exactly the affordable ones succeed', async (t) => {
    const ledger = await store.open(t, { clock: () => T0 })
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) =>
      ledger.reserve({ id: `p${i}`, account: alice, amount: 7n, timeoutAt: T0 + 1000, reference: 'q' })))
    t.equal(results.filter((r) => r.ok).length, 14)
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 100n, debitsPosted: 0n, debitsPending: 98n, available: 2n })
    await ledger.checkInvariants()
  })
})

t.test('sqlite: a writer waits for, and never reads around, another connection\'s write lock', async (t) => {
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

forEachStore(t, (t, store) => {
  t.test('a reserve waits for, and never reads around, another transaction\'s lock on the payer', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    const raw = await db.raw()
    // Another replica spends everything in a transaction that has not committed yet.
    await raw.run('BEGIN')
    await raw.run(`INSERT INTO transfers (id, kind, debit_account, credit_account, amount, meta, created_at)
      VALUES ('spend-all', 'clawback', '${alice}', 'system:grants', 100, '{"reason":"x"}', 0)`)
    let settled = false
    const pending = ledger.reserve({ id: 'p', account: alice, amount: 1n, timeoutAt: T0 + 1000, reference: 'q' })
      .finally(() => { settled = true })
    await sleep(300)
    t.equal(settled, false, 'the reserve waits for the lock')
    await raw.run('COMMIT')
    t.same(await pending, { ok: false, code: 'insufficient_credit', available: 0n }, 'and then sees the committed spend')
    await ledger.checkInvariants()
  })

  t.test('parallel writers in four replicas: exactly the affordable reserves succeed', async (t) => {
    const db = await store.shared(t)
    const replicas = await Promise.all([0, 1, 2, 3].map(() => db.open({ poolSize: 5 })))
    await replicas[0].deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    const results = await Promise.all(replicas.flatMap((ledger, w) => Array.from({ length: 40 }, (_, j) =>
      ledger.reserve({ id: `w${w}-${j}`, account: alice, amount: 1n, timeoutAt: Date.now() + 600_000, reference: 'q' }))))
    t.equal(results.filter((r) => r.ok).length, 100)
    t.same(results.filter((r) => !r.ok), Array(60).fill({ ok: false, code: 'insufficient_credit', available: 0n }))
    t.equal((await replicas[1].balance(alice)).available, 0n)
    t.equal((await replicas[2].totals()).pendingCount, 100)
    await replicas[3].checkInvariants()
  })
}, { kinds: ['postgres'] })

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

t.test('sqlite: parallel writers in four threads: exactly the affordable reserves succeed', async (t) => {
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
