import t from 'tap'
import { request } from 'undici'
import { startTeeBackend, type TeeBackend } from '../local-stack/tee-backend.ts'
import { buildWireRequest, requestHash, serializeWireBody } from '../src/proof/canonical.ts'
import { parseJson, toPlainJson } from '../src/proof/json.ts'
import { canonicalOutputOf, StreamAccumulator } from '../src/proof/output.ts'
import { teeIdForPublicKey, verifyTeeProof, type TeeVerdict } from '../src/proof/verify.ts'

// The reference backend is only useful if its proofs verify with the real verifier and each fault
// shows the failure it is named after.

const TOOLS = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city', 'days'] } } }]
const plain = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-5', messages: [{ role: 'developer', content: 'Be brief.' }, { role: 'user', content: 'Hello, caf\u00e9 \u{1F600}' }], temperature: 0.7, ...extra })
const weather = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-5', messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools: TOOLS, tool_choice: 'auto', ...extra })

let backend: TeeBackend
t.before(async () => { backend = await startTeeBackend({ models: ['gpt-5', 'grok-4'] }) })
t.teardown(() => backend.close())
t.afterEach(() => backend.setFault(null))

interface Sent { status: number, text: string, wireHash: string }

async function send (body: Record<string, unknown>, timeouts: { headersTimeout?: number, bodyTimeout?: number } = {}): Promise<Sent> {
  const wire = buildWireRequest(body)
  const res = await request(`${backend.url}/v1/chat/completions`, {
    method: 'POST', body: serializeWireBody(wire), headers: { 'content-type': 'application/json' }, ...timeouts,
  })
  return { status: res.statusCode, text: await res.body.text(), wireHash: requestHash(wire) }
}

function sseFrames (text: string): { frames: unknown[], done: boolean } {
  const frames: unknown[] = []
  let done = false
  for (const event of text.split('\n\n')) {
    if (!event.startsWith('data: ')) continue
    const data = event.slice(6)
    if (data === '[DONE]') done = true
    else frames.push(parseJson(data))
  }
  return { frames, done }
}

function verifyNonStream (s: Sent): TeeVerdict {
  const body = parseJson(s.text) as Record<string, unknown>
  return verifyTeeProof({ requestHash: s.wireHash, outputCanonical: canonicalOutputOf(body), proof: body, trustedKey: backend.publicKeyPem })
}

function verifyStream (s: Sent): { verdict: TeeVerdict, acc: StreamAccumulator, done: boolean } {
  const { frames, done } = sseFrames(s.text)
  const acc = new StreamAccumulator()
  for (const f of frames) acc.feed(f)
  const verdict = verifyTeeProof({ requestHash: s.wireHash, outputCanonical: acc.canonicalOutput(), proof: acc.finalFrame ?? {}, trustedKey: backend.publicKeyPem })
  return { verdict, acc, done }
}

t.test('identity endpoints', async (t) => {
  const key = await request(`${backend.url}/signing-key`)
  const pem = await key.body.text()
  t.equal(teeIdForPublicKey(pem), backend.teeId)
  const health = await request(`${backend.url}/health`)
  t.same(await health.body.json(), { status: 'ok', tee_id: backend.teeId })
})

t.test('non-stream answer verifies, with usage and cost', async (t) => {
  const s = await send(plain({ max_tokens: 5 }))
  t.equal(s.status, 200)
  const v = verifyNonStream(s)
  t.match(v, { verified: true, teeId: backend.teeId, requestHash: s.wireHash })
  t.equal(backend.lastRequest?.requestHash, s.wireHash, 'the backend hashed what we sent')
  const body = toPlainJson(parseJson(s.text)) as any
  const words = body.choices[0].message.content.split(' ').length
  t.ok(words >= 1 && words <= 5, 'max_tokens bounds the words')
  t.equal(body.usage.completion_tokens, words)
  t.equal(body.usage.total_tokens, body.usage.prompt_tokens + words)
  t.match(body.opengradient.cost_opg, /^[1-9]\d*$/)
  t.type(body.opengradient.cost_usd, 'number')
  t.equal(body.choices[0].finish_reason, 'stop')
  const again = await send(plain({ max_tokens: 5 }))
  t.equal(canonicalOutputOf(parseJson(again.text)), canonicalOutputOf(parseJson(s.text)), 'deterministic words')
})

