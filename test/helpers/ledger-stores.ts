import tap, { type Test } from 'tap'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import pg from 'pg'
import { openPostgresLedger } from '../../src/ledger/postgres.ts'
import { openSqliteLedger } from '../../src/ledger/sqlite.ts'
import type { LedgerStore } from '../../src/ledger/types.ts'
import { postgresUnavailable, startTestPostgres, type TestPostgres } from './postgres.ts'

// One ledger test suite, two stores: forEachStore(t, (t, store) => { t.test(...) }) defines the same
// subtests under "sqlite" and under "postgres". Each test gets its own empty database (SQLite
// :memory:, or a PostgreSQL database copied from a migrated template), so tests stay independent.
// One PostgreSQL cluster serves the whole test file and is stopped when the file's tests end.

export type StoreKind = 'sqlite' | 'postgres'
/** Both, unless TEST_LEDGER_STORES (e.g. "postgres") names fewer: to run one store's variants alone. */
export const STORE_KINDS: readonly StoreKind[] = (['sqlite', 'postgres'] as const)
  .filter((k) => !process.env.TEST_LEDGER_STORES || process.env.TEST_LEDGER_STORES.split(',').includes(k))

export interface OpenOptions {
  clock?: () => number
  /** postgres: connections in the store's pool. */
  poolSize?: number
}

/** Raw SQL on a store's database, bypassing the store: what a buggy caller or an operator could type. */
export interface RawSql {
  /** Runs statements without parameters; rejects with the database's own error. */
  run (sql: string): Promise<void>
  /** The rows of one query (PostgreSQL returns BIGINT as strings, SQLite as numbers). */
  rows<R = Record<string, unknown>> (sql: string): Promise<R[]>
}

export interface SharedDatabase {
  /** sqlite: the file's path; postgres: the database URL. */
  location: string
  /** Opens another store on this database: another connection (sqlite) or another pool, i.e. another replica (postgres). */
  open (opts?: OpenOptions): Promise<LedgerStore>
  /** A raw connection to this database, closed when the test ends. */
  raw (): Promise<RawSql>
}

export interface StoreFixture {
  kind: StoreKind
  /** A fresh, empty ledger for test t, closed when t ends. */
  open (t: Test, opts?: OpenOptions): Promise<LedgerStore>
  /** A fresh, empty database for test t that several stores can open (SQLite: a file in t.testdir()). */
  shared (t: Test): Promise<SharedDatabase>
}

let started: Promise<{ server: TestPostgres, template: string } | undefined> | undefined

/** The file's PostgreSQL (started on first use), or undefined when there are no binaries (not in CI). */
export function testPostgres (): Promise<{ server: TestPostgres, template: string } | undefined> {
  started ??= (async () => {
    const server = await startTestPostgres()
    if (!server) return undefined
    tap.teardown(() => server.stop())
    try {
      // Migrate once; every test's database is a copy of this one.
      await (await openPostgresLedger(server.url)).close()
    } catch (err) {
      await server.stop()
      throw err
    }
    return { server, template: new URL(server.url).pathname.slice(1) }
  })()
  return started
}

const sqliteFixture: StoreFixture = {
  kind: 'sqlite',
  async open (t, opts = {}) {
    const ledger = await openSqliteLedger(':memory:', { clock: opts.clock })
    t.teardown(() => ledger.close())
    return ledger
  },
  async shared (t) {
    const location = join(t.testdir(), 'ledger.db')
    return {
      location,
      async open (opts = {}) {
        const ledger = await openSqliteLedger(location, { clock: opts.clock })
        t.teardown(() => ledger.close())
        return ledger
      },
      async raw () {
        const db = new Database(location)
        t.teardown(() => db.close())
        db.pragma('foreign_keys = ON')
        return {
          async run (sql) { db.exec(sql) },
          async rows<R> (sql: string) { return db.prepare(sql).all() as R[] },
        }
      },
    }
  },
}

/**
 * Copies of the migrated template, one made ahead: the server copies the next while a test runs
 * (CREATE DATABASE is most of a short test's cost).
 */
function databaseSource (server: TestPostgres, template: string): () => Promise<string> {
  let next: Promise<string> | undefined
  const make = (): Promise<string> => {
    const p = server.createDatabase(template)
    p.catch(() => {}) // reported when taken
    return p
  }
  return () => {
    const taken = next ?? make()
    next = taken.then(make, make)
    return taken
  }
}

function postgresFixture (server: TestPostgres, template: string): StoreFixture {
  const nextDatabase = databaseSource(server, template)
  const shared = async (t: Test): Promise<SharedDatabase> => {
    const location = await nextDatabase()
    return {
      location,
      async open (opts = {}) {
        const ledger = await openPostgresLedger(location, { clock: opts.clock, poolSize: opts.poolSize })
        t.teardown(() => ledger.close())
        return ledger
      },
      async raw () {
        const client = new pg.Client({ connectionString: location })
        client.on('error', () => {}) // the server going away at the end of the file is not a test failure
        await client.connect()
        t.teardown(() => client.end())
        return {
          async run (sql) { await client.query(sql) },
          async rows<R> (sql: string) { return (await client.query(sql)).rows as R[] },
        }
      },
    }
  }
  return {
    kind: 'postgres',
    shared,
    async open (t, opts = {}) {
      return (await shared(t)).open(opts)
    },
  }
}

let pgFixture: StoreFixture | undefined

export function skipReason (): string {
  return `PostgreSQL variants SKIPPED: ${postgresUnavailable}`
}

/**
 * Runs fn once per store, each in its own subtest named after the store. Without PostgreSQL
 * binaries the postgres subtest is skipped with a loud reason (in CI, where CI=true, it fails).
 */
export function forEachStore (t: Test, fn: (t: Test, store: StoreFixture) => void | Promise<void>,
  { kinds = STORE_KINDS }: { kinds?: readonly StoreKind[] } = {}): void {
  for (const kind of kinds.filter((k) => STORE_KINDS.includes(k))) {
    t.test(kind, async (t) => {
      if (kind === 'sqlite') return fn(t, sqliteFixture)
      const pgTest = await testPostgres()
      if (!pgTest) {
        const reason = skipReason()
        process.stderr.write(`\n!!! ${reason}\n\n`)
        t.comment(reason)
        t.plan(0, reason)
        return
      }
      pgFixture ??= postgresFixture(pgTest.server, pgTest.template)
      return fn(t, pgFixture)
    })
  }
}
