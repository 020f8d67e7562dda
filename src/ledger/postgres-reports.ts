import type pg from 'pg'
import { LedgerArgumentInvalid } from './errors.ts'
import { big, type Db, num, numOrNull, q } from './postgres-db.ts'
import { toBalance, toTransfer, TRANSFER_COLUMNS, type PgTransferRow } from './postgres-transfers.ts'
import { checkAmount, checkEpochMs, checkId } from './validate.ts'
import { MARGIN_SQL } from './sqlite-reports.ts'
import type { Balance, MarginRow, PayerUsageDay, Receipt, ReceiptPatch, ReceiptStatus, Transfer, UsageDay, UsageWindow } from './types.ts'

// Receipts and the read-side reports on PostgreSQL, mirroring sqlite-receipts.ts and sqlite-reports.ts.

interface PgReceiptRow {
  id: string
  payer: string | null
  model: string
  stream: boolean
  status: ReceiptStatus
  prompt_tokens: string
  completion_tokens: string
  reserved_amount: string
  charged_amount: string
  upstream_cost: string | null
  verified: boolean | null
  verify_error: string | null
  proof: string | null
  payment_tx: string | null
  error_code: string | null
  created_at: string
  completed_at: string | null
}

const RECEIPT_COLUMNS = ['id', 'payer', 'model', 'stream', 'status', 'prompt_tokens', 'completion_tokens', 'reserved_amount',
  'charged_amount', 'upstream_cost', 'verified', 'verify_error', 'proof', 'payment_tx', 'error_code', 'created_at', 'completed_at']
const STATUSES: readonly ReceiptStatus[] = ['pending', 'completed', 'failed']

function toReceipt (r: PgReceiptRow): Receipt {
  return {
    id: r.id,
    payer: r.payer,
    model: r.model,
    stream: r.stream,
    status: r.status,
    promptTokens: num(r.prompt_tokens),
    completionTokens: num(r.completion_tokens),
    reservedAmount: big(r.reserved_amount),
    chargedAmount: big(r.charged_amount),
    upstreamCost: r.upstream_cost,
    verified: r.verified,
    verifyError: r.verify_error,
    proof: r.proof === null ? null : JSON.parse(r.proof),
    paymentTx: r.payment_tx,
    errorCode: r.error_code,
    createdAt: num(r.created_at),
    completedAt: numOrNull(r.completed_at),
  }
}

/** The same checks as the SQLite store, in the same order; values in RECEIPT_COLUMNS order. */
function toParams (r: Receipt): unknown[] {
  checkId('id', r.id)
  if (!STATUSES.includes(r.status)) throw new LedgerArgumentInvalid('status', `must be one of ${STATUSES.join(', ')}`)
  for (const f of ['promptTokens', 'completionTokens'] as const) {
    if (!Number.isSafeInteger(r[f]) || r[f] < 0) throw new LedgerArgumentInvalid(f, 'must be a non-negative integer')
  }
  if (r.proof !== null && (typeof r.proof !== 'object' || Array.isArray(r.proof))) {
    throw new LedgerArgumentInvalid('proof', 'must be an object or null')
  }
  return [
    r.id, r.payer, r.model, Boolean(r.stream), r.status, r.promptTokens, r.completionTokens,
    checkAmount('reservedAmount', r.reservedAmount, { allowZero: true }),
    checkAmount('chargedAmount', r.chargedAmount, { allowZero: true }),
    r.upstreamCost, r.verified === null ? null : Boolean(r.verified), r.verifyError,
    r.proof === null ? null : JSON.stringify(r.proof), r.paymentTx, r.errorCode,
    checkEpochMs('createdAt', r.createdAt), r.completedAt === null ? null : checkEpochMs('completedAt', r.completedAt),
  ]
}

const UPSERT = `INSERT INTO receipts (${RECEIPT_COLUMNS.join(', ')}) VALUES (${RECEIPT_COLUMNS.map((_, i) => `$${i + 1}`).join(', ')})
  ON CONFLICT (id) DO UPDATE SET ${RECEIPT_COLUMNS.slice(1).map((c) => `${c} = excluded.${c}`).join(', ')}`

export class PgReceipts {
  async put (db: Db, r: Receipt): Promise<void> {
    await q(db, UPSERT, toParams(r))
  }