t.test('stream answer verifies; usage only when asked for', async (t) => {
  const s = await send(plain({ stream: true, stream_options: { include_usage: true } }))
  const { verdict, acc, done } = verifyStream(s)
  t.match(verdict, { verified: true })
  t.ok(done, 'ends with [DONE]')
  t.ok(acc.frames > 3, 'one word per frame')
  t.match(acc.usage, { completion_tokens: acc.frames - 1 })
  t.ok(acc.opengradient)
  const bare = verifyStream(await send(plain({ stream: true })))
  t.match(bare.verdict, { verified: true })
  t.equal(bare.acc.usage, undefined)
  t.ok(bare.acc.opengradient, 'the cost block still comes')
})

t.test('tool calls, both modes', async (t) => {
  const s = await send(weather())
  t.match(verifyNonStream(s), { verified: true })
  const call = (toPlainJson(parseJson(s.text)) as any).choices[0]
  t.equal(call.finish_reason, 'tool_calls')
  t.equal(call.message.tool_calls[0].function.name, 'get_weather')
  t.match(JSON.parse(call.message.tool_calls[0].function.arguments), { city: String, days: 3 })
  const st = verifyStream(await send(weather({ stream: true })))
  t.match(st.verdict, { verified: true })
  t.equal(st.acc.toolCalls[0].function.arguments, call.message.tool_calls[0].function.arguments)
  t.ok(st.acc.frames >= 4, 'arguments arrive in fragments')
  const noTrigger = await send({ ...weather(), messages: [{ role: 'user', content: 'Hi' }] })
  t.equal((toPlainJson(parseJson(noTrigger.text)) as any).choices[0].finish_reason, 'stop')
})

