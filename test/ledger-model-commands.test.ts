import { deepStrictEqual, equal, ok } from 'node:assert/strict'
import fc from 'fast-check'
import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import { forEachStore } from './helpers/ledger-stores.ts'

// Model-based ledger test with fast-check commands: sequences of deposits, grants, clawbacks,
// reservations, posts, voids, time passing, expiry sweeps, idempotent retries and concurrent
// interleavings (racing reservations, a post racing a void, the same deposit sent three times at
// once) run against the real store (SQLite and PostgreSQL) and a small in-memory model. Every reply
// must match the model, and after every command each payer's balance matches, the ledger sums to
// zero and passes its own audit.
//
// A failure prints fast-check's seed and path; replay it with
//   LEDGER_MODEL_SEED=<seed> LEDGER_MODEL_PATH=<path> npx tap test/ledger-model-commands.test.ts
// LEDGER_MODEL_RUNS=<n> sets the number of sequences (long runs), LEDGER_MODEL_SHRINK=1 shrinks a
// failure to a minimal sequence (slow on PostgreSQL: every replay opens a fresh database).

const T0 = 1_700_000_000_000
const PAYERS = [1, 2, 3].map((i) => payerAccount(8453, '0x' + String(i).repeat(40)))

interface Pending { id: string, account: string, amount: bigint, timeoutAt: number, state: 'pending' | 'posted' | 'voided' | 'expired' }

class Model {
  now = T0
  next = 0
  posted = new Map<string, bigint>(PAYERS.map((p) => [p, 0n]))
  pendings: Pending[] = []
  /** Operations that succeeded, replayable with the same id: a retry must be a duplicate. */
  retries: Array<(l: LedgerStore) => Promise<boolean>> = []

  id (prefix: string): string { return `${prefix}${this.next++}` }
  held (account: string): bigint {
    return this.pendings.reduce((s, p) => s + (p.account === account && p.state === 'pending' ? p.amount : 0n), 0n)
  }

  available (account: string): bigint { return this.posted.get(account)! - this.held(account) }
  overdue (account: string): Pending[] { return this.pendings.filter((p) => p.account === account && p.state === 'pending' && p.timeoutAt <= this.now) }
  expireOverdue (account: string): void { for (const p of this.overdue(account)) p.state = 'expired' }
  move (account: string, delta: bigint): void { this.posted.set(account, this.posted.get(account)! + delta) }
}

interface Real { ledger: LedgerStore, clock: { now: number } }
type Cmd = fc.AsyncCommand<Model, Real>

async function outcome (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    const e = err as { code?: string, state?: string }
    if (!e.code) throw err
    return e.code + (e.state ? `:${e.state}` : '')
  }
}

/** The checks after every command: balances, zero sum, open reservations, the store's own audit. */
async function invariants (m: Model, r: Real): Promise<void> {
  for (const p of PAYERS) {
    const b = await r.ledger.balance(p)
    deepStrictEqual({ available: b.available, held: b.debitsPending }, { available: m.available(p), held: m.held(p) }, `balance of ${p}`)
    ok(b.available >= 0n, 'a payer never goes below zero')
  }
  const open = m.pendings.filter((p) => p.state === 'pending').length
  deepStrictEqual(await r.ledger.totals(), { sumOfAllAccounts: 0n, pendingCount: open }, 'ledger totals')
  await r.ledger.checkInvariants()
}

const payer = fc.constantFrom(...PAYERS)
const amount = fc.bigInt({ min: 1n, max: 300n })

class Deposit implements Cmd {
  constructor (readonly account: string, readonly amount: bigint, readonly kind: 'deposit' | 'grant') {}
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    const id = m.id(this.kind[0])
    const call = (l: LedgerStore) => this.kind === 'deposit'
      ? l.deposit({ id, account: this.account, amount: this.amount, reference: 'model' })
      : l.grant({ id, account: this.account, amount: this.amount, reason: 'model' })
    equal((await call(r.ledger)).duplicate, false)
    m.move(this.account, this.amount)
    m.retries.push(async (l) => (await call(l)).duplicate)
    await invariants(m, r)
  }

  toString (): string { return `${this.kind}(${this.account.slice(-4)}, ${this.amount})` }
}

