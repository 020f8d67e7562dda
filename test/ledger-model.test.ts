import t, { type Test } from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// Model-based test in the TigerBeetle manner: random operation sequences run against the real store
// and against a few lines of reference model; every answer and every balance must agree, and the
// ledger must sum to zero and pass its own audit at the end. Both stores run the same seeds; the
// PostgreSQL runs are shorter (every step is a few network round trips).

const T0 = 1_700_000_000_000
const payers = [1, 2, 3].map((i) => payerAccount(8453, '0x' + String(i).repeat(40)))

function prng (seed: number): (n: number) => number {
  let a = seed >>> 0
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return (((x ^ (x >>> 14)) >>> 0) % n)
  }
}

interface ModelPending { account: string, amount: bigint, timeoutAt: number, state: 'pending' | 'posted' | 'voided' | 'expired' }

class Model {
  posted = new Map<string, bigint>(payers.map((p) => [p, 0n]))
  pendings = new Map<string, ModelPending>()
  held (account: string): bigint {
    let sum = 0n
    for (const p of this.pendings.values()) if (p.account === account && p.state === 'pending') sum += p.amount
    return sum
  }

  available (account: string): bigint { return this.posted.get(account)! - this.held(account) }
  move (account: string, delta: bigint): void { this.posted.set(account, this.posted.get(account)! + delta) }
}

async function codeOf (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    return (err as { code: string }).code + ((err as { state?: string }).state ? `:${(err as { state: string }).state}` : '')
  }
}

async function run (t: Test, store: StoreFixture, seed: number, steps: number): Promise<void> {
  const r = prng(seed)
  const clock = { now: T0 }
  const ledger: LedgerStore = await store.open(t, { clock: () => clock.now })
  const m = new Model()
  const done: Array<() => Promise<boolean>> = []
  let n = 0
  const pick = <T>(xs: T[]): T => xs[r(xs.length)]
  const amount = (): bigint => BigInt(1 + r(200))

  for (let step = 0; step < steps; step++) {
    const account = pick(payers)
    const id = `t${n++}`
    const op = r(100)
    const at = `seed ${seed} step ${step}`
    if (op < 15) {
      const input = { id, account, amount: amount(), reference: 'ref' }
      await ledger.deposit(input)
      m.move(account, input.amount)
      done.push(async () => (await ledger.deposit(input)).duplicate)
    } else if (op < 22) {
      const input = { id, account, amount: amount(), reason: 'promo' }
      await ledger.grant(input)
      m.move(account, input.amount)
      done.push(async () => (await ledger.grant(input)).duplicate)
    } else if (op < 30) {
      const input = { id, account, amount: amount(), reason: 'abuse' }
      const expect = input.amount <= m.available(account) ? 'ok' : 'LEDGER_INSUFFICIENT_CREDIT'
      t.equal(await codeOf(ledger.clawback(input)), expect, `${at} clawback`)
      if (expect === 'ok') {
        m.move(account, -input.amount)
        done.push(async () => (await ledger.clawback(input)).duplicate)
      }
    } else if (op < 55) {
      const input = { id, account, amount: amount(), timeoutAt: clock.now + 1 + r(5000), reference: 'req' }
      // A reserve that would be refused first expires the payer's overdue reservations.
      if (input.amount > m.available(account)) {
        for (const p of m.pendings.values()) if (p.account === account && p.state === 'pending' && p.timeoutAt <= clock.now) p.state = 'expired'
      }
      const avail = m.available(account)
      const res = await ledger.reserve(input)
      if (input.amount <= avail) {
        t.match(res, { ok: true, duplicate: false }, `${at} reserve`)
        m.pendings.set(id, { account, amount: input.amount, timeoutAt: input.timeoutAt, state: 'pending' })
        done.push(async () => { const x = await ledger.reserve(input); return x.ok && x.duplicate })
      } else {
        t.same(res, { ok: false, code: 'insufficient_credit', available: avail }, `${at} reserve refused`)
      }
    } else if (op < 80 && m.pendings.size > 0) {
      const pendingId = pick([...m.pendings.keys()])
      const p = m.pendings.get(pendingId)!
      const isPost = op < 70
      const postAmount = BigInt(r(Number(p.amount) + 20))
      let expect = 'ok'
      if (p.state !== 'pending') expect = `LEDGER_PENDING_RESOLVED:${p.state}`
      else if (p.timeoutAt <= clock.now) { expect = 'LEDGER_PENDING_RESOLVED:expired'; p.state = 'expired' }
      else if (isPost && postAmount > p.amount) expect = 'LEDGER_POST_EXCEEDS_PENDING'
      const call = () => isPost ? ledger.post({ pendingId, id, amount: postAmount }) : ledger.void({ pendingId, id, reason: 'r' })
      t.equal(await codeOf(call()), expect, `${at} ${isPost ? 'post' : 'void'} ${pendingId}`)
      if (expect === 'ok') {
        p.state = isPost ? 'posted' : 'voided'
        if (isPost) m.move(p.account, -postAmount)
        done.push(async () => (await call()).duplicate)
      }
    } else if (op < 85) {
      // Time passes without a sweep: post/void must still treat overdue pendings as expired.
      clock.now += r(3000)
    } else if (op < 90) {
      const due = [...m.pendings.values()].filter((p) => p.state === 'pending' && p.timeoutAt <= clock.now)
      t.equal(await ledger.expirePending(clock.now), due.length, `${at} expire`)
      for (const p of due) p.state = 'expired'
    } else if (done.length > 0) {
      t.equal(await pick(done)(), true, `${at} retry is a duplicate`)
    }
    for (const p of payers) {
      const b = await ledger.balance(p)
      if (b.available !== m.available(p) || b.debitsPending !== m.held(p)) {
        t.fail(`${at}: ${p} store ${b.available}/${b.debitsPending} model ${m.available(p)}/${m.held(p)}`)
      }
    }
  }
  const open = [...m.pendings.values()].filter((p) => p.state === 'pending').length
  t.same(await ledger.totals(), { sumOfAllAccounts: 0n, pendingCount: open }, `seed ${seed} totals`)
  await t.resolves(ledger.checkInvariants(), `seed ${seed} audit`)
}

forEachStore(t, (t, store) => {
  for (const seed of [1, 2, 3, 42, 2024]) {
    const steps = store.kind === 'sqlite' ? 400 : 150
    t.test(`random sequence, seed ${seed}, ${steps} steps`, (t) => run(t, store, seed, steps))
  }
})
