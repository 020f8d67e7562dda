import type pg from 'pg'
import { ApiKeyConflict, TooManyApiKeys } from './errors.ts'
import { type Db, lockAccountKey, num, numOrNull, pgError, q } from './postgres-db.ts'
import { TOUCH_INTERVAL_MS } from './sqlite-access.ts'
import type {
  ApiKeyRecord, BeginIdempotentInput, BeginIdempotentResult, CreateApiKeyInput, IdempotentKey, StoredResponse,
} from './types.ts'

// Access records on PostgreSQL, mirroring sqlite-access.ts and sqlite-idempotency.ts: API keys
// (capped per account), single-use nonces, idempotency records. Arguments arrive validated.

interface PgApiKeyRow {
  id: string
  account: string
  name: string | null
  prefix: string
  hash: string
  created_at: string
  revoked_at: string | null
  last_used_at: string | null
}

const KEY_COLUMNS = 'id, account, name, prefix, hash, created_at, revoked_at, last_used_at'

function toKey (r: PgApiKeyRow): ApiKeyRecord {
  return {
    id: r.id,
    account: r.account,
    name: r.name,
    prefix: r.prefix,
    hash: r.hash,
    createdAt: num(r.created_at),
    revokedAt: numOrNull(r.revoked_at),
    lastUsedAt: numOrNull(r.last_used_at),
  }
}

export class PgApiKeys {
  constructor (private readonly clock: () => number) {}

  /**
   * The count and the insert are one statement, after a transaction-scoped advisory lock on the
   * account: two replicas creating keys for one account take turns, so neither sees stale room.
   * (An advisory lock rather than the accounts row: a key must not create a payer account.)
   */
  async create (c: pg.PoolClient, k: CreateApiKeyInput): Promise<ApiKeyRecord> {
    await lockAccountKey(c, 'api_keys', k.account)
    let r: pg.QueryResult<PgApiKeyRow>
    try {
      r = await q<PgApiKeyRow>(c, `INSERT INTO api_keys (id, account, name, prefix, hash, created_at)
        SELECT $1, $2, $3, $4, $5, $6
        WHERE (SELECT count(*) FROM api_keys WHERE account = $2 AND revoked_at IS NULL) < $7
        RETURNING ${KEY_COLUMNS}`, [k.id, k.account, k.name, k.prefix, k.hash, k.createdAt, k.maxPerAccount])
    } catch (err) {
      const e = pgError(err)
      if (e.code === '23505' && e.constraint === 'api_keys_pkey') throw new ApiKeyConflict('id')
      if (e.code === '23505' && e.constraint === 'api_keys_hash_unique') throw new ApiKeyConflict('hash')
      throw err
    }
    if (r.rowCount !== 1) throw new TooManyApiKeys(k.account, k.maxPerAccount)
    return toKey(r.rows[0])
  }

  async list (db: Db, account: string): Promise<ApiKeyRecord[]> {
    const r = await q<PgApiKeyRow>(db, `SELECT ${KEY_COLUMNS} FROM api_keys WHERE account = $1 ORDER BY created_at DESC, seq DESC`, [account])
    return r.rows.map(toKey)
  }

  async revoke (db: Db, account: string, id: string, now: number): Promise<boolean> {
    const r = await q(db, 'UPDATE api_keys SET revoked_at = $3 WHERE id = $1 AND account = $2 AND revoked_at IS NULL', [id, account, now])
    return r.rowCount === 1
  }

  /** Read-only unless lastUsedAt is due for a touch; the touch is one conditional UPDATE. */
  async find (db: Db, hash: string): Promise<ApiKeyRecord | null> {
    const byHash = `SELECT ${KEY_COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL`
    const row = (await q<PgApiKeyRow>(db, byHash, [hash])).rows[0]
    if (!row) return null
    const key = toKey(row)
    const now = this.clock()
    if (key.lastUsedAt !== null && key.lastUsedAt > now - TOUCH_INTERVAL_MS) return key
    const touched = await q(db, `UPDATE api_keys SET last_used_at = $2::bigint WHERE id = $1 AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at <= $2::bigint - ${TOUCH_INTERVAL_MS})`, [key.id, now])
    if (touched.rowCount === 1) return { ...key, lastUsedAt: now }
    // Revoked or touched by someone else in between: report what is stored now.
    const again = (await q<PgApiKeyRow>(db, byHash, [hash])).rows[0]
    return again ? toKey(again) : null
  }
}

export class PgNonces {
  async use (db: Db, scope: string, nonce: string, expiresAt: number): Promise<boolean> {
    const r = await q(db, 'INSERT INTO used_nonces (scope, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [scope, nonce, expiresAt])
    return r.rowCount === 1
  }

  async prune (db: Db, now: number): Promise<number> {
    return (await q(db, 'DELETE FROM used_nonces WHERE expires_at <= $1', [now])).rowCount ?? 0
  }
}

interface PgIdemRow {
  body_hash: string
  request_id: string
  state: 'in_flight' | 'completed'
  status: number | null
  headers: string | null
  body: string | null
}

export class PgIdempotency {
  /**
   * One statement: insert when absent, or take over a record that has expired; a row back means
   * this request owns the key. A live record is left untouched (but locked, so the read that
   * follows sees the version that refused us).
   */
  async begin (db: Db, i: BeginIdempotentInput): Promise<BeginIdempotentResult> {
    const started = await q(db, `INSERT INTO idempotency_records AS r (account, key, body_hash, request_id, state, created_at, expires_at)
      VALUES ($1, $2, $3, $4, 'in_flight', $5, $6)
      ON CONFLICT (account, key) DO UPDATE SET body_hash = excluded.body_hash, request_id = excluded.request_id,
        state = 'in_flight', status = NULL, headers = NULL, body = NULL, created_at = excluded.created_at,
        expires_at = excluded.expires_at, completed_at = NULL
      WHERE r.expires_at <= excluded.created_at`, [i.account, i.key, i.bodyHash, i.requestId, i.now, i.expiresAt])
    if (started.rowCount === 1) return { state: 'started' }
    const row = (await q<PgIdemRow>(db, `SELECT body_hash, request_id, state, status, headers, body FROM idempotency_records
      WHERE account = $1 AND key = $2`, [i.account, i.key])).rows[0]
    if (row.body_hash !== i.bodyHash) return { state: 'conflict' }
    if (row.state === 'in_flight') return { state: 'in_flight', requestId: row.request_id }
    const response: StoredResponse = { status: Number(row.status), headers: JSON.parse(row.headers!), body: row.body! }
    return { state: 'completed', response, requestId: row.request_id }
  }

  async finish (db: Db, k: IdempotentKey, r: StoredResponse, now: number): Promise<void> {
    await q(db, `UPDATE idempotency_records SET state = 'completed', status = $4, headers = $5, body = $6, completed_at = $7
      WHERE account = $1 AND key = $2 AND state = 'in_flight' AND ($3::text IS NULL OR request_id = $3)`,
    [k.account, k.key, k.requestId ?? null, r.status, JSON.stringify(r.headers), r.body, now])
  }

  async drop (db: Db, k: IdempotentKey): Promise<void> {
    await q(db, `DELETE FROM idempotency_records
      WHERE account = $1 AND key = $2 AND state = 'in_flight' AND ($3::text IS NULL OR request_id = $3)`,
    [k.account, k.key, k.requestId ?? null])
  }

  async prune (db: Db, now: number): Promise<number> {
    return (await q(db, 'DELETE FROM idempotency_records WHERE expires_at <= $1', [now])).rowCount ?? 0
  }
}
