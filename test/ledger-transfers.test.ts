import t, { type Test } from 'tap'
import { payerAccount, SYSTEM_ACCOUNTS } from '../src/ledger/accounts.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// One behaviour per subtest: every ledger operation, its idempotency and its failure codes, against
// both stores (SQLite and PostgreSQL).

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'A1'.repeat(20))
const bob = payerAccount(8453, '0x' + 'b2'.repeat(20))

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: T0 }
  const ledger = await store.open(t, { clock: () => clock.now })
  return { ledger, clock }
}

t.test('payer account ids are CAIP-10 with a lowercase address', async (t) => {
  t.equal(alice, 'eip155:8453:0x' + 'a1'.repeat(20))
  t.throws(() => payerAccount(8453, '0x1234'), { code: 'LEDGER_ACCOUNT_INVALID' })
  t.throws(() => payerAccount(0, '0x' + 'a1'.repeat(20)), { code: 'LEDGER_ACCOUNT_INVALID' })
})

forEachStore(t, (t, store) => {
  t.test('deposit credits the payer from system:deposits', async (t) => {
    const { ledger } = await setup(t, store)
    const r = await ledger.deposit({ id: 'dep-1', account: alice, amount: 1000n, reference: 'nonce-1', meta: { tx: '0xabc' } })
    t.equal(r.duplicate, false)
    t.match(r.transfer, { kind: 'deposit', debitAccount: SYSTEM_ACCOUNTS.deposits, creditAccount: alice, amount: 1000n, createdAt: T0 })
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 1000n, debitsPosted: 0n, debitsPending: 0n, available: 1000n })
    t.equal((await ledger.balance(SYSTEM_ACCOUNTS.deposits)).available, -1000n, 'system accounts may go negative')
  })

  t.test('deposit is idempotent on id and refuses a reused id with other fields', async (t) => {
    const { ledger } = await setup(t, store)
    const input = { id: 'dep-1', account: alice, amount: 500n, reference: 'n1', meta: { a: 1, b: 'x' } }
    await ledger.deposit(input)
    const again = await ledger.deposit({ ...input, meta: { b: 'x', a: 1 } })
    t.equal(again.duplicate, true, 'meta key order does not matter')
    t.equal((await ledger.balance(alice)).available, 500n, 'credited once')
    await t.rejects(ledger.deposit({ ...input, amount: 501n }), { code: 'LEDGER_TRANSFER_ID_CONFLICT', differs: ['amount'] })
    await t.rejects(ledger.deposit({ ...input, account: bob }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.deposit({ ...input, reference: 'n2' }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.deposit({ ...input, meta: undefined }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.grant({ id: 'dep-1', account: alice, amount: 500n, reason: 'x' }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    t.equal((await ledger.balance(alice)).available, 500n)
  })

  t.test('amounts must be positive int64 bigints', async (t) => {
    const { ledger } = await setup(t, store)
    for (const amount of [0n, -1n, 2n ** 63n, 5, 1.5, '10', null]) {
      await t.rejects(ledger.deposit({ id: `d-${String(amount)}`, account: alice, amount: amount as bigint, reference: 'r' }),
        { code: 'LEDGER_AMOUNT_INVALID' }, `deposit ${String(amount)}`)
    }
    await t.resolves(ledger.deposit({ id: 'max', account: alice, amount: 2n ** 63n - 1n, reference: 'r' }))
    const overflow = await ledger.deposit({ id: 'overflow', account: alice, amount: 1n, reference: 'r' }).catch((e: unknown) => e)
    // SQLite refuses the overflowing balance with a constraint error, PostgreSQL with numeric_value_out_of_range.
    t.match(overflow, { code: store.kind === 'sqlite' ? /CONSTRAINT/ : '22003' }, 'int64 overflow is refused by the store itself')
    t.equal((await ledger.balance(alice)).available, 2n ** 63n - 1n)
    await t.rejects(ledger.reserve({ id: 'r0', account: alice, amount: 0n, timeoutAt: T0 + 1, reference: 'q' }), { code: 'LEDGER_AMOUNT_INVALID' })
  })

  t.test('payer operations take only payer accounts', async (t) => {
    const { ledger } = await setup(t, store)
    for (const account of [SYSTEM_ACCOUNTS.revenue, 'eip155:8453:0x' + 'A1'.repeat(20), 'alice', '']) {
      await t.rejects(ledger.deposit({ id: 'd', account, amount: 1n, reference: 'r' }), { code: 'LEDGER_ACCOUNT_INVALID' }, account)
    }
  })

  t.test('grant credits from system:grants; clawback returns it and never goes below zero', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.grant({ id: 'g1', account: alice, amount: 300n, reason: 'welcome' })
    t.equal((await ledger.balance(SYSTEM_ACCOUNTS.grants)).available, -300n)
    await ledger.reserve({ id: 'p1', account: alice, amount: 200n, timeoutAt: T0 + 60_000, reference: 'req' })
    await t.rejects(ledger.clawback({ id: 'c1', account: alice, amount: 101n, reason: 'abuse' }),
      { code: 'LEDGER_INSUFFICIENT_CREDIT', available: 100n, requested: 101n }, 'reserved credit cannot be clawed back')
    t.equal(await ledger.getTransfer('c1'), null, 'the refused clawback left no transfer')
    const c = await ledger.clawback({ id: 'c1', account: alice, amount: 100n, reason: 'abuse' })
    t.match(c.transfer, { kind: 'clawback', debitAccount: alice, creditAccount: SYSTEM_ACCOUNTS.grants, meta: { reason: 'abuse' } })
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 300n, debitsPosted: 100n, debitsPending: 200n, available: 0n })
    t.equal((await ledger.clawback({ id: 'c1', account: alice, amount: 100n, reason: 'abuse' })).duplicate, true)
  })

  t.test('reserve holds credit, refuses beyond available, and is idempotent', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    const input = { id: 'p1', account: alice, amount: 70n, timeoutAt: T0 + 60_000, reference: 'req-1' }
    const r = await ledger.reserve(input)
    t.match(r, { ok: true, duplicate: false, transfer: { kind: 'pending', state: 'pending', debitAccount: alice, creditAccount: SYSTEM_ACCOUNTS.revenue, amount: 70n, timeoutAt: T0 + 60_000 } })
    t.match(await ledger.reserve(input), { ok: true, duplicate: true })
    t.same(await ledger.reserve({ ...input, id: 'p2', amount: 31n }), { ok: false, code: 'insufficient_credit', available: 30n })
    t.match(await ledger.reserve({ ...input, id: 'p3', amount: 30n }), { ok: true })
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 100n, debitsPosted: 0n, debitsPending: 100n, available: 0n })
    await t.rejects(ledger.reserve({ ...input, amount: 1n }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.reserve({ ...input, id: 'p4', timeoutAt: T0 }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })

  t.test('reserve on an account that never deposited reports zero and creates nothing', async (t) => {
    const { ledger } = await setup(t, store)
    t.same(await ledger.reserve({ id: 'p', account: bob, amount: 1n, timeoutAt: T0 + 1, reference: 'r' }),
      { ok: false, code: 'insufficient_credit', available: 0n })
    t.same(await ledger.balance(bob), { account: bob, creditsPosted: 0n, debitsPosted: 0n, debitsPending: 0n, available: 0n })
    t.same(await ledger.transfers(bob), [])
  })

  t.test('post settles up to the pending amount and releases the rest', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 60n, timeoutAt: T0 + 60_000, reference: 'req' })
    await t.rejects(ledger.post({ pendingId: 'p1', id: 'post-1', amount: 61n }), { code: 'LEDGER_POST_EXCEEDS_PENDING' })
    t.equal((await ledger.getTransfer('p1'))?.state, 'pending', 'a refused post leaves the pending open')
    const r = await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 25n })
    t.match(r, { duplicate: false, transfer: { kind: 'post', pendingId: 'p1', amount: 25n, debitAccount: alice, creditAccount: SYSTEM_ACCOUNTS.revenue } })
    t.equal((await ledger.getTransfer('p1'))?.state, 'posted')
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 100n, debitsPosted: 25n, debitsPending: 0n, available: 75n })
    t.equal((await ledger.balance(SYSTEM_ACCOUNTS.revenue)).creditsPosted, 25n)
  })

  t.test('a pending resolves once: second post or void is refused, the same post id is a duplicate', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 60n, timeoutAt: T0 + 60_000, reference: 'req' })
    await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 10n })
    t.equal((await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 10n })).duplicate, true)
    await t.rejects(ledger.post({ pendingId: 'p1', id: 'post-1', amount: 11n }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.post({ pendingId: 'p1', id: 'post-2', amount: 10n }), { code: 'LEDGER_PENDING_RESOLVED', state: 'posted' })
    await t.rejects(ledger.void({ pendingId: 'p1', id: 'void-1', reason: 'x' }), { code: 'LEDGER_PENDING_RESOLVED', state: 'posted' })
    t.equal((await ledger.balance(alice)).available, 90n, 'charged once')
  })

  t.test('void releases everything, once', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 60n, timeoutAt: T0 + 60_000, reference: 'req' })
    const v = await ledger.void({ pendingId: 'p1', id: 'void-1', reason: 'proof_unverified' })
    t.match(v.transfer, { kind: 'void', amount: 60n, pendingId: 'p1', meta: { reason: 'proof_unverified' } })
    t.equal((await ledger.void({ pendingId: 'p1', id: 'void-1', reason: 'proof_unverified' })).duplicate, true)
    await t.rejects(ledger.void({ pendingId: 'p1', id: 'void-1', reason: 'other' }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.post({ pendingId: 'p1', id: 'post-1', amount: 1n }), { code: 'LEDGER_PENDING_RESOLVED', state: 'voided' })
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 100n, debitsPosted: 0n, debitsPending: 0n, available: 100n })
  })

  t.test('post 0 settles nothing but closes the pending as posted', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 60n, timeoutAt: T0 + 60_000, reference: 'req' })
    await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 0n })
    t.equal((await ledger.getTransfer('p1'))?.state, 'posted')
    t.equal((await ledger.balance(alice)).available, 100n)
  })

  t.test('post or void of an unknown or non-pending transfer', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await t.rejects(ledger.post({ pendingId: 'nope', id: 'x', amount: 1n }), { code: 'LEDGER_PENDING_NOT_FOUND' })
    await t.rejects(ledger.void({ pendingId: 'd', id: 'y', reason: 'r' }), { code: 'LEDGER_PENDING_NOT_FOUND' })
  })

  t.test('expirePending releases reservations past their timeout, once', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 10n, timeoutAt: T0 + 1000, reference: 'a' })
    await ledger.reserve({ id: 'p2', account: alice, amount: 20n, timeoutAt: T0 + 2000, reference: 'b' })
    await ledger.reserve({ id: 'p3', account: alice, amount: 30n, timeoutAt: T0 + 3000, reference: 'c' })
    await ledger.void({ pendingId: 'p1', id: 'v1', reason: 'x' })
    t.equal(await ledger.expirePending(T0 + 1999), 0)
    t.equal(await ledger.expirePending(T0 + 2000), 1, 'timeoutAt itself is past')
    t.equal(await ledger.expirePending(T0 + 2000), 0, 'a second sweep finds nothing')
    t.match(await ledger.getTransfer('expire:p2'), { kind: 'expire', pendingId: 'p2', amount: 20n })
    t.equal((await ledger.getTransfer('p2'))?.state, 'expired')
    clock.now = T0 + 2500
    await t.rejects(ledger.post({ pendingId: 'p2', id: 'post-2', amount: 5n }), { code: 'LEDGER_PENDING_RESOLVED', state: 'expired' })
    t.same(await ledger.balance(alice), { account: alice, creditsPosted: 100n, debitsPosted: 0n, debitsPending: 30n, available: 70n })
    t.same(await ledger.totals(), { sumOfAllAccounts: 0n, pendingCount: 1 })
  })

  t.test('a post after the timeout expires the pending even when no sweep has run', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.deposit({ id: 'd', account: alice, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 40n, timeoutAt: T0 + 1000, reference: 'a' })
    clock.now = T0 + 1000
    await t.rejects(ledger.post({ pendingId: 'p1', id: 'post-1', amount: 40n }), { code: 'LEDGER_PENDING_RESOLVED', state: 'expired' })
    t.equal((await ledger.getTransfer('p1'))?.state, 'expired', 'the expiry was committed')
    t.equal(await ledger.getTransfer('post-1'), null)
    t.equal((await ledger.balance(alice)).available, 100n)
    await t.rejects(ledger.void({ pendingId: 'p1', id: 'void-1', reason: 'late' }), { code: 'LEDGER_PENDING_RESOLVED', state: 'expired' })
  })

  t.test('transfers lists an account, most recent first, with a limit', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'd1', account: alice, amount: 100n, reference: 'r' })
    await ledger.deposit({ id: 'd2', account: bob, amount: 100n, reference: 'r' })
    await ledger.reserve({ id: 'p1', account: alice, amount: 10n, timeoutAt: T0 + 1, reference: 'q' })
    await ledger.post({ pendingId: 'p1', id: 'post-1', amount: 5n })
    t.same((await ledger.transfers(alice)).map((x) => x.id), ['post-1', 'p1', 'd1'])
    t.same((await ledger.transfers(alice, { limit: 2 })).map((x) => x.id), ['post-1', 'p1'])
    t.same((await ledger.transfers(SYSTEM_ACCOUNTS.deposits)).map((x) => x.id), ['d2', 'd1'])
    await t.rejects(ledger.transfers(alice, { limit: 0 }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })
})
