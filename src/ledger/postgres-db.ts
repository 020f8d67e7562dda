import type pg from 'pg'
import { LedgerArgumentInvalid } from './errors.ts'

// The PostgreSQL store's plumbing: one query helper, the transaction runner and its retry rule, and
// the conversions from what node-postgres returns (BIGINT and NUMERIC arrive as strings: they are
// parsed with BigInt, never through Number, except for epoch milliseconds and counts).
//
// Write transactions run at READ COMMITTED and take row locks where a decision depends on rows
// they do not write (the payer's account row, a pending transfer, a payment claim), always in the
// same order: claim or pending first, then payer account rows (sorted), then system accounts (the
// balance trigger updates accounts in id order). A deadlock or serialization failure that still
// happens is retried as a whole, as is a unique violation on a transfer id or a pending's
// resolution: the retry's own checks then report the duplicate, conflict or resolved pending.

export type Db = pg.Pool | pg.PoolClient

export interface PgErrorFields { code?: string, constraint?: string, message?: string }

export function pgError (err: unknown): PgErrorFields {
  return typeof err === 'object' && err !== null ? err as PgErrorFields : {}
}

const RETRY_STATES = new Set(['40001', '40P01'])
const RETRY_CONSTRAINTS = new Set(['transfers_id_unique', 'transfers_resolve_once'])
export const MAX_ATTEMPTS = 10

export function isRetryable (err: unknown): boolean {
  const e = pgError(err)
  return RETRY_STATES.has(e.code ?? '') || (e.code === '23505' && RETRY_CONSTRAINTS.has(e.constraint ?? ''))
}

/** A CHECK constraint of this name refused the statement. */
export function isCheck (err: unknown, constraint: string): boolean {
  const e = pgError(err)
  return e.code === '23514' && e.constraint === constraint
}

/** One of the schema's triggers refused the statement with this message. */
export function isRefusal (err: unknown, message: string): boolean {
  const e = pgError(err)
  return e.code === 'P0001' && e.message === message
}

export async function q<R extends pg.QueryResultRow = pg.QueryResultRow> (db: Db, text: string, values: unknown[] = []): Promise<pg.QueryResult<R>> {
  try {
    return await db.query<R>(text, values)
  } catch (err) {
    // PostgreSQL text cannot hold U+0000; SQLite can. Refuse it as an argument, not a crash.
    const code = pgError(err).code
    if (code === '22021' || code === '22P05') throw new LedgerArgumentInvalid('text', 'must not contain NUL characters')
    throw err
  }
}

export type TxMode = 'write' | 'snapshot' | 'autocommit'
const BEGIN: Record<TxMode, string | null> = {
  write: 'BEGIN ISOLATION LEVEL READ COMMITTED',
  // One consistent snapshot for multi-statement reads (the audit); never blocks writers.
  snapshot: 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
  // Each statement commits on its own (an operation whose one write is a single statement); still retried.
  autocommit: null,
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * Runs fn in one transaction on one pooled connection and commits. On a retryable error the whole
 * transaction is rolled back and run again, at most MAX_ATTEMPTS times, after a jittered pause.
 */
export async function transaction<T> (pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>, mode: TxMode = 'write'): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const c = await pool.connect()
    let broken: Error | undefined
    // A checked-out client has no listener of pg-pool's: when the server ends the session (a
    // restart, 57P01) its 'error' would be unhandled and kill the process. Note it, and let the
    // failing query report it; the client is then discarded, not returned to the pool.
    const onError = (e: Error) => { broken = e }
    c.on('error', onError)
    const begin = BEGIN[mode]
    try {
      if (begin) await c.query(begin)
      const out = await fn(c)
      if (begin) await c.query('COMMIT')
      return out
    } catch (err) {
      if (begin) await c.query('ROLLBACK').catch((e: Error) => { broken = e })
      if (attempt >= MAX_ATTEMPTS || !isRetryable(err)) throw err
    } finally {
      c.removeListener('error', onError)
      c.release(broken)
    }
    await sleep(Math.random() * Math.min(250, 4 * 2 ** attempt))
  }
}

export function big (v: string | number | bigint): bigint {
  return BigInt(v)
}

/** Epoch milliseconds and counts: well within Number's safe range. */
export function num (v: string | number | bigint): number {
  return Number(v)
}

export function numOrNull (v: string | number | bigint | null): number | null {
  return v === null ? null : Number(v)
}

/** Advisory-lock key for a per-account limit: serialises the decisions of every replica on one account. */
export async function lockAccountKey (c: pg.PoolClient, namespace: string, account: string): Promise<void> {
  await c.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`${namespace}:${account}`])
}
