import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import type { Receipt } from '../src/ledger/types.ts'
import { forEachStore } from './helpers/ledger-stores.ts'

// closeStaleReceipts finishes the receipts of requests that never finished (a replica killed, or
// the ledger failing between the money and the receipt), from what their reservation became, on
// both stores.

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))

function receipt (id: string, createdAt: number, over: Partial<Receipt> = {}): Receipt {
  return {
    id, payer: alice, model: 'm', stream: true, status: 'pending', promptTokens: 0, completionTokens: 0,
    reservedAmount: 100n, chargedAmount: 0n, upstreamCost: null, verified: null, verifyError: null, proof: null,
    paymentTx: null, errorCode: null, createdAt, completedAt: null, ...over,
  }
}

forEachStore(t, (t, store) => {
  t.test('each stale pending receipt takes the outcome of its reservation; recent, unresolved and finished ones are left alone', async (t) => {
    const clock = { now: T0 }
    const ledger = await store.open(t, { clock: () => clock.now })
    await ledger.deposit({ id: 'd', account: alice, amount: 10_000n, reference: 'r' })
    const reserve = async (id: string, timeoutAt = T0 + 60_000) => {
      const r = await ledger.reserve({ id: `reserve:${id}`, account: alice, amount: 100n, timeoutAt, reference: id })
      t.ok(r.ok, `reserved for ${id}`)
    }
    for (const id of ['posted', 'voided', 'expired', 'open', 'recent', 'done', 'noted', 'expired-recent']) {
      await reserve(id, id.startsWith('expired') ? T0 + 10 : T0 + 60_000)
      await ledger.putReceipt(receipt(id, id.endsWith('recent') ? T0 + 5_000 : T0))
    }
    await ledger.post({ pendingId: 'reserve:posted', id: 'post:posted', amount: 37n })
    await ledger.void({ pendingId: 'reserve:voided', id: 'void:voided', reason: 'r' })
    await ledger.void({ pendingId: 'reserve:noted', id: 'void:noted', reason: 'r' })
    await ledger.updateReceipt('noted', { errorCode: 'UPSTREAM_TIMEOUT' })
    await ledger.post({ pendingId: 'reserve:recent', id: 'post:recent', amount: 5n })
    await ledger.post({ pendingId: 'reserve:done', id: 'post:done', amount: 9n })
    await ledger.updateReceipt('done', { status: 'completed', chargedAmount: 9n, completedAt: T0 + 1 })
    clock.now = T0 + 100
    t.equal(await ledger.expirePending(clock.now), 2, 'the short reservations expired')
    // A receipt with no reservation at all (its reserve was refused) is not touched either.
    await ledger.putReceipt(receipt('orphan', T0))

    const closed = await ledger.closeStaleReceipts(T0 + 1_000, T0 + 2_000)
    t.equal(closed, 5, 'posted, voided, expired (however recent) and noted were finished')
    const get = async (id: string) => {
      const r = await ledger.getReceipt(id)
      return { status: r?.status, charged: r?.chargedAmount, code: r?.errorCode, completedAt: r?.completedAt }
    }
    t.same(await get('posted'), { status: 'completed', charged: 37n, code: null, completedAt: T0 + 2_000 }, 'posted: completed at the posted amount')
    t.same(await get('voided'), { status: 'failed', charged: 0n, code: 'INTERRUPTED', completedAt: T0 + 2_000 })
    t.same(await get('expired'), { status: 'failed', charged: 0n, code: 'RESERVATION_EXPIRED', completedAt: T0 + 2_000 })
    t.same(await get('expired-recent'), { status: 'failed', charged: 0n, code: 'RESERVATION_EXPIRED', completedAt: T0 + 2_000 }, 'an expired reservation needs no grace')
    t.same(await get('noted'), { status: 'failed', charged: 0n, code: 'UPSTREAM_TIMEOUT', completedAt: T0 + 2_000 }, 'a recorded error code is kept')
    t.same(await get('open'), { status: 'pending', charged: 0n, code: null, completedAt: null }, 'its request may still be running')
    t.same(await get('recent'), { status: 'pending', charged: 0n, code: null, completedAt: null }, 'inside the grace: left to its request')
    t.same(await get('done'), { status: 'completed', charged: 9n, code: null, completedAt: T0 + 1 }, 'a finished receipt is never rewritten')
    t.same(await get('orphan'), { status: 'pending', charged: 0n, code: null, completedAt: null })

    t.equal(await ledger.closeStaleReceipts(T0 + 1_000, T0 + 3_000), 0, 'idempotent')
    t.equal(await ledger.closeStaleReceipts(T0 + 10_000, T0 + 4_000), 1, 'the recent one once the grace is over')
    t.same(await get('recent'), { status: 'completed', charged: 5n, code: null, completedAt: T0 + 4_000 })
    await t.rejects(ledger.closeStaleReceipts(Number.NaN, T0), { code: 'LEDGER_ARGUMENT_INVALID' })
    await ledger.checkInvariants()
  })
})
