import t from 'tap'
import fc from 'fast-check'
import { decodePaymentSignatureHeader } from '@x402/core/http'
import { balanceOf } from '../local-stack/chain.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, signPaymentFor } from './helpers/gateway.ts'
import {
  HOSTILE_KEYS, Tally, assertUnharmed, chainSnapshot, codeOf, contractViolations, fuzzParams, headerValueBytes, hostileJsonText,
  ledgerProblems, pacer, prototypeProblems, rawRequest, runProperty, type RawResponse,
} from './helpers/fuzz.ts'

// Hostile PAYMENT-SIGNATURE (x402 v2) and X-PAYMENT (v1) headers on every route that takes a
// payment. The structured cases mutate payments really signed by a wallet that holds no tokens,
// so even a mutation that keeps a payment well-formed can never settle: whatever the header,
// the answer is a 4xx with a code, and no token and no credit moves.


const stack = await withStack(t)
const gw = await startGateway(stack)
t.teardown(() => gw.close())
const pace = pacer()
const before = await chainSnapshot(stack)

// anvil's 6th development account: it has gas money but no test USDC.
const broke = stack.chain.accounts[5]
if (await balanceOf(stack.chain, stack.token, broke.address) !== 0n) throw new Error('the mutation base must be signed by a wallet without tokens')

const body = chatBody('fuzzing payment headers')
const bodyText = JSON.stringify(body)
const signedV2 = decodePaymentSignatureHeader((await signPaymentFor(gw, broke.privateKey, body)).header) as unknown as Record<string, any>
const signedV1 = { x402Version: 1, scheme: 'exact', network: gw.config.x402.v1Network ?? gw.config.x402.network, payload: structuredClone(signedV2.payload) }
const funded = await signPaymentFor(gw, stack.payer.privateKey, body)
const fundedPayload = decodePaymentSignatureHeader(funded.header) as unknown as Record<string, any>

const b64 = (text: string) => Buffer.from(text, 'utf8').toString('base64')
// Past Node's 16 KiB header limit the HTTP parser answers 431 before the app runs: that is the
// limits test's subject (fuzz-paths-limits), so these properties stay below it.
const underNodeLimit = (text: string) => Buffer.byteLength(text) < 9000

interface Route { target: string, body?: string }
const ROUTES: Route[] = [
  { target: '/v1/chat/completions', body: bodyText },
  { target: '/v1/keys', body: '{"name":"fuzz"}' },
  { target: '/v1/credits/topup?amount=1.00' },
]

async function send (route: Route, headers: Array<[string, string | Buffer]>): Promise<RawResponse> {
  await pace()
  return rawRequest(gw.url, {
    method: 'POST',
    target: route.target,
    headers: [...(route.body ? [['Content-Type', 'application/json'] as [string, string]] : []), ...headers],
    body: route.body,
  })
}

/** Contract + an allowed status + no money + no pollution; throws (fails the property) otherwise. */
async function check (res: RawResponse, allowed: number[], what: string): Promise<void> {
  const problems = [...contractViolations(res)]
  if (!allowed.includes(res.status)) problems.push(`status ${res.status} (${codeOf(res)}) not in ${allowed}`)
  problems.push(...await ledgerProblems(gw), ...prototypeProblems())
  if (problems.length) throw new Error(`${problems.join('; ')} — ${what}`)
}

const headerName = fc.constantFrom('PAYMENT-SIGNATURE', 'payment-signature', 'Payment-Signature', 'X-PAYMENT', 'x-payment')

// --- properties -------------------------------------------------------------------------------

t.test('fuzz: junk header values (any bytes the HTTP parser lets through, up to 9 KB)', async (t) => {
  const seen = new Tally()
  await runProperty(t, 'junk headers', fc.asyncProperty(fc.constantFrom(...ROUTES), headerName, headerValueBytes(9000), async (route, name, value) => {
    const res = await send(route, [[name, value]])
    seen.add(codeOf(res))
    await check(res, [400, 402, 431], `${name}: ${JSON.stringify(value.toString('latin1').slice(0, 120))}`)
  }), fuzzParams(t, 'junk headers', { seed: 7001, runs: 120 }))
  t.comment(`outcomes: ${seen}`)
})

