import t, { type Test } from 'tap'
import { payerAccount, SYSTEM_ACCOUNTS } from '../src/ledger/accounts.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// Optimistic settlement: a provisional deposit credits the payer before the settlement confirms; it
// then either settles (still crediting once) or is reversed as far as the credit is still there,
// blocking the payer. Against both stores.

const T0 = 1_700_000_000_000
const from = '0x' + 'Ab'.repeat(20)
const account = payerAccount(84532, from)
const key = { network: 'eip155:84532', asset: '0x' + 'c0'.repeat(20), payer: from, nonce: '0x' + 'f1'.repeat(32) }
const prov = { depositId: 'deposit:n1', account, amount: 1000n }
const settle = { txHash: '0x' + '11'.repeat(32), depositId: 'deposit:n1', account, amount: 1000n }

/** Each test's own ledger, with one claim settling; withRaw: on a database the test can also reach with raw SQL. */
async function setup (t: Test, store: StoreFixture, { withRaw = false } = {}) {
  const clock = { now: T0 }
  const db = withRaw ? await store.shared(t) : undefined
  const ledger = db ? await db.open({ clock: () => clock.now }) : await store.open(t, { clock: () => clock.now })
  await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n })
  await ledger.updatePaymentClaim(key, { status: 'settling' })
  return { ledger, clock, db: db! }
}

