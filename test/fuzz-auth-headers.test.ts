import t from 'tap'
import fc from 'fast-check'
import { privateKeyToAccount } from 'viem/accounts'
import { createSIWxMessage, createSIWxPayload, encodeSIWxHeader, type SIWxExtension, type SIWxPayload } from '@x402/extensions/sign-in-with-x'
import { decodePaymentRequiredHeader } from '@x402/core/http'
import { generateApiKey } from '../src/auth/keys.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, ADMIN_TOKEN } from './helpers/gateway.ts'
import {
  Tally, assertUnharmed, chainSnapshot, codeOf, contractViolations, fuzzParams, headerValueBytes, hostileJsonText, ledgerProblems,
  pacer, prototypeProblems, rawRequest, runProperty, type RawResponse,
} from './helpers/fuzz.ts'

// Hostile credentials: SIGN-IN-WITH-X headers (junk, arbitrary JSON, mutations of a really signed
// sign-in) and Authorization headers (mutations of a real API key, of the admin token, junk).
// The signed-in wallet and the key's account hold no credit, so even an accepted credential can
// spend nothing: read routes answer 200 or 401, the paid route 402; never a 5xx, never money.

const stack = await withStack(t)
const gw = await startGateway(stack)
t.teardown(() => gw.close())
const pace = pacer()
const before = await chainSnapshot(stack)

const wallet = privateKeyToAccount(stack.payer2.privateKey)
const walletAccount = payerAccount(stack.chain.chainId, stack.payer2.address)

// A real API key for payer2, stored directly (buying one would need a payment).
const key = generateApiKey()
await gw.app.ledger.createApiKey({ id: key.id, account: walletAccount, name: 'fuzz', prefix: key.prefix, hash: key.hash, createdAt: Date.now(), maxPerAccount: 20 })

const CHAT = '/v1/chat/completions'
const chatText = JSON.stringify(chatBody('fuzzing credentials'))

async function get (target: string, headers: Array<[string, string | Buffer]>): Promise<RawResponse> {
  await pace()
  return rawRequest(gw.url, { target, headers })
}
async function chat (headers: Array<[string, string | Buffer]>): Promise<RawResponse> {
  await pace()
  return rawRequest(gw.url, { method: 'POST', target: CHAT, headers: [['Content-Type', 'application/json'], ...headers], body: chatText })
}

async function check (res: RawResponse, allowed: number[], what: string): Promise<void> {
  const problems = [...contractViolations(res)]
  if (!allowed.includes(res.status)) problems.push(`status ${res.status} (${codeOf(res)}) not in ${allowed}`)
  problems.push(...await ledgerProblems(gw), ...prototypeProblems())
  if (problems.length) throw new Error(`${problems.join('; ')} — ${what}`)
}

