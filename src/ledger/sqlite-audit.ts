import type Database from 'better-sqlite3'
import type { LedgerTotals } from './types.ts'

// An independent audit: it recomputes every balance from the transfers themselves (not from the
// triggers' running totals), so a bug in the triggers shows up here instead of hiding in them.

const SUMS = `SELECT coalesce(sum(credits_posted - debits_posted), 0) AS posted,
  coalesce(sum(credits_pending - debits_pending), 0) AS pending FROM accounts`

const NEGATIVE_PAYERS = `SELECT id FROM accounts
  WHERE substr(id, 1, 7) <> 'system:' AND credits_posted - debits_posted - debits_pending < 0 LIMIT 20`

const DRIFTED_ACCOUNTS = `
WITH legs AS (
  SELECT debit_account AS account,
    CASE WHEN kind IN ('pending', 'void', 'expire') THEN 0 ELSE amount END AS dp, 0 AS cp,
    CASE WHEN kind = 'pending' AND state = 'pending' THEN amount ELSE 0 END AS dpend, 0 AS cpend
  FROM transfers
  UNION ALL
  SELECT credit_account, 0, CASE WHEN kind IN ('pending', 'void', 'expire') THEN 0 ELSE amount END,
    0, CASE WHEN kind = 'pending' AND state = 'pending' THEN amount ELSE 0 END
  FROM transfers
), sums AS (
  SELECT account, sum(dp) AS dp, sum(cp) AS cp, sum(dpend) AS dpend, sum(cpend) AS cpend FROM legs GROUP BY account
)
SELECT a.id FROM accounts a LEFT JOIN sums s ON s.account = a.id
WHERE a.debits_posted <> coalesce(s.dp, 0) OR a.credits_posted <> coalesce(s.cp, 0)
  OR a.debits_pending <> coalesce(s.dpend, 0) OR a.credits_pending <> coalesce(s.cpend, 0)
UNION ALL
SELECT s.account FROM sums s LEFT JOIN accounts a ON a.id = s.account WHERE a.id IS NULL
LIMIT 20`

const BAD_RESOLUTIONS = `
SELECT p.id FROM transfers p LEFT JOIN transfers r ON r.pending_id = p.id
WHERE p.kind = 'pending' AND (
  (p.state = 'pending') <> (r.id IS NULL)
  OR (r.id IS NOT NULL AND (p.state <> CASE r.kind WHEN 'post' THEN 'posted' WHEN 'void' THEN 'voided' WHEN 'expire' THEN 'expired' END
    OR r.amount > p.amount OR r.debit_account <> p.debit_account OR r.credit_account <> p.credit_account)))
UNION ALL
SELECT pending_id FROM transfers WHERE pending_id IS NOT NULL GROUP BY pending_id HAVING count(*) > 1
UNION ALL
SELECT r.id FROM transfers r LEFT JOIN transfers p ON p.id = r.pending_id
WHERE r.pending_id IS NOT NULL AND (p.id IS NULL OR p.kind <> 'pending')
LIMIT 20`

// An upstream cost is positive, system:revenue → system:upstream_cost, one per request, and refers to
// the request's reservation (the charge it belongs to); nothing else moves system:upstream_cost.
const BAD_UPSTREAM_COSTS = `
SELECT u.id FROM transfers u WHERE u.kind = 'upstream_cost' AND (u.amount <= 0
    OR u.debit_account <> 'system:revenue' OR u.credit_account <> 'system:upstream_cost' OR u.reference IS NULL
    OR NOT EXISTS (SELECT 1 FROM transfers p WHERE p.kind = 'pending' AND p.reference = u.reference))
UNION ALL
SELECT reference FROM transfers WHERE kind = 'upstream_cost' GROUP BY reference HAVING count(*) > 1
UNION ALL
SELECT id FROM transfers WHERE kind <> 'upstream_cost'
  AND (debit_account = 'system:upstream_cost' OR credit_account = 'system:upstream_cost')
LIMIT 20`

// A claim's deposit must exist; it is settled, or provisional and either still open or reversed. A
// reversal must add up to the deposit and, when it took anything back, match its refund transfer.
const BAD_CLAIMS = `
SELECT c.network || '/' || c.payer || '/' || c.nonce AS k FROM payment_claims c LEFT JOIN transfers t ON t.id = c.deposit_id
WHERE (c.deposit_id IS NOT NULL AND (t.id IS NULL OR t.kind <> 'deposit' OR NOT (c.status = 'settled'
    OR (c.provisional = 1 AND c.reversal_id IS NULL AND c.status IN ('settling', 'unknown'))
    OR (c.provisional = 1 AND c.reversal_id IS NOT NULL AND c.status = 'failed'))))
  OR (c.reversal_id IS NOT NULL AND (t.id IS NULL OR c.reversed_amount + c.shortfall <> t.amount
    OR (c.reversed_amount > 0 AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.id = c.reversal_id AND r.kind = 'refund'
      AND r.amount = c.reversed_amount AND r.debit_account = t.credit_account AND r.credit_account = 'system:deposits'))))
LIMIT 20`

export class Audit {
  private readonly sums: Database.Statement
  private readonly pendingCount: Database.Statement
  private readonly checks: Array<[string, Database.Statement]>

  constructor (db: Database.Database) {
    this.sums = db.prepare(SUMS)
    this.pendingCount = db.prepare("SELECT count(*) AS n FROM transfers WHERE state = 'pending'")
    this.checks = [
      ['payer accounts below zero', db.prepare(NEGATIVE_PAYERS).pluck()],
      ['account columns differ from their transfers', db.prepare(DRIFTED_ACCOUNTS).pluck()],
      ['pending transfers resolved other than exactly once', db.prepare(BAD_RESOLUTIONS).pluck()],
      ['payment claims with an invalid deposit', db.prepare(BAD_CLAIMS).pluck()],
      ['upstream costs without their request or out of shape', db.prepare(BAD_UPSTREAM_COSTS).pluck()],
    ]
  }

  totals (): LedgerTotals {
    const s = this.sums.get() as { posted: bigint }
    const n = this.pendingCount.get() as { n: bigint }
    return { sumOfAllAccounts: s.posted, pendingCount: Number(n.n) }
  }

  problems (): string[] {
    const out: string[] = []
    const s = this.sums.get() as { posted: bigint, pending: bigint }
    if (s.posted !== 0n) out.push(`posted balances sum to ${s.posted}, not 0`)
    if (s.pending !== 0n) out.push(`pending balances sum to ${s.pending}, not 0`)
    for (const [what, stmt] of this.checks) {
      const ids = stmt.all() as unknown[]
      if (ids.length > 0) out.push(`${what}: ${ids.map(String).join(', ')}`)
    }
    return out
  }
}
