import t, { type Test } from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { forEachStore, type StoreFixture } from './helpers/ledger-stores.ts'

// API keys (stored as a hash, capped per account, revocable by their owner only) and single-use
// sign-in nonces, against both stores.

const T0 = 1_700_000_000_000
const alice = payerAccount(8453, '0x' + 'a1'.repeat(20))
const bob = payerAccount(8453, '0x' + 'b2'.repeat(20))

async function setup (t: Test, store: StoreFixture) {
  const clock = { now: T0 }
  const ledger = await store.open(t, { clock: () => clock.now })
  return { ledger, clock }
}

const key = (n: number, account = alice, createdAt = T0 + n) =>
  ({ id: `key_${n}`, account, name: `k${n}`, prefix: `sk_${n}`, hash: `hash-${n}`, createdAt, maxPerAccount: 3 })

forEachStore(t, (t, store) => {
  t.test('an API key is created, listed newest first, and found by its hash', async (t) => {
    const { ledger } = await setup(t, store)
    const rec = await ledger.createApiKey(key(1))
    t.same(rec, { id: 'key_1', account: alice, name: 'k1', prefix: 'sk_1', hash: 'hash-1', createdAt: T0 + 1, revokedAt: null, lastUsedAt: null })
    await ledger.createApiKey({ ...key(2), name: null })
    await ledger.createApiKey(key(3, bob))
    t.same((await ledger.listApiKeys(alice)).map((k) => k.id), ['key_2', 'key_1'])
    t.equal((await ledger.listApiKeys(alice))[0].name, null)
    t.same((await ledger.listApiKeys(bob)).map((k) => k.id), ['key_3'])
    t.same(await ledger.listApiKeys(payerAccount(1, '0x' + 'cc'.repeat(20))), [])
    t.match(await ledger.findApiKeyByHash('hash-2'), { id: 'key_2', account: alice })
    t.equal(await ledger.findApiKeyByHash('hash-404'), null)
  })

  t.test('a key id or hash is never reused; keys belong to payer accounts', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.createApiKey(key(1))
    await t.rejects(ledger.createApiKey({ ...key(2), hash: 'hash-1' }), { code: 'LEDGER_API_KEY_CONFLICT', field: 'hash' })
    await t.rejects(ledger.createApiKey({ ...key(2), id: 'key_1' }), { code: 'LEDGER_API_KEY_CONFLICT', field: 'id' })
    await t.rejects(ledger.createApiKey({ ...key(2), account: 'system:revenue' }), { code: 'LEDGER_ACCOUNT_INVALID' })
    await t.rejects(ledger.createApiKey({ ...key(2), hash: '' }), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.createApiKey({ ...key(2), maxPerAccount: 0 }), { code: 'LEDGER_ARGUMENT_INVALID' })
    t.equal((await ledger.listApiKeys(alice)).length, 1)
  })

  t.test('at most maxPerAccount unrevoked keys per account; revoking makes room', async (t) => {
    const { ledger } = await setup(t, store)
    for (const n of [1, 2, 3]) await ledger.createApiKey(key(n))
    await t.rejects(ledger.createApiKey(key(4)), { code: 'LEDGER_TOO_MANY_KEYS', limit: 3 })
    t.ok(await ledger.createApiKey(key(5, bob)), 'the cap is per account')
    await t.rejects(ledger.createApiKey({ ...key(4), maxPerAccount: 2 }), { code: 'LEDGER_TOO_MANY_KEYS' })
    t.equal(await ledger.revokeApiKey(alice, 'key_2', T0 + 100), true)
    t.match(await ledger.createApiKey(key(4)), { id: 'key_4' })
    await t.rejects(ledger.createApiKey(key(6)), { code: 'LEDGER_TOO_MANY_KEYS' })
    t.equal((await ledger.listApiKeys(alice)).length, 4, 'the list includes revoked keys')
  })

  t.test('only the owner revokes, once; a revoked key is no longer found', async (t) => {
    const { ledger } = await setup(t, store)
    await ledger.createApiKey(key(1))
    t.equal(await ledger.revokeApiKey(bob, 'key_1', T0 + 5), false, 'not theirs')
    t.equal(await ledger.revokeApiKey(alice, 'key_404', T0 + 5), false, 'not found')
    t.ok(await ledger.findApiKeyByHash('hash-1'))
    t.equal(await ledger.revokeApiKey(alice, 'key_1', T0 + 5), true)
    t.equal(await ledger.revokeApiKey(alice, 'key_1', T0 + 6), false, 'already revoked')
    t.equal(await ledger.findApiKeyByHash('hash-1'), null)
    t.match((await ledger.listApiKeys(alice))[0], { id: 'key_1', revokedAt: T0 + 5 })
  })

  t.test('findApiKeyByHash touches lastUsedAt at most once a minute', async (t) => {
    const { ledger, clock } = await setup(t, store)
    await ledger.createApiKey(key(1))
    const stored = async () => (await ledger.listApiKeys(alice))[0].lastUsedAt
    clock.now = T0 + 1000
    t.equal((await ledger.findApiKeyByHash('hash-1'))!.lastUsedAt, T0 + 1000)
    t.equal(await stored(), T0 + 1000)
    clock.now = T0 + 1000 + 59_999
    t.equal((await ledger.findApiKeyByHash('hash-1'))!.lastUsedAt, T0 + 1000, 'not touched within the minute')
    t.equal(await stored(), T0 + 1000)
    clock.now = T0 + 1000 + 60_000
    t.equal((await ledger.findApiKeyByHash('hash-1'))!.lastUsedAt, T0 + 61_000)
    t.equal(await stored(), T0 + 61_000)
  })

  t.test('raw SQL cannot un-revoke a key or change what it is', async (t) => {
    const db = await store.shared(t)
    const ledger = await db.open({ clock: () => T0 })
    await ledger.createApiKey(key(1))
    await ledger.createApiKey(key(2))
    await ledger.revokeApiKey(alice, 'key_1', T0 + 5)
    const raw = await db.raw()
    await t.rejects(raw.run("UPDATE api_keys SET revoked_at = NULL WHERE id = 'key_1'"), /only be revoked/)
    await t.rejects(raw.run("UPDATE api_keys SET hash = 'stolen' WHERE id = 'key_2'"), /only be revoked/)
    await t.rejects(raw.run(`UPDATE api_keys SET account = '${bob}' WHERE id = 'key_2'`), /only be revoked/)
    await t.rejects(raw.run(`INSERT INTO api_keys (id, account, prefix, hash, created_at) VALUES ('x', '${bob}', 'p', 'hash-2', 0)`), /unique/i)
    t.equal(await ledger.findApiKeyByHash('hash-1'), null)
    t.match(await ledger.findApiKeyByHash('hash-2'), { account: alice })
  })

  t.test('a nonce is used once per scope, until it is pruned', async (t) => {
    const { ledger } = await setup(t, store)
    t.equal(await ledger.useNonce('siwx', 'n1', T0 + 1000), true)
    t.equal(await ledger.useNonce('siwx', 'n1', T0 + 1000), false)
    t.equal(await ledger.useNonce('siwx', 'n1', T0 + 9999), false, 'a new expiry does not make it new')
    t.equal(await ledger.useNonce('other', 'n1', T0 + 1000), true, 'scopes are separate')
    t.equal(await ledger.useNonce('siwx', 'n2', T0 + 2000), true)
    const all = await Promise.all(Array.from({ length: 10 }, () => ledger.useNonce('siwx', 'n3', T0 + 3000)))
    t.equal(all.filter(Boolean).length, 1)
    t.equal(await ledger.useNonce('siwx', 'n1', T0), false, 'an expired but unpruned nonce still counts as used')
    t.equal(await ledger.pruneNonces(T0 + 1000), 2, 'expiresAt <= now is pruned')
    t.equal(await ledger.useNonce('siwx', 'n2', T0 + 2000), false, 'a live nonce survives the prune')
    t.equal(await ledger.useNonce('siwx', 'n1', T0 + 5000), true)
    t.equal(await ledger.pruneNonces(T0), 0)
    await t.rejects(ledger.useNonce('', 'n', T0), { code: 'LEDGER_ARGUMENT_INVALID' })
    await t.rejects(ledger.useNonce('siwx', 'n', -1), { code: 'LEDGER_ARGUMENT_INVALID' })
  })

  t.test('a nonce used on one connection is used for the other', async (t) => {
    const db = await store.shared(t)
    const a = await db.open({ clock: () => T0 })
    const b = await db.open({ clock: () => T0 })
    t.equal(await a.useNonce('siwx', 'n1', T0 + 1), true)
    t.equal(await b.useNonce('siwx', 'n1', T0 + 1), false)
  })
})