t.test('fuzz: base64 of arbitrary JSON (objects, versions, hostile values)', async (t) => {
  const seen = new Tally()
  const doc = fc.oneof(
    fc.json({ maxDepth: 3 }),
    hostileJsonText,
    fc.tuple(fc.constantFrom('1', '2', '"2"', '2.0', '3', '-0', '1e309', 'null', '[]'), hostileJsonText, hostileJsonText)
      .map(([v, a, p]) => `{"x402Version":${v},"accepted":${a},"payload":${p},"scheme":"exact","network":"eip155:84532"}`),
  ).filter(underNodeLimit)
  await runProperty(t, 'json headers', fc.asyncProperty(fc.constantFrom(...ROUTES), headerName, doc, async (route, name, text) => {
    const res = await send(route, [[name, b64(text)]])
    seen.add(codeOf(res))
    await check(res, [400, 402, 431], `${name}: ${text.slice(0, 200)}`)
  }), fuzzParams(t, 'json headers', { seed: 7002, runs: 120 }))
  t.comment(`outcomes: ${seen}`)
})

// Structured mutations of a really signed payment.
type Path = Array<string | number>
function leafPaths (v: unknown, prefix: Path = []): Path[] {
  if (v === null || typeof v !== 'object') return [prefix]
  const entries = Array.isArray(v) ? v.map((x, i) => [i, x] as const) : Object.entries(v as Record<string, unknown>)
  return [prefix, ...entries.flatMap(([k, x]) => leafPaths(x, [...prefix, k]))]
}
function setAt (root: any, path: Path, value: unknown): any {
  if (path.length === 0) return value
  const copy = structuredClone(root)
  let o = copy
  for (const k of path.slice(0, -1)) o = o[k]
  o[path[path.length - 1]] = value
  return copy
}
function deleteAt (root: any, path: Path): any {
  if (path.length === 0) return {}
  const copy = structuredClone(root)
  let o = copy
  for (const k of path.slice(0, -1)) o = o[k]
  if (Array.isArray(o)) o.splice(Number(path[path.length - 1]), 1)
  else delete o[path[path.length - 1]]
  return copy
}

const hex = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => '0x' + Buffer.from(a).toString('hex'))
const hostileField: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, false, 0, -1, 1.5, '', ' ', '0', '-1', '1e309', '0x', '0X' + '11'.repeat(20), '9'.repeat(78), '9'.repeat(79), '00001',
    'eip155:1', 'eip155:84532 ', 'base-sepolia', 'exact ', 'EXACT', 'upto', 'USDC', 'USD Coin', 2, 1, '2', [], {}, ['0x'], { __proto__: null }),
  hex(20), hex(32), hex(65), hex(66), fc.nat().map(String), fc.bigInt({ min: 0n, max: 10n ** 30n }).map(String),
  fc.string({ maxLength: 30 }), fc.string({ unit: 'grapheme', maxLength: 10 }),
  fc.integer({ min: 1, max: 7000 }).map((n) => 'f'.repeat(n)),
)

