import t from 'tap'
import fc from 'fast-check'
import { withStack, startGateway, ADMIN_TOKEN } from './helpers/gateway.ts'
import {
  HOSTILE_KEYS, Tally, clip, assertUnharmed, chainSnapshot, codeOf, contractViolations, fuzzParams, hostileJsonText, ledgerProblems,
  nest, nonFiniteOrDeep, pacer, prototypeProblems, rawRequest, runProperty, type RawResponse,
} from './helpers/fuzz.ts'

// Hostile JSON bodies: wrong types, prototype-pollution keys at any depth, duplicate keys, deep
// nesting, huge strings, numbers JSON allows but JS/Python read oddly, bytes that are not UTF-8.
// No credentials are ever sent, so the best any body can get is a 402: never a 5xx, never money.

const BUG_NONFINITE = 'bug: a non-finite number (1e309) or nesting deeper than 64 in a field the gateway forwards (stop, tools, tool_choice, response_format, user content parts) is a 500: prepareChat calls serializeWireBody/requestHash outside its try, and the JsonSerializeError becomes INTERNAL'

const stack = await withStack(t)
const gw = await startGateway(stack)
t.teardown(() => gw.close())
const pace = pacer()
const before = await chainSnapshot(stack)
const payer2Account = `eip155:${stack.chain.chainId}:${stack.payer2.address.toLowerCase()}`

const CHAT = '/v1/chat/completions'

async function post (target: string, body: string | Buffer, headers: Array<[string, string]> = [['Content-Type', 'application/json']]): Promise<RawResponse> {
  await pace()
  return rawRequest(gw.url, { method: 'POST', target, headers, body })
}

/** The response contract plus no money, no prototype pollution; known bugs are tallied, not failed. */
async function check (res: RawResponse, body: string | Buffer, known: Tally, allowed: number[]): Promise<void> {
  const problems = contractViolations(res)
  if (res.status >= 500 && typeof body === 'string' && nonFiniteOrDeep(body)) {
    known.add(BUG_NONFINITE)
  } else {
    problems.push(...(allowed.includes(res.status) ? [] : [`unexpected status ${res.status} (${codeOf(res)})`]))
    if (problems.length) throw new Error(`${problems.join('; ')} for body ${clip(JSON.stringify(String(body)), 400)}`)
  }
  const money = [...await ledgerProblems(gw), ...prototypeProblems()]
  if (money.length) throw new Error(money.join('; '))
}

// --- generators -------------------------------------------------------------------------------

const FORWARDED = ['stop', 'tools', 'tool_choice', 'response_format', 'temperature', 'max_completion_tokens', 'stream_options', 'web_search', 'stream', 'max_tokens'] as const
const anyKey = fc.oneof(fc.constantFrom(...HOSTILE_KEYS), fc.constantFrom(...FORWARDED), fc.string({ maxLength: 6 }))
/** A valid value most of the time, a hostile one otherwise. */
const slot = (valid: string) => fc.oneof({ weight: 3, arbitrary: fc.constant(valid) }, { weight: 2, arbitrary: hostileJsonText })
const obj = (entries: Array<[string, string]>) => '{' + entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',') + '}'

const messageText = (hostileSlots: boolean) => fc.record({
  role: hostileSlots ? fc.oneof(slot('"user"'), fc.constantFrom('"system"', '"assistant"', '"tool"', '"developer"', '"function"', '"USER"', '"user\\u0000"')) : fc.constantFrom('"user"', '"system"', '"assistant"', '"developer"'),
  content: fc.oneof(
    hostileSlots ? slot('"hi"') : fc.constant('"hi"'),
    fc.constant('[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:,x"}}]'),
    hostileJsonText.map((v) => `[{"type":"text","text":"hi","x":${v}}]`),
  ),
  extra: fc.array(fc.tuple(fc.oneof(fc.constantFrom(...HOSTILE_KEYS), fc.string({ maxLength: 6 })), hostileJsonText), { maxLength: 2 }),
}).map((m) => obj([['role', m.role], ['content', m.content], ...m.extra]))

