import type Database from 'better-sqlite3'
import { LedgerArgumentInvalid, PendingAlreadyResolved, PendingNotFound, PostExceedsPending, TransferIdConflict } from './errors.ts'
import { SYSTEM_ACCOUNTS } from './accounts.ts'
import { canonicalMeta, type CheckedUpstreamCost } from './validate.ts'
import type { Balance, PendingState, Transfer, TransferKind, TransferResult } from './types.ts'

// Synchronous building blocks that run inside a transaction opened by the caller. The store wraps
// each public operation in exactly one IMMEDIATE transaction, so the read-then-write below is not a
// race: the write lock is held from the first read.

export interface TransferRow {
  id: string
  kind: TransferKind
  debit_account: string
  credit_account: string
  amount: bigint
  pending_id: string | null
  state: PendingState | null
  timeout_at: bigint | null
  reference: string | null
  meta: string | null
  created_at: bigint
}

export interface NewTransfer {
  id: string
  kind: TransferKind
  debitAccount: string
  creditAccount: string
  amount: bigint
  pendingId?: string
  timeoutAt?: number
  reference?: string
  meta?: string | null
}

/** The fields a retry must repeat exactly to count as the same request. */
export type Fingerprint = Partial<Pick<NewTransfer, 'kind' | 'debitAccount' | 'creditAccount' | 'amount' | 'pendingId' | 'timeoutAt' | 'reference' | 'meta'>>

const COLUMNS = 'id, kind, debit_account, credit_account, amount, pending_id, state, timeout_at, reference, meta, created_at'

export function toTransfer (r: TransferRow): Transfer {
  return {
    id: r.id,
    kind: r.kind,
    debitAccount: r.debit_account,
    creditAccount: r.credit_account,
    amount: r.amount,
    pendingId: r.pending_id,
    state: r.state,
    timeoutAt: r.timeout_at === null ? null : Number(r.timeout_at),
    reference: r.reference,
    meta: r.meta === null ? null : JSON.parse(r.meta),
    createdAt: Number(r.created_at),
  }
}

export class TransferEngine {
  private readonly byId: Database.Statement
  private readonly insert: Database.Statement
  private readonly account: Database.Statement
  private readonly byAccount: Database.Statement
  private readonly due: Database.Statement

  constructor (readonly db: Database.Database, readonly clock: () => number) {
    this.byId = db.prepare(`SELECT ${COLUMNS} FROM transfers WHERE id = ?`)
    this.insert = db.prepare(`INSERT INTO transfers (${COLUMNS})
      VALUES (@id, @kind, @debitAccount, @creditAccount, @amount, @pendingId, @state, @timeoutAt, @reference, @meta, @createdAt)`)
    this.account = db.prepare('SELECT credits_posted, debits_posted, debits_pending FROM accounts WHERE id = ?')
    this.byAccount = db.prepare(`SELECT * FROM (
        SELECT seq, ${COLUMNS} FROM transfers WHERE debit_account = @a
        UNION ALL SELECT seq, ${COLUMNS} FROM transfers WHERE credit_account = @a
      ) ORDER BY seq DESC LIMIT @limit`)
    this.due = db.prepare(`SELECT ${COLUMNS} FROM transfers WHERE state = 'pending' AND timeout_at <= ? ORDER BY timeout_at, seq`)
    this.dueOfAccount = db.prepare(`SELECT ${COLUMNS} FROM transfers
      WHERE debit_account = ? AND state = 'pending' AND timeout_at <= ? ORDER BY timeout_at, seq`)
  }

  private readonly dueOfAccount: Database.Statement

  /** One payer's open pendings due at now (what a refused reserve expires before deciding again). */
  dueFor (account: string, now: number): Transfer[] {
    return (this.dueOfAccount.all(account, BigInt(now)) as TransferRow[]).map(toTransfer)
  }

  get (id: string): Transfer | null {
    const row = this.byId.get(id) as TransferRow | undefined
    return row ? toTransfer(row) : null
  }

  balance (account: string): Balance {
    const r = this.account.get(account) as { credits_posted: bigint, debits_posted: bigint, debits_pending: bigint } | undefined
    const creditsPosted = r?.credits_posted ?? 0n
    const debitsPosted = r?.debits_posted ?? 0n
    const debitsPending = r?.debits_pending ?? 0n
    return { account, creditsPosted, debitsPosted, debitsPending, available: creditsPosted - debitsPosted - debitsPending }
  }

  list (account: string, limit: number): Transfer[] {
    return (this.byAccount.all({ a: account, limit: BigInt(limit) }) as TransferRow[]).map(toTransfer)
  }

  dueBefore (now: number): Transfer[] {
    return (this.due.all(BigInt(now)) as TransferRow[]).map(toTransfer)
  }

