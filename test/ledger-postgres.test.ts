import t from 'tap'
import pg from 'pg'
import { payerAccount } from '../src/ledger/accounts.ts'
import { openPostgresLedger } from '../src/ledger/postgres.ts'
import { PG_MIGRATIONS } from '../src/ledger/postgres-schema.ts'
import { forEachStore, testPostgres } from './helpers/ledger-stores.ts'
import { startTestPostgres } from './helpers/postgres.ts'

// What only the PostgreSQL store has: migrations at start-up (several replicas at once, each
// migration once, in a transaction), BIGINT that arrives as a string and must never pass through
// Number, text that cannot hold U+0000, and retries when replicas collide on one id. The shared
// behaviour is in the other ledger-*.test.ts files, which run against both stores.

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))

async function query<R extends pg.QueryResultRow = Record<string, unknown>> (url: string, sql: string, values: unknown[] = []): Promise<R[]> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    return (await c.query<R>(sql, values)).rows
  } finally {
    await c.end()
  }
}

forEachStore(t, (t, store) => {
  t.test('an empty database is migrated at start-up, each version once, and stays durable across reopen', async (t) => {
    const url = await (await testPostgres())!.server.createDatabase()
    const first = await openPostgresLedger(url, { clock: () => T0 })
    await first.deposit({ id: 'd', account: alice, amount: 7n, reference: 'r' })
    await first.close()
    await first.close()
    const second = await openPostgresLedger(url)
    t.teardown(() => second.close())
    t.equal((await second.balance(alice)).available, 7n)
    const versions = await query<{ version: number, applied_at: string }>(url, 'SELECT version, applied_at FROM schema_migrations ORDER BY version')
    t.same(versions.map((v) => v.version), PG_MIGRATIONS.map((m) => m.version))
    t.ok(versions.every((v) => v.applied_at === String(T0)), 'applied by the first open, not again by the second')
    t.equal((await second.totals()).sumOfAllAccounts, 0n)
  })

  t.test('replicas starting at once on an empty database migrate it exactly once', async (t) => {
    const url = await (await testPostgres())!.server.createDatabase()
    const replicas = await Promise.all(Array.from({ length: 5 }, (_, i) => openPostgresLedger(url, { clock: () => T0 + i, poolSize: 2 })))
    t.teardown(() => Promise.all(replicas.map((r) => r.close())))
    const versions = await query<{ version: number, n: string }>(url, 'SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY version')
    t.same(versions, PG_MIGRATIONS.map((m) => ({ version: m.version, n: '1' })))
    await Promise.all(replicas.map((r, i) => r.deposit({ id: `d${i}`, account: alice, amount: 1n, reference: 'r' })))
    t.equal((await replicas[4].balance(alice)).available, 5n)
    await replicas[0].checkInvariants()
  })

  t.test('a failed migration rolls back whole, and a database from a newer build is refused', async (t) => {
    const url = await (await testPostgres())!.server.createDatabase()
    // Something in the way of migration 1: its CREATE TABLE transfers fails after accounts was created.
    await query(url, 'CREATE TABLE transfers (x int)')
    await t.rejects(openPostgresLedger(url), { code: '42P07' })
    t.same(await query(url, "SELECT to_regclass('accounts')::text AS a, to_regclass('schema_migrations')::text AS m"), [{ a: null, m: null }],
      'nothing of migration 1 was left behind, nor recorded')
    await query(url, 'DROP TABLE transfers')
    await (await openPostgresLedger(url)).close()
    await query(url, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)")
    await t.rejects(openPostgresLedger(url), /newer than this build/)
  })

  t.test('BIGINT amounts and balances are exact beyond 2^53', async (t) => {
    const ledger = await store.open(t, { clock: () => T0 })
    const big = 2n ** 53n + 1n // Number(big) === 2 ** 53: one unit would be lost through Number
    await ledger.deposit({ id: 'd1', account: alice, amount: big, reference: 'r' })
    await ledger.grant({ id: 'g1', account: alice, amount: 2n ** 62n + 3n, reason: 'x' })
    t.match(await ledger.reserve({ id: 'p', account: alice, amount: big + 2n, timeoutAt: T0 + 1000, reference: 'q' }), { ok: true, transfer: { amount: big + 2n } })
    await ledger.post({ pendingId: 'p', id: 'post', amount: big })
    t.same(await ledger.balance(alice), {
      account: alice, creditsPosted: big + 2n ** 62n + 3n, debitsPosted: big, debitsPending: 0n, available: 2n ** 62n + 3n,
    })
    t.equal((await ledger.getTransfer('d1'))!.amount, big)
    t.equal((await ledger.transfers(alice))[0].amount, big)
    t.same(await ledger.reserve({ id: 'p2', account: alice, amount: 2n ** 62n + 4n, timeoutAt: T0 + 1000, reference: 'q' }),
      { ok: false, code: 'insufficient_credit', available: 2n ** 62n + 3n })
    t.same((await ledger.accounts())[0].available, 2n ** 62n + 3n)
    t.same(await ledger.totals(), { sumOfAllAccounts: 0n, pendingCount: 0 })
    await ledger.checkInvariants()
  })

  t.test('text PostgreSQL cannot hold (U+0000) is refused as an argument, not stored mangled', async (t) => {
    const ledger = await store.open(t, { clock: () => T0 })
    await t.rejects(ledger.deposit({ id: 'd', account: alice, amount: 1n, reference: 'a\u0000b' }), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.useNonce('siwx', 'n\u0000', T0 + 1), { code: 'LEDGER_ARGUMENT_INVALID' })
    t.equal(await ledger.getTransfer('d'), null)
  })

  t.test('two replicas posting one id at once: one transfer, the other call is its duplicate', async (t) => {
    const db = await store.shared(t)
    const [a, b] = await Promise.all([db.open({ clock: () => T0 }), db.open({ clock: () => T0 })])
    for (let round = 0; round < 5; round++) {
      const both = await Promise.all([a, b].map((l) => l.deposit({ id: `d${round}`, account: alice, amount: 10n, reference: 'r' })))
      t.same(both.map((r) => r.duplicate).sort(), [false, true], `deposit round ${round}`)
      const reserves = await Promise.all([a, b].map((l) => l.reserve({ id: `p${round}`, account: alice, amount: 3n, timeoutAt: T0 + 1000, reference: 'q' })))
      t.same(reserves.map((r) => r.ok && r.duplicate).sort(), [false, true], `reserve round ${round}`)
      const posts = await Promise.allSettled([
        a.post({ pendingId: `p${round}`, id: `post${round}`, amount: 1n }),
        b.post({ pendingId: `p${round}`, id: `post${round}`, amount: 1n }),
        b.void({ pendingId: `p${round}`, id: `void${round}`, reason: 'x' }),
      ])
      const resolved = posts.filter((p) => p.status === 'fulfilled' && !p.value.duplicate).length
      t.equal(resolved, 1, `round ${round}: the pending resolves once`)
      for (const p of posts) if (p.status === 'rejected') t.match(p.reason, { code: 'LEDGER_PENDING_RESOLVED' })
    }
    t.equal((await a.transfers(alice, { limit: 100 })).length, 15)
    await b.checkInvariants()
  })

  t.test('sweeps racing posts on other replicas: every pending resolves exactly once', async (t) => {
    const db = await store.shared(t)
    const clock = { now: T0 }
    const [a, b, c] = await Promise.all([0, 1, 2].map(() => db.open({ clock: () => clock.now })))
    const payers = [1, 2, 3].map((i) => payerAccount(8453, '0x' + String(i).repeat(40)))
    for (const p of payers) await a.deposit({ id: `d-${p}`, account: p, amount: 1000n, reference: 'r' })
    for (let i = 0; i < 30; i++) {
      await a.reserve({ id: `p${i}`, account: payers[i % 3], amount: 10n, timeoutAt: T0 + 100 + (i % 2), reference: 'q' })
    }
    clock.now = T0 + 100
    const outcomes = await Promise.allSettled([
      a.expirePending(T0 + 101),
      b.expirePending(T0 + 101),
      ...Array.from({ length: 30 }, (_, i) => c.post({ pendingId: `p${i}`, id: `post${i}`, amount: 5n })),
    ])
    const swept = outcomes.slice(0, 2).reduce((n, o) => n + (o.status === 'fulfilled' ? o.value as number : NaN), 0)
    const posted = outcomes.slice(2).filter((o) => o.status === 'fulfilled').length
    for (const o of outcomes.slice(2)) if (o.status === 'rejected') t.match(o.reason, { code: 'LEDGER_PENDING_RESOLVED', state: 'expired' })
    // Half were due at the posts' now (a post expires those itself); the sweeps' now covers them all.
    t.ok(posted <= 15, `posted ${posted}`)
    const expired = await query<{ n: string }>(db.location, "SELECT count(*) AS n FROM transfers WHERE kind = 'expire'")
    t.equal(Number(expired[0].n), 30 - posted, 'every pending not posted expired, once')
    t.ok(swept <= 30 - posted, `swept ${swept}`)
    t.equal((await c.totals()).pendingCount, 0)
    await c.checkInvariants()
  })

  t.test('TEST_DATABASE_URL: the helper makes a database per call on that server and drops it on stop', async (t) => {
    const admin = new URL((await testPostgres())!.server.url)
    admin.pathname = '/postgres'
    const saved = process.env.TEST_DATABASE_URL
    process.env.TEST_DATABASE_URL = admin.toString()
    t.teardown(() => { if (saved === undefined) delete process.env.TEST_DATABASE_URL; else process.env.TEST_DATABASE_URL = saved })
    const external = (await startTestPostgres())!
    const second = await external.createDatabase()
    const names = [external.url, second].map((u) => new URL(u).pathname.slice(1))
    t.not(names[0], names[1])
    const exists = async () => (await query<{ n: string }>(admin.toString(), 'SELECT count(*) AS n FROM pg_database WHERE datname = ANY($1)', [names]))[0].n
    t.equal(await exists(), '2')
    const ledger = await openPostgresLedger(second)
    await ledger.close()
    await external.stop()
    t.equal(await exists(), '0')
    t.match(external.source, /TEST_DATABASE_URL/)
  })
}, { kinds: ['postgres'] })
