import t from 'tap'
import { getAddress } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { createSIWxMessage, createSIWxPayload, encodeSIWxHeader, type SIWxExtension } from '@x402/extensions/sign-in-with-x'
import { decodePaymentSignatureHeader } from '@x402/core/http'
import {
  SIWX_CLOCK_SKEW_MS, SIWX_MAX_HEADER_BYTES, siwxDeclaration, verifySiwxHeader, type SiwxResult, type SiwxVerifyContext,
} from '../src/auth/siwx.ts'
import {
  TEST_NETWORK, captureSiwxHeader, decodeHeaderJson, encodeHeaderJson, nonceStore, officialFetch, startSiwxStub,
} from './helpers/siwx.ts'

// Two of anvil's well-known development keys: fixed, public, worthless.
const alice = privateKeyToAccount('0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d')
const bob = privateKeyToAccount('0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a')

function ctxFor (origin: string, store = nonceStore(), extra: Partial<SiwxVerifyContext> = {}): SiwxVerifyContext {
  return { origin, network: TEST_NETWORK, nowMs: Date.now(), useNonce: store.useNonce, ...extra }
}

function issuedAtOf (header: string): number {
  return Date.parse(String(decodeHeaderJson(header).issuedAt))
}

// Same address, one letter's case flipped: still hex, but no longer its EIP-55 checksum.
function flipFirstLetterCase (address: string): string {
  const i = address.slice(2).search(/[a-fA-F]/) + 2
  const c = address[i]
  return address.slice(0, i) + (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()) + address.slice(i + 1)
}

function codeOf (r: SiwxResult): string {
  return r.ok ? 'ok' : r.code
}

t.test('declaration: the wire shape the official client reads', async (t) => {
  const now = Date.parse('2030-01-01T00:00:00.000Z')
  const ext = siwxDeclaration({ origin: 'https://api.example.com', resourceUrl: 'http://10.0.0.5:8402/v1/chat/completions?x=1', network: TEST_NETWORK, nowMs: now, ttlSeconds: 120 })
  t.same(Object.keys(ext), ['sign-in-with-x'], 'one entry under the extension key')
  const d = ext['sign-in-with-x'] as SIWxExtension & Record<string, unknown>
  t.notOk('_options' in d, 'the package-internal _options does not leak onto the wire')
  t.equal(d.info.domain, 'api.example.com', 'domain is the configured host')
  t.equal(d.info.uri, 'https://api.example.com/v1/chat/completions?x=1', 'resource rebased onto the public origin')
  t.same(d.info.resources, [d.info.uri])
  t.equal(d.info.version, '1')
  t.equal(d.info.issuedAt, '2030-01-01T00:00:00.000Z')
  t.equal(d.info.expirationTime, '2030-01-01T00:02:00.000Z', 'expiry = issuedAt + ttl')
  t.match(d.info.nonce, /^[0-9a-f]{32}$/, '128-bit hex nonce')
  t.same(d.supportedChains, [{ chainId: TEST_NETWORK, type: 'eip191' }])
  t.ok(d.schema && Array.isArray(d.schema.required) && d.schema.required.includes('signature'), 'payload schema included')

  const again = siwxDeclaration({ origin: 'https://api.example.com', resourceUrl: '/v1/chat/completions', network: TEST_NETWORK, nowMs: now })
  t.not((again['sign-in-with-x'] as SIWxExtension).info.nonce, d.info.nonce, 'a fresh nonce per 402')

  t.throws(() => siwxDeclaration({ origin: 'https://api.example.com/base', resourceUrl: '/', network: TEST_NETWORK }), /bare http/, 'origin with a path is a config error')
  t.throws(() => siwxDeclaration({ origin: 'https://api.example.com', resourceUrl: '/', network: 'solana:abc' }), /eip155/, 'non-EVM network is a config error')
  t.throws(() => siwxDeclaration({ origin: 'https://api.example.com', resourceUrl: '/', network: TEST_NETWORK, statement: 'a\nb' }), /single line/)
  t.throws(() => siwxDeclaration({ origin: 'https://api.example.com', resourceUrl: '/', network: TEST_NETWORK, nonce: 'short' }), /nonce/)
})

