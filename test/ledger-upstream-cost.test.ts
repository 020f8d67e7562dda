import t, { type Test } from 'tap'
import { payerAccount, SYSTEM_ACCOUNTS } from '../src/ledger/accounts.ts'
import type { LedgerStore, Receipt } from '../src/ledger/types.ts'
import { upstreamCostUnits } from '../src/chat/charge.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// Upstream cost in the ledger: a request's enclave cost moves system:revenue → system:upstream_cost
// (kind upstream_cost, reference = the request id), with the charge's post or void or on its own;
// once per request, audited, and reported per model by margin(). Against both stores.

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))
const { revenue, upstreamCost: upstream } = SYSTEM_ACCOUNTS

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: T0 }
  const ledger = await store.open(t, { clock: () => clock.now })
  await ledger.deposit({ id: 'dep', account: alice, amount: 1_000_000n, reference: 'n1' })
  return { ledger, clock }
}

async function reserve (ledger: LedgerStore, req: string, amount = 1000n, timeoutAt = T0 + 60_000) {
  const r = await ledger.reserve({ id: `reserve:${req}`, account: alice, amount, timeoutAt, reference: req })
  if (!r.ok) throw new Error(`reserve ${req} refused: ${r.code}`)
}

async function net (ledger: LedgerStore, account: string) {
  const b = await ledger.balance(account)
  return b.creditsPosted - b.debitsPosted
}

function receipt (id: string, model: string, over: Partial<Receipt> = {}): Receipt {
  return {
    id, payer: alice, model, stream: false, status: 'completed', promptTokens: 1, completionTokens: 1,
    reservedAmount: 1000n, chargedAmount: 0n, upstreamCost: null, verified: true, verifyError: null,
    proof: null, paymentTx: null, errorCode: null, createdAt: T0, completedAt: T0, ...over,
  }
}

t.test('cost_usd converts to ledger units, rounding up', async (t) => {
  t.equal(upstreamCostUnits('0.000123'), 123_000n)
  t.equal(upstreamCostUnits('1'), 1_000_000_000n)
  t.equal(upstreamCostUnits('0.0000000001'), 1n, 'a tenth of a unit is one unit')
  t.equal(upstreamCostUnits('0.0000000010000000001'), 2n, 'anything above a unit rounds up')
  t.equal(upstreamCostUnits('0.000000002'), 2n, 'exact units stay exact')
  t.equal(upstreamCostUnits(String(1.5e-7)), 150n, 'the exponent form String() gives small numbers')
  t.equal(upstreamCostUnits('2.5E-10'), 1n)
  t.equal(upstreamCostUnits('1e3'), 1_000_000_000_000n)
  t.equal(upstreamCostUnits('0'), 0n)
  for (const bad of [undefined, '', '-0.1', 'abc', '0x10', '1.', 'NaN', 'Infinity', '1e999', '99999999999']) {
    t.equal(upstreamCostUnits(bad), undefined, `${bad} is not a cost`)
  }
})

