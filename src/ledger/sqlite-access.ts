import type Database from 'better-sqlite3'
import { ApiKeyConflict, TooManyApiKeys } from './errors.ts'
import type { ApiKeyRecord, CreateApiKeyInput } from './types.ts'

// Access records: API keys (stored only as a hash) and single-use sign-in nonces. Arguments arrive
// validated (validate.ts); the limits are decided by the statements themselves.

interface ApiKeyRow {
  id: string
  account: string
  name: string | null
  prefix: string
  hash: string
  created_at: bigint
  revoked_at: bigint | null
  last_used_at: bigint | null
}

/** lastUsedAt is a hint for the owner, not an audit log: one write a minute per key is plenty. */
export const TOUCH_INTERVAL_MS = 60_000

function toKey (r: ApiKeyRow): ApiKeyRecord {
  return {
    id: r.id,
    account: r.account,
    name: r.name,
    prefix: r.prefix,
    hash: r.hash,
    createdAt: Number(r.created_at),
    revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
    lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
  }
}

function isUniqueViolation (err: unknown, column: string): boolean {
  const e = err as { code?: string, message?: string }
  return (e?.code === 'SQLITE_CONSTRAINT_UNIQUE' || e?.code === 'SQLITE_CONSTRAINT_PRIMARYKEY') &&
    typeof e.message === 'string' && e.message.includes(`api_keys.${column}`)
}

export class ApiKeys {
  private readonly insert: Database.Statement
  private readonly byId: Database.Statement
  private readonly byAccount: Database.Statement
  private readonly byHash: Database.Statement
  private readonly revoke: Database.Statement
  private readonly touchStmt: Database.Statement

  constructor (db: Database.Database, private readonly clock: () => number) {
    // The count and the insert are one statement, inside the store's IMMEDIATE transaction: two
    // racing creates cannot both see room for one more key.
    this.insert = db.prepare(`INSERT INTO api_keys (id, account, name, prefix, hash, created_at)
      SELECT @id, @account, @name, @prefix, @hash, @createdAt
      WHERE (SELECT count(*) FROM api_keys WHERE account = @account AND revoked_at IS NULL) < @max`)
    this.byId = db.prepare('SELECT * FROM api_keys WHERE id = ?')
    this.byAccount = db.prepare('SELECT * FROM api_keys WHERE account = ? ORDER BY created_at DESC, rowid DESC')
    this.byHash = db.prepare('SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL')
    this.revoke = db.prepare('UPDATE api_keys SET revoked_at = @now WHERE id = @id AND account = @account AND revoked_at IS NULL')
    this.touchStmt = db.prepare(`UPDATE api_keys SET last_used_at = @now WHERE id = @id AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at <= @now - ${TOUCH_INTERVAL_MS})`)
  }

  create (k: CreateApiKeyInput): ApiKeyRecord {
    let changes: number
    try {
      ({ changes } = this.insert.run({
        id: k.id, account: k.account, name: k.name, prefix: k.prefix, hash: k.hash,
        createdAt: BigInt(k.createdAt), max: BigInt(k.maxPerAccount),
      }))
    } catch (err) {
      if (isUniqueViolation(err, 'id')) throw new ApiKeyConflict('id')
      if (isUniqueViolation(err, 'hash')) throw new ApiKeyConflict('hash')
      throw err
    }
    if (changes !== 1) throw new TooManyApiKeys(k.account, k.maxPerAccount)
    return toKey(this.byId.get(k.id) as ApiKeyRow)
  }

  list (account: string): ApiKeyRecord[] {
    return (this.byAccount.all(account) as ApiKeyRow[]).map(toKey)
  }

  revokeKey (account: string, id: string, now: number): boolean {
    return this.revoke.run({ account, id, now: BigInt(now) }).changes === 1
  }

  /** Read-only unless lastUsedAt is due for a touch; the touch is one conditional UPDATE. */
  find (hash: string): ApiKeyRecord | null {
    const row = this.byHash.get(hash) as ApiKeyRow | undefined
    if (!row) return null
    const key = toKey(row)
    const now = this.clock()
    if (key.lastUsedAt !== null && key.lastUsedAt > now - TOUCH_INTERVAL_MS) return key
    if (this.touchStmt.run({ id: key.id, now: BigInt(now) }).changes === 1) return { ...key, lastUsedAt: now }
    // Revoked or touched by someone else in between: report what is stored now.
    const again = this.byHash.get(hash) as ApiKeyRow | undefined
    return again ? toKey(again) : null
  }
}

export class Nonces {
  private readonly insert: Database.Statement
  private readonly prune: Database.Statement

  constructor (db: Database.Database) {
    this.insert = db.prepare('INSERT INTO used_nonces (scope, nonce, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING')
    this.prune = db.prepare('DELETE FROM used_nonces WHERE expires_at <= ?')
  }

  use (scope: string, nonce: string, expiresAt: number): boolean {
    return this.insert.run(scope, nonce, BigInt(expiresAt)).changes === 1
  }

  pruneBefore (now: number): number {
    return this.prune.run(BigInt(now)).changes
  }
}