t.test('official client: answers a 402 with SIGN-IN-WITH-X first, and does not pay when that succeeds', async (t) => {
  const stub = await startSiwxStub()
  t.teardown(() => stub.close())
  const res = await officialFetch(alice, { canPay: true })(stub.url, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })
  t.equal(res.status, 200)
  t.same(await res.json(), { signedIn: true })
  t.equal(stub.requests.length, 2, 'exactly one retry')
  t.notOk(stub.requests[0].headers['sign-in-with-x'], 'the first request is plain')
  t.type(stub.requests[1].headers['sign-in-with-x'], 'string', 'the retry carries SIGN-IN-WITH-X')
  t.notOk(stub.requests[1].headers['payment-signature'], 'and no payment')

  const header = stub.requests[1].headers['sign-in-with-x'] as string
  const payload = decodeHeaderJson(header)
  const declared = stub.challenges[0].extensions?.['sign-in-with-x'] as SIWxExtension
  t.equal(payload.nonce, declared.info.nonce, 'the client signs the nonce we issued')
  t.equal(payload.issuedAt, declared.info.issuedAt, 'and our issuedAt')
  t.equal(payload.chainId, TEST_NETWORK)
  t.equal(payload.address, alice.address, 'checksummed address of the signer')
})

t.test('official client: a 402 after SIWX (e.g. insufficient credit) makes it pay the FIRST offer, without SIWX', async (t) => {
  const stub = await startSiwxStub({ onSiwx: 'payment_required', secondOfferAmount: '5000' })
  t.teardown(() => stub.close())
  const res = await officialFetch(alice, { canPay: true })(stub.url, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })
  t.equal(res.status, 200)
  t.same(stub.requests.map((r) => r.status), [402, 402, 200], 'plain → SIWX → paid')
  const paid = stub.requests[2].headers
  t.type(paid['payment-signature'], 'string', 'the third request pays')
  t.notOk(paid['sign-in-with-x'], 'the paid request does not repeat SIGN-IN-WITH-X')
  const payment = decodePaymentSignatureHeader(paid['payment-signature'] as string)
  t.equal(payment.accepted.amount, '1000', 'amount from the first 402; the second 402 (5000) is ignored')
  t.same(payment.extensions?.['sign-in-with-x'], stub.challenges[0].extensions?.['sign-in-with-x'], 'the payment echoes the first declaration')
})

t.test('official client: any non-402 answer to SIWX (e.g. 401) is returned to the caller and it does NOT pay', async (t) => {
  const stub = await startSiwxStub({ onSiwx: 'unauthorized' })
  t.teardown(() => stub.close())
  const res = await officialFetch(alice, { canPay: true })(stub.url, { method: 'POST', body: '{}' })
  t.equal(res.status, 401, 'the 401 reaches the application')
  t.same(stub.requests.map((r) => r.status), [402, 401], 'no payment attempt follows')
})

t.test('official client: a declaration bound to another origin is ignored and the client pays directly', async (t) => {
  const stub = await startSiwxStub({ declaredOrigin: (own) => own.replace('127.0.0.1', 'localhost') })
  t.teardown(() => stub.close())
  const res = await officialFetch(alice, { canPay: true })(stub.url, { method: 'POST', body: '{}' })
  t.equal(res.status, 200)
  t.equal(stub.requests.length, 2)
  t.notOk(stub.requests.some((r) => r.headers['sign-in-with-x']), 'no SIWX for a mismatched origin')
  t.type(stub.requests[1].headers['payment-signature'], 'string', 'it went straight to payment')
})

t.test('valid header: ok with the signer, then refused as a replay', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice)
  const store = nonceStore()
  const nowMs = issuedAtOf(header) + 1000
  const first = await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs }))
  if (!first.ok) return t.fail(`expected ok, got ${first.code}: ${first.reason}`)
  t.equal(first.address, alice.address.toLowerCase(), 'lowercase signer address')
  t.equal(first.chainId, 84532)
  t.equal(first.network, TEST_NETWORK)
  t.equal(first.nonce, decodeHeaderJson(header).nonce)
  t.equal(first.expiresAtMs, issuedAtOf(header) + 300_000, 'expiry = issuedAt + ttl (= max age)')
  t.same(store.calls, [{ key: `${TEST_NETWORK}:${first.address}:${first.nonce}`, retainUntilMs: first.expiresAtMs + SIWX_CLOCK_SKEW_MS }],
    'nonce consumed once, scoped by signer, retained past expiry by the skew allowance')

  const again = await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs }))
  t.equal(codeOf(again), 'siwx_replayed')

  const otherReplica = await verifySiwxHeader(header, ctxFor(stub.origin, nonceStore(), { nowMs }))
  t.equal(codeOf(otherReplica), 'ok', 'only the shared nonce store stops the replay (the check is stateless otherwise)')
})

