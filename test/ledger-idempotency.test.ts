import t, { type Test } from 'tap'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// Idempotency records: one request per (account, key) runs; a retry sees it running or gets its
// stored response; another body under the same key is a conflict; expired records are replaced.
// Against both stores.

const T0 = 1_700_000_000_000
const TTL = 24 * 3600_000

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: T0 }
  const ledger = await store.open(t, { clock: () => clock.now })
  return { ledger, clock }
}

const begin = (over: Partial<{ account: string, key: string, bodyHash: string, requestId: string, now: number, expiresAt: number }> = {}) =>
  ({ account: 'acct-a', key: 'k1', bodyHash: 'body-1', requestId: 'req-1', now: T0, expiresAt: T0 + TTL, ...over })
const response = { status: 200, headers: { 'content-type': 'application/json', 'x-request-id': 'req-1' }, body: '{"ok":true}' }

forEachStore(t, (t, store) => {
  t.test('started, then in flight, then completed with the stored response', async (t) => {
    const { ledger } = await setup(t, store)
    t.same(await ledger.beginIdempotent(begin()), { state: 'started' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-2', now: T0 + 5 })), { state: 'in_flight', requestId: 'req-1' })
    t.same(await ledger.beginIdempotent(begin({ bodyHash: 'body-2', requestId: 'req-3' })), { state: 'conflict' })
    await ledger.completeIdempotent({ account: 'acct-a', key: 'k1', response })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-4', now: T0 + 10 })), { state: 'completed', response, requestId: 'req-1' })
    t.same(await ledger.beginIdempotent(begin({ bodyHash: 'body-2', requestId: 'req-5' })), { state: 'conflict' }, 'a completed key with another body')
  })

  t.test('keys are scoped per account', async (t) => {
    const { ledger } = await setup(t, store)
    t.same(await ledger.beginIdempotent(begin()), { state: 'started' })
    t.same(await ledger.beginIdempotent(begin({ account: 'acct-b', bodyHash: 'other' })), { state: 'started' })
    t.same(await ledger.beginIdempotent(begin({ key: 'k2' })), { state: 'started' })
  })

  t.test('a completed response is final: a second complete or an abandon does not touch it', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.beginIdempotent(begin())
    await ledger.completeIdempotent({ account: 'acct-a', key: 'k1', response })
    await ledger.completeIdempotent({ account: 'acct-a', key: 'k1', response: { ...response, status: 500, body: 'late' } })
    await ledger.abandonIdempotent({ account: 'acct-a', key: 'k1' })
    t.match(await ledger.beginIdempotent(begin()), { state: 'completed', response })
    await t.resolves(ledger.completeIdempotent({ account: 'acct-a', key: 'missing', response }), 'completing nothing is a no-op')
    const raw = await db.raw()
    await t.rejects(raw.run("UPDATE idempotency_records SET body = 'forged'"), /final until it expires/)
    await t.rejects(raw.run("UPDATE idempotency_records SET state = 'in_flight', status = NULL, headers = NULL, body = NULL, completed_at = NULL"), /final/)
    await t.rejects(raw.run("INSERT INTO idempotency_records (account, key, body_hash, request_id, state, created_at, expires_at) VALUES ('a', 'b', 'c', 'd', 'completed', 0, 1)"),
      /CHECK|check constraint/, 'a completed record must carry a response')
  })

  t.test('abandoning an in-flight record lets a retry run', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.beginIdempotent(begin())
    await ledger.abandonIdempotent({ account: 'acct-a', key: 'k1' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-2', bodyHash: 'body-2' })), { state: 'started' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-3', bodyHash: 'body-2' })), { state: 'in_flight', requestId: 'req-2' })
  })

  t.test('an expired record is replaced, in flight or completed', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.beginIdempotent(begin({ expiresAt: T0 + 100 }))
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-2', now: T0 + 99 })), { state: 'in_flight', requestId: 'req-1' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-2', bodyHash: 'body-2', now: T0 + 100, expiresAt: T0 + 200 })), { state: 'started' },
      'expiresAt <= now: replaced, even with another body')
    await ledger.completeIdempotent({ account: 'acct-a', key: 'k1', response })
    t.match(await ledger.beginIdempotent(begin({ bodyHash: 'body-2', now: T0 + 199 })), { state: 'completed', requestId: 'req-2' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-3', now: T0 + 200, expiresAt: T0 + 300 })), { state: 'started' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-4', now: T0 + 201 })), { state: 'in_flight', requestId: 'req-3' })
  })

  t.test('with requestId, complete and abandon leave a record that replaced theirs alone', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.beginIdempotent(begin({ expiresAt: T0 + 100 }))
    // req-1 ran past its expiry; req-2 took the key over.
    await ledger.beginIdempotent(begin({ requestId: 'req-2', now: T0 + 150, expiresAt: T0 + 1000 }))
    await ledger.completeIdempotent({ account: 'acct-a', key: 'k1', requestId: 'req-1', response: { ...response, body: 'stale' } })
    await ledger.abandonIdempotent({ account: 'acct-a', key: 'k1', requestId: 'req-1' })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-3', now: T0 + 200 })), { state: 'in_flight', requestId: 'req-2' })
    await ledger.completeIdempotent({ account: 'acct-a', key: 'k1', requestId: 'req-2', response })
    t.same(await ledger.beginIdempotent(begin({ requestId: 'req-3', now: T0 + 200 })), { state: 'completed', response, requestId: 'req-2' })
  })

  t.test('concurrent begins of one key: exactly one starts', async (t) => {
    const db = await store.shared(t)
    const a = await db.open({ clock: () => T0 })
    const b = await db.open({ clock: () => T0 })
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      (i % 2 === 0 ? a : b).beginIdempotent(begin({ requestId: `req-${i}` }))))
    t.equal(results.filter((r) => r.state === 'started').length, 1)
    t.same(results.filter((r) => r.state !== 'started').map((r) => r.state), Array(9).fill('in_flight'))
  })

  t.test('prune removes expired records only; arguments are checked', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.beginIdempotent(begin({ key: 'old', expiresAt: T0 + 10 }))
    await ledger.beginIdempotent(begin({ key: 'done', expiresAt: T0 + 10 }))
    await ledger.completeIdempotent({ account: 'acct-a', key: 'done', response })
    await ledger.beginIdempotent(begin({ key: 'live' }))
    t.equal(await ledger.pruneIdempotent(T0 + 10), 2)
    t.same(await ledger.beginIdempotent(begin({ key: 'live', requestId: 'r' })), { state: 'in_flight', requestId: 'req-1' })
    t.same(await ledger.beginIdempotent(begin({ key: 'done', bodyHash: 'x' })), { state: 'started' })
    await t.rejects(ledger.beginIdempotent(begin({ expiresAt: T0 })), { code: 'LEDGER_ARGUMENT_INVALID' }, 'expiresAt must be after now')
    await t.rejects(ledger.beginIdempotent(begin({ key: '' })), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.completeIdempotent({ account: 'acct-a', key: 'live', response: { ...response, status: 42 } }), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.completeIdempotent({ account: 'acct-a', key: 'live', response: { ...response, headers: { a: 1 as never } } }), { code: 'LEDGER_ARGUMENT_INVALID' })
  })
})