forEachStore(t, (t, store) => {
  t.test('a provisional deposit credits once and keeps the claim settling', async (t) => {
    const { ledger } = await setup(t, store)
    const first = await ledger.provisionalDeposit(key, prov)
    t.match(first, { duplicate: false, transfer: { id: 'deposit:n1', kind: 'deposit', debitAccount: SYSTEM_ACCOUNTS.deposits, creditAccount: account, amount: 1000n, meta: { provisional: true } } })
    t.match(await ledger.getPaymentClaim(key), { status: 'settling', depositId: 'deposit:n1', provisional: true, reversal: null })
    t.equal((await ledger.provisionalDeposit(key, prov)).duplicate, true)
    await t.rejects(ledger.provisionalDeposit(key, { ...prov, depositId: 'deposit:other' }), { code: 'LEDGER_CLAIM_SETTLED' })
    await t.rejects(ledger.provisionalDeposit(key, { ...prov, amount: 999n }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    t.equal((await ledger.balance(account)).available, 1000n)
    await ledger.checkInvariants()
  })

  t.test('settling a provisional claim with the same deposit id credits nothing more', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.provisionalDeposit(key, prov)
    clock.now = T0 + 50
    t.match(await ledger.updatePaymentClaim(key, { status: 'unknown', txHash: settle.txHash, error: 'timeout' }), { status: 'unknown', depositId: 'deposit:n1' },
      'an open provisional claim may still record its tx hash and an unknown outcome')
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'failed' }), { code: 'LEDGER_CLAIM_STATE' }, 'failing it must go through the reversal')
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'settled' }), { code: 'LEDGER_CLAIM_STATE' })
    await t.rejects(ledger.settlePaymentAndDeposit(key, { ...settle, amount: 5n }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.settlePaymentAndDeposit(key, { ...settle, depositId: 'deposit:other' }), { code: 'LEDGER_CLAIM_SETTLED' })
    const s = await ledger.settlePaymentAndDeposit(key, settle)
    t.match(s, { duplicate: true, transfer: { id: 'deposit:n1', amount: 1000n } })
    t.match(await ledger.getPaymentClaim(key), { status: 'settled', txHash: settle.txHash, error: null, depositId: 'deposit:n1', provisional: true, updatedAt: T0 + 50 })
    t.equal((await ledger.settlePaymentAndDeposit(key, settle)).duplicate, true, 'and again')
    t.equal((await ledger.balance(account)).available, 1000n)
    t.equal((await ledger.transfers(account)).length, 1)
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'failed' }), { code: 'LEDGER_CLAIM_SETTLED' })
    await t.rejects(ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'x', now: T0 }), { code: 'LEDGER_CLAIM_SETTLED' })
    t.equal((await ledger.provisionalDeposit(key, prov)).duplicate, true, 'a repeat after settlement is still a duplicate')
    await t.rejects(ledger.provisionalDeposit(key, { ...prov, depositId: 'deposit:other' }), { code: 'LEDGER_CLAIM_SETTLED' })
    await ledger.checkInvariants()
  })

  t.test('a reversal takes the whole deposit back when it is still there, and blocks the payer', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.provisionalDeposit(key, prov)
    clock.now = T0 + 7
    t.same(await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'settle_failed', now: T0 + 7 }), { reversed: 1000n, shortfall: 0n })
    t.equal((await ledger.balance(account)).available, 0n)
    t.match(await ledger.getTransfer('rev-1'), { kind: 'refund', debitAccount: account, creditAccount: SYSTEM_ACCOUNTS.deposits, amount: 1000n })
    t.match(await ledger.getPaymentClaim(key), { status: 'failed', error: 'settle_failed', depositId: 'deposit:n1', reversal: { id: 'rev-1', reversed: 1000n, shortfall: 0n, at: T0 + 7 } })
    t.same(await ledger.accountBlock(account), { reason: 'settle_failed', since: T0 + 7 })
    t.same(await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'again', now: T0 + 9 }), { reversed: 1000n, shortfall: 0n }, 'idempotent on id')
    await t.rejects(ledger.reverseProvisionalDeposit(key, { id: 'rev-2', reason: 'x', now: T0 + 9 }), { code: 'LEDGER_CLAIM_STATE' })
    await t.rejects(ledger.settlePaymentAndDeposit(key, settle), { code: 'LEDGER_CLAIM_STATE' }, 'a reversed claim never settles')
    await t.rejects(ledger.provisionalDeposit(key, prov), { code: 'LEDGER_CLAIM_STATE' }, 'a repeat after the reversal is refused')
    await t.rejects(ledger.provisionalDeposit(key, { ...prov, depositId: 'deposit:other' }), { code: 'LEDGER_CLAIM_SETTLED' })
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'settling' }), { code: 'LEDGER_CLAIM_STATE' })
    t.equal((await ledger.transfers(account)).length, 2)
    t.equal((await ledger.totals()).sumOfAllAccounts, 0n)
    await ledger.checkInvariants()
  })

  t.test('a reversal never takes the payer below zero: what was spent or reserved is the shortfall', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.provisionalDeposit(key, prov)
    await ledger.reserve({ id: 'spent', account, amount: 400n, timeoutAt: T0 + 1000, reference: 'q1' })
    await ledger.post({ pendingId: 'spent', id: 'post-spent', amount: 400n })
    await ledger.reserve({ id: 'held', account, amount: 300n, timeoutAt: T0 + 1000, reference: 'q2' })
    t.same(await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'settle_failed', now: T0 }), { reversed: 300n, shortfall: 700n })
    t.same(await ledger.balance(account), { account, creditsPosted: 1000n, debitsPosted: 700n, debitsPending: 300n, available: 0n })
    t.match(await ledger.post({ pendingId: 'held', id: 'post-held', amount: 300n }), { duplicate: false }, 'the held request still completes')
    t.equal((await ledger.balance(account)).available, 0n)
    t.ok(await ledger.accountBlock(account))
    await ledger.checkInvariants()
  })

  t.test('nothing left to take back: no refund transfer, the whole deposit is the shortfall', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.provisionalDeposit(key, prov)
    await ledger.reserve({ id: 'all', account, amount: 1000n, timeoutAt: T0 + 1000, reference: 'q' })
    t.same(await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'gone', now: T0 }), { reversed: 0n, shortfall: 1000n })
    t.equal(await ledger.getTransfer('rev-1'), null)
    t.match(await ledger.getPaymentClaim(key), { status: 'failed', reversal: { id: 'rev-1', reversed: 0n, shortfall: 1000n } })
    t.same(await ledger.accountBlock(account), { reason: 'gone', since: T0 })
    await ledger.checkInvariants()
  })

  t.test('other credit is untouched beyond the deposit; an earlier block keeps its reason', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.deposit({ id: 'paid-before', account, amount: 500n, reference: 'r' })
    await ledger.blockAccount(account, 'manual review', T0 - 5)
    await ledger.provisionalDeposit(key, prov)
    t.same(await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'settle_failed', now: T0 }), { reversed: 1000n, shortfall: 0n })
    t.equal((await ledger.balance(account)).available, 500n)
    t.same(await ledger.accountBlock(account), { reason: 'manual review', since: T0 - 5 })
  })

  t.test('reversing needs an open provisional claim', async (t) => {
    const { ledger } = await setup(t, store)
    const rev = { id: 'rev-1', reason: 'x', now: T0 }
    await t.rejects(ledger.reverseProvisionalDeposit({ ...key, nonce: '0x99' }, rev), { code: 'LEDGER_CLAIM_NOT_FOUND' })
    await t.rejects(ledger.reverseProvisionalDeposit(key, rev), { code: 'LEDGER_CLAIM_STATE' }, 'no deposit yet')
    await ledger.settlePaymentAndDeposit(key, settle)
    await t.rejects(ledger.reverseProvisionalDeposit(key, rev), { code: 'LEDGER_CLAIM_SETTLED' }, 'a normal settlement is final')
    await t.rejects(ledger.provisionalDeposit(key, prov), { code: 'LEDGER_CLAIM_SETTLED' })
    const other = { ...key, nonce: '0x02' }
    await ledger.claimPayment({ ...other, requestId: 'req-2', amount: 1n })
    await ledger.updatePaymentClaim(other, { status: 'failed' })
    await t.rejects(ledger.provisionalDeposit(other, { ...prov, depositId: 'd2' }), { code: 'LEDGER_CLAIM_STATE' }, 'a failed claim is not credited')
    t.equal(await ledger.getTransfer('d2'), null)
    t.equal(await ledger.accountBlock(account), null)
  })

  t.test('a provisional deposit from a claimed or unknown claim moves it to settling', async (t) => {
    const { ledger } = await setup(t, store)
    const other = { ...key, nonce: '0x03' }
    await ledger.claimPayment({ ...other, requestId: 'req-3', amount: 1n })
    await ledger.provisionalDeposit(other, { ...prov, depositId: 'd3' })
    t.match(await ledger.getPaymentClaim(other), { status: 'settling', provisional: true })
    await t.rejects(ledger.provisionalDeposit(key, { ...prov, depositId: 'd3' }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' }, 'one deposit id cannot credit two claims')
    t.match(await ledger.getPaymentClaim(key), { depositId: null })
  })

  t.test('raw SQL cannot fake a reversal or unlink a provisional deposit', async (t) => {
    const { ledger, db } = await setup(t, store, { withRaw: true })
    await ledger.provisionalDeposit(key, prov)
    const raw = await db.raw()
    const [no, yes] = store.kind === 'sqlite' ? ['0', '1'] : ['false', 'true']
    const where = `WHERE nonce = '${key.nonce}'`
    await t.rejects(raw.run(`UPDATE payment_claims SET status = 'failed' ${where}`), /check/i, 'failing needs a reversal')
    await t.rejects(raw.run(`UPDATE payment_claims SET deposit_id = NULL, provisional = ${no} ${where}`), /final|check/i)
    await t.rejects(raw.run(`UPDATE payment_claims SET status = 'failed', reversal_id = 'x', reversed_amount = 1000, shortfall = 0, reversed_at = 0 ${where}`),
      /match its refund/, 'a reversal without its refund transfer')
    await t.rejects(raw.run(`UPDATE payment_claims SET status = 'failed', reversal_id = 'x', reversed_amount = 0, shortfall = 10, reversed_at = 0 ${where}`),
      /match its refund/, 'a reversal that does not add up to the deposit')
    await t.rejects(raw.run(`UPDATE payment_claims SET provisional = ${no} ${where}`), /final/)
    await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'x', now: T0 })
    await t.rejects(raw.run(`UPDATE payment_claims SET status = 'unknown', reversal_id = NULL, reversed_amount = NULL, shortfall = NULL, reversed_at = NULL ${where}`), /final/)
    await t.rejects(raw.run(`INSERT INTO payment_claims (network, asset, payer, nonce, request_id, amount, status, deposit_id, provisional, created_at, updated_at)
      VALUES ('n', 'a', 'p', 'x', 'r', 1, 'settling', 'deposit:n1', ${yes}, 0, 0)`), /starts without a deposit/)
    await ledger.checkInvariants()
  })

  t.test('the audit notices a reversal that no longer matches its refund', async (t) => {
    const { ledger, db } = await setup(t, store, { withRaw: true })
    await ledger.provisionalDeposit(key, prov)
    await ledger.reverseProvisionalDeposit(key, { id: 'rev-1', reason: 'x', now: T0 })
    await ledger.checkInvariants()
    const raw = await db.raw()
    await raw.run(store.kind === 'sqlite' ? 'DROP TRIGGER payment_claims_final' : 'DROP TRIGGER payment_claims_guard ON payment_claims')
    await raw.run('UPDATE payment_claims SET reversed_amount = 900, shortfall = 100')
    await t.rejects(ledger.checkInvariants(), { code: 'LEDGER_INVARIANT_BROKEN', message: /payment claims with an invalid deposit/ })
  })
})