t.test('origin and resource binding', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice)
  const nowMs = issuedAtOf(header) + 1000
  const store = nonceStore()
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor('http://evil.example', store, { nowMs }))), 'siwx_domain_mismatch', 'other host')
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor(stub.origin.replace('http:', 'https:'), store, { nowMs }))), 'siwx_domain_mismatch', 'same host, other scheme')
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs, resourceUrl: '/v1/receipts/abc' }))), 'siwx_domain_mismatch', 'other resource when bound')

  // A phishing page on evil.example can have a wallet sign "evil.example wants you to sign in"
  // while pointing uri at us (wallets check domain against the page, not uri). Only the domain
  // check stops that signature from being spent here.
  const phished: Record<string, unknown> = { ...decodeHeaderJson(header), domain: 'evil.example' }
  const info = { ...phished, chainId: TEST_NETWORK, type: 'eip191' } as unknown as Parameters<typeof createSIWxMessage>[0]
  phished.signature = await alice.signMessage({ message: createSIWxMessage(info, alice.address) })
  t.equal(codeOf(await verifySiwxHeader(encodeHeaderJson(phished), ctxFor(stub.origin, store, { nowMs }))), 'siwx_domain_mismatch', 'validly signed for another domain, uri ours')
  t.equal(codeOf(await verifySiwxHeader(encodeHeaderJson(phished), ctxFor('http://evil.example', store, { nowMs }))), 'siwx_domain_mismatch', 'and not accepted at evil.example either (uri is not there)')

  t.equal(store.calls.length, 0, 'no nonce consumed by refusals')
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs, resourceUrl: '/v1/chat/completions' }))), 'ok', 'the declared resource passes')
})

t.test('time: expiry, issued-at window, skew, not-before', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice, { ttlSeconds: 60 })
  const iat = issuedAtOf(header)
  const store = nonceStore()
  const at = (nowMs: number, maxAgeSeconds?: number) => verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs, maxAgeSeconds }))
  t.equal(codeOf(await at(iat + 60_000)), 'siwx_expired', 'at the expiration instant')
  t.equal(codeOf(await at(iat + 61_000)), 'siwx_expired', 'past expiry')
  t.equal(codeOf(await at(iat - SIWX_CLOCK_SKEW_MS - 1000)), 'siwx_issued_at_out_of_window', 'issued more than the skew in the future')
  t.equal(store.calls.length, 0, 'refusals consume no nonce')

  const { header: long, stub: s2 } = await captureSiwxHeader(alice, { ttlSeconds: 3600 })
  const iat2 = issuedAtOf(long)
  const store2 = nonceStore()
  const r = await verifySiwxHeader(long, ctxFor(s2.origin, store2, { nowMs: iat2 + 301_000 }))
  t.equal(codeOf(r), 'siwx_issued_at_out_of_window', 'a long expirationTime does not stretch the max age')
  const ok = await verifySiwxHeader(long, ctxFor(s2.origin, store2, { nowMs: iat2 - 59_000 }))
  if (!ok.ok) return t.fail(`59 s of client clock lead should pass, got ${ok.code}`)
  t.equal(ok.expiresAtMs, iat2 + 300_000, 'session ends at issuedAt + max age, not at the 1 h expirationTime')

  // notBefore is not in our declaration, but a client may sign one; it must be honoured.
  const info = { domain: new URL(stub.origin).host, uri: stub.url, version: '1', nonce: 'abcdef1234567890', issuedAt: new Date(iat).toISOString(), notBefore: new Date(iat + 30_000).toISOString(), chainId: TEST_NETWORK, type: 'eip191' as const }
  const nbf = encodeSIWxHeader(await createSIWxPayload(info, alice, stub.url))
  const store3 = nonceStore()
  t.equal(codeOf(await verifySiwxHeader(nbf, ctxFor(stub.origin, store3, { nowMs: iat + 10_000 }))), 'siwx_not_yet_valid')
  t.equal(codeOf(await verifySiwxHeader(nbf, ctxFor(stub.origin, store3, { nowMs: iat + 31_000 }))), 'ok', 'valid once notBefore has passed')
})

t.test('tampering: bad signature, and the nonce is not burnt', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice)
  const nowMs = issuedAtOf(header) + 1000
  const store = nonceStore()
  const p = decodeHeaderJson(header)
  const sig = String(p.signature)
  const flipped = sig.slice(0, 10) + (sig[10] === '0' ? '1' : '0') + sig.slice(11)
  const cases: Array<[string, Record<string, unknown>]> = [
    ['statement changed', { ...p, statement: 'Sign in and give me everything' }],
    ['resources changed', { ...p, resources: [`${stub.origin}/v1/other`] }],
    ['signature byte flipped', { ...p, signature: flipped }],
    ['address swapped for another wallet', { ...p, address: bob.address }],
    ['signature truncated', { ...p, signature: sig.slice(0, 66) }],
  ]
  for (const [name, forged] of cases) {
    t.equal(codeOf(await verifySiwxHeader(encodeHeaderJson(forged), ctxFor(stub.origin, store, { nowMs }))), 'siwx_bad_signature', name)
  }
  t.equal(store.calls.length, 0, 'no forged header reached the nonce store')
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs }))), 'ok', 'the genuine header still works afterwards')
})