/**
 * A chat completion body. "freeform": every validated field valid, hostile values only where any
 * JSON is allowed (stop, tools, tool_choice, response_format, content parts, unknown keys);
 * "anywhere": hostile values in validated fields too, and duplicate keys.
 */
const chatBodyText = fc.constantFrom<'freeform' | 'anywhere'>('freeform', 'anywhere').chain((mode) => {
  const hostile = mode === 'anywhere'
  return fc.record({
    model: hostile ? fc.oneof(slot('"gpt-4.1"'), fc.constantFrom('"claude-sonnet-4-6"', '"gpt-4.1\\u0000"', '"GPT-4.1"')) : fc.constantFrom('"gpt-4.1"', '"claude-sonnet-4-6"'),
    messages: hostile
      ? fc.oneof({ weight: 4, arbitrary: fc.array(messageText(true), { minLength: 1, maxLength: 3 }).map((ms) => `[${ms.join(',')}]`) }, { weight: 1, arbitrary: hostileJsonText })
      : fc.array(messageText(false), { minLength: 1, maxLength: 3 }).map((ms) => `[${ms.join(',')}]`),
    maxTokens: hostile ? fc.option(slot('16')) : fc.option(fc.constantFrom('16', '1', '0', '4096', '16.0', '-0')),
    extra: fc.array(fc.tuple(hostile ? anyKey : fc.oneof(fc.constantFrom(...HOSTILE_KEYS), fc.constantFrom('stop', 'tools', 'tool_choice', 'response_format', 'user', 'metadata', 'seed')), hostileJsonText), { maxLength: 3 }),
    duplicate: hostile ? fc.option(fc.tuple(fc.constantFrom('model', 'messages', 'max_tokens', 'stream'), hostileJsonText)) : fc.constant(null),
  })
}).map((b) => obj([
  ['model', b.model], ['messages', b.messages],
  ...(b.maxTokens !== null ? [['max_tokens', b.maxTokens] as [string, string]] : []),
  ...b.extra,
  ...(b.duplicate ? [b.duplicate] : []),
]))

// Byte-level damage to a body: invalid UTF-8 (lone continuation, overlong, CESU surrogates, 0xFF),
// a BOM, NULs, truncation, trailing garbage.
const BAD_BYTES = [[0x80], [0xc0, 0xaf], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xff], [0xfe, 0xff], [0xef, 0xbb, 0xbf], [0x00], [0xe0, 0xa4]]
const damaged = fc.tuple(chatBodyText, fc.array(fc.tuple(fc.nat(), fc.constantFrom(...BAD_BYTES)), { minLength: 1, maxLength: 4 }), fc.constantFrom('none', 'bom', 'truncate', 'trailing'))
  .map(([text, inserts, extra]) => {
    let b = Buffer.from(text, 'utf8')
    for (const [pos, bytes] of inserts) {
      const at = pos % (b.length + 1)
      b = Buffer.concat([b.subarray(0, at), Buffer.from(bytes), b.subarray(at)])
    }
    if (extra === 'bom') b = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), b])
    if (extra === 'truncate') b = b.subarray(0, Math.floor(b.length / 2))
    if (extra === 'trailing') b = Buffer.concat([b, Buffer.from('}{"x":1}')])
    return b
  })

const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/json; charset=latin1', 'Application/JSON', 'application/json;;', 'application/vnd.api+json',
  'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', '', '*/*', 'application/json, text/plain', 'application/json\u00e9']

// --- properties -------------------------------------------------------------------------------