/** A fresh sign-in, signed by payer2 for the challenge in a real 402 of this gateway. */
async function signIn (): Promise<SIWxPayload> {
  const res = await fetch(`${gw.url}${CHAT}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: chatText })
  const required = decodePaymentRequiredHeader(res.headers.get('payment-required')!)
  const ext = required.extensions?.['sign-in-with-x'] as SIWxExtension
  return createSIWxPayload({ ...ext.info, chainId: ext.supportedChains[0].chainId, type: 'eip191' }, wallet, `${gw.url}${CHAT}`)
}
const encodeJson = (v: unknown) => Buffer.from(JSON.stringify(v), 'utf8').toString('base64')

const READ_ROUTES = ['/v1/credits', '/v1/keys', '/v1/receipts', '/v1/usage']

// --- SIGN-IN-WITH-X ---------------------------------------------------------------------------

t.test('fuzz: junk and arbitrary-JSON SIGN-IN-WITH-X headers', async (t) => {
  const seen = new Tally()
  const value = fc.oneof(
    headerValueBytes(9000),
    fc.oneof(fc.json({ maxDepth: 3 }), hostileJsonText).filter((s) => s.length < 9000).map((s) => Buffer.from(Buffer.from(s).toString('base64'))),
  )
  await runProperty(t, 'siwx junk', fc.asyncProperty(fc.constantFrom(...READ_ROUTES, CHAT), value, async (route, v) => {
    const res = route === CHAT ? await chat([['SIGN-IN-WITH-X', v]]) : await get(route, [['SIGN-IN-WITH-X', v]])
    seen.add(`${route === CHAT ? 'chat' : 'read'} ${codeOf(res)}`)
    await check(res, route === CHAT ? [402] : [401], `${route}: ${JSON.stringify(v.toString('latin1').slice(0, 120))}`)
    if (route !== CHAT && res.json?.error?.metadata?.siwx !== true) throw new Error(`a refused sign-in should say so: ${res.text.slice(0, 200)}`)
  }), fuzzParams(t, 'siwx junk', { seed: 8101, runs: 120 }))
  t.comment(`outcomes: ${seen}`)
})

const SIWX_FIELDS = ['domain', 'address', 'statement', 'uri', 'version', 'chainId', 'type', 'nonce', 'issuedAt', 'expirationTime', 'notBefore', 'requestId', 'resources', 'signatureScheme', 'signature'] as const
const siwxValue = (): fc.Arbitrary<unknown> => {
  const port = new URL(gw.url).port
  return fc.oneof(
    fc.constantFrom<unknown>(
      null, undefined, 0, 1, true, [], {}, '', ' ', '\n', 'a\nb', 'evil.com', `127.0.0.1:${port}.evil.com`, `127.0.0.1:${port}\n`, 'localhost', `127.0.0.1:${Number(port) + 1}`,
      `http://127.0.0.1:${port}@evil.com/`, `http://evil.com/#127.0.0.1:${port}`, `${gw.url}/../admin`, `${gw.url}/%2e%2e/admin`, 'javascript:alert(1)', 'data:,x', `HTTP://127.0.0.1:${port}/`,
      'eip155:1', 'eip155:84532 ', ' eip155:84532', 'eip155:0', 'eip155:084532', 'eip155:999999999999999', 'eip155:9999999999999999', 'solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp', 'EIP155:84532',
      '1970-01-01T00:00:00Z', '2099-01-01T00:00:00.000Z', '+275760-09-13T00:00:00.000Z', '2024-02-30T00:00:00Z', 'not a date', '1e309', 'NaN', new Date(Date.now() + 3600_000).toISOString(),
      'short', 'a'.repeat(8), 'a'.repeat(129), 'nonce-with-dash', 'n\u00f6nce000', '../../etc/passwd',
      stack.payer2.address.toLowerCase(), stack.payer.address, '0x' + '00'.repeat(20), '0x', '0x' + 'ab'.repeat(65), '0x' + 'ab'.repeat(64) + '1b', '0x' + 'ab'.repeat(5000),
      'eip191', 'ed25519', 'eip1271', 'eip6492', 'siws', '1', '2', '1.0', ['https://evil.com'], [`${gw.url}${CHAT}`, 'not a uri'], ['\n'],
    ),
    fc.string({ maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 20 }),
  )
}