t.test('wrong chain', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice, { network: 'eip155:8453' })
  const store = nonceStore()
  const r = await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs: issuedAtOf(header) + 1000 }))
  t.equal(codeOf(r), 'siwx_wrong_chain', 'signed for Base mainnet, credit on Base Sepolia')
  t.equal(store.calls.length, 0)
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor(stub.origin, store, { nowMs: issuedAtOf(header) + 1000, network: 'eip155:8453' }))), 'ok',
    'the same header is fine where that chain is ours')
})

t.test('malformed input never throws', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice)
  const nowMs = issuedAtOf(header) + 1000
  const store = nonceStore()
  const p = decodeHeaderJson(header)
  const junk: Array<[string, unknown]> = [
    ['empty', ''],
    ['not a string', 42],
    ['not base64', '!!!not-base64!!!'],
    ['base64 of non-JSON', Buffer.from('hello world').toString('base64')],
    ['base64 of a JSON array', encodeHeaderJson([1, 2, 3])],
    ['JSON missing signature', encodeHeaderJson({ ...p, signature: undefined })],
    ['huge', 'A'.repeat(SIWX_MAX_HEADER_BYTES + 4)],
    ['oversized but well-formed', encodeHeaderJson({ ...p, requestId: 'x'.repeat(SIWX_MAX_HEADER_BYTES) })],
    ['address not hex', encodeHeaderJson({ ...p, address: 'alice' })],
    ['address with a wrong EIP-55 checksum', encodeHeaderJson({ ...p, address: flipFirstLetterCase(String(p.address)) })],
    ['signature not hex', encodeHeaderJson({ ...p, signature: 'deadbeef' })],
    ['nonce with punctuation', encodeHeaderJson({ ...p, nonce: 'abc-def-ghi' })],
    ['solana type', encodeHeaderJson({ ...p, type: 'ed25519' })],
    ['non-eip155 chain id', encodeHeaderJson({ ...p, chainId: 'eip155:0x14a34' })],
    ['domain with a space (breaks the EIP-4361 grammar)', encodeHeaderJson({ ...p, domain: 'a b' })],
    ['issuedAt not a date', encodeHeaderJson({ ...p, issuedAt: 'yesterday' })],
    ['__proto__ payload', encodeHeaderJson(JSON.parse('{"__proto__": {"polluted": true}}'))],
  ]
  for (const [name, value] of junk) {
    const r = await verifySiwxHeader(value, ctxFor(stub.origin, store, { nowMs }))
    t.equal(codeOf(r), 'siwx_malformed', name)
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype pollution')
  t.equal(store.calls.length, 0, 'no malformed header reached the nonce store')
})

t.test('smart-wallet verifier is consulted only when EOA recovery fails, and its failures do not throw', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice)
  const nowMs = issuedAtOf(header) + 1000
  const p = decodeHeaderJson(header)
  let calls = 0
  const accepting = { verifyMessage: async () => { calls++; return true } }
  t.equal(codeOf(await verifySiwxHeader(header, ctxFor(stub.origin, nonceStore(), { nowMs, publicClient: accepting }))), 'ok')
  t.equal(calls, 0, 'an EOA signature never touches the chain')

  // A "contract wallet" address whose signature ecrecover cannot match: only EIP-1271 can vouch.
  const contractWallet = { ...p, address: getAddress('0x00000000000000000000000000000000000c0de1') }
  const forContract = encodeHeaderJson(contractWallet)
  t.equal(codeOf(await verifySiwxHeader(forContract, ctxFor(stub.origin, nonceStore(), { nowMs }))), 'siwx_bad_signature', 'without a client it is refused')
  const r = await verifySiwxHeader(forContract, ctxFor(stub.origin, nonceStore(), { nowMs, publicClient: accepting }))
  t.equal(codeOf(r), 'ok', 'the verifier vouches for it')
  t.equal(calls, 1)
  t.equal(r.ok && r.address, contractWallet.address.toLowerCase())

  const failing = { verifyMessage: async (): Promise<boolean> => { throw new Error('rpc down') } }
  const store = nonceStore()
  const down = await verifySiwxHeader(forContract, ctxFor(stub.origin, store, { nowMs, publicClient: failing }))
  t.equal(codeOf(down), 'siwx_bad_signature')
  t.match(!down.ok && down.reason, /rpc down/, 'the reason names the verifier failure')
  t.equal(store.calls.length, 0)
})

t.test('a failing nonce store fails closed (rejects)', async (t) => {
  const { header, stub } = await captureSiwxHeader(alice)
  const ctx = ctxFor(stub.origin, nonceStore(), { nowMs: issuedAtOf(header) + 1000, useNonce: async () => { throw new Error('database is locked') } })
  await t.rejects(verifySiwxHeader(header, ctx), /database is locked/)
})
