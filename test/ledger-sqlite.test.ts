import t from 'tap'
import Database from 'better-sqlite3'
import { join } from 'node:path'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import { payerAccount } from '../src/ledger/accounts.ts'

// What only the SQLite store has: a ledger file (WAL, migrated once, durable across reopen) and
// its schema version. The behaviour both stores share is in ledger-transfers.test.ts and the other
// ledger-*.test.ts files; the PostgreSQL counterparts of these are in ledger-postgres.test.ts.

const alice = payerAccount(8453, '0x' + 'A1'.repeat(20))

t.test('a file ledger is WAL, migrated once, and durable across reopen', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  const first = await openSqliteLedger(path)
  await first.deposit({ id: 'd', account: alice, amount: 7n, reference: 'r' })
  await first.close()
  await first.close()
  const second = await openSqliteLedger(path)
  t.teardown(() => second.close())
  t.equal((await second.balance(alice)).available, 7n)
  const raw = new Database(path, { readonly: true })
  t.teardown(() => raw.close())
  t.equal(raw.pragma('journal_mode', { simple: true }), 'wal')
  t.same(raw.prepare('SELECT version FROM schema_migrations ORDER BY version').pluck().all(), [1, 2, 3, 4])
  t.equal((await second.totals()).sumOfAllAccounts, 0n)
})

t.test('opening a database from a newer build is refused', async (t) => {
  const path = join(t.testdir(), 'ledger.db')
  await (await openSqliteLedger(path)).close()
  const raw = new Database(path)
  raw.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, ?, 0)').run('future')
  raw.close()
  await t.rejects(openSqliteLedger(path), /newer than this build/)
})