class Clawback implements Cmd {
  constructor (readonly account: string, readonly amount: bigint) {}
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    const id = m.id('c')
    const input = { id, account: this.account, amount: this.amount, reason: 'model' }
    const want = this.amount <= m.available(this.account) ? 'ok' : 'LEDGER_INSUFFICIENT_CREDIT'
    equal(await outcome(r.ledger.clawback(input)), want, 'clawback')
    if (want === 'ok') {
      m.move(this.account, -this.amount)
      m.retries.push(async (l) => (await l.clawback(input)).duplicate)
    }
    await invariants(m, r)
  }

  toString (): string { return `clawback(${this.account.slice(-4)}, ${this.amount})` }
}

class Reserve implements Cmd {
  constructor (readonly account: string, readonly amount: bigint, readonly ttl: number) {}
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    const input = { id: m.id('p'), account: this.account, amount: this.amount, timeoutAt: m.now + this.ttl, reference: 'model' }
    // A reserve that would be refused first expires the payer's overdue reservations.
    if (this.amount > m.available(this.account)) m.expireOverdue(this.account)
    const avail = m.available(this.account)
    const res = await r.ledger.reserve(input)
    if (this.amount <= avail) {
      ok(res.ok && !res.duplicate, `reserve ${this.amount} of ${avail} is accepted`)
      m.pendings.push({ id: input.id, account: this.account, amount: this.amount, timeoutAt: input.timeoutAt, state: 'pending' })
      m.retries.push(async (l) => { const x = await l.reserve(input); return x.ok && x.duplicate })
    } else {
      deepStrictEqual(res, { ok: false, code: 'insufficient_credit', available: avail })
    }
    await invariants(m, r)
  }

  toString (): string { return `reserve(${this.account.slice(-4)}, ${this.amount}, ttl ${this.ttl})` }
}

/** What resolving pending p should answer now, by the model; marks an overdue pending expired. */
function expectedResolution (m: Model, p: Pending, postAmount?: bigint): string {
  if (p.state !== 'pending') return `LEDGER_PENDING_RESOLVED:${p.state}`
  if (p.timeoutAt <= m.now) { p.state = 'expired'; return 'LEDGER_PENDING_RESOLVED:expired' }
  if (postAmount !== undefined && postAmount > p.amount) return 'LEDGER_POST_EXCEEDS_PENDING'
  return 'ok'
}

class Resolve implements Cmd {
  constructor (readonly pick: number, readonly post: boolean, readonly fraction: number) {}
  check (m: Model): boolean { return m.pendings.length > 0 }
  async run (m: Model, r: Real): Promise<void> {
    const p = m.pendings[this.pick % m.pendings.length]
    // From nothing to a little over the reservation (which must be refused).
    const postAmount = (p.amount * BigInt(this.fraction)) / 100n
    const id = m.id(this.post ? 'o' : 'v')
    const call = (l: LedgerStore) => this.post ? l.post({ pendingId: p.id, id, amount: postAmount }) : l.void({ pendingId: p.id, id, reason: 'model' })
    const want = expectedResolution(m, p, this.post ? postAmount : undefined)
    equal(await outcome(call(r.ledger)), want, `${this.post ? 'post' : 'void'} ${p.id}`)
    if (want === 'ok') {
      p.state = this.post ? 'posted' : 'voided'
      if (this.post) m.move(p.account, -postAmount)
      m.retries.push(async (l) => (await call(l)).duplicate)
    }
    await invariants(m, r)
  }

  toString (): string { return `${this.post ? 'post' : 'void'}(#${this.pick}, ${this.fraction}%)` }
}

class Advance implements Cmd {
  constructor (readonly ms: number) {}
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    // Time passes without a sweep: post and void must still treat overdue reservations as expired.
    m.now += this.ms
    r.clock.now = m.now
    await invariants(m, r)
  }

  toString (): string { return `advance(${this.ms} ms)` }
}

