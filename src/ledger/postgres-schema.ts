import type pg from 'pg'
import { PG_V1_LEDGER } from './postgres-schema-v1.ts'
import { PG_V2_RECORDS } from './postgres-schema-v2.ts'
import { PG_V3_UPSTREAM_COST } from './postgres-schema-v3.ts'

// Numbered migrations, applied at start-up. Several replicas may start at once: each migration runs
// in its own transaction that first takes a transaction-scoped advisory lock, then re-checks
// schema_migrations, so exactly one replica applies it and the others wait and skip it.

export interface PgMigration { version: number, name: string, sql: string }

export const PG_MIGRATIONS: readonly PgMigration[] = [
  { version: 1, name: 'accounts, transfers and blocked accounts', sql: PG_V1_LEDGER },
  { version: 2, name: 'payment claims, receipts, api keys, nonces, idempotency', sql: PG_V2_RECORDS },
  { version: 3, name: 'upstream cost transfers', sql: PG_V3_UPSTREAM_COST },
]

/** The advisory lock every migrating replica queues on: the ASCII bytes of 'x402:mig' as an int8. */
export const MIGRATION_LOCK = '8661600975627053415'

const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`

async function newestApplied (c: pg.PoolClient): Promise<number | null> {
  const exists = await c.query<{ t: string | null }>("SELECT to_regclass('schema_migrations')::text AS t")
  if (exists.rows[0].t === null) return null
  const r = await c.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_migrations')
  return r.rows[0].v
}

function refuseNewer (version: number | null): void {
  const known = PG_MIGRATIONS[PG_MIGRATIONS.length - 1].version
  if (version !== null && version > known) {
    throw new Error(`ledger database has schema version ${version}, newer than this build knows (${known})`)
  }
}

export async function migrate (pool: pg.Pool, now: number): Promise<void> {
  const c = await pool.connect()
  let broken: Error | undefined
  // See transaction(): a checked-out client needs its own 'error' listener.
  const onError = (e: Error) => { broken = e }
  c.on('error', onError)
  try {
    // The usual start-up: everything is applied already, and nothing needs a lock.
    const newest = await newestApplied(c)
    refuseNewer(newest)
    if (newest === PG_MIGRATIONS[PG_MIGRATIONS.length - 1].version) return
    for (const m of PG_MIGRATIONS) {
      await c.query('BEGIN')
      try {
        await c.query('SELECT pg_advisory_xact_lock($1::bigint)', [MIGRATION_LOCK])
        await c.query(CREATE_TABLE)
        refuseNewer(await newestApplied(c))
        const applied = await c.query('SELECT 1 FROM schema_migrations WHERE version = $1', [m.version])
        if (applied.rowCount === 0) {
          await c.query(m.sql)
          await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [m.version, m.name, now])
        }
        await c.query('COMMIT')
      } catch (err) {
        await c.query('ROLLBACK').catch((e: Error) => { broken = e })
        throw err
      }
    }
  } finally {
    c.removeListener('error', onError)
    c.release(broken)
  }
}
