import type pg from 'pg'
import { LedgerArgumentInvalid, PendingAlreadyResolved, PendingNotFound, PostExceedsPending, TransferIdConflict } from './errors.ts'
import { big, type Db, num, numOrNull, q } from './postgres-db.ts'
import { upstreamCostTransfer, type Fingerprint, type NewTransfer } from './sqlite-transfers.ts'
import { canonicalMeta, type CheckedUpstreamCost } from './validate.ts'
import type { Balance, PendingState, Transfer, TransferKind, TransferResult } from './types.ts'

// The transfer building blocks of the PostgreSQL store, mirroring sqlite-transfers.ts. Each runs on
// the connection of the caller's transaction; the ones that decide on rows they do not write lock
// those rows first (see postgres-db.ts for the lock order).

export interface PgTransferRow {
  id: string
  kind: TransferKind
  debit_account: string
  credit_account: string
  amount: string
  pending_id: string | null
  state: PendingState | null
  timeout_at: string | null
  reference: string | null
  meta: string | null
  created_at: string
}

export const TRANSFER_COLUMNS = 'id, kind, debit_account, credit_account, amount, pending_id, state, timeout_at, reference, meta, created_at'
const INSERT = `INSERT INTO transfers (${TRANSFER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`

export function toTransfer (r: PgTransferRow): Transfer {
  return {
    id: r.id,
    kind: r.kind,
    debitAccount: r.debit_account,
    creditAccount: r.credit_account,
    amount: big(r.amount),
    pendingId: r.pending_id,
    state: r.state,
    timeoutAt: numOrNull(r.timeout_at),
    reference: r.reference,
    meta: r.meta === null ? null : JSON.parse(r.meta),
    createdAt: num(r.created_at),
  }
}

interface AccountRow { credits_posted: string, debits_posted: string, debits_pending: string }

export function toBalance (account: string, r: AccountRow | undefined): Balance {
  const creditsPosted = r ? big(r.credits_posted) : 0n
  const debitsPosted = r ? big(r.debits_posted) : 0n
  const debitsPending = r ? big(r.debits_pending) : 0n
  return { account, creditsPosted, debitsPosted, debitsPending, available: creditsPosted - debitsPosted - debitsPending }
}

/**
 * The earlier transfer when this id was already used for the same request (a duplicate), a throw
 * when it was used for a different one, null when the id is new.
 */
export function sameRequest (id: string, found: Transfer | null, expected: Fingerprint): TransferResult | null {
  if (!found) return null
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
  const differs = (Object.keys(expected) as (keyof Fingerprint)[]).filter((key) => actual[key] !== expected[key])
  if (differs.length > 0) throw new TransferIdConflict(id, differs)
  return { transfer: found, duplicate: true }
}

export class PgTransfers {
  constructor (private readonly clock: () => number) {}

  async get (db: Db, id: string, { lock = false } = {}): Promise<Transfer | null> {
    const r = await q<PgTransferRow>(db, `SELECT ${TRANSFER_COLUMNS} FROM transfers WHERE id = $1${lock ? ' FOR NO KEY UPDATE' : ''}`, [id])
    return r.rows[0] ? toTransfer(r.rows[0]) : null
  }

  async balance (db: Db, account: string): Promise<Balance> {
    const r = await q<AccountRow>(db, 'SELECT credits_posted, debits_posted, debits_pending FROM accounts WHERE id = $1', [account])
    return toBalance(account, r.rows[0])
  }

  /**
   * Locks the account row (if it exists) until the transaction ends and returns its balance. NO KEY
   * UPDATE, like the balance trigger's own UPDATE: it does not block foreign-key checks.
   */
  async lockAccount (c: pg.PoolClient, account: string): Promise<Balance> {
    const r = await q<AccountRow>(c, 'SELECT credits_posted, debits_posted, debits_pending FROM accounts WHERE id = $1 FOR NO KEY UPDATE', [account])
    return toBalance(account, r.rows[0])
  }

  /** Locks several account rows, in id order (the order every transaction uses). */
  async lockAccounts (c: pg.PoolClient, accounts: string[]): Promise<void> {
    if (accounts.length === 0) return
    await q(c, 'SELECT id FROM accounts WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE', [[...new Set(accounts)].sort()])
  }

  async list (db: Db, account: string, limit: number): Promise<Transfer[]> {
    const r = await q<PgTransferRow>(db, `
      (SELECT seq, ${TRANSFER_COLUMNS} FROM transfers WHERE debit_account = $1 ORDER BY seq DESC LIMIT $2)
      UNION ALL
      (SELECT seq, ${TRANSFER_COLUMNS} FROM transfers WHERE credit_account = $1 ORDER BY seq DESC LIMIT $2)
      ORDER BY seq DESC LIMIT $2`, [account, limit])
    return r.rows.map(toTransfer)
  }

  /** The open pendings due at now, locked (a concurrent resolution drops out once it commits). */
  async dueBefore (c: pg.PoolClient, now: number): Promise<Transfer[]> {
    const r = await q<PgTransferRow>(c, `SELECT ${TRANSFER_COLUMNS} FROM transfers
      WHERE state = 'pending' AND timeout_at <= $1 ORDER BY timeout_at, seq FOR NO KEY UPDATE`, [now])
    return r.rows.map(toTransfer)
  }

  /**
   * One payer's open pendings due at now, locked; those a concurrent post or void holds are skipped
   * (it resolves them itself), so a reserve holding the payer's row never waits on a pending's lock.
   */
  async dueFor (c: pg.PoolClient, account: string, now: number): Promise<Transfer[]> {
    const r = await q<PgTransferRow>(c, `SELECT ${TRANSFER_COLUMNS} FROM transfers
      WHERE debit_account = $1 AND state = 'pending' AND timeout_at <= $2 ORDER BY timeout_at, seq FOR NO KEY UPDATE SKIP LOCKED`, [account, now])
    return r.rows.map(toTransfer)
  }