class Expire implements Cmd {
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    const due = m.pendings.filter((p) => p.state === 'pending' && p.timeoutAt <= m.now)
    equal(await r.ledger.expirePending(m.now), due.length, 'expired by the sweep')
    for (const p of due) p.state = 'expired'
    await invariants(m, r)
  }

  toString (): string { return 'expire()' }
}

class Retry implements Cmd {
  constructor (readonly pick: number) {}
  check (m: Model): boolean { return m.retries.length > 0 }
  async run (m: Model, r: Real): Promise<void> {
    equal(await m.retries[this.pick % m.retries.length](r.ledger), true, 'a retry with the same id is a duplicate')
    await invariants(m, r)
  }

  toString (): string { return `retry(#${this.pick})` }
}

class RacingReserves implements Cmd {
  constructor (readonly account: string, readonly amounts: bigint[]) {}
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    const overdue = m.overdue(this.account)
    const inputs = this.amounts.map((amount) => ({ id: m.id('p'), account: this.account, amount, timeoutAt: m.now + 60_000, reference: 'race' }))
    const results = await Promise.all(inputs.map((i) => r.ledger.reserve(i)))
    // Whether a refused reserve expired the overdue reservations depends on the interleaving:
    // read it from the store, then check the batch against the credit that was there to take.
    for (const p of overdue) if ((await r.ledger.getTransfer(p.id))?.state === 'expired') p.state = 'expired'
    const before = m.available(this.account)
    // Any serial order is a valid outcome; what must hold is that the accepted ones fit together,
    // and that every refused one did not fit in what was left (availability only falls here).
    let accepted = 0n
    results.forEach((res, n) => {
      if (res.ok) {
        accepted += inputs[n].amount
        m.pendings.push({ id: inputs[n].id, account: this.account, amount: inputs[n].amount, timeoutAt: inputs[n].timeoutAt, state: 'pending' })
      } else {
        equal(res.code, 'insufficient_credit')
      }
    })
    ok(accepted <= before, `accepted ${accepted} of ${before} available`)
    results.forEach((res, n) => {
      if (!res.ok) ok(inputs[n].amount > before - accepted, `refused ${inputs[n].amount} while ${before - accepted} was left`)
    })
    await invariants(m, r)
  }

  toString (): string { return `racingReserves(${this.account.slice(-4)}, [${this.amounts.join(', ')}])` }
}

class PostRacesVoid implements Cmd {
  constructor (readonly pick: number, readonly fraction: number) {}
  check (m: Model): boolean { return m.pendings.length > 0 }
  async run (m: Model, r: Real): Promise<void> {
    const p = m.pendings[this.pick % m.pendings.length]
    const postAmount = (p.amount * BigInt(this.fraction)) / 100n
    const want = expectedResolution(m, p)
    const [posted, voided] = await Promise.all([
      outcome(r.ledger.post({ pendingId: p.id, id: m.id('o'), amount: postAmount })),
      outcome(r.ledger.void({ pendingId: p.id, id: m.id('v'), reason: 'race' })),
    ])
    if (want !== 'ok') {
      deepStrictEqual([posted, voided], [want, want], 'both refused alike')
    } else {
      // Exactly one wins; the loser sees the winner's resolution.
      ok((posted === 'ok') !== (voided === 'ok'), `exactly one of post (${posted}) and void (${voided}) wins`)
      if (posted === 'ok') {
        equal(voided, 'LEDGER_PENDING_RESOLVED:posted')
        p.state = 'posted'
        m.move(p.account, -postAmount)
      } else {
        equal(posted, 'LEDGER_PENDING_RESOLVED:voided')
        p.state = 'voided'
      }
    }
    await invariants(m, r)
  }

  toString (): string { return `postRacesVoid(#${this.pick}, ${this.fraction}%)` }
}

class SameDepositThrice implements Cmd {
  constructor (readonly account: string, readonly amount: bigint) {}
  check (): boolean { return true }
  async run (m: Model, r: Real): Promise<void> {
    const input = { id: m.id('d'), account: this.account, amount: this.amount, reference: 'race' }
    const results = await Promise.all([1, 2, 3].map(() => r.ledger.deposit(input)))
    equal(results.filter((x) => !x.duplicate).length, 1, 'one deposit, two duplicates')
    m.move(this.account, this.amount)
    await invariants(m, r)
  }