  async get (db: Db, id: string, { lock = false } = {}): Promise<Receipt | null> {
    const r = await q<PgReceiptRow>(db, `SELECT * FROM receipts WHERE id = $1${lock ? ' FOR NO KEY UPDATE' : ''}`, [id])
    return r.rows[0] ? toReceipt(r.rows[0]) : null
  }

  /** Read-merge-write under the row's lock, so concurrent patches do not interleave. */
  async update (c: pg.PoolClient, id: string, patch: ReceiptPatch): Promise<Receipt | null> {
    const current = await this.get(c, id, { lock: true })
    if (!current) return null
    const defined = Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined))
    const next: Receipt = { ...current, ...defined, id: current.id, createdAt: current.createdAt }
    await q(c, UPSERT, toParams(next))
    return this.get(c, id)
  }

  async list (db: Db, payer: string, limit: number): Promise<Receipt[]> {
    const r = await q<PgReceiptRow>(db, 'SELECT * FROM receipts WHERE payer = $1 ORDER BY created_at DESC, seq DESC LIMIT $2', [payer, limit])
    return r.rows.map(toReceipt)
  }
}

// created_at is epoch ms; integer division gives whole seconds, formatted as a UTC day.
const USAGE_COLUMNS = `to_char(to_timestamp(created_at / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day,
  count(*) AS requests, count(*) FILTER (WHERE verified) AS verified, sum(prompt_tokens) AS prompt,
  sum(completion_tokens) AS completion, sum(charged_amount) AS charged`

interface PgUsageRow { day: string, payer?: string, requests: string, verified: string, prompt: string, completion: string, charged: string }

function toUsage (r: PgUsageRow): UsageDay {
  return {
    day: r.day,
    requests: num(r.requests),
    verifiedRequests: num(r.verified),
    promptTokens: num(r.prompt),
    completionTokens: num(r.completion),
    charged: big(r.charged),
  }
}

export class PgReports {
  async usageByDay (db: Db, payer: string, w: UsageWindow): Promise<UsageDay[]> {
    const r = await q<PgUsageRow>(db, `SELECT ${USAGE_COLUMNS} FROM receipts
      WHERE payer = $1 AND created_at >= $2 AND created_at < $3 GROUP BY day ORDER BY day`, [payer, w.fromMs, w.toMs])
    return r.rows.map(toUsage)
  }

  async usageAll (db: Db, w: UsageWindow): Promise<PayerUsageDay[]> {
    const r = await q<PgUsageRow>(db, `SELECT payer, ${USAGE_COLUMNS} FROM receipts
      WHERE payer IS NOT NULL AND created_at >= $1 AND created_at < $2 GROUP BY day, payer ORDER BY day, payer`, [w.fromMs, w.toMs])
    return r.rows.map((row) => ({ payer: row.payer!, ...toUsage(row) }))
  }

  /** Open reservations that still hold a live request (timeoutAt in the future); counted by maxOpen. */
  async openReservations (db: Db, account: string, now: number): Promise<number> {
    const r = await q<{ n: string }>(db, `SELECT count(*) AS n FROM transfers
      WHERE debit_account = $1 AND state = 'pending' AND timeout_at > $2`, [account, now])
    return num(r.rows[0].n)
  }

  async pendingReservations (db: Db, account: string): Promise<Transfer[]> {
    const r = await q<PgTransferRow>(db, `SELECT ${TRANSFER_COLUMNS} FROM transfers
      WHERE debit_account = $1 AND state = 'pending' ORDER BY seq DESC`, [account])
    return r.rows.map(toTransfer)
  }

  /** The SQLite query (sqlite-reports.ts), with SQLite's order: nulls first, byte order. */
  async margin (db: Db, w: UsageWindow): Promise<MarginRow[]> {
    const r = await q<{ model: string | null, requests: string, revenue: string, cost: string }>(db,
      `${MARGIN_SQL('$1', '$2')} COLLATE "C" NULLS FIRST`, [w.fromMs, w.toMs])
    return r.rows.map((row) => ({ model: row.model, requests: num(row.requests), revenue: big(row.revenue), upstreamCost: big(row.cost) }))
  }

  async accounts (db: Db, limit: number, offset: number): Promise<Balance[]> {
    const r = await q<{ id: string, credits_posted: string, debits_posted: string, debits_pending: string }>(db,
      `SELECT id, credits_posted, debits_posted, debits_pending FROM accounts
      WHERE substr(id, 1, 7) <> 'system:' ORDER BY id LIMIT $1 OFFSET $2`, [limit, offset])
    return r.rows.map((row) => toBalance(row.id, row))
  }
}