  async existing (db: Db, id: string, expected: Fingerprint): Promise<TransferResult | null> {
    return sameRequest(id, await this.get(db, id), expected)
  }

  /**
   * What reserve decides on, read in one statement once the caller holds the payer's row lock:
   * the transfer already using this id, whether the payer is blocked, and (when countOpen) how many
   * of its reservations are open with timeoutAt still after now.
   */
  async reserveChecks (c: pg.PoolClient, account: string, id: string, now: number, countOpen: boolean):
  Promise<{ found: Transfer | null, blocked: boolean, open: number }> {
    const r = await q<PgTransferRow & { blocked: boolean, open: string | null }>(c, `SELECT ${TRANSFER_COLUMNS.split(', ').map((col) => `t.${col}`).join(', ')},
        EXISTS (SELECT 1 FROM blocked_accounts WHERE account = $1) AS blocked,
        CASE WHEN $4::boolean THEN (SELECT count(*) FROM transfers
          WHERE debit_account = $1 AND state = 'pending' AND timeout_at > $3) END AS open
      FROM (SELECT 1) AS one LEFT JOIN transfers t ON t.id = $2`, [account, id, now, countOpen])
    const row = r.rows[0]
    return { found: row.id === null ? null : toTransfer(row), blocked: row.blocked, open: row.open === null ? 0 : num(row.open) }
  }

  /** Appends one transfer; the schema's triggers apply it to both accounts in the same statement. */
  async append (db: Db, t: NewTransfer): Promise<Transfer> {
    const r = await q<PgTransferRow>(db, `${INSERT} RETURNING ${TRANSFER_COLUMNS}`, this.values(t))
    return toTransfer(r.rows[0])
  }

  private values (t: NewTransfer): unknown[] {
    return [
      t.id, t.kind, t.debitAccount, t.creditAccount, t.amount, t.pendingId ?? null, t.kind === 'pending' ? 'pending' : null,
      t.timeoutAt ?? null, t.reference ?? null, t.meta ?? null, this.clock(),
    ]
  }

  /**
   * Idempotent single-phase transfer (deposit, grant, settlement deposit, refund): one statement
   * when the id is new. A reused id inserts nothing (the balance trigger runs AFTER the insert, so
   * nothing moves) and is then reported as a duplicate or a conflict; ON CONFLICT waits for a
   * concurrent insert of the same id, so a racing retry sees the committed first one.
   */
  async postSimple (db: Db, t: NewTransfer): Promise<TransferResult> {
    const r = await q<PgTransferRow>(db, `${INSERT} ON CONFLICT (id) DO NOTHING RETURNING ${TRANSFER_COLUMNS}`, this.values(t))
    if (r.rows[0]) return { transfer: toTransfer(r.rows[0]), duplicate: false }
    const { id, ...fingerprint } = t
    const seen = await this.existing(db, id, { ...fingerprint, meta: t.meta ?? null })
    if (!seen) throw new Error(`transfer ${id} conflicted on insert but cannot be read`)
    return seen
  }

  /**
   * Checks a pending transfer (already locked by the caller) is still open. One past its timeout is
   * expired here rather than resolved, so that post/void give the same answer whether or not the
   * sweep has run; the caller commits that expiry and then reports it.
   */
  async openPending (c: pg.PoolClient, pendingId: string, p: Transfer | null): Promise<{ pending: Transfer } | { expiredNow: true }> {
    if (!p || p.kind !== 'pending') throw new PendingNotFound(pendingId)
    if (p.state !== 'pending') throw new PendingAlreadyResolved(pendingId, p.state as 'posted' | 'voided' | 'expired')
    if (p.timeoutAt !== null && p.timeoutAt <= this.clock()) {
      await this.expire(c, p)
      return { expiredNow: true }
    }
    return { pending: p }
  }

  async resolve (c: pg.PoolClient, kind: 'post' | 'void', id: string, pending: Transfer, amount: bigint, meta: string | null): Promise<Transfer> {
    if (amount > pending.amount) throw new PostExceedsPending(pending.id, pending.amount, amount)
    return this.append(c, {
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
   * A request's upstream cost (see sqlite-transfers.ts). The caller holds the reservation's row
   * lock, which serializes every write about this request; the unique index is the backstop.
   */
  async upstreamCost (c: pg.PoolClient, pending: Transfer, u: CheckedUpstreamCost): Promise<TransferResult> {
    const { id, ...fingerprint } = upstreamCostTransfer(pending, u)
    const seen = await this.existing(c, id, { ...fingerprint, meta: fingerprint.meta ?? null })
    if (seen) return seen
    const other = await q<{ id: string }>(c, "SELECT id FROM transfers WHERE kind = 'upstream_cost' AND reference = $1", [fingerprint.reference])
    if (other.rows[0]) throw new LedgerArgumentInvalid('upstreamCost.id', `differs from ${other.rows[0].id}, the upstream cost already recorded for ${fingerprint.reference}`)
    return { transfer: await this.append(c, { id, ...fingerprint }), duplicate: false }
  }

  /** Expiry ids derive from the pending id, so a retried sweep can never expire the same pending twice. */
  async expire (c: pg.PoolClient, pending: Transfer): Promise<Transfer> {
    return this.append(c, {
      id: `expire:${pending.id}`,
      kind: 'expire',
      debitAccount: pending.debitAccount,
      creditAccount: pending.creditAccount,
      amount: pending.amount,
      pendingId: pending.id,
    })
  }
}
