import type Database from 'better-sqlite3'
import type { BeginIdempotentInput, BeginIdempotentResult, IdempotentKey, StoredResponse } from './types.ts'

// Idempotency records for client Idempotency-Key / x402 payment-identifier retries, scoped per
// account. Arguments arrive validated (validate.ts); begin runs inside the store's transaction.

interface IdemRow {
  body_hash: string
  request_id: string
  state: 'in_flight' | 'completed'
  status: bigint | null
  headers: string | null
  body: string | null
}

export class Idempotency {
  private readonly start: Database.Statement
  private readonly select: Database.Statement
  private readonly complete: Database.Statement
  private readonly abandon: Database.Statement
  private readonly prune: Database.Statement

  constructor (db: Database.Database) {
    // One statement: insert when absent, or take over a record that has expired; changes === 1
    // means this request owns the key. A live record is left untouched.
    this.start = db.prepare(`INSERT INTO idempotency_records (account, key, body_hash, request_id, state, created_at, expires_at)
      VALUES (@account, @key, @bodyHash, @requestId, 'in_flight', @now, @expiresAt)
      ON CONFLICT (account, key) DO UPDATE SET body_hash = excluded.body_hash, request_id = excluded.request_id,
        state = 'in_flight', status = NULL, headers = NULL, body = NULL, created_at = excluded.created_at,
        expires_at = excluded.expires_at, completed_at = NULL
      WHERE idempotency_records.expires_at <= excluded.created_at`)
    this.select = db.prepare('SELECT body_hash, request_id, state, status, headers, body FROM idempotency_records WHERE account = ? AND key = ?')
    this.complete = db.prepare(`UPDATE idempotency_records SET state = 'completed', status = @status, headers = @headers,
      body = @body, completed_at = @now
      WHERE account = @account AND key = @key AND state = 'in_flight' AND (@requestId IS NULL OR request_id = @requestId)`)
    this.abandon = db.prepare(`DELETE FROM idempotency_records
      WHERE account = @account AND key = @key AND state = 'in_flight' AND (@requestId IS NULL OR request_id = @requestId)`)
    this.prune = db.prepare('DELETE FROM idempotency_records WHERE expires_at <= ?')
  }

  begin (i: BeginIdempotentInput): BeginIdempotentResult {
    const { changes } = this.start.run({
      account: i.account, key: i.key, bodyHash: i.bodyHash, requestId: i.requestId, now: BigInt(i.now), expiresAt: BigInt(i.expiresAt),
    })
    if (changes === 1) return { state: 'started' }
    const row = this.select.get(i.account, i.key) as IdemRow
    if (row.body_hash !== i.bodyHash) return { state: 'conflict' }
    if (row.state === 'in_flight') return { state: 'in_flight', requestId: row.request_id }
    const response: StoredResponse = { status: Number(row.status), headers: JSON.parse(row.headers!), body: row.body! }
    return { state: 'completed', response, requestId: row.request_id }
  }

  finish (k: IdempotentKey, r: StoredResponse, now: number): void {
    this.complete.run({
      account: k.account, key: k.key, requestId: k.requestId ?? null,
      status: BigInt(r.status), headers: JSON.stringify(r.headers), body: r.body, now: BigInt(now),
    })
  }

  drop (k: IdempotentKey): void {
    this.abandon.run({ account: k.account, key: k.key, requestId: k.requestId ?? null })
  }

  pruneBefore (now: number): number {
    return this.prune.run(BigInt(now)).changes
  }
}
