import t, { type Test } from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import type { LedgerStore, Receipt } from '../src/ledger/types.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// Read-side reports: usage per UTC day from receipts, open reservations, the admin account list,
// against both stores.

const DAY1 = Date.UTC(2024, 2, 9) // 2024-03-09T00:00:00Z
const DAY2 = DAY1 + 86_400_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))
const bob = payerAccount(8453, '0x' + 'b2'.repeat(20))

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: DAY1 }
  const ledger = await store.open(t, { clock: () => clock.now })
  return { ledger, clock }
}

function receipt (id: string, payer: string | null, createdAt: number, over: Partial<Receipt> = {}): Receipt {
  return {
    id, payer, model: 'm', stream: false, status: 'completed', promptTokens: 10, completionTokens: 20,
    reservedAmount: 1000n, chargedAmount: 100n, upstreamCost: null, verified: true, verifyError: null,
    proof: null, paymentTx: null, errorCode: null, createdAt, completedAt: createdAt + 1, ...over,
  }
}

async function seed (ledger: LedgerStore) {
  await ledger.putReceipt(receipt('a1', alice, DAY1 - 1)) // 2024-03-08, before the window
  await ledger.putReceipt(receipt('a2', alice, DAY1)) // first ms of day 1: inside
  await ledger.putReceipt(receipt('a3', alice, DAY1 + 3_600_000, { verified: false, promptTokens: 5, completionTokens: 0, chargedAmount: 2n ** 40n }))
  await ledger.putReceipt(receipt('a4', alice, DAY2 - 1, { verified: null, status: 'failed', chargedAmount: 0n }))
  await ledger.putReceipt(receipt('a5', alice, DAY2 + 10))
  await ledger.putReceipt(receipt('a6', alice, DAY2 + 86_400_000)) // the window's end: excluded
  await ledger.putReceipt(receipt('b1', bob, DAY1 + 5, { promptTokens: 1, completionTokens: 1, chargedAmount: 7n }))
  await ledger.putReceipt(receipt('n1', null, DAY1 + 5))
}

