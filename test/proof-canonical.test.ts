import t from 'tap'
import {
  JsonNumber, JsonParseError, JsonSerializeError, parseJson, pythonFloatRepr, pythonJsonDumps, toPlainJson,
} from '../src/proof/json.ts'
import { buildWireRequest, canonicalRequestJson, CanonicalRequestError, serializeWireBody } from '../src/proof/canonical.ts'
import { canonicalOutputOf, StreamAccumulator } from '../src/proof/output.ts'
import { verifyTeeProof } from '../src/proof/verify.ts'
import { generateTeeKeyPair, signTeeProof } from '../src/proof/sign.ts'
import { keccakHex } from '../src/proof/hash.ts'

// Each expected string below was produced by CPython 3 (`repr`, `json.dumps`, `json.loads`).

t.test('float repr matches Python', async (t) => {
  const table: Array<[number, string]> = [
    [0, '0.0'], [-0, '-0.0'], [1, '1.0'], [-1, '-1.0'], [0.1, '0.1'], [0.7, '0.7'], [1e-5, '1e-05'],
    [1e-7, '1e-07'], [0.0001, '0.0001'], [0.00012345, '0.00012345'], [1e21, '1e+21'], [1e16, '1e+16'],
    [1e15, '1000000000000000.0'], [9999999999999998, '9999999999999998.0'], [123456789.125, '123456789.125'],
    [1.5e300, '1.5e+300'], [5e-324, '5e-324'], [1.7976931348623157e308, '1.7976931348623157e+308'],
    [2.5e-5, '2.5e-05'], [100, '100.0'], [1e22, '1e+22'], [0.1 + 0.2, '0.30000000000000004'],
    [1 / 3, '0.3333333333333333'], [-2.5e-10, '-2.5e-10'], [1234567890123456.8, '1234567890123456.8'],
    [12345678901234567, '1.2345678901234568e+16'], [2 ** 53, '9007199254740992.0'],
  ]
  for (const [x, py] of table) t.equal(pythonFloatRepr(x), py, `repr(${x})`)
  t.throws(() => pythonFloatRepr(Infinity), JsonSerializeError)
  t.throws(() => pythonFloatRepr(NaN), JsonSerializeError)
})

t.test('number lexemes re-serialize as Python re-serializes what it parsed', async (t) => {
  const table: Array<[string, string]> = [
    ['1.0', '1.0'], ['1.50', '1.5'], ['1E5', '100000.0'], ['-0', '0'], ['-0.0', '-0.0'], ['1e-7', '1e-07'],
    ['12345678901234567890', '12345678901234567890'], ['-9007199254740993', '-9007199254740993'],
    ['0.1e1', '1.0'], ['1E+2', '100.0'], ['100', '100'], ['2.000000000000000000001', '2.0'], ['0e0', '0.0'],
  ]
  for (const [lexeme, py] of table) t.equal(pythonJsonDumps(parseJson(lexeme)), py, lexeme)
  const doc = '{"a": 1.0, "b": 12345678901234567890, "c": [1, 1.0]}'
  t.equal(pythonJsonDumps(parseJson(doc)), doc, 'a Python-written document round-trips byte for byte')
  t.not(pythonJsonDumps(JSON.parse(doc)), doc, 'JSON.parse loses what the enclave hashes')
  t.equal(pythonJsonDumps({ i: 3, f: 2.5, big: 1e21 }), '{"big": 1000000000000000000000, "f": 2.5, "i": 3}', 'plain JS numbers: integers as ints')
  t.throws(() => parseJson('1' + '0'.repeat(4300)), JsonParseError, 'CPython refuses ints over 4300 digits')
  t.doesNotThrow(() => parseJson('1' + '0'.repeat(4299)))
  t.throws(() => pythonJsonDumps(parseJson('1e400')), JsonSerializeError, 'a float overflow is refused, not written as Infinity')
})

t.test('keys sort by code point, not UTF-16 unit', async (t) => {
  const obj = { z: 1, a: 1, é: 1, '\uff21': 1, '\u{1F600}': 1, '\ue000': 1, B: 1, _: 1 }
  const py = '{"B": 1, "_": 1, "a": 1, "z": 1, "\\u00e9": 1, "\\ue000": 1, "\\uff21": 1, "\\ud83d\\ude00": 1}'
  t.equal(pythonJsonDumps(obj), py)
  const jsOrder = Object.keys(obj).sort()
  t.ok(jsOrder.indexOf('\u{1F600}') < jsOrder.indexOf('\ue000'), 'the trap is real: JS sort puts U+1F600 first')
  t.equal(pythonJsonDumps({ ab: 1, a: 2 }), '{"a": 2, "ab": 1}', 'a prefix sorts first')
})