t.test('fuzz: mutations of a really signed sign-in (read routes and the paid route)', async (t) => {
  const seen = new Tally()
  const base = await signIn()
  const baseMessage = createSIWxMessage(base, base.address)
  const sameMessage = (p: Record<string, unknown>) => { try { return createSIWxMessage(p as never, String(p.address)) === baseMessage } catch { return false } }
  let accepted = 0
  const mutation = fc.array(fc.tuple(fc.constantFrom(...SIWX_FIELDS), fc.oneof({ weight: 4, arbitrary: siwxValue() }, { weight: 1, arbitrary: fc.constant('__delete__') })), { minLength: 1, maxLength: 3 })
  await runProperty(t, 'siwx mutations', fc.asyncProperty(fc.constantFrom(...READ_ROUTES, CHAT), mutation, fc.boolean(), async (route, changes, proto) => {
    const p: Record<string, unknown> = { ...base }
    for (const [field, v] of changes) {
      if (v === '__delete__') delete p[field]
      else p[field] = v
    }
    let header = encodeJson(p)
    if (proto) header = Buffer.from(JSON.stringify(p).replace(/^\{/, '{"__proto__":{"address":"0x0000000000000000000000000000000000000001"},'), 'utf8').toString('base64')
    if (header.length > 12_000) return
    const res = route === CHAT ? await chat([['SIGN-IN-WITH-X', header]]) : await get(route, [['SIGN-IN-WITH-X', header]])
    seen.add(`${route === CHAT ? 'chat' : 'read'} ${codeOf(res)}`)
    // Only a payload whose signed message is unchanged may pass (once: its nonce is then used).
    const ok = sameMessage(p)
    await check(res, route === CHAT ? [402] : (ok ? [200, 401] : [401]), `${route}: ${JSON.stringify(changes).slice(0, 300)}`)
    if (res.status === 200) {
      accepted++
      if (route === '/v1/credits' && res.json?.account !== walletAccount) throw new Error(`signed in as ${res.json?.account}, expected ${walletAccount}`)
    }
    if (route === CHAT && res.json?.code === 'insufficient_credit' && !ok) throw new Error('a changed sign-in identified a payer on the paid route')
  }), fuzzParams(t, 'siwx mutations', { seed: 8102, runs: 150 }))
  t.comment(`outcomes: ${seen}`)
  t.ok(accepted <= 1, `a sign-in is accepted at most once (accepted ${accepted} times)`)
})

// --- Authorization ----------------------------------------------------------------------------

const trimOws = (b: Buffer) => b.toString('latin1').replace(/^[ \t]+|[ \t]+$/g, '')
/** The gateway's documented reading of Authorization: "Bearer <token>" (scheme in any case), at most 1024 characters. */
function bearer (value: string): string | undefined {
  if (value.length === 0 || value.length > 1024) return undefined
  return /^Bearer\s+(\S+)$/i.exec(value)?.[1]
}

const tokenMutation = (secret: string): fc.Arbitrary<string> => fc.oneof(
  fc.constant(secret),
  fc.integer({ min: 0, max: secret.length - 1 }).map((i) => secret.slice(0, i) + (secret[i] === 'A' ? 'B' : 'A') + secret.slice(i + 1)),
  fc.integer({ min: 0, max: secret.length - 1 }).map((i) => secret.slice(0, i)),
  fc.string({ minLength: 1, maxLength: 4 }).map((s) => secret + s.replace(/[\x00-\x1f\x7f]/g, '')),
  fc.constantFrom(secret.toUpperCase(), secret.toLowerCase(), secret.replace('sk-x402-', ''), secret.replace('sk-x402-', 'sk-x403-'), secret.replace('-', '\u2010'), `"${secret}"`, `${secret},${secret}`, secret.slice(0, 14)),
  fc.string({ minLength: 43, maxLength: 43, unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-'.split('')) }).map((s) => 'sk-x402-' + s),
)
const authorizationFor = (secret: string): fc.Arbitrary<Buffer> => fc.oneof(
  { weight: 4, arbitrary: fc.tuple(fc.constantFrom('Bearer ', 'bearer ', 'BEARER ', 'Bearer  ', 'Bearer\t', 'Bearer\u00a0', 'Bearer', 'Basic ', 'Token ', '', 'Bearer Bearer ', ' Bearer '), tokenMutation(secret), fc.constantFrom('', ' ', '\t', ' x', ',', '\u00a0'))
    // UTF-8 on the wire; the server reads header bytes as latin-1 (so does the oracle below).
    .map(([scheme, token, tail]) => Buffer.from(scheme + token + tail, 'utf8')) },
  { weight: 1, arbitrary: headerValueBytes(1100) },
  { weight: 1, arbitrary: fc.integer({ min: 1000, max: 1100 }).map((n) => Buffer.from('Bearer ' + 'k'.repeat(n))) },
)

t.test('fuzz: Authorization headers around a real API key', async (t) => {
  const seen = new Tally()
  await runProperty(t, 'api keys', fc.asyncProperty(fc.constantFrom(...READ_ROUTES, CHAT), authorizationFor(key.secret), async (route, value) => {
    const res = route === CHAT ? await chat([['Authorization', value]]) : await get(route, [['Authorization', value]])
    seen.add(`${route === CHAT ? 'chat' : 'read'} ${codeOf(res)}`)
    const token = bearer(trimOws(value))
    const valid = token === key.secret
    // The key's account has no credit: with the key the paid route asks for a top-up (402); with
    // no bearer token at all it asks for payment (402); a bearer token that is not a key is a 401.
    const allowed = route === CHAT ? (valid || token === undefined ? [402] : [401]) : (valid ? [200] : [401])
    await check(res, allowed, `${route}: ${JSON.stringify(value.toString('latin1').slice(0, 120))}`)
    if (route === '/v1/credits' && res.status === 200 && res.json?.account !== walletAccount) throw new Error(`the key identified ${res.json?.account}`)
  }), fuzzParams(t, 'api keys', { seed: 8103, runs: 150 }))
  t.comment(`outcomes: ${seen}`)
})

t.test('fuzz: Authorization headers around the admin token', async (t) => {
  const seen = new Tally()
  const routes = ['/admin/accounts', `/admin/accounts/${walletAccount}`, '/admin/usage', '/v1/receipts/req_00000000000000000000000000000000']
  await runProperty(t, 'admin token', fc.asyncProperty(fc.constantFrom(...routes), authorizationFor(ADMIN_TOKEN), async (route, value) => {
    const res = await get(route, [['Authorization', value]])
    seen.add(`${route.split('/')[1]} ${codeOf(res)}`)
    const admin = bearer(trimOws(value)) === ADMIN_TOKEN
    // Receipts: the admin gets a 404 for an unknown id; anyone else must sign in first (401).
    const allowed = route.startsWith('/v1/receipts') ? (admin ? [404] : [401]) : (admin ? [200] : [401])
    await check(res, allowed, `${route}: ${JSON.stringify(value.toString('latin1').slice(0, 120))}`)
  }), fuzzParams(t, 'admin token', { seed: 8104, runs: 120 }))
  t.comment(`outcomes: ${seen}`)
})

// --- named regression cases -------------------------------------------------------------------

t.test('regression: SIGN-IN-WITH-X edge cases', async (t) => {
  const fresh = await signIn()
  const cases: Array<[string, string | Buffer, string]> = [
    ['empty', '', 'siwx_malformed'],
    ['8193 characters', 'A'.repeat(8193), 'siwx_malformed'],
    ['JSON null', encodeJson(null), 'siwx_malformed'],
    ['a JSON array', encodeJson([fresh]), 'siwx_malformed'],
    ['statement with a newline', encodeJson({ ...fresh, statement: 'a\nb' }), 'siwx_malformed'],
    ['another domain', encodeJson({ ...fresh, domain: 'evil.com' }), 'siwx_domain_mismatch'],
    ['uri with userinfo', encodeJson({ ...fresh, uri: `http://127.0.0.1:${new URL(gw.url).port}@evil.com/v1/chat/completions` }), 'siwx_domain_mismatch'],
    ['another chain', encodeJson({ ...fresh, chainId: 'eip155:1' }), 'siwx_wrong_chain'],
    ['chain id past 2^53', encodeJson({ ...fresh, chainId: 'eip155:9999999999999999' }), 'siwx_malformed'],
    ['expired', encodeJson({ ...fresh, expirationTime: '2000-01-01T00:00:00.000Z' }), 'siwx_expired'],
    ['issued in the future', encodeJson({ ...fresh, issuedAt: new Date(Date.now() + 3600_000).toISOString(), expirationTime: undefined }), 'siwx_issued_at_out_of_window'],
    ['issued at the end of time', encodeJson({ ...fresh, issuedAt: '+275760-09-13T00:00:00.000Z' }), 'siwx_malformed'],
    ['not before the future', encodeJson({ ...fresh, notBefore: new Date(Date.now() + 3600_000).toISOString() }), 'siwx_not_yet_valid'],
    ['ed25519 type', encodeJson({ ...fresh, type: 'ed25519' }), 'siwx_malformed'],
    ['nonce with a dash', encodeJson({ ...fresh, nonce: 'abc-defgh' }), 'siwx_malformed'],
    ['another signer\'s address', encodeJson({ ...fresh, address: stack.payer.address }), 'siwx_bad_signature'],
    ['signature of another message', encodeJson({ ...fresh, signature: '0x' + 'ab'.repeat(65) }), 'siwx_bad_signature'],
    ['__proto__ carrying the fields', Buffer.from(JSON.stringify({ __proto__: fresh }).replace('{', '{"__proto__":' + JSON.stringify(fresh) + ',').replace(/,\}$/, '}'), 'utf8').toString('base64'), 'siwx_malformed'],
  ]
  for (const [name, header, reason] of cases) {
    const res = await get('/v1/credits', [['SIGN-IN-WITH-X', header]])
    t.equal(res.status, 401, `${name}: 401`)
    if (reason) t.equal(res.json?.error?.metadata?.reason, reason, `${name}: ${reason}`)
    else t.match(res.json?.error?.metadata?.reason, /^siwx_/, `${name}: a siwx reason`)
    const paid = await chat([['SIGN-IN-WITH-X', header]])
    t.equal(paid.status, 402, `${name}: the paid route answers 402 (the client falls back to paying)`)
  }
  // The untouched sign-in still works once: none of the refusals above consumed its nonce.
  const ok = await get('/v1/credits', [['SIGN-IN-WITH-X', encodeSIWxHeader(fresh)]])
  t.equal(ok.status, 200, 'the original sign-in is accepted')
  t.equal(ok.json?.account, walletAccount)
  const replay = await get('/v1/credits', [['SIGN-IN-WITH-X', encodeSIWxHeader(fresh)]])
  t.equal(replay.json?.error?.metadata?.reason, 'siwx_replayed', 'and only once')
  // Another spelling of the same signed message (the address in lower case renders the same
  // EIP-4361 text) is the same sign-in: accepted once, and it uses up the original's nonce.
  const other = await signIn()
  const lower = await get('/v1/credits', [['SIGN-IN-WITH-X', encodeJson({ ...other, address: other.address.toLowerCase() })]])
  t.equal(lower.status, 200, 'the lower-case spelling signs in')
  const original = await get('/v1/credits', [['SIGN-IN-WITH-X', encodeSIWxHeader(other)]])
  t.equal(original.json?.error?.metadata?.reason, 'siwx_replayed', 'the checksummed original is then a replay')
  const huge = await get('/v1/credits', [['SIGN-IN-WITH-X', 'A'.repeat(17_000)]])
  t.equal(huge.status, 431, 'past 16 KiB the HTTP parser answers 431')
  t.same(await ledgerProblems(gw), [])
})

t.test('regression: Authorization edge cases', async (t) => {
  const cases: Array<[string, Array<[string, string | Buffer]>, number, string]> = [
    ['the key', [['Authorization', `Bearer ${key.secret}`]], 200, ''],
    ['scheme in lower case', [['Authorization', `bearer ${key.secret}`]], 200, ''],
    ['tab after the scheme', [['Authorization', `Bearer\t${key.secret}`]], 200, ''],
    ['trailing spaces (trimmed by HTTP)', [['Authorization', `Bearer ${key.secret}   `]], 200, ''],
    ['one character more', [['Authorization', `Bearer ${key.secret}A`]], 401, 'invalid_api_key'],
    ['one character less', [['Authorization', `Bearer ${key.secret.slice(0, -1)}`]], 401, 'invalid_api_key'],
    ['right shape, unknown key', [['Authorization', `Bearer sk-x402-${'A'.repeat(43)}`]], 401, 'invalid_api_key'],
    ['the admin token as an API key', [['Authorization', `Bearer ${ADMIN_TOKEN}`]], 401, 'invalid_api_key'],
    ['no scheme', [['Authorization', key.secret]], 401, 'credentials_required'],
    ['Basic', [['Authorization', `Basic ${Buffer.from(`x:${key.secret}`).toString('base64')}`]], 401, 'credentials_required'],
    ['two tokens', [['Authorization', `Bearer ${key.secret} ${key.secret}`]], 401, 'credentials_required'],
    ['1025 characters', [['Authorization', `Bearer ${key.secret}`.padEnd(1025, 'x')]], 401, 'credentials_required'],
    ['latin-1 bytes', [['Authorization', Buffer.from([0x42, 0x65, 0x61, 0x72, 0x65, 0x72, 0x20, 0xe9, 0xff])]], 401, 'invalid_api_key'],
    // JavaScript's \s includes U+00A0: a latin-1 no-break space after the scheme is accepted.
    ['no-break space (latin-1 0xA0) after the scheme', [['Authorization', Buffer.concat([Buffer.from('Bearer'), Buffer.from([0xa0]), Buffer.from(key.secret)])]], 200, ''],
    // Node keeps the first of two Authorization lines and drops the second.
    ['junk line first, the key second', [['Authorization', 'Bearer junk'], ['Authorization', `Bearer ${key.secret}`]], 401, 'invalid_api_key'],
    ['the key first, junk second', [['Authorization', `Bearer ${key.secret}`], ['Authorization', 'Bearer junk']], 200, ''],
  ]
  for (const [name, headers, status, reason] of cases) {
    const res = await get('/v1/credits', headers)
    t.equal(res.status, status, `${name}: ${status}`)
    if (reason) t.equal(res.json?.error?.metadata?.reason, reason, `${name}: ${reason}`)
  }
  const paid = await chat([['Authorization', `Bearer ${key.secret}`]])
  t.equal(paid.status, 402, 'the key\'s account has no credit: the paid route asks for a top-up')
  t.equal(paid.json?.error?.code, 'insufficient_credit', 'in the OpenAI envelope, for SDK callers')
  t.ok(paid.headers['payment-required'])
  // A revoked key stops working at once.
  const revoked = generateApiKey()
  await gw.app.ledger.createApiKey({ id: revoked.id, account: walletAccount, name: 'revoked', prefix: revoked.prefix, hash: revoked.hash, createdAt: Date.now(), maxPerAccount: 20 })
  t.equal((await get('/v1/credits', [['Authorization', `Bearer ${revoked.secret}`]])).status, 200)
  t.equal((await rawRequest(gw.url, { method: 'DELETE', target: `/v1/keys/${revoked.id}`, headers: [['Authorization', `Bearer ${key.secret}`]] })).status, 200)
  t.equal((await get('/v1/credits', [['Authorization', `Bearer ${revoked.secret}`]])).status, 401, 'revoked')
  t.same(await ledgerProblems(gw), [])
})

t.test('after everything: no money moved, the server answers', async (t) => {
  await assertUnharmed(t, gw, stack, before)
})
