import t, { type Test } from 'tap'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { MIGRATIONS } from '../src/ledger/sqlite-schema.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// What reserve refuses besides insufficient credit (a blocked account, too many open reservations)
// and the reconciliation listing of payment claims, against both stores; and the upgrade of a
// version-2 SQLite ledger file.

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))
const bob = payerAccount(8453, '0x' + 'b2'.repeat(20))

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: T0 }
  const ledger = await store.open(t, { clock: () => clock.now })
  return { ledger, clock }
}

const res = (id: string, over: Record<string, unknown> = {}) =>
  ({ id, account: alice, amount: 10n, timeoutAt: T0 + 1000, reference: `req-${id}`, ...over })

forEachStore(t, (t, store) => {
  t.test('maxOpen caps the open reservations of one account, in the reserve itself', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 1000n, reference: 'r' })
    await ledger.deposit({ id: 'd-bob', account: bob, amount: 1000n, reference: 'r' })
    t.match(await ledger.reserve(res('p1', { maxOpen: 2 })), { ok: true })
    t.match(await ledger.reserve(res('p2', { maxOpen: 2 })), { ok: true })
    t.same(await ledger.reserve(res('p3', { maxOpen: 2 })), { ok: false, code: 'too_many_reservations', open: 2, available: 980n })
    t.match(await ledger.reserve(res('p2', { maxOpen: 2 })), { ok: true, duplicate: true }, 'a repeated id is still a duplicate at the cap')
    t.match(await ledger.reserve(res('b1', { account: bob, maxOpen: 2 })), { ok: true }, 'per account')
    t.match(await ledger.reserve(res('p3')), { ok: true }, 'without maxOpen there is no cap')
    t.same(await ledger.reserve(res('p4', { maxOpen: 3 })), { ok: false, code: 'too_many_reservations', open: 3, available: 970n })
    await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 1n })
    t.match(await ledger.reserve(res('p4', { maxOpen: 3 })), { ok: true }, 'a resolved reservation frees a slot')
    t.equal(await ledger.getTransfer('p5'), null)
    await ledger.reserve(res('short', { timeoutAt: T0 + 10 }))
    t.match(await ledger.reserve(res('p5', { maxOpen: 4 })), { ok: false, code: 'too_many_reservations', open: 4 })
    clock.now = T0 + 10
    t.match(await ledger.reserve(res('p5', { maxOpen: 4 })), { ok: true }, 'one past its timeout no longer counts, swept or not')
    await t.rejects(ledger.reserve(res('p6', { maxOpen: 0 })), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.reserve(res('p6', { maxOpen: 1.5 })), { code: 'LEDGER_ARGUMENT_INVALID' })
    // Refused, and on the way it expired the overdue one ('short'), whose credit is available again.
    t.same(await ledger.reserve(res('p6', { amount: 5000n, maxOpen: 100 })), { ok: false, code: 'insufficient_credit', available: 959n })
    t.equal((await ledger.getTransfer('short'))?.state, 'expired')
    await ledger.checkInvariants()
  })

  t.test('two connections interleaving capped reserves: the cap holds', async (t) => {
    const db = await store.shared(t)
    const a = await db.open({ clock: () => T0 })
    const b = await db.open({ clock: () => T0 })
    await a.deposit({ id: 'd', account: alice, amount: 1000n, reference: 'r' })
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 === 0 ? a : b).reserve(res(`p${i}`, { maxOpen: 5 }))))
    t.equal(results.filter((r) => r.ok).length, 5)
    t.equal((await b.pendingReservations(alice)).length, 5)
  })

  t.test('a blocked account cannot reserve until it is unblocked', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve(res('before'))
    t.equal(await ledger.accountBlock(alice), null)
    t.equal(await ledger.blockAccount(alice, 'settlement failed', T0 + 1), true)
    t.equal(await ledger.blockAccount(alice, 'second reason', T0 + 2), false)
    t.same(await ledger.accountBlock(alice), { reason: 'settlement failed', since: T0 + 1 })
    t.same(await ledger.reserve(res('p1')), { ok: false, code: 'account_blocked', available: 90n })
    t.same(await ledger.reserve(res('p1', { maxOpen: 1 })), { ok: false, code: 'account_blocked', available: 90n }, 'the block is reported first')
    t.match(await ledger.reserve(res('before')), { ok: true, duplicate: true }, 'an existing reservation is still reported')
    t.match(await ledger.post({ pendingId: 'before', id: 'post', amount: 4n }), { duplicate: false }, 'and still settles')
    t.match(await ledger.deposit({ id: 'd2', account: alice, amount: 5n, reference: 'r' }), { duplicate: false }, 'paying in is allowed')
    t.equal(await ledger.getTransfer('p1'), null)

    const raw = await db.raw()
    await t.rejects(raw.run(`INSERT INTO transfers (id, kind, debit_account, credit_account, amount, state, timeout_at, created_at)
      VALUES ('raw', 'pending', '${alice}', 'system:revenue', 1, 'pending', ${T0 + 1000}, 0)`), /account_blocked/, 'the schema refuses a pending for a blocked payer')

    t.equal(await ledger.unblockAccount(alice), true)
    t.equal(await ledger.unblockAccount(alice), false)
    t.equal(await ledger.accountBlock(alice), null)
    t.match(await ledger.reserve(res('p1')), { ok: true })
    await t.rejects(ledger.blockAccount('system:revenue', 'x', T0), { code: 'LEDGER_ACCOUNT_INVALID' })
    await ledger.checkInvariants()
  })

  t.test('payment claims keep validBefore and are listed for reconciliation, oldest update first', async (t) => {
    const { ledger, clock } = await setup(t, store)
    const base = { network: 'eip155:8453', asset: '0x' + 'c0'.repeat(20), payer: '0x' + 'Ab'.repeat(20) }
    const k = (n: number) => ({ ...base, nonce: `0x${n}` })
    for (const n of [1, 2, 3, 4, 5]) {
      clock.now = T0 + n
      await ledger.claimPayment({ ...k(n), requestId: `req-${n}`, amount: 1n, ...(n === 1 ? {} : { validBefore: 1_700_000_600 + n }) })
    }
    clock.now = T0 + 10
    await ledger.updatePaymentClaim(k(4), { status: 'settling' })
    clock.now = T0 + 11
    await ledger.updatePaymentClaim(k(2), { status: 'unknown', error: 'timeout' })
    clock.now = T0 + 12
    await ledger.updatePaymentClaim(k(3), { status: 'failed' })
    await ledger.settlePaymentAndDeposit(k(5), { txHash: '0x', depositId: 'd5', account: alice, amount: 1n })
    t.match(await ledger.getPaymentClaim(k(1)), { validBefore: null })
    t.match(await ledger.getPaymentClaim(k(2)), { validBefore: 1_700_000_602, status: 'unknown' })

    const list = (statuses: string[], updatedBefore: number, limit = 10) =>
      ledger.listPaymentClaims({ statuses: statuses as never, updatedBefore, limit }).then((cs) => cs.map((c) => c.nonce))
    t.same(await list(['settling', 'unknown'], T0 + 100), ['0x4', '0x2'])
    t.same(await list(['settling', 'unknown'], T0 + 11), ['0x4'], 'updatedBefore is strict')
    t.same(await list(['claimed', 'settling', 'unknown', 'failed', 'settled'], T0 + 100, 3), ['0x1', '0x4', '0x2'])
    t.same(await list(['claimed'], T0 + 100), ['0x1'])
    t.match((await ledger.listPaymentClaims({ statuses: ['unknown'], updatedBefore: T0 + 100, limit: 1 }))[0],
      { requestId: 'req-2', error: 'timeout', validBefore: 1_700_000_602 })
    await t.rejects(list([], T0), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(list(['bogus'], T0), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(list(['claimed'], T0, 0), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.claimPayment({ ...k(9), requestId: 'r', amount: 1n, validBefore: -1 }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })
})

t.test('sqlite: a version-2 ledger file is upgraded in place, its claims intact and still final', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const raw = new Database(path)
  raw.defaultSafeIntegers(true)
  raw.pragma('foreign_keys = ON')
  raw.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT')
  for (const m of MIGRATIONS.filter((m) => m.version <= 2)) {
    raw.exec(m.sql)
    raw.prepare('INSERT INTO schema_migrations VALUES (?, ?, 0)').run(m.version, m.name)
  }
  raw.prepare("INSERT INTO transfers (id, kind, debit_account, credit_account, amount, reference, created_at) VALUES ('dep-old', 'deposit', 'system:deposits', ?, 500, 'r', 1)").run(alice)
  raw.prepare(`INSERT INTO payment_claims (network, asset, payer, nonce, request_id, amount, status, tx_hash, deposit_id, created_at, updated_at)
    VALUES ('n', 'a', '0xab', '0x01', 'req-old', 500, 'settled', '0xtx', 'dep-old', 1, 2), ('n', 'a', '0xab', '0x02', 'req-open', 7, 'unknown', NULL, NULL, 3, 4)`).run()
  raw.close()

  const ledger = await openSqliteLedger(path, { clock: () => T0 })
  t.teardown(() => ledger.close())
  const check = new Database(path, { readonly: true })
  t.teardown(() => check.close())
  t.same(check.prepare('SELECT version FROM schema_migrations ORDER BY version').pluck().all(), [1, 2, 3, 4])
  const settled = { network: 'n', asset: 'a', payer: '0xab', nonce: '0x01' }
  t.same(await ledger.getPaymentClaim(settled), {
    ...settled, requestId: 'req-old', amount: 500n, status: 'settled', txHash: '0xtx', error: null, depositId: 'dep-old',
    createdAt: 1, updatedAt: 2, validBefore: null, provisional: false, reversal: null,
  })
  await t.rejects(ledger.updatePaymentClaim(settled, { status: 'failed' }), { code: 'LEDGER_CLAIM_SETTLED' })
  await t.rejects(ledger.settlePaymentAndDeposit(settled, { txHash: '0x', depositId: 'again', account: alice, amount: 1n }), { code: 'LEDGER_CLAIM_SETTLED' })
  const open = { ...settled, nonce: '0x02' }
  t.match(await ledger.listPaymentClaims({ statuses: ['unknown'], updatedBefore: T0, limit: 5 }), [{ nonce: '0x02', requestId: 'req-open' }])
  await ledger.provisionalDeposit(open, { depositId: 'dep-new', account: alice, amount: 7n })
  t.equal((await ledger.balance(alice)).available, 507n)
  t.same(await ledger.claimPayment({ ...open, requestId: 'replay', amount: 7n }), { claimed: false, existing: { status: 'settling', requestId: 'req-open', txHash: null } })
  await ledger.checkInvariants()
})