t.test('it canonicalizes like the enclave: an unnormalised body is refused', async (t) => {
  const res = await request(`${backend.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify(plain()) })
  t.equal(res.statusCode, 400)
  t.match(await res.body.json(), { error: 'Unknown role: developer', source: 'gateway', retryable: false })
  const bad = await request(`${backend.url}/v1/chat/completions`, { method: 'POST', body: '{"model": "gpt-5", "messages": [' })
  t.equal(bad.statusCode, 400)
  await bad.body.dump()
  const unknown = await send({ ...plain(), model: 'nope' })
  t.equal(unknown.status, 400)
})

t.test('http error faults use the gateway error shape and honour count', async (t) => {
  for (const status of [500, 502, 503, 504]) {
    backend.setFault({ kind: `http_${status}` as 'http_500', count: 1 })
    const s = await send(plain())
    t.equal(s.status, status)
    t.match(JSON.parse(s.text), { error: String, exception_type: String, source: /^(provider|gateway)$/, retryable: Boolean })
    t.ok('provider_status' in JSON.parse(s.text))
    t.equal((await send(plain())).status, 200, 'count 1 applies once')
  }
  backend.setFault({ kind: 'http_502' })
  t.equal((await send(plain())).status, 502)
  t.equal((await send(plain())).status, 502, 'without count it stays')
})

t.test('hang and hang_after_headers', async (t) => {
  const before = { ...backend.stats }
  backend.setFault({ kind: 'hang' })
  await t.rejects(send(plain(), { headersTimeout: 300 }), { code: 'UND_ERR_HEADERS_TIMEOUT' })
  backend.setFault({ kind: 'hang_after_headers' })
  await t.rejects(send(plain({ stream: true }), { bodyTimeout: 300 }), { code: 'UND_ERR_BODY_TIMEOUT' })
  for (let i = 0; i < 100 && backend.stats.aborted - before.aborted < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(backend.stats.received - before.received, 2)
  t.equal(backend.stats.aborted - before.aborted, 2, 'both counted as aborted once the client gave up')
})

t.test('abort_mid_stream breaks the body after some chunks', async (t) => {
  backend.setFault({ kind: 'abort_mid_stream' })
  const res = await request(`${backend.url}/v1/chat/completions`, { method: 'POST', body: serializeWireBody(buildWireRequest(plain({ stream: true }))) })
  t.equal(res.statusCode, 200)
  let got = ''
  await t.rejects((async () => { for await (const c of res.body) got += c.toString() })())
  t.match(got, /^data: /, 'some frames arrived first')
  t.notMatch(got, /tee_signature|\[DONE\]/)
  await t.rejects(send(plain()), 'a non-stream body is cut too')
})

t.test('proof faults fail at the intended step', async (t) => {
  backend.setFault({ kind: 'bad_signature' })
  t.match(verifyNonStream(await send(plain())), { verified: false, step: 'signature' })
  t.match(verifyStream(await send(weather({ stream: true }))).verdict, { verified: false, step: 'signature' })
  backend.setFault({ kind: 'tampered_output' })
  t.match(verifyNonStream(await send(plain())), { verified: false, step: 'output_hash' })
  t.match(verifyNonStream(await send(weather())), { verified: false, step: 'output_hash' })
  t.match(verifyStream(await send(plain({ stream: true }))).verdict, { verified: false, step: 'output_hash' })
})

t.test('missing_usage drops usage and the cost block, proof intact', async (t) => {
  backend.setFault({ kind: 'missing_usage' })
  const s = await send(plain())
  const body = parseJson(s.text) as Record<string, unknown>
  t.equal(body.usage, undefined)
  t.equal(body.opengradient, undefined)
  t.match(verifyNonStream(s), { verified: true })
  const st = verifyStream(await send(plain({ stream: true, stream_options: { include_usage: true } })))
  t.equal(st.acc.usage, undefined)
  t.equal(st.acc.opengradient, undefined)
  t.match(st.verdict, { verified: true })
})

t.test('in_band_error: 200, then an error frame instead of a proof', async (t) => {
  backend.setFault({ kind: 'in_band_error' })
  const s = await send(plain({ stream: true }))
  t.equal(s.status, 200)
  const st = verifyStream(s)
  t.match(st.acc.error, 'Provider stream failed')
  t.equal(st.acc.finalFrame, undefined)
  t.match(st.verdict, { verified: false, step: 'malformed' })
})

t.test('slow stretches the stream', async (t) => {
  const timed = async () => { const t0 = Date.now(); const s = await send(plain({ stream: true, max_tokens: 4 })); return { ms: Date.now() - t0, s } }
  const fast = await timed()
  backend.setFault({ kind: 'slow', delayMs: 80 })
  const slow = await timed()
  t.ok(slow.ms >= 4 * 80 - 20, `slow took ${slow.ms} ms`)
  t.ok(fast.ms < slow.ms)
  t.match(verifyStream(slow.s).verdict, { verified: true }, 'slow is still correct')
})

t.test('faults over HTTP for out-of-process use', async (t) => {
  const ctl = (body: unknown) => request(`${backend.url}/__control/fault`, { method: 'POST', body: JSON.stringify(body) })
  const ok = await ctl({ kind: 'http_503', count: 2 })
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  t.equal((await send(plain())).status, 503)
  t.equal((await send(plain())).status, 503)
  t.equal((await send(plain())).status, 200)
  const bad = await ctl({ kind: 'explode' })
  t.equal(bad.statusCode, 400)
  await bad.body.dump()
  await (await ctl({ kind: 'http_500' })).body.dump()
  await (await ctl(null)).body.dump()
  t.equal((await send(plain())).status, 200, 'null clears')
  const stats = await request(`${backend.url}/__control/stats`)
  t.match(await stats.body.json(), { received: Number, completed: Number, aborted: Number })
})