t.test('fuzz: structured chat bodies with hostile values and keys, no credentials', async (t) => {
  const known = new Tally()
  const seen = new Tally()
  await runProperty(t, 'chat bodies', fc.asyncProperty(chatBodyText, async (text) => {
    const res = await post(CHAT, text)
    seen.add(codeOf(res))
    await check(res, text, known, [400, 402, 413])
  }), fuzzParams(t, 'chat bodies', { seed: 4021, runs: 150 }))
  t.comment(`outcomes: ${seen}`)
  t.equal(known.total, 0, `known-bug cases: ${known}`)
  t.ok((seen.counts.get('402:payment_required/payment_required') ?? 0) > 0, 'some hostile bodies were valid enough to reach the 402')
  t.same(await ledgerProblems(gw), [])
})

t.test('fuzz: byte-damaged bodies (invalid UTF-8, BOM, NUL, truncation, trailing data)', async (t) => {
  const known = new Tally()
  const seen = new Tally()
  await runProperty(t, 'damaged bodies', fc.asyncProperty(damaged, async (bytes) => {
    const res = await post(CHAT, bytes)
    seen.add(codeOf(res))
    await check(res, bytes.toString('utf8'), known, [400, 402, 413])
  }), fuzzParams(t, 'damaged bodies', { seed: 4022, runs: 80 }))
  t.comment(`outcomes: ${seen}`)
  t.equal(known.total, 0, `known-bug cases: ${known}`)
})

t.test('fuzz: arbitrary documents and content types on every POST route', async (t) => {
  const known = new Tally()
  const seen = new Tally()
  const routes: Array<{ target: string, headers: Array<[string, string]>, allowed: number[] }> = [
    { target: CHAT, headers: [], allowed: [400, 402, 413] },
    // Without credentials the key and top-up routes ask for payment before they read the body.
    { target: '/v1/keys', headers: [], allowed: [400, 402, 413] },
    { target: '/v1/credits/topup?amount=1.00', headers: [], allowed: [400, 402, 413] },
    // The operator's grant: any body random input can make must be refused, never credited.
    { target: `/admin/accounts/${payer2Account}/grant`, headers: [['Authorization', `Bearer ${ADMIN_TOKEN}`]], allowed: [400, 413] },
  ]
  const doc = fc.oneof(fc.json({ maxDepth: 4 }), hostileJsonText, chatBodyText, fc.string({ unit: 'binary', maxLength: 200 }), fc.constantFrom('', ' ', 'null', '[]', '{}', '"x"', '0', '{"amount":"1","reason":"abc","__proto__":{}}'))
  await runProperty(t, 'documents', fc.asyncProperty(fc.constantFrom(...routes), doc, fc.constantFrom(...CONTENT_TYPES), async (route, text, ct) => {
    const headers: Array<[string, string]> = [...route.headers, ...(ct ? [['Content-Type', ct] as [string, string]] : [])]
    await pace()
    const res = await rawRequest(gw.url, { method: 'POST', target: route.target, headers, body: Buffer.from(text, ct.includes('\u00e9') ? 'latin1' : 'utf8') })
    seen.add(`${route.target.split('?')[0].replace(payer2Account, ':a')} ${codeOf(res)}`)
    await check(res, text, known, route.allowed)
  }), fuzzParams(t, 'documents', { seed: 4023, runs: 150 }))
  t.comment(`outcomes: ${seen}`)
  t.equal(known.total, 0, `known-bug cases: ${known}`)
})

// --- named regression cases -------------------------------------------------------------------

const base = (extra: string) => `{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":16${extra}}`

