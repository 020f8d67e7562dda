import t, { type Test } from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import type { Receipt } from '../src/ledger/types.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// Payment claims (x402 replay protection), the settle-and-deposit step, and receipts, against both stores.

const T0 = 1_700_000_000_000
const from = '0x' + 'Ab'.repeat(20)
const account = payerAccount(84532, from)
const key = { network: 'eip155:84532', asset: '0x' + 'C0'.repeat(20), payer: from, nonce: '0x' + 'F1'.repeat(32) }
const settle = { txHash: '0x' + '11'.repeat(32), depositId: 'deposit:n1', account, amount: 1_000_000n }

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: T0 }
  const ledger = await store.open(t, { clock: () => clock.now })
  return { ledger, clock }
}

const receipt: Receipt = {
  id: 'req-1',
  payer: account,
  model: 'meta-llama/Llama-3.1-8B-Instruct',
  stream: true,
  status: 'pending',
  promptTokens: 0,
  completionTokens: 0,
  reservedAmount: 5_000n,
  chargedAmount: 0n,
  upstreamCost: null,
  verified: null,
  verifyError: null,
  proof: null,
  paymentTx: null,
  errorCode: null,
  createdAt: T0,
  completedAt: null,
}

forEachStore(t, (t, store) => {
  t.test('a payment nonce is claimed once; a replay sees the first claim', async (t) => {
    const { ledger } = await setup(t, store)
    t.same(await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n }), { claimed: true })
    t.same(await ledger.claimPayment({ ...key, requestId: 'req-2', amount: 1000n }),
      { claimed: false, existing: { status: 'claimed', requestId: 'req-1', txHash: null } })
    const shouted = { ...key, payer: key.payer.toUpperCase().replace('0X', '0x'), nonce: key.nonce.toUpperCase().replace('0X', '0x'), asset: key.asset.toLowerCase() }
    t.match(await ledger.claimPayment({ ...shouted, requestId: 'req-3', amount: 1000n }), { claimed: false }, 'letter case does not make a new nonce')
    t.same(await ledger.claimPayment({ ...key, nonce: '0x' + 'f2'.repeat(32), requestId: 'req-4', amount: 1000n }), { claimed: true })
    t.match(await ledger.getPaymentClaim(shouted), { payer: from.toLowerCase(), nonce: key.nonce.toLowerCase(), requestId: 'req-1', amount: 1000n, createdAt: T0 })
    t.equal(await ledger.getPaymentClaim({ ...key, network: 'eip155:8453' }), null)
  })

  t.test('concurrent claims of one nonce: exactly one wins', async (t) => {
    const { ledger } = await setup(t, store)
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => ledger.claimPayment({ ...key, requestId: `req-${i}`, amount: 1n })))
    t.equal(results.filter((r) => r.claimed).length, 1)
  })

  t.test('claim status moves through settling to failed or unknown', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'settling' }), { code: 'LEDGER_CLAIM_NOT_FOUND' })
    await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n })
    clock.now = T0 + 5
    t.match(await ledger.updatePaymentClaim(key, { status: 'settling' }), { status: 'settling', updatedAt: T0 + 5 })
    t.match(await ledger.updatePaymentClaim(key, { status: 'unknown', txHash: '0xaa', error: 'timeout' }), { status: 'unknown', txHash: '0xaa', error: 'timeout' })
    t.match(await ledger.updatePaymentClaim(key, { status: 'failed' }), { status: 'failed', txHash: '0xaa', error: 'timeout' }, 'omitted fields are kept')
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'claimed' as never }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })

  t.test('settlePaymentAndDeposit credits once, however often it is called', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n })
    await ledger.updatePaymentClaim(key, { status: 'settling' })
    const first = await ledger.settlePaymentAndDeposit(key, settle)
    t.match(first, { duplicate: false, transfer: { id: 'deposit:n1', kind: 'deposit', creditAccount: account, amount: 1_000_000n, meta: { txHash: settle.txHash } } })
    const second = await ledger.settlePaymentAndDeposit(key, settle)
    t.equal(second.duplicate, true)
    t.equal((await ledger.balance(account)).available, 1_000_000n)
    t.match(await ledger.getPaymentClaim(key), { status: 'settled', txHash: settle.txHash, depositId: 'deposit:n1', error: null })
    await t.rejects(ledger.settlePaymentAndDeposit(key, { ...settle, depositId: 'deposit:other' }), { code: 'LEDGER_CLAIM_SETTLED' })
    await t.rejects(ledger.settlePaymentAndDeposit(key, { ...settle, amount: 2n }), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    await t.rejects(ledger.updatePaymentClaim(key, { status: 'failed' }), { code: 'LEDGER_CLAIM_SETTLED' })
    t.equal((await ledger.balance(account)).available, 1_000_000n)
    await ledger.checkInvariants()
  })

  t.test('racing settlements of one claim credit once', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n })
    const results = await Promise.allSettled([
      ledger.settlePaymentAndDeposit(key, settle),
      ledger.settlePaymentAndDeposit(key, settle),
      ledger.settlePaymentAndDeposit(key, { ...settle, depositId: 'deposit:rogue' }),
    ])
    // Whichever deposit id locks the claim first wins (on PostgreSQL the three race on separate
    // connections); the other is refused as settled, and the claim credits exactly once.
    const winner = results[2].status === 'fulfilled' ? 'deposit:rogue' : 'deposit:n1'
    t.same(results.map((r) => r.status), winner === 'deposit:n1' ? ['fulfilled', 'fulfilled', 'rejected'] : ['rejected', 'rejected', 'fulfilled'])
    for (const r of results) if (r.status === 'rejected') t.match(r.reason, { code: 'LEDGER_CLAIM_SETTLED', depositId: winner })
    t.match(await ledger.getPaymentClaim(key), { status: 'settled', depositId: winner })
    t.equal((await ledger.balance(account)).available, 1_000_000n)
    t.equal((await ledger.transfers(account)).length, 1)
  })

  t.test('one deposit id cannot settle two claims', async (t) => {
    const { ledger } = await setup(t, store)
    const other = { ...key, nonce: '0x' + '22'.repeat(32) }
    await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n })
    await ledger.claimPayment({ ...other, requestId: 'req-2', amount: 1000n })
    await ledger.settlePaymentAndDeposit(key, settle)
    await t.rejects(ledger.settlePaymentAndDeposit(other, settle), { code: 'LEDGER_TRANSFER_ID_CONFLICT' })
    t.match(await ledger.getPaymentClaim(other), { status: 'claimed', depositId: null }, 'the failed settle rolled back entirely')
    t.equal((await ledger.balance(account)).available, 1_000_000n)
  })

  t.test('a claim whose outcome was unknown can still be settled later, once', async (t) => {
    const { ledger } = await setup(t, store)
    await t.rejects(ledger.settlePaymentAndDeposit(key, settle), { code: 'LEDGER_CLAIM_NOT_FOUND' })
    await ledger.claimPayment({ ...key, requestId: 'req-1', amount: 1000n })
    await ledger.updatePaymentClaim(key, { status: 'unknown', error: 'rpc timeout' })
    await ledger.settlePaymentAndDeposit(key, settle)
    t.match(await ledger.getPaymentClaim(key), { status: 'settled', error: null })
    t.equal((await ledger.transfers(account)).length, 1)
  })

  t.test('receipts round-trip, including bigint amounts and the JSON proof', async (t) => {
    const { ledger } = await setup(t, store)
    t.equal(await ledger.getReceipt('req-1'), null)
    await ledger.putReceipt(receipt)
    t.same(await ledger.getReceipt('req-1'), receipt)
    const proof = { tee_id: '0xabc', signature: 'c2ln', nested: { n: 1 } }
    const done = await ledger.updateReceipt('req-1', {
      status: 'completed', promptTokens: 12, completionTokens: 34, chargedAmount: 4_321n, upstreamCost: '0.000123',
      verified: true, proof, completedAt: T0 + 900, verifyError: undefined,
    })
    t.same(done, { ...receipt, status: 'completed', promptTokens: 12, completionTokens: 34, chargedAmount: 4_321n, upstreamCost: '0.000123', verified: true, proof, completedAt: T0 + 900 })
    t.same(await ledger.getReceipt('req-1'), done)
    t.equal(await ledger.updateReceipt('missing', { status: 'failed' }), null)
    await t.rejects(ledger.updateReceipt('req-1', { status: 'done' as never }), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.updateReceipt('req-1', { chargedAmount: -1n }), { code: 'LEDGER_AMOUNT_INVALID' })
  })

  t.test('receipts are listed per payer, most recent first', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.putReceipt(receipt)
    await ledger.putReceipt({ ...receipt, id: 'req-2', createdAt: T0 + 1 })
    await ledger.putReceipt({ ...receipt, id: 'req-3', payer: null, createdAt: T0 + 2 })
    t.same((await ledger.receipts(account)).map((r) => r.id), ['req-2', 'req-1'])
    t.same((await ledger.receipts(account, { limit: 1 })).map((r) => r.id), ['req-2'])
  })
})