forEachStore(t, (t, store) => {
  t.test('post with an upstream cost books charge and cost in one go; the ledger still sums to zero', async (t) => {
    const { ledger } = await setup(t, store)
    await reserve(ledger, 'req-1')
    const r = await ledger.post({ pendingId: 'reserve:req-1', id: 'post:req-1', amount: 400n, upstreamCost: { id: 'upstream:req-1', amount: 150n, meta: { cost_usd: '0.00000015' } } })
    t.equal(r.duplicate, false)
    t.match(await ledger.getTransfer('upstream:req-1'), {
      kind: 'upstream_cost', debitAccount: revenue, creditAccount: upstream, amount: 150n, reference: 'req-1', meta: { cost_usd: '0.00000015' },
      pendingId: null, state: null,
    })
    t.equal(await net(ledger, revenue), 250n, 'system:revenue nets to the margin')
    t.equal(await net(ledger, upstream), 150n)
    t.equal((await ledger.balance(alice)).available, 1_000_000n - 400n, 'the payer pays the charge, not the cost')
    t.equal((await ledger.totals()).sumOfAllAccounts, 0n)
    await ledger.checkInvariants()
  })

  t.test('a repeated post is a duplicate and books the cost once; another cost for it is refused', async (t) => {
    const { ledger } = await setup(t, store)
    await reserve(ledger, 'req-1')
    const input = { pendingId: 'reserve:req-1', id: 'post:req-1', amount: 400n, upstreamCost: { id: 'upstream:req-1', amount: 150n } }
    await ledger.post(input)
    const again = await ledger.post(input)
    t.equal(again.duplicate, true)
    t.equal(await net(ledger, upstream), 150n, 'booked once')
    await t.rejects(ledger.post({ ...input, upstreamCost: { id: 'upstream:req-1', amount: 151n } }), { code: 'LEDGER_TRANSFER_ID_CONFLICT', differs: ['amount'] })
    const same = await ledger.recordUpstreamCost({ pendingId: 'reserve:req-1', id: 'upstream:req-1', amount: 150n })
    t.equal(same.duplicate, true, 'recording it on its own again is a duplicate too')
    await t.rejects(ledger.recordUpstreamCost({ pendingId: 'reserve:req-1', id: 'upstream:other', amount: 150n }), { code: 'LEDGER_ARGUMENT_INVALID' },
      'a second cost for one request under another id')
    t.equal(await ledger.getTransfer('upstream:other'), null)
    t.equal(await net(ledger, upstream), 150n)
    await ledger.checkInvariants()
  })

  t.test('a post without a cost books none; a cost can follow on its own', async (t) => {
    const { ledger } = await setup(t, store)
    await reserve(ledger, 'req-1')
    await ledger.post({ pendingId: 'reserve:req-1', id: 'post:req-1', amount: 400n })
    t.equal(await net(ledger, upstream), 0n)
    t.equal(await net(ledger, revenue), 400n)
    const r = await ledger.recordUpstreamCost({ pendingId: 'reserve:req-1', id: 'upstream:req-1', amount: 90n })
    t.match(r, { duplicate: false, transfer: { kind: 'upstream_cost', reference: 'req-1', amount: 90n } })
    t.equal(await net(ledger, revenue), 310n)
    await t.rejects(ledger.recordUpstreamCost({ pendingId: 'reserve:nope', id: 'upstream:nope', amount: 1n }), { code: 'LEDGER_PENDING_NOT_FOUND' })
    await t.rejects(ledger.recordUpstreamCost({ pendingId: 'dep', id: 'upstream:dep', amount: 1n }), { code: 'LEDGER_PENDING_NOT_FOUND' }, 'a deposit is not a reservation')
    await ledger.checkInvariants()
  })

  t.test('a voided request still books the cost the enclave reported: the margin shows the loss', async (t) => {
    const { ledger } = await setup(t, store)
    await reserve(ledger, 'req-1')
    await ledger.void({ pendingId: 'reserve:req-1', id: 'void:req-1', reason: 'proof_unverified', upstreamCost: { id: 'upstream:req-1', amount: 70n } })
    t.equal((await ledger.balance(alice)).available, 1_000_000n, 'the payer is not charged')
    t.equal(await net(ledger, revenue), -70n, 'revenue nets negative')
    t.equal(await net(ledger, upstream), 70n)
    t.match(await ledger.getTransfer('reserve:req-1'), { state: 'voided' })
    await ledger.checkInvariants()
  })

  t.test('a post refused because the reservation expired still books the cost', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await reserve(ledger, 'req-1', 1000n, T0 + 1000)
    clock.now = T0 + 5000
    await t.rejects(ledger.post({ pendingId: 'reserve:req-1', id: 'post:req-1', amount: 400n, upstreamCost: { id: 'upstream:req-1', amount: 30n } }),
      { code: 'LEDGER_PENDING_RESOLVED' })
    t.match(await ledger.getTransfer('reserve:req-1'), { state: 'expired' })
    t.match(await ledger.getTransfer('upstream:req-1'), { amount: 30n })
    t.equal(await net(ledger, revenue), -30n)
    await ledger.checkInvariants()
  })

  t.test('a refused resolution books nothing, and bad costs are refused before anything moves', async (t) => {
    const { ledger } = await setup(t, store)
    await reserve(ledger, 'req-1')
    await ledger.post({ pendingId: 'reserve:req-1', id: 'post:req-1', amount: 400n })
    await t.rejects(ledger.void({ pendingId: 'reserve:req-1', id: 'void:req-1', reason: 'x', upstreamCost: { id: 'upstream:req-1', amount: 5n } }),
      { code: 'LEDGER_PENDING_RESOLVED' })
    t.equal(await ledger.getTransfer('upstream:req-1'), null, 'rolled back with the refused void')
    await reserve(ledger, 'req-2')
    for (const amount of [0n, -1n, 2n ** 63n]) {
      await t.rejects(ledger.post({ pendingId: 'reserve:req-2', id: 'post:req-2', amount: 1n, upstreamCost: { id: 'upstream:req-2', amount } }), { code: 'LEDGER_AMOUNT_INVALID' })
    }
    await t.rejects(ledger.post({ pendingId: 'reserve:req-2', id: 'post:req-2', amount: 1n, upstreamCost: { id: '', amount: 1n } }), { code: 'LEDGER_ARGUMENT_INVALID' })
    t.match(await ledger.getTransfer('reserve:req-2'), { state: 'pending' }, 'the reservation is untouched')
    t.equal(await net(ledger, upstream), 0n)
  })

  t.test('the schema pins the shape and the audit checks every upstream cost', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.deposit({ id: 'dep', account: alice, amount: 1000n, reference: 'n1' })
    await reserve(ledger, 'req-1')
    await ledger.post({ pendingId: 'reserve:req-1', id: 'post:req-1', amount: 400n, upstreamCost: { id: 'upstream:req-1', amount: 10n } })
    await ledger.checkInvariants()
    const raw = await db.raw()
    const insert = (id: string, kind: string, debit: string, credit: string, amount: number, reference: string | null) =>
      raw.run(`INSERT INTO transfers (id, kind, debit_account, credit_account, amount, reference, created_at)
        VALUES ('${id}', '${kind}', '${debit}', '${credit}', ${amount}, ${reference === null ? 'NULL' : `'${reference}'`}, 0)`)
    await reserve(ledger, 'req-2', 100n) // a request without a cost yet: only the shape can refuse these
    await t.rejects(insert('u1', 'upstream_cost', 'system:grants', upstream, 5, 'req-2'), /upstream_cost_shape/, 'only revenue → upstream_cost')
    await t.rejects(insert('u2', 'upstream_cost', revenue, upstream, 5, null), /upstream_cost_shape|needs its request/i, 'a reference is required')
    await t.rejects(insert('u3', 'upstream_cost', revenue, upstream, 0, 'req-2'), /CHECK|check constraint/i, 'positive')
    await t.rejects(insert('u4', 'upstream_cost', revenue, upstream, 5, 'no-such-request'), /needs its request/, 'a cost needs its reservation')
    await t.rejects(insert('u5', 'upstream_cost', revenue, upstream, 5, 'req-1'), /needs its request|unique|duplicate/i, 'once per request')
    await t.rejects(insert('u6', 'teleport', revenue, upstream, 5, 'req-1'), /CHECK|check constraint/i, 'kinds are still closed')
    await ledger.checkInvariants()
    // What the schema allows but the books must not contain: other kinds moving system:upstream_cost.
    await insert('sneak', 'grant', 'system:grants', upstream, 7, null)
    await t.rejects(ledger.checkInvariants(), { code: 'LEDGER_INVARIANT_BROKEN', message: /upstream costs without their request or out of shape: sneak/ })
  })

  t.test('margin() reports revenue and upstream cost per model over a window', async (t) => {
    const { ledger, clock } = await setup(t, store)
    const run = async (req: string, model: string | null, charge: bigint, cost: bigint | null, how: 'post' | 'void' = 'post') => {
      await reserve(ledger, req)
      if (model) await ledger.putReceipt(receipt(req, model, { chargedAmount: charge }))
      const upstreamCost = cost === null ? undefined : { id: `upstream:${req}`, amount: cost }
      if (how === 'post') await ledger.post({ pendingId: `reserve:${req}`, id: `post:${req}`, amount: charge, upstreamCost })
      else await ledger.void({ pendingId: `reserve:${req}`, id: `void:${req}`, reason: 'proof_unverified', upstreamCost })
    }
    clock.now = T0 - 10
    await run('early', 'm-a', 999n, 1n) // before the window
    clock.now = T0
    await run('a1', 'm-a', 400n, 100n)
    await run('a2', 'm-a', 300n, null)
    await run('a3', 'm-a', 0n, 50n, 'void')
    await run('b1', 'm-b', 10n, 30n)
    await run('x1', null, 5n, 2n)
    clock.now = T0 + 1000
    await run('late', 'm-b', 999n, 1n) // at the window's end: excluded
    const rows = await ledger.margin({ fromMs: T0, toMs: T0 + 1000 })
    t.same(rows, [
      { model: null, requests: 1, revenue: 5n, upstreamCost: 2n },
      { model: 'm-a', requests: 3, revenue: 700n, upstreamCost: 150n },
      { model: 'm-b', requests: 1, revenue: 10n, upstreamCost: 30n },
    ])
    const all = await ledger.margin({ fromMs: 0, toMs: T0 + 2000 })
    const sum = all.reduce((a, r) => ({ revenue: a.revenue + r.revenue, cost: a.cost + r.upstreamCost }), { revenue: 0n, cost: 0n })
    t.equal(sum.cost, await net(ledger, upstream), 'over all time the report equals system:upstream_cost')
    t.equal(sum.revenue - sum.cost, await net(ledger, revenue), 'and its margin equals what system:revenue nets to')
    t.same(await ledger.margin({ fromMs: T0 + 5000, toMs: T0 + 6000 }), [])
    await ledger.checkInvariants()
  })
})
