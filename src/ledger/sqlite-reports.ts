import type Database from 'better-sqlite3'
import { toTransfer, type TransferRow } from './sqlite-transfers.ts'
import type { Balance, MarginRow, PayerUsageDay, Transfer, UsageDay, UsageWindow } from './types.ts'

// Read-side queries: usage aggregated from receipts, open reservations, the admin account listing.

const TRANSFER_COLUMNS = 'id, kind, debit_account, credit_account, amount, pending_id, state, timeout_at, reference, meta, created_at'

// created_at is epoch ms; integer division gives whole seconds for SQLite's date functions (UTC).
const USAGE_COLUMNS = `strftime('%Y-%m-%d', created_at / 1000, 'unixepoch') AS day,
  count(*) AS requests, coalesce(sum(verified = 1), 0) AS verified, sum(prompt_tokens) AS prompt,
  sum(completion_tokens) AS completion, sum(charged_amount) AS charged`

// Margin per model from the ledger itself: each posted charge (found through its reservation, whose
// reference is the request id) and each upstream_cost transfer, attributed to the receipt's model.
export const MARGIN_SQL = (from: string, to: string) => `
WITH legs AS (
  SELECT p.reference AS request, r.amount AS revenue, 0 AS cost
    FROM transfers r JOIN transfers p ON p.id = r.pending_id
    WHERE r.kind = 'post' AND r.created_at >= ${from} AND r.created_at < ${to}
  UNION ALL
  SELECT reference, 0, amount FROM transfers
    WHERE kind = 'upstream_cost' AND created_at >= ${from} AND created_at < ${to}
)
SELECT rc.model AS model, count(DISTINCT l.request) AS requests, sum(l.revenue) AS revenue, sum(l.cost) AS cost
FROM legs l LEFT JOIN receipts rc ON rc.id = l.request
GROUP BY rc.model ORDER BY rc.model`

interface UsageRow { day: string, payer?: string, requests: bigint, verified: bigint, prompt: bigint, completion: bigint, charged: bigint }

function toUsage (r: UsageRow): UsageDay {
  return {
    day: r.day,
    requests: Number(r.requests),
    verifiedRequests: Number(r.verified),
    promptTokens: Number(r.prompt),
    completionTokens: Number(r.completion),
    charged: r.charged,
  }
}

export class Reports {
  private readonly usageOne: Database.Statement
  private readonly usageEvery: Database.Statement
  private readonly openCount: Database.Statement
  private readonly open: Database.Statement
  private readonly payers: Database.Statement
  private readonly marginByModel: Database.Statement

  constructor (db: Database.Database) {
    this.usageOne = db.prepare(`SELECT ${USAGE_COLUMNS} FROM receipts
      WHERE payer = @payer AND created_at >= @from AND created_at < @to GROUP BY day ORDER BY day`)
    this.usageEvery = db.prepare(`SELECT payer, ${USAGE_COLUMNS} FROM receipts
      WHERE payer IS NOT NULL AND created_at >= @from AND created_at < @to GROUP BY day, payer ORDER BY day, payer`)
    this.openCount = db.prepare(`SELECT count(*) FROM transfers
      WHERE debit_account = ? AND state = 'pending' AND timeout_at > ?`).pluck()
    this.open = db.prepare(`SELECT ${TRANSFER_COLUMNS} FROM transfers
      WHERE debit_account = ? AND state = 'pending' ORDER BY seq DESC`)
    this.payers = db.prepare(`SELECT id, credits_posted, debits_posted, debits_pending FROM accounts
      WHERE substr(id, 1, 7) <> 'system:' ORDER BY id LIMIT ? OFFSET ?`)
    this.marginByModel = db.prepare(MARGIN_SQL('@from', '@to'))
  }

  margin (w: UsageWindow): MarginRow[] {
    const rows = this.marginByModel.all({ from: BigInt(w.fromMs), to: BigInt(w.toMs) }) as
      Array<{ model: string | null, requests: bigint, revenue: bigint, cost: bigint }>
    return rows.map((r) => ({ model: r.model, requests: Number(r.requests), revenue: r.revenue, upstreamCost: r.cost }))
  }

  usageByDay (payer: string, w: UsageWindow): UsageDay[] {
    return (this.usageOne.all({ payer, from: BigInt(w.fromMs), to: BigInt(w.toMs) }) as UsageRow[]).map(toUsage)
  }

  usageAll (w: UsageWindow): PayerUsageDay[] {
    return (this.usageEvery.all({ from: BigInt(w.fromMs), to: BigInt(w.toMs) }) as UsageRow[])
      .map((r) => ({ payer: r.payer!, ...toUsage(r) }))
  }

  /** Open reservations that still hold a live request (timeoutAt in the future); counted by maxOpen. */
  openReservations (account: string, now: number): number {
    return Number(this.openCount.get(account, BigInt(now)) as bigint)
  }

  pendingReservations (account: string): Transfer[] {
    return (this.open.all(account) as TransferRow[]).map(toTransfer)
  }

  accounts (limit: number, offset: number): Balance[] {
    const rows = this.payers.all(BigInt(limit), BigInt(offset)) as Array<{ id: string, credits_posted: bigint, debits_posted: bigint, debits_pending: bigint }>
    return rows.map((r) => ({
      account: r.id,
      creditsPosted: r.credits_posted,
      debitsPosted: r.debits_posted,
      debitsPending: r.debits_pending,
      available: r.credits_posted - r.debits_posted - r.debits_pending,
    }))
  }
}