  /**
   * Returns the earlier transfer when this id was already used for the same request, throws when it
   * was used for a different one, and returns null when the id is new.
   */
  existing (id: string, expected: Fingerprint): TransferResult | null {
    const found = this.get(id)
    if (!found) return null
    const differs: string[] = []
    const actual: Fingerprint = {
      kind: found.kind,
      debitAccount: found.debitAccount,
      creditAccount: found.creditAccount,
      amount: found.amount,
      pendingId: found.pendingId ?? undefined,
      timeoutAt: found.timeoutAt ?? undefined,
      reference: found.reference ?? undefined,
      meta: canonicalMeta(found.meta),
    }
    for (const key of Object.keys(expected) as (keyof Fingerprint)[]) {
      if (actual[key] !== expected[key]) differs.push(key)
    }
    if (differs.length > 0) throw new TransferIdConflict(id, differs)
    return { transfer: found, duplicate: true }
  }

  /** Appends one transfer; the schema's triggers apply it to both accounts in the same statement. */
  append (t: NewTransfer): Transfer {
    this.insert.run({
      id: t.id,
      kind: t.kind,
      debitAccount: t.debitAccount,
      creditAccount: t.creditAccount,
      amount: t.amount,
      pendingId: t.pendingId ?? null,
      state: t.kind === 'pending' ? 'pending' : null,
      timeoutAt: t.timeoutAt === undefined ? null : BigInt(t.timeoutAt),
      reference: t.reference ?? null,
      meta: t.meta ?? null,
      createdAt: BigInt(this.clock()),
    })
    return this.get(t.id)!
  }

  /** Idempotent single-phase transfer (deposit, grant, clawback). */
  postSimple (t: NewTransfer): TransferResult {
    const { id, ...fingerprint } = t
    const seen = this.existing(id, { ...fingerprint, meta: t.meta ?? null })
    return seen ?? { transfer: this.append(t), duplicate: false }
  }

  /**
   * Loads a pending transfer that is still open. One past its timeout is expired here rather than
   * resolved, so that post/void give the same answer whether or not the sweep has run; the caller
   * commits that expiry and then reports it.
   */
  openPending (pendingId: string): { pending: Transfer } | { expiredNow: true } {
    const p = this.get(pendingId)
    if (!p || p.kind !== 'pending') throw new PendingNotFound(pendingId)
    if (p.state !== 'pending') throw new PendingAlreadyResolved(pendingId, p.state as 'posted' | 'voided' | 'expired')
    if (p.timeoutAt !== null && p.timeoutAt <= this.clock()) {
      this.expire(p)
      return { expiredNow: true }
    }
    return { pending: p }
  }

  resolve (kind: 'post' | 'void', id: string, pending: Transfer, amount: bigint, meta: string | null): Transfer {
    if (amount > pending.amount) throw new PostExceedsPending(pending.id, pending.amount, amount)
    return this.append({
      id,
      kind,
      debitAccount: pending.debitAccount,
      creditAccount: pending.creditAccount,
      amount,
      pendingId: pending.id,
      meta,
    })
  }

  /**
   * A request's upstream cost, referenced by its reservation's reference (the request id).
   * Idempotent on id; another id for a request that already has one is refused.
   */
  upstreamCost (pending: Transfer, u: CheckedUpstreamCost): TransferResult {
    const { id, ...fingerprint } = upstreamCostTransfer(pending, u)
    const t = { id, ...fingerprint }
    const seen = this.existing(id, { ...fingerprint, meta: t.meta ?? null })
    if (seen) return seen
    const other = this.upstreamByReference.get(t.reference) as { id: string } | undefined
    if (other) throw new LedgerArgumentInvalid('upstreamCost.id', `differs from ${other.id}, the upstream cost already recorded for ${t.reference}`)
    return { transfer: this.append(t), duplicate: false }
  }

  private get upstreamByReference (): Database.Statement {
    this.upstreamStmt ??= this.db.prepare("SELECT id FROM transfers WHERE kind = 'upstream_cost' AND reference = ?")
    return this.upstreamStmt
  }

  private upstreamStmt: Database.Statement | undefined

  /** Expiry ids derive from the pending id, so a retried sweep can never expire the same pending twice. */
  expire (pending: Transfer): Transfer {
    return this.append({
      id: `expire:${pending.id}`,
      kind: 'expire',
      debitAccount: pending.debitAccount,
      creditAccount: pending.creditAccount,
      amount: pending.amount,
      pendingId: pending.id,
    })
  }
}

/** The upstream_cost transfer for a reservation: system:revenue → system:upstream_cost, referenced by the request. */
export function upstreamCostTransfer (pending: Transfer, u: CheckedUpstreamCost): NewTransfer & { reference: string } {
  return {
    id: u.id,
    kind: 'upstream_cost',
    debitAccount: SYSTEM_ACCOUNTS.revenue,
    creditAccount: SYSTEM_ACCOUNTS.upstreamCost,
    amount: u.amount,
    reference: pending.reference ?? pending.id,
    meta: u.meta,
  }
}