t.test('regression: non-finite numbers and deep nesting in forwarded fields are a 400, not a 500', async (t) => {
  const cases: Array<[string, string]> = [
    ['stop: 1e309', base(',"stop":1e309')],
    ['stop: [-1e309]', base(',"stop":[-1e309]')],
    ['tools: [1E400]', base(',"tools":[1E400]')],
    ['tool_choice: {"x": 1e309}', base(',"tool_choice":{"x":1e309}')],
    ['response_format: {"schema": 1e309}', base(',"response_format":{"schema":1e309}')],
    ['user content part with 1e309', '{"model":"gpt-4.1","messages":[{"role":"user","content":[{"type":"text","text":"hi","x":1e309}]}],"max_tokens":16}'],
    ['tools nested 70 deep', base(`,"tools":[${nest(70)}]`)],
    ['tool_choice nested 1000 deep', base(`,"tool_choice":${nest(1000, '1', 'object')}`)],
    ['user content part nested 80 deep', `{"model":"gpt-4.1","messages":[{"role":"user","content":[{"type":"text","text":"hi","x":${nest(80)}}]}],"max_tokens":16}`],
  ]
  for (const [name, body] of cases) {
    const res = await post(CHAT, body)
    t.equal(res.status, 400, `${name}: 400`)
    t.equal(res.json?.error?.code, 'bad_request_body', `${name}: bad_request_body`)
    t.ok(res.status !== 0 && res.headers['x-request-id'], `${name}: answered`)
  }
  t.same(await ledgerProblems(gw), [], 'nothing credited or reserved')
})

t.test('regression: numbers JSON allows but JavaScript reads oddly', async (t) => {
  const cases: Array<[string, string, number, string]> = [
    ['max_tokens: 1e309 (Infinity)', base('').replace('"max_tokens":16', '"max_tokens":1e309'), 400, 'bad_request_body'],
    ['max_tokens: huge int', base('').replace('"max_tokens":16', '"max_tokens":123456789012345678901234567890'), 400, 'bad_request_body'],
    ['max_tokens: 2^53+1', base('').replace('"max_tokens":16', '"max_tokens":9007199254740993'), 400, 'bad_request_body'],
    ['max_tokens: 16.5', base('').replace('"max_tokens":16', '"max_tokens":16.5'), 400, 'bad_request_body'],
    ['max_tokens: -1', base('').replace('"max_tokens":16', '"max_tokens":-1'), 400, 'bad_request_body'],
    ['max_tokens: 1e400 under the limit? no: Infinity', base('').replace('"max_tokens":16', '"max_tokens":1e400'), 400, 'bad_request_body'],
    ['max_tokens: 5e-324', base('').replace('"max_tokens":16', '"max_tokens":5e-324'), 400, 'bad_request_body'],
    ['max_tokens: -0', base('').replace('"max_tokens":16', '"max_tokens":-0'), 402, 'payment_required'],
    ['max_tokens: 16.0 (an integer in JS)', base('').replace('"max_tokens":16', '"max_tokens":16.0'), 402, 'payment_required'],
    ['temperature: 1e309', base(',"temperature":1e309'), 400, 'bad_request_body'],
    ['temperature: -0', base(',"temperature":-0'), 402, 'payment_required'],
    ['temperature: 5e-324', base(',"temperature":5e-324'), 402, 'payment_required'],
    ['stop: huge int', base(',"stop":[123456789012345678901234567890]'), 402, 'payment_required'],
    ['tools: 1e-400 (underflows to 0)', base(',"tools":[1e-400]'), 402, 'payment_required'],
  ]
  for (const [name, body, status, code] of cases) {
    const res = await post(CHAT, body)
    t.equal(res.status, status, `${name}: ${status}`)
    t.equal(status === 402 ? res.json?.code : res.json?.error?.code, code, `${name}: ${code}`)
  }
  t.same(await ledgerProblems(gw), [])
})

