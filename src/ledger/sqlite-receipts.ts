import type Database from 'better-sqlite3'
import { LedgerArgumentInvalid } from './errors.ts'
import { checkAmount, checkEpochMs, checkId } from './validate.ts'
import type { Receipt, ReceiptPatch, ReceiptStatus } from './types.ts'

// Receipts are the per-request record users and finance read back. Unlike transfers they are
// mutable (pending → completed/failed); the money itself is only ever in transfers.

interface ReceiptRow {
  id: string
  payer: string | null
  model: string
  stream: bigint
  status: ReceiptStatus
  prompt_tokens: bigint
  completion_tokens: bigint
  reserved_amount: bigint
  charged_amount: bigint
  upstream_cost: string | null
  verified: bigint | null
  verify_error: string | null
  proof: string | null
  payment_tx: string | null
  error_code: string | null
  created_at: bigint
  completed_at: bigint | null
}

const STATUSES: readonly ReceiptStatus[] = ['pending', 'completed', 'failed']

function toReceipt (r: ReceiptRow): Receipt {
  return {
    id: r.id,
    payer: r.payer,
    model: r.model,
    stream: r.stream === 1n,
    status: r.status,
    promptTokens: Number(r.prompt_tokens),
    completionTokens: Number(r.completion_tokens),
    reservedAmount: r.reserved_amount,
    chargedAmount: r.charged_amount,
    upstreamCost: r.upstream_cost,
    verified: r.verified === null ? null : r.verified === 1n,
    verifyError: r.verify_error,
    proof: r.proof === null ? null : JSON.parse(r.proof),
    paymentTx: r.payment_tx,
    errorCode: r.error_code,
    createdAt: Number(r.created_at),
    completedAt: r.completed_at === null ? null : Number(r.completed_at),
  }
}

function toParams (r: Receipt): Record<string, unknown> {
  checkId('id', r.id)
  if (!STATUSES.includes(r.status)) throw new LedgerArgumentInvalid('status', `must be one of ${STATUSES.join(', ')}`)
  for (const f of ['promptTokens', 'completionTokens'] as const) {
    if (!Number.isSafeInteger(r[f]) || r[f] < 0) throw new LedgerArgumentInvalid(f, 'must be a non-negative integer')
  }
  if (r.proof !== null && (typeof r.proof !== 'object' || Array.isArray(r.proof))) {
    throw new LedgerArgumentInvalid('proof', 'must be an object or null')
  }
  return {
    id: r.id,
    payer: r.payer,
    model: r.model,
    stream: r.stream ? 1n : 0n,
    status: r.status,
    promptTokens: BigInt(r.promptTokens),
    completionTokens: BigInt(r.completionTokens),
    reservedAmount: checkAmount('reservedAmount', r.reservedAmount, { allowZero: true }),
    chargedAmount: checkAmount('chargedAmount', r.chargedAmount, { allowZero: true }),
    upstreamCost: r.upstreamCost,
    verified: r.verified === null ? null : r.verified ? 1n : 0n,
    verifyError: r.verifyError,
    proof: r.proof === null ? null : JSON.stringify(r.proof),
    paymentTx: r.paymentTx,
    errorCode: r.errorCode,
    createdAt: BigInt(checkEpochMs('createdAt', r.createdAt)),
    completedAt: r.completedAt === null ? null : BigInt(checkEpochMs('completedAt', r.completedAt)),
  }
}

export class Receipts {
  private readonly upsert: Database.Statement
  private readonly select: Database.Statement
  private readonly byPayer: Database.Statement

  constructor (db: Database.Database) {
    const cols = ['id', 'payer', 'model', 'stream', 'status', 'prompt_tokens', 'completion_tokens', 'reserved_amount',
      'charged_amount', 'upstream_cost', 'verified', 'verify_error', 'proof', 'payment_tx', 'error_code', 'created_at', 'completed_at']
    const param = (c: string): string => '@' + c.replace(/_([a-z])/g, (_, x: string) => x.toUpperCase())
    this.upsert = db.prepare(`INSERT INTO receipts (${cols.join(', ')}) VALUES (${cols.map(param).join(', ')})
      ON CONFLICT (id) DO UPDATE SET ${cols.slice(1).map((c) => `${c} = excluded.${c}`).join(', ')}`)
    this.select = db.prepare('SELECT * FROM receipts WHERE id = ?')
    this.byPayer = db.prepare('SELECT * FROM receipts WHERE payer = ? ORDER BY created_at DESC, rowid DESC LIMIT ?')
    // The reservation decides: posted → completed at the posted amount; voided or expired → failed.
    // Primary-key lookups only: the reservation row, and its post (resolved once per pending).
    const state = "(SELECT state FROM transfers WHERE id = 'reserve:' || receipts.id)"
    this.stale = db.prepare(`UPDATE receipts SET
      charged_amount = CASE ${state} WHEN 'posted'
        THEN COALESCE((SELECT amount FROM transfers WHERE kind = 'post' AND pending_id = 'reserve:' || receipts.id), 0) ELSE 0 END,
      error_code = CASE ${state} WHEN 'posted' THEN error_code
        ELSE COALESCE(error_code, CASE ${state} WHEN 'expired' THEN 'RESERVATION_EXPIRED' ELSE 'INTERRUPTED' END) END,
      status = CASE ${state} WHEN 'posted' THEN 'completed' ELSE 'failed' END,
      completed_at = @now
    WHERE status = 'pending' AND (${state} = 'expired' OR (created_at <= @before AND ${state} IN ('posted', 'voided')))`)
  }

  put (r: Receipt): void {
    this.upsert.run(toParams(r))
  }

  get (id: string): Receipt | null {
    const row = this.select.get(id) as ReceiptRow | undefined
    return row ? toReceipt(row) : null
  }

  /** Read-merge-write; the store runs it in one transaction so concurrent patches do not interleave. */
  update (id: string, patch: ReceiptPatch): Receipt | null {
    const current = this.get(id)
    if (!current) return null
    const defined = Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined))
    const next: Receipt = { ...current, ...defined, id: current.id, createdAt: current.createdAt }
    this.upsert.run(toParams(next))
    return next
  }

  closeStale (before: number, now: number): number {
    return this.stale.run({ before: BigInt(before), now: BigInt(now) }).changes
  }

  private readonly stale: Database.Statement

  list (payer: string, limit: number): Receipt[] {
    return (this.byPayer.all(payer, BigInt(limit)) as ReceiptRow[]).map(toReceipt)
  }
}