  toString (): string { return `sameDepositThrice(${this.account.slice(-4)}, ${this.amount})` }
}

const commands = [
  fc.tuple(payer, amount).map(([a, n]) => new Deposit(a, n, 'deposit')),
  fc.tuple(payer, amount).map(([a, n]) => new Deposit(a, n, 'grant')),
  fc.tuple(payer, amount).map(([a, n]) => new Clawback(a, n)),
  fc.tuple(payer, amount, fc.integer({ min: 1, max: 5000 })).map(([a, n, ttl]) => new Reserve(a, n, ttl)),
  fc.tuple(payer, amount, fc.integer({ min: 1, max: 5000 })).map(([a, n, ttl]) => new Reserve(a, n, ttl)),
  fc.tuple(fc.nat(), fc.boolean(), fc.integer({ min: 0, max: 110 })).map(([i, post, f]) => new Resolve(i, post, f)),
  fc.tuple(fc.nat(), fc.boolean(), fc.integer({ min: 0, max: 110 })).map(([i, post, f]) => new Resolve(i, post, f)),
  fc.integer({ min: 1, max: 3000 }).map((ms) => new Advance(ms)),
  fc.constant(new Expire()),
  fc.nat().map((i) => new Retry(i)),
  fc.tuple(payer, fc.array(amount, { minLength: 2, maxLength: 6 })).map(([a, ns]) => new RacingReserves(a, ns)),
  fc.tuple(fc.nat(), fc.integer({ min: 0, max: 100 })).map(([i, f]) => new PostRacesVoid(i, f)),
  fc.tuple(payer, amount).map(([a, n]) => new SameDepositThrice(a, n)),
]

function envInt (name: string): number | undefined {
  const v = process.env[name]
  if (v === undefined) return undefined
  const n = Number(v)
  if (!Number.isInteger(n)) throw new Error(`${name} must be an integer`)
  return n
}

forEachStore(t, (t, store) => {
  const seed = envInt('LEDGER_MODEL_SEED') ?? (store.kind === 'sqlite' ? 20261127 : 20261128)
  const numRuns = envInt('LEDGER_MODEL_RUNS') ?? (store.kind === 'sqlite' ? 60 : 12)
  const maxCommands = store.kind === 'sqlite' ? 60 : 35
  t.test(`${numRuns} command sequences of up to ${maxCommands}`, async (t) => {
    t.comment(`seed=${seed} (LEDGER_MODEL_SEED=${seed} LEDGER_MODEL_RUNS=${numRuns} to replay)`)
    let sequences = 0
    let steps = 0
    const property = fc.asyncProperty(fc.commands(commands, { maxCommands, size: 'max' }), async (cmds) => {
      sequences++
      const clock = { now: T0 }
      const ledger = await store.open(t, { clock: () => clock.now, poolSize: 4 })
      await fc.asyncModelRun(async () => ({ model: new Model(), real: { ledger, clock } }), cmds)
      steps += [...cmds].length
    })
    const details = await fc.check(property, {
      seed,
      numRuns,
      path: process.env.LEDGER_MODEL_PATH,
      endOnFailure: process.env.LEDGER_MODEL_SHRINK !== '1',
    })
    if (details.failed) {
      t.fail(`failed with seed=${details.seed} path=${details.counterexamplePath}\n` +
        `replay: LEDGER_MODEL_SEED=${details.seed} LEDGER_MODEL_PATH=${details.counterexamplePath} npx tap test/ledger-model-commands.test.ts\n` +
        `sequence: ${String(details.counterexample?.[0])}\n` +
        `error: ${String((details.errorInstance as Error | undefined)?.message ?? details.errorInstance)}`)
    } else {
      t.pass(`${details.numRuns} sequences passed (${sequences} run, ${steps} commands, invariants checked after each)`)
    }
  })
})