t.test('regression: prototype-pollution keys are refused or inert at any depth', async (t) => {
  const refused: Array<[string, string]> = [
    ['__proto__ at the top', base(',"__proto__":{"isAdmin":true}')],
    ['constructor.prototype at the top', base(',"constructor":{"prototype":{"isAdmin":true}}')],
    ['__proto__ in a message', '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi","__proto__":{"role":"system"}}],"max_tokens":16}'],
    ['__proto__ deep in tools', base(`,"tools":[{"a":{"b":{"__proto__":{"polluted":1}}}}]`)],
    ['__proto__ in a content part', '{"model":"gpt-4.1","messages":[{"role":"user","content":[{"type":"text","text":"hi","__proto__":{"x":1}}]}],"max_tokens":16}'],
  ]
  for (const [name, body] of refused) {
    const res = await post(CHAT, body)
    t.equal(res.status, 400, `${name}: 400`)
    t.equal(res.json?.error?.metadata?.reason, 'invalid_json', `${name}: reason invalid_json`)
  }
  // Names that are only dangerous as property paths are ordinary keys here.
  const inert: Array<[string, string]> = [
    ['"constructor": 1', base(',"constructor":1')],
    ['"prototype" object', base(',"prototype":{"isAdmin":true}')],
    ['"toString" / "hasOwnProperty" keys', base(',"toString":"x","hasOwnProperty":1,"valueOf":{}')],
    ['"__proto__" as a string value', base(',"user":"__proto__"')],
  ]
  for (const [name, body] of inert) {
    const res = await post(CHAT, body)
    t.equal(res.status, 402, `${name}: reaches the 402`)
  }
  const hostileRoles = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"constructor","content":"hi"}],"max_tokens":16}')
  t.equal(hostileRoles.status, 400, 'role "constructor" is an unknown role')
  t.same(prototypeProblems(), [], 'no built-in prototype gained a property')
  t.equal(({} as Record<string, unknown>).isAdmin, undefined)
  t.same(await ledgerProblems(gw), [])
})

t.test('regression: duplicate keys keep the last value, consistently', async (t) => {
  const last = await post(CHAT, '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"model":"gpt-4.1"}')
  t.equal(last.status, 402, 'the last "model" wins')
  const lastBad = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"model":"no-such-model"}')
  t.equal(lastBad.status, 400)
  t.equal(lastBad.json?.error?.code, 'unknown_model')
  const maxTok = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"max_tokens":99999999}')
  t.equal(maxTok.json?.error?.code, 'max_tokens_too_large', 'a second max_tokens cannot sneak past the limit')
  // The 402's offer is priced on the value that is validated and sent: the last one.
  const small = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":4096,"max_tokens":1}')
  const big = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":1,"max_tokens":4096}')
  t.equal(small.status, 402)
  t.equal(big.status, 402)
  t.same(await ledgerProblems(gw), [])
})

t.test('regression: wrong types, empty and odd documents', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['empty body', '', 'bad_request_body'],
    ['whitespace', '   ', 'bad_request_body'],
    ['null', 'null', 'bad_request_body'],
    ['array', '[]', 'bad_request_body'],
    ['string', '"hi"', 'bad_request_body'],
    ['number', '42', 'bad_request_body'],
    ['model: 1', '{"model":1,"messages":[{"role":"user","content":"hi"}]}', 'bad_request_body'],
    ['model: ""', '{"model":"","messages":[{"role":"user","content":"hi"}]}', 'bad_request_body'],
    ['model: 129 chars', `{"model":"${'m'.repeat(129)}","messages":[{"role":"user","content":"hi"}]}`, 'bad_request_body'],
    ['messages: "hi"', '{"model":"gpt-4.1","messages":"hi"}', 'bad_request_body'],
    ['messages: {}', '{"model":"gpt-4.1","messages":{}}', 'bad_request_body'],
    ['messages: []', '{"model":"gpt-4.1","messages":[]}', 'bad_request_body'],
    ['messages: [null]', '{"model":"gpt-4.1","messages":[null]}', 'bad_request_body'],
    ['messages: 2049 items', `{"model":"gpt-4.1","messages":[${Array(2049).fill('{"role":"user","content":"a"}').join(',')}]}`, 'bad_request_body'],
    ['role: 7', '{"model":"gpt-4.1","messages":[{"role":7,"content":"hi"}]}', 'bad_request_body'],
    ['content: 7', '{"model":"gpt-4.1","messages":[{"role":"user","content":7}]}', 'bad_request_body'],
    ['content: [7]', '{"model":"gpt-4.1","messages":[{"role":"user","content":[7]}]}', 'bad_request_body'],
    ['stream: "true"', '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"stream":"true"}', 'bad_request_body'],
    ['tools: {}', base(',"tools":{"a":1}'), 'bad_request_body'],
    ['assistant tool_calls: "x"', '{"model":"gpt-4.1","messages":[{"role":"assistant","content":"","tool_calls":"x"}]}', 'bad_request_body'],
    ['trailing comma', '{"model":"gpt-4.1",}', 'bad_request_body'],
    ['single quotes', "{'model':'gpt-4.1'}", 'bad_request_body'],
    ['NaN literal', base(',"temperature":NaN'), 'bad_request_body'],
    ['comment', '{"model":"gpt-4.1"/*x*/}', 'bad_request_body'],
    ['two documents', base('') + base(''), 'bad_request_body'],
  ]
  for (const [name, body, code] of cases) {
    const res = await post(CHAT, body)
    t.equal(res.status, 400, `${name}: 400`)
    t.equal(res.json?.error?.code, code, `${name}: ${code}`)
  }
  t.same(await ledgerProblems(gw), [])
})