type Encoded = { text: string, note: string }
/** One mutation of a payload, as JSON text (text-level mutations cover what objects cannot say). */
const mutation = (base: Record<string, any>): fc.Arbitrary<Encoded> => {
  const paths = leafPaths(base)
  const show = (p: Path) => p.join('.') || '(root)'
  return fc.oneof(
    fc.tuple(fc.constantFrom(...paths), hostileField).map(([p, v]) => ({ text: JSON.stringify(setAt(base, p, v)), note: `set ${show(p)} = ${JSON.stringify(v)?.slice(0, 60)}` })),
    fc.constantFrom(...paths).map((p) => ({ text: JSON.stringify(deleteAt(base, p)), note: `delete ${show(p)}` })),
    // A key added to some object, including prototype names (as raw text: JSON.parse makes them own keys).
    fc.tuple(fc.constantFrom(...paths.filter((p) => p.length < 3)), fc.constantFrom(...HOSTILE_KEYS), hostileJsonText).map(([p, k, v]) => {
      const inner = JSON.stringify(p.length ? p.reduce((o: any, key) => o[key], base) : base)
      const text = typeof inner === 'string' && inner.startsWith('{') && inner.length > 2
        ? JSON.stringify(base).replace(inner, `{${JSON.stringify(k)}:${v},${inner.slice(1)}`)
        : JSON.stringify(base).replace(/^\{/, `{${JSON.stringify(k)}:${v},`)
      return { text, note: `add ${JSON.stringify(k)} under ${show(p)}` }
    }),
    // Duplicate keys: the parser keeps the last, a validator might have looked at the first.
    fc.tuple(fc.constantFrom('x402Version', 'accepted', 'payload', 'network', 'scheme'), hostileJsonText).map(([k, v]) => ({ text: JSON.stringify(base).replace(/\}$/, `,${JSON.stringify(k)}:${v}}`), note: `duplicate ${k}` })),
    // Number lexemes JSON.stringify cannot write.
    fc.constantFrom('1e309', '-0', '2.0', '2e0', '300.0', '1e2', '123456789012345678901234567890').map((n) => ({
      text: JSON.stringify(base).replace(/"x402Version":\d+/, `"x402Version":${n}`).replace(/"maxTimeoutSeconds":\d+/, `"maxTimeoutSeconds":${n}`),
      note: `numbers as ${n}`,
    })),
  )
}