t.test('ensure_ascii escaping', async (t) => {
  const list = ['\u{1F600}', '\x7f', '\u2028', '\x00\x1f', '/', '"\\\b\f\n\r\t', '\ud800', 'é\u0080']
  t.equal(pythonJsonDumps(list), '["\\ud83d\\ude00", "\\u007f", "\\u2028", "\\u0000\\u001f", "/", "\\"\\\\\\b\\f\\n\\r\\t", "\\ud800", "\\u00e9\\u0080"]')
  t.equal(pythonJsonDumps({ a: [1, { b: null, c: true }], d: {} }), '{"a": [1, {"b": null, "c": true}], "d": {}}')
  t.equal(pythonJsonDumps(parseJson('"\\ud83d\\ude00 \\u00e9"')), '"\\ud83d\\ude00 \\u00e9"', 'escaped input comes back the same')
})

t.test('depth limit', async (t) => {
  const nest = (n: number) => '['.repeat(n) + ']'.repeat(n)
  t.doesNotThrow(() => parseJson(nest(64)))
  t.throws(() => parseJson(nest(65)), { name: 'JsonParseError', code: 'JSON_PARSE_ERROR' })
  t.throws(() => parseJson(nest(100_000)), JsonParseError, 'no stack overflow on hostile nesting')
  let deep: unknown = 1
  for (let i = 0; i < 65; i++) deep = [deep]
  t.throws(() => pythonJsonDumps(deep), JsonSerializeError)
  t.throws(() => parseJson(nest(3), { maxDepth: 2 }), JsonParseError)
})

t.test('strict parsing with typed errors', async (t) => {
  for (const bad of ['', '[1,]', '{"a":1,}', 'NaN', 'Infinity', '01', '1.', '.5', '+1', '"a\nb"', '"\\x"', '"\\u12"', "{'a':1}", '[1] x', 'nul', '{"a" 1}']) {
    t.throws(() => parseJson(bad), JsonParseError, JSON.stringify(bad))
  }
  t.throws(() => parseJson(Buffer.from([0x22, 0xff, 0x22])), JsonParseError, 'invalid UTF-8')
  t.equal(pythonJsonDumps(parseJson('{"a": 1, "a": 2}')), '{"a": 2}', 'duplicate keys: last wins, like a dict')
  const proto = parseJson('{"__proto__": {"x": 1}}') as Record<string, unknown>
  t.ok(Object.prototype.hasOwnProperty.call(proto, '__proto__'), '__proto__ is an ordinary key')
  t.equal(({} as Record<string, unknown>).x, undefined, 'no prototype pollution')
  t.same(toPlainJson(parseJson('{"n": [1.5, 2]}')), { n: [1.5, 2] })
})

t.test('canonical request rules', async (t) => {
  const base = { model: 'm', messages: [{ role: 'user', content: 'hi' }] }
  t.equal(canonicalRequestJson({ ...base, temperature: 1 }), '{"messages": [{"content": "hi", "role": "user"}], "model": "m", "temperature": 1.0}')
  t.equal(canonicalRequestJson(parseJson('{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":2}')),
    '{"messages": [{"content": "hi", "role": "user"}], "model": "m", "temperature": 2.0}')
  t.match(canonicalRequestJson({ ...base, max_tokens: 0, stop: '', tools: [], web_search: 'yes' }), /"max_tokens": 0, .*"web_search": true}$/)
  t.throws(() => canonicalRequestJson({ ...base, temperature: true }), { code: 'BAD_TEMPERATURE' })
  t.throws(() => canonicalRequestJson({ ...base, temperature: '0.5' }), CanonicalRequestError)
  t.throws(() => canonicalRequestJson({ model: 'm', messages: [{ role: 'robot', content: 'x' }] }), { code: 'UNKNOWN_ROLE' })
  t.throws(() => canonicalRequestJson({ model: 'm', messages: [] }), { code: 'MISSING_MESSAGES' })
  t.throws(() => canonicalRequestJson({ model: '', messages: base.messages }), { code: 'MISSING_MODEL' })
  t.throws(() => canonicalRequestJson([]), { code: 'BODY_NOT_OBJECT' })

  const dev = { model: 'm', messages: [{ role: 'developer', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ function: { name: 'f' } }] }] }
  t.match(canonicalRequestJson(dev), /"id": "", "type": "function"/, 'the SDK fills missing tool-call fields')
  t.throws(() => canonicalRequestJson(dev, { enclave: true }), { code: 'UNKNOWN_ROLE' }, 'the enclave refuses developer')
  const noDev = { ...dev, messages: [dev.messages[1]] }
  t.match(canonicalRequestJson(noDev, { enclave: true }), /"id": null, "type": null/, 'the enclave hashes missing fields as null')
  t.equal(canonicalRequestJson(buildWireRequest(dev), { enclave: true }), canonicalRequestJson(dev), 'sending the wire form reconciles both')
})