t.test('regression: non-UTF-8 bytes, BOM, huge strings, deep but unforwarded nesting', async (t) => {
  const latin1 = Buffer.concat([Buffer.from('{"model":"gpt-4.1","messages":[{"role":"user","content":"caf'), Buffer.from([0xe9, 0xff, 0xc0, 0xaf, 0xed, 0xa0, 0x80]), Buffer.from('"}],"max_tokens":16}')])
  const a = await post(CHAT, latin1)
  t.equal(a.status, 402, 'invalid UTF-8 inside a string is decoded with replacement characters, not a 5xx')
  const badKey = Buffer.concat([Buffer.from('{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"max_tokens":16,"'), Buffer.from([0xff, 0xfe]), Buffer.from('":1}')])
  t.equal((await post(CHAT, badKey)).status, 402, 'invalid UTF-8 in an unknown key')
  const outside = Buffer.concat([Buffer.from('{"model":"gpt-4.1",'), Buffer.from([0xff]), Buffer.from('"messages":[]}')])
  t.equal((await post(CHAT, outside)).json?.error?.code, 'bad_request_body', 'invalid byte outside a string')
  const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(base(''))])
  t.ok([400, 402].includes((await post(CHAT, bom)).status), 'a UTF-8 BOM is either accepted or refused as bad JSON')
  const nul = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"user","content":"a\u0000b"}],"max_tokens":16}')
  t.equal(nul.status, 400, 'a raw NUL in a string is not JSON')
  const escNul = await post(CHAT, '{"model":"gpt-4.1","messages":[{"role":"user","content":"a\\u0000b\\ud800"}],"max_tokens":16}')
  t.equal(escNul.status, 402, 'escaped NUL and a lone surrogate are ordinary string content')
  const huge = await post(CHAT, `{"model":"gpt-4.1","messages":[{"role":"user","content":"${'x'.repeat(1_000_000)}"}],"max_tokens":16}`)
  t.equal(huge.status, 402, 'a 1 MB prompt under the body limit is priced, not crashed on')
  const hugeKey = await post(CHAT, base(`,"${'k'.repeat(500_000)}":1`))
  t.equal(hugeKey.status, 402, 'a 500 KB key is ignored')
  const deepUnforwarded = await post(CHAT, base(`,"x":${nest(100_000)}`))
  t.equal(deepUnforwarded.status, 402, 'nesting 100 000 deep in a field that is not forwarded')
  const deepMessages = await post(CHAT, `{"model":"gpt-4.1","messages":${nest(100_000)}}`)
  t.equal(deepMessages.status, 400, 'messages nested 100 000 deep is refused')
  t.same(await ledgerProblems(gw), [])
})

t.test('after everything: no money moved, the server answers', async (t) => {
  await assertUnharmed(t, gw, stack, before)
})