/** Ways to put JSON text in a header: standard base64, and what lenient decoders also accept. */
const encoding = fc.constantFrom('standard', 'unpadded', 'spaces', 'urlsafe', 'linebreak-ish', 'double')
function encode (text: string, how: string): string {
  const s = b64(text)
  switch (how) {
    case 'unpadded': return s.replace(/=+$/, '')
    case 'spaces': return `  ${s}  `
    case 'urlsafe': return s.replace(/\+/g, '-').replace(/\//g, '_')
    case 'linebreak-ish': return s.slice(0, 40) + ' ' + s.slice(40)
    case 'double': return b64(s)
    default: return s
  }
}

t.test('fuzz: structured mutations of a signed payment (v2 and v1, either header, every route)', async (t) => {
  const seen = new Tally()
  const cases = fc.oneof(
    fc.tuple(fc.constant('v2'), mutation(signedV2).filter((m) => underNodeLimit(m.text)), fc.constantFrom('PAYMENT-SIGNATURE', 'PAYMENT-SIGNATURE', 'X-PAYMENT')),
    fc.tuple(fc.constant('v1'), mutation(signedV1).filter((m) => underNodeLimit(m.text)), fc.constantFrom('X-PAYMENT', 'X-PAYMENT', 'PAYMENT-SIGNATURE')),
  )
  await runProperty(t, 'mutations', fc.asyncProperty(fc.constantFrom(...ROUTES), cases, encoding, async (route, [version, m, name], how) => {
    const res = await send(route, [[name, encode(m.text, how)]])
    seen.add(codeOf(res))
    await check(res, [400, 402, 431], `${version} ${name} ${how}: ${m.note}`)
  }), fuzzParams(t, 'mutations', { seed: 7003, runs: 200 }))
  t.comment(`outcomes: ${seen}`)
})

t.test('fuzz: a funded payment with any signed field changed is refused and does not burn the original', async (t) => {
  const seen = new Tally()
  const auth = fundedPayload.payload.authorization
  const signedChanges = fc.oneof(
    fc.bigInt({ min: 1n, max: 100_000_000n }).filter((v) => v.toString() !== auth.value).map((v) => (p: any) => { p.payload.authorization.value = v.toString(); p.accepted.amount = v.toString() }),
    hex(32).filter((n) => n.toLowerCase() !== auth.nonce.toLowerCase()).map((n) => (p: any) => { p.payload.authorization.nonce = n }),
    fc.integer({ min: 1, max: 100_000 }).map((d) => (p: any) => { p.payload.authorization.validBefore = String(BigInt(auth.validBefore) + BigInt(d)) }),
    fc.integer({ min: 1, max: 1000 }).map((d) => (p: any) => { p.payload.authorization.validAfter = String(Number(auth.validAfter) + d) }),
    fc.constantFrom(stack.payer2.address, broke.address).map((a) => (p: any) => { p.payload.authorization.from = a }),
    fc.integer({ min: 2, max: 129 }).map((i) => (p: any) => {
      const s: string = p.payload.signature
      p.payload.signature = s.slice(0, i) + (s[i] === 'a' ? 'b' : 'a') + s.slice(i + 1)
    }),
  )
  await runProperty(t, 'signed fields', fc.asyncProperty(fc.constantFrom(...ROUTES), signedChanges, async (route, change) => {
    const p = structuredClone(fundedPayload)
    change(p)
    if (JSON.stringify(p) === JSON.stringify(fundedPayload)) throw new Error('the generator must change a signed field')
    const res = await send(route, [['PAYMENT-SIGNATURE', b64(JSON.stringify(p))]])
    seen.add(codeOf(res))
    await check(res, [402], JSON.stringify(p.payload).slice(0, 300))
  }), fuzzParams(t, 'signed fields', { seed: 7004, runs: 40 }))
  t.comment(`outcomes: ${seen}`)
})

// --- named regression cases -------------------------------------------------------------------

const CHAT: Route = ROUTES[0]
const v2 = (m: (p: any) => void): string => { const p = structuredClone(signedV2); m(p); return b64(JSON.stringify(p)) }

t.test('regression: size limits of the payment header', async (t) => {
  const at = (n: number) => 'A'.repeat(n)
  const limit = await send(CHAT, [['PAYMENT-SIGNATURE', at(8192)]])
  t.equal(limit.status, 400, '8192 characters: decoded (and refused as junk)')
  t.equal(limit.json?.error?.code, 'payment_header_malformed')
  const over = await send(CHAT, [['PAYMENT-SIGNATURE', at(8193)]])
  t.equal(over.status, 431, '8193 characters: too large, before decoding')
  t.equal(over.json?.error?.code, 'payment_header_too_large')
  const overV1 = await send(CHAT, [['X-PAYMENT', at(12_000)]])
  t.equal(overV1.json?.error?.code, 'payment_header_too_large', 'the same limit for X-PAYMENT')
  // Over Node's 16 KiB header limit the HTTP parser answers before the app sees anything.
  const node = await send(CHAT, [['PAYMENT-SIGNATURE', at(17_000)]])
  t.equal(node.status, 431, '17 000 characters: the HTTP parser answers 431')
  t.ok(node.closed, 'and closes the connection')
  t.equal(typeof node.json?.error?.code, 'string', '431 from the parser carries error.code')
  t.same(await ledgerProblems(gw), [])
})

t.test('regression: encodings and header plumbing', async (t) => {
  const good = b64(JSON.stringify(signedV2))
  const cases: Array<[string, Array<[string, string]>, number, string]> = [
    ['empty PAYMENT-SIGNATURE', [['PAYMENT-SIGNATURE', '']], 400, 'payment_header_malformed'],
    ['only spaces', [['PAYMENT-SIGNATURE', '    ']], 400, 'payment_header_malformed'],
    ['url-safe alphabet', [['PAYMENT-SIGNATURE', good.replace(/\+/g, '-').replace(/\//g, '_') + '-']], 400, 'payment_header_malformed'],
    ['three padding characters', [['PAYMENT-SIGNATURE', good.replace(/=*$/, '===')]], 400, 'payment_header_malformed'],
    ['base64 inside base64', [['PAYMENT-SIGNATURE', b64(good)]], 400, 'payment_header_malformed'],
    ['a JSON string', [['PAYMENT-SIGNATURE', b64('"hello"')]], 400, 'payment_header_malformed'],
    ['JSON null', [['PAYMENT-SIGNATURE', b64('null')]], 400, 'payment_header_malformed'],
    ['truncated JSON', [['PAYMENT-SIGNATURE', b64(JSON.stringify(signedV2).slice(0, 100))]], 400, 'payment_header_malformed'],
    ['non-UTF-8 bytes in the JSON', [['PAYMENT-SIGNATURE', Buffer.concat([Buffer.from('{"x402Version":2,"a":"'), Buffer.from([0xff, 0xc0]), Buffer.from('"}')]).toString('base64')]], 400, 'payment_header_malformed'],
    ['two PAYMENT-SIGNATURE lines (joined with ", ")', [['PAYMENT-SIGNATURE', good], ['PAYMENT-SIGNATURE', good]], 400, 'payment_header_malformed'],
    ['x402Version "2" (a string)', [['PAYMENT-SIGNATURE', v2((p) => { p.x402Version = '2' })]], 402, 'payment_invalid'],
    ['x402Version 2.5', [['PAYMENT-SIGNATURE', v2((p) => { p.x402Version = 2.5 })]], 402, 'payment_invalid'],
    ['maxTimeoutSeconds 1e309', [['PAYMENT-SIGNATURE', b64(JSON.stringify(signedV2).replace(/"maxTimeoutSeconds":\d+/, '"maxTimeoutSeconds":1e309'))]], 400, 'payment_header_malformed'],
    ['amount "0"', [['PAYMENT-SIGNATURE', v2((p) => { p.accepted.amount = '0'; p.payload.authorization.value = '0' })]], 402, 'payment_invalid'],
    ['amount of 79 digits', [['PAYMENT-SIGNATURE', v2((p) => { p.accepted.amount = '9'.repeat(79); p.payload.authorization.value = '9'.repeat(79) })]], 400, 'payment_header_malformed'],
    ['amount of 78 digits', [['PAYMENT-SIGNATURE', v2((p) => { p.accepted.amount = '9'.repeat(78); p.payload.authorization.value = '9'.repeat(78) })]], 402, 'payment_invalid'],
    ['validBefore of 78 digits', [['PAYMENT-SIGNATURE', v2((p) => { p.payload.authorization.validBefore = '9'.repeat(78) })]], 402, 'payment_invalid'],
    ['signature of 20 000 hex digits', [['PAYMENT-SIGNATURE', v2((p) => { p.payload.signature = '0x' + 'ab'.repeat(3000) })]], 431, 'payment_header_too_large'],
    ['signature too short', [['PAYMENT-SIGNATURE', v2((p) => { p.payload.signature = '0x' + 'ab'.repeat(64) })]], 400, 'payment_header_malformed'],
    ['v2 payload in X-PAYMENT', [['X-PAYMENT', good]], 402, 'payment_invalid'],
    ['v1 payload in PAYMENT-SIGNATURE', [['PAYMENT-SIGNATURE', b64(JSON.stringify(signedV1))]], 402, 'payment_invalid'],
    ['v1 with the CAIP-2 network name', [['X-PAYMENT', b64(JSON.stringify({ ...signedV1, network: gw.config.x402.network }))]], 402, 'payment_invalid'],
    ['__proto__ at the top', [['PAYMENT-SIGNATURE', b64(JSON.stringify(signedV2).replace(/^\{/, '{"__proto__":{"x402Version":1,"isAdmin":true},'))]], 402, 'payment_invalid'],
    ['__proto__ as accepted.extra', [['PAYMENT-SIGNATURE', b64(JSON.stringify(signedV2).replace('"extra":{', '"extra":{"__proto__":{"name":"USDC","version":"2"},'))]], 402, 'payment_invalid'],
    ['constructor.prototype in extensions', [['PAYMENT-SIGNATURE', b64(JSON.stringify({ ...signedV2, extensions: { constructor: { prototype: { isAdmin: true } } } }))]], 402, 'payment_invalid'],
    ['both headers: PAYMENT-SIGNATURE junk wins over X-PAYMENT', [['PAYMENT-SIGNATURE', '!!!'], ['X-PAYMENT', b64(JSON.stringify(signedV1))]], 400, 'payment_header_malformed'],
  ]
  for (const [name, headers, status, code] of cases) {
    const res = await send(CHAT, headers)
    t.equal(res.status, status, `${name}: ${status}`)
    t.equal(status === 402 ? res.json?.code : res.json?.error?.code, code, `${name}: ${code}`)
    if (status === 402) t.ok(res.headers['payment-required'], `${name}: a new challenge`)
  }
  // Well-formed, the broke wallet's payment passes our policy and is refused by the facilitator.
  const refused = await send(CHAT, [['PAYMENT-SIGNATURE', `  ${good}  `]])
  t.equal(refused.status, 402, 'surrounding spaces are trimmed; the payment itself is refused')
  t.match(refused.json?.error, /balance|insufficient|simulation_failed/i, 'because the wallet cannot pay')
  t.same(prototypeProblems(), [])
  t.same(await ledgerProblems(gw), [])
})

t.test('after the fuzzing: no money moved, the server answers', async (t) => {
  await assertUnharmed(t, gw, stack, before)
})

t.test('the untouched funded payment is still accepted once: refusals burned nothing', async (t) => {
  const res = await send(CHAT, [['PAYMENT-SIGNATURE', funded.header]])
  t.equal(res.status, 200)
  const again = await send(CHAT, [['PAYMENT-SIGNATURE', funded.header]])
  t.equal(again.status, 402)
  t.equal(again.json?.code, 'payment_already_used')
  const deposits = (await gw.app.ledger.balance('system:deposits')).debitsPosted
  t.equal(deposits, 1_000_000_000n, 'exactly one payment credited')
})

// --- bugs found: bad input refused only after a valid payment settled -------------------------

async function depositsNow (): Promise<bigint> {
  return (await gw.app.ledger.balance('system:deposits')).debitsPosted
}

t.test('regression: an invalid Idempotency-Key is refused before the payment is taken', async (t) => {
  const account = payerAccount(stack.chain.chainId, stack.payer2.address)
  for (const key of ['has space', 'x'.repeat(129), 'tab\there', 'caf\u00e9']) {
    const { header } = await signPaymentFor(gw, stack.payer2.privateKey, body)
    const chainBefore = await balanceOf(stack.chain, stack.token, stack.payer2.address)
    const depBefore = await depositsNow()
    const res = await send(CHAT, [['PAYMENT-SIGNATURE', header], ['Idempotency-Key', Buffer.from(key, 'latin1')]])
    t.equal(res.status, 400, `Idempotency-Key ${JSON.stringify(key.slice(0, 20))}: 400`)
    t.equal(res.json?.error?.metadata?.reason, 'invalid_idempotency_key')
    const credited = await depositsNow() - depBefore
    t.equal(credited, 0n, 'nothing credited')
    t.equal(await balanceOf(stack.chain, stack.token, stack.payer2.address), chainBefore, 'no token moved')
    t.ok(credited === 0n || res.headers['payment-response'], 'a settled payment is at least reported (PAYMENT-RESPONSE)')
  }
  t.comment(`payer2 credit after the Idempotency-Key cases: ${(await gw.app.ledger.balance(account)).available}`)
})

t.test('regression: POST /v1/keys refuses a bad body before the payment is taken', async (t) => {
  for (const bad of ['{"name":""}', '{"name":"x","admin":true}', `{"name":"${'n'.repeat(65)}"}`, '[]', '"name"']) {
    const { header } = await signPaymentFor(gw, stack.payer2.privateKey, body)
    const chainBefore = await balanceOf(stack.chain, stack.token, stack.payer2.address)
    const depBefore = await depositsNow()
    const res = await send({ target: '/v1/keys', body: bad }, [['PAYMENT-SIGNATURE', header]])
    t.equal(res.status, 400, `${bad.slice(0, 30)}: 400`)
    t.equal(res.json?.error?.code, 'bad_request_body')
    t.equal(await depositsNow() - depBefore, 0n, 'nothing credited')
    t.equal(await balanceOf(stack.chain, stack.token, stack.payer2.address), chainBefore, 'no token moved')
  }
  const totals = await gw.app.ledger.totals()
  t.equal(totals.sumOfAllAccounts, 0n, 'the ledger still balances')
  t.equal(totals.pendingCount, 0)
})