forEachStore(t, (t, store) => {
  t.test('usageByDay aggregates one payer per UTC day in [fromMs, toMs)', async (t) => {
    const { ledger } = await setup(t, store)
    await seed(ledger)
    const rows = await ledger.usageByDay(alice, { fromMs: DAY1, toMs: DAY2 + 86_400_000 })
    t.same(rows, [
      { day: '2024-03-09', requests: 3, verifiedRequests: 1, promptTokens: 25, completionTokens: 40, charged: 100n + 2n ** 40n },
      { day: '2024-03-10', requests: 1, verifiedRequests: 1, promptTokens: 10, completionTokens: 20, charged: 100n },
    ])
    t.same(await ledger.usageByDay(alice, { fromMs: DAY1, toMs: DAY1 }), [], 'an empty window')
    t.same(await ledger.usageByDay(payerAccount(1, '0x' + 'cc'.repeat(20)), { fromMs: 0, toMs: DAY2 * 2 }), [])
    t.same((await ledger.usageByDay(alice, { fromMs: 0, toMs: DAY2 * 2 })).map((r) => r.day), ['2024-03-08', '2024-03-09', '2024-03-10', '2024-03-11'])
    await t.rejects(ledger.usageByDay(alice, { fromMs: DAY2, toMs: DAY1 }), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.usageByDay(alice, { fromMs: 1.5, toMs: DAY1 }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })

  t.test('usageAll exports every payer per day, without payer-less receipts', async (t) => {
    const { ledger } = await setup(t, store)
    await seed(ledger)
    const rows = await ledger.usageAll({ fromMs: DAY1, toMs: DAY2 + 86_400_000 })
    t.same(rows.map((r) => [r.day, r.payer, r.requests, r.charged]), [
      ['2024-03-09', alice, 3, 100n + 2n ** 40n],
      ['2024-03-09', bob, 1, 7n],
      ['2024-03-10', alice, 1, 100n],
    ])
    t.match(rows[1], { verifiedRequests: 1, promptTokens: 1, completionTokens: 1 })
  })

  t.test('the usage queries are served by indexes', async (t) => {
    const db = await store.shared(t)
    await db.open()
    const raw = await db.raw()
    if (store.kind === 'sqlite') {
      const plan = async (sql: string) => (await raw.rows<{ detail: string }>('EXPLAIN QUERY PLAN ' + sql)).map((r) => r.detail).join('; ')
      t.match(await plan("SELECT count(*) FROM receipts WHERE payer = 'x' AND created_at >= 1 AND created_at < 2"), /INDEX receipts_by_payer \(payer=\? AND created_at>\? AND created_at<\?\)/)
      t.match(await plan('SELECT count(*) FROM receipts WHERE payer IS NOT NULL AND created_at >= 1 AND created_at < 2'), /INDEX receipts_by_created/)
      t.match(await plan("SELECT count(*) FROM transfers WHERE debit_account = 'x' AND state = 'pending' AND timeout_at > 5"), /INDEX transfers_open_by_debit/)
      return
    }
    // An empty table is cheapest to scan; forbid that, and the planner must have an index to use.
    await raw.run('SET enable_seqscan = off')
    const plan = async (sql: string) => (await raw.rows<{ 'QUERY PLAN': string }>('EXPLAIN ' + sql)).map((r) => r['QUERY PLAN']).join('; ')
    t.match(await plan("SELECT count(*) FROM receipts WHERE payer = 'x' AND created_at >= 1 AND created_at < 2"), /Scan using receipts_by_(payer|created) /)
    t.match(await plan('SELECT count(*) FROM receipts WHERE payer IS NOT NULL AND created_at >= 1 AND created_at < 2'), /Scan using receipts_by_created /)
    t.match(await plan("SELECT count(*) FROM transfers WHERE debit_account = 'x' AND state = 'pending' AND timeout_at > 5"), /Scan using transfers_open_by_debit /)
  })

  t.test('pendingReservations lists the open ones, most recent first', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 1000n, reference: 'r' })
    await ledger.deposit({ id: 'd-bob', account: bob, amount: 1000n, reference: 'r' })
    for (const id of ['p1', 'p2', 'p3', 'p4']) await ledger.reserve({ id, account: alice, amount: 10n, timeoutAt: DAY1 + 1000, reference: `req-${id}` })
    await ledger.reserve({ id: 'p5', account: alice, amount: 10n, timeoutAt: DAY1 + 10, reference: 'req-p5' })
    await ledger.reserve({ id: 'bob-p', account: bob, amount: 10n, timeoutAt: DAY1 + 1000, reference: 'q' })
    await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 5n })
    await ledger.void({ pendingId: 'p3', id: 'void-3', reason: 'x' })
    clock.now = DAY1 + 20
    const open = await ledger.pendingReservations(alice)
    t.same(open.map((p) => p.id), ['p5', 'p4', 'p2'], 'p5 is past its timeout but not yet swept: still held')
    t.match(open[1], { kind: 'pending', state: 'pending', amount: 10n, reference: 'req-p4', timeoutAt: DAY1 + 1000 })
    await ledger.expirePending(clock.now)
    t.same((await ledger.pendingReservations(alice)).map((p) => p.id), ['p4', 'p2'])
    t.same(await ledger.pendingReservations(payerAccount(1, '0x' + 'cc'.repeat(20))), [])
  })

  t.test('accounts lists payer balances only, by account id, with limit and offset', async (t) => {
    const { ledger } = await setup(t, store)
    const carol = payerAccount(1, '0x' + 'c3'.repeat(20))
    await ledger.deposit({ id: 'd1', account: bob, amount: 500n, reference: 'r' })
    await ledger.deposit({ id: 'd2', account: alice, amount: 300n, reference: 'r' })
    await ledger.grant({ id: 'g1', account: carol, amount: 5n, reason: 'promo' })
    await ledger.reserve({ id: 'p', account: alice, amount: 100n, timeoutAt: DAY1 + 1000, reference: 'q' })
    await ledger.post({ pendingId: 'p', id: 'post', amount: 40n })
    await ledger.reserve({ id: 'p2', account: alice, amount: 10n, timeoutAt: DAY1 + 1000, reference: 'q' })
    const all = await ledger.accounts()
    t.same(all.map((b) => b.account), [carol, alice, bob].sort())
    t.same(all.find((b) => b.account === alice), { account: alice, creditsPosted: 300n, debitsPosted: 40n, debitsPending: 10n, available: 250n })
    t.same(all, await Promise.all(all.map((b) => ledger.balance(b.account))), 'the same numbers as balance()')
    t.same((await ledger.accounts({ limit: 2 })).map((b) => b.account), all.slice(0, 2).map((b) => b.account))
    t.same((await ledger.accounts({ limit: 2, offset: 2 })).map((b) => b.account), [all[2].account])
    t.same(await ledger.accounts({ offset: 3 }), [])
    await t.rejects(ledger.accounts({ offset: -1 }), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.accounts({ limit: 0 }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })
})