t.test('wire body keeps what the upstream needs and travels intact', async (t) => {
  const body = parseJson('{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}],' +
    '"temperature":1,"top_p":0.5,"seed":1,"tool_choice":"auto","stream":true,"stream_options":{"include_usage":true},' +
    '"tools":[{"type":"function","function":{"name":"f","parameters":{"maximum":1.0}}}]}')
  const wire = buildWireRequest(body)
  t.same(Object.keys(wire).sort(), ['messages', 'model', 'stream', 'stream_options', 'temperature', 'tool_choice', 'tools'])
  const sent = serializeWireBody(wire)
  t.match(sent, /"url":"https:\/\/x\/y.png"/, 'attachments are sent')
  t.match(sent, /"maximum":1\.0/, 'float lexemes stay floats on the wire')
  t.match(sent, /"temperature":1\.0/)
  t.equal(canonicalRequestJson(parseJson(sent), { enclave: true }), canonicalRequestJson(body))
  const noStream = buildWireRequest({ model: 'm', messages: [{ role: 'user', content: 'x' }], stream_options: { include_usage: true } })
  t.equal(noStream.stream_options, undefined, 'stream_options only travel with a stream')
})

t.test('output canonicalization', async (t) => {
  const text = { choices: [{ message: { content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }], tool_calls: [{ id: 'x' }] }, finish_reason: 'stop' }] }
  t.equal(canonicalOutputOf(text), 'ab', 'list content joined; tool_calls ignored unless finish_reason says so')
  const calls = [{ type: 'function', id: 'c1', function: { name: 'f', arguments: '{"q": "é"}' } }]
  t.equal(canonicalOutputOf({ choices: [{ message: { content: 'ignored', tool_calls: calls }, finish_reason: 'tool_calls' }] }),
    '[{"function": {"arguments": "{\\"q\\": \\"\\u00e9\\"}", "name": "f"}, "id": "c1", "type": "function"}]')
  t.equal(canonicalOutputOf({ choices: [] }), '')
  t.equal(canonicalOutputOf('nonsense'), '')

  const acc = new StreamAccumulator()
  acc.feed({ choices: [{ delta: { content: 'Let me ' } }] })
  acc.feed({ choices: [{ delta: { tool_calls: [{ index: 1, id: 'b', function: { name: 'g', arguments: '{' } }] } }] })
  acc.feed({ choices: [{ delta: { tool_calls: [{ index: 0, id: 'a', type: 'function', function: { name: 'f' } }] } }] })
  acc.feed({ choices: [{ delta: { tool_calls: [{ index: 1, id: null, function: { arguments: '}' } }] } }] })
  acc.feed({ choices: [{ delta: { content: [{ type: 'text', text: 'check.' }] } }], x402_gateway: { verified: true } })
  t.equal(acc.text, 'Let me check.')
  t.equal(acc.canonicalOutput(), 'Let me check.', 'without a tool_calls finish the text is the output')
  acc.feed({ choices: [{ delta: {}, finish_reason: 'tool_calls' }], tee_signature: 's', usage: { total_tokens: 3 }, opengradient: { cost_opg: '1' } })
  t.equal(acc.canonicalOutput(), '[{"function": {"arguments": "", "name": "f"}, "id": "a", "type": "function"}, ' +
    '{"function": {"arguments": "{}", "name": "g"}, "id": "b", "type": "function"}]', 'merged by index, ordered by index')
  t.same(acc.usage, { total_tokens: 3 })
  t.same(acc.opengradient, { cost_opg: '1' })
  t.equal(acc.outputChars, 'Let me check.'.length + 2)
  t.equal(acc.error, undefined, 'x402_gateway and other fields are not errors')
  acc.feed({ error: 'provider down' })
  t.equal(acc.error, 'provider down')

  let deep: unknown = 'x'
  for (let i = 0; i < 5000; i++) deep = [deep]
  const hostile = { choices: [{ message: { tool_calls: [deep] }, finish_reason: 'tool_calls' }] }
  t.doesNotThrow(() => canonicalOutputOf(hostile), 'an unserializable output does not throw')
  t.not(canonicalOutputOf(hostile), '', 'and cannot pass as an empty answer')
  let ok: unknown = 'x'
  for (let i = 0; i < 100; i++) ok = [ok]
  t.match(canonicalOutputOf({ choices: [{ message: { tool_calls: [ok] }, finish_reason: 'tool_calls' }] }), /^\[\[\[/, 'outputs nest deeper than requests may')
})

t.test('verification never throws on hostile proofs', async (t) => {
  const { privateKeyPem, publicKeyPem } = generateTeeKeyPair()
  const { teeIdForPublicKey } = await import('../src/proof/verify.ts')
  const reqHash = keccakHex('request')
  const out = 'answer'
  const good = {
    tee_id: teeIdForPublicKey(publicKeyPem), tee_request_hash: reqHash, tee_output_hash: keccakHex(out), tee_timestamp: 1700000000,
    tee_signature: signTeeProof({ requestHash: reqHash, outputHash: keccakHex(out), timestamp: 1700000000, privateKey: privateKeyPem }),
  }
  const check = (proof: unknown) => verifyTeeProof({ requestHash: reqHash, outputCanonical: out, proof: proof as never, trustedKey: publicKeyPem })
  t.same(check(good), { verified: true, teeId: good.tee_id, requestHash: reqHash, outputHash: keccakHex(out), timestamp: 1700000000 })
  t.equal(check({ ...good, tee_timestamp: ' 1700000000 ' }).verified, true, 'decimal strings are accepted like int()')
  t.equal(check({ ...good, tee_timestamp: new JsonNumber('1700000000') }).verified, true)
  const cases: Array<[unknown, string]> = [
    [null, 'malformed'], [{}, 'malformed'], [{ ...good, tee_timestamp: true }, 'malformed'],
    [{ ...good, tee_timestamp: 1700000000.5 }, 'malformed'], [{ ...good, tee_timestamp: new JsonNumber('1700000000.0') }, 'malformed'],
    [{ ...good, tee_timestamp: '1.7e9' }, 'malformed'], [{ ...good, tee_timestamp: -1 }, 'malformed'],
    [{ ...good, tee_signature: 42 }, 'malformed'], [{ ...good, tee_id: ['x'] }, 'malformed'],
    [{ ...good, tee_id: '0x' + '0'.repeat(64) }, 'tee_id'], [{ ...good, tee_request_hash: 'zz' }, 'request_hash'],
    [{ ...good, tee_output_hash: good.tee_output_hash.toUpperCase() }, 'output_hash'],
    [{ ...good, tee_timestamp: 1700000001 }, 'signature'], [{ ...good, tee_signature: '!!!' }, 'signature'],
    [{ ...good, tee_signature: 'AAAA' }, 'signature'], [{ ...good, tee_signature: '' }, 'signature'],
  ]
  for (const [proof, step] of cases) {
    const v = check(proof)
    t.equal(v.verified ? 'verified' : v.step, step, JSON.stringify(proof)?.slice(0, 80) ?? String(proof))
  }
  const long = check({ ...good, tee_request_hash: 'f'.repeat(1_000_000) })
  t.ok(!long.verified && long.reason.length < 400, 'a hostile value is not echoed whole')
  t.equal(verifyTeeProof({ requestHash: reqHash, outputCanonical: out, proof: good, trustedKey: publicKeyPem, expectedTeeId: '0x' + '1'.repeat(64) }).verified, false,
    'the id of the enclave we called is enforced too')
  t.throws(() => verifyTeeProof({ requestHash: reqHash, outputCanonical: out, proof: good, trustedKey: 'not a key' }), 'a bad trusted key is a configuration error')
})
