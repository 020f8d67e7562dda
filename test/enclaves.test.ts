import t from 'tap'
import { withStack, startGateway, chatBody, buyApiKey, postChat } from './helpers/gateway.ts'

const frames = (text: string) => text.split('\n\n').filter((f) => f.startsWith('data: ')).map((f) => f.slice(6))

t.test('registry discovery: two HTTPS enclaves share the load; one dies mid-run and clients see no error', async (t) => {
  const stack = await withStack(t, { enclaves: 2 })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  t.equal(gw.config.upstream.url, undefined, 'no static upstream: enclaves come from the registry')
  t.same([...gw.app.enclaves.teeIds()].sort(), stack.backends.map((b) => b.teeId).sort(), 'both registered enclaves discovered')
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}` }

  const seenTee = new Set<string>()
  for (let i = 0; i < 10; i++) {
    const r = await postChat(gw, chatBody(`spread ${i}`), auth)
    t.equal(r.status, 200)
    seenTee.add(r.headers.get('x-opengradient-tee-id')!)
  }
  t.equal(seenTee.size, 2, 'answers came from both enclaves, each verified against its own key')
  t.ok(stack.backends.every((b) => b.stats.received >= 3), `load spread: ${stack.backends.map((b) => b.stats.received).join('/')}`)

  await stack.backends[0].close()
  const statuses: number[] = []
  for (let i = 0; i < 10; i++) statuses.push((await postChat(gw, chatBody(`after kill ${i}`), auth)).status)
  t.same(statuses, Array(10).fill(200), 'every request after the kill succeeded')
})

t.test('a streamed tool call verifies; verify-before-emit never emits unverified bytes', async (t) => {
  const stack = await withStack(t, { chunkDelayMs: 5 })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}` }
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }]

  const toolStream = await (await postChat(gw, chatBody('What is the weather in Lisbon?', { stream: true, tools }), auth)).text()
  const tf = frames(toolStream)
  const final = JSON.parse(tf.at(-2)!)
  t.equal(final.x402_gateway.verified, true, 'the tool-call stream verified')
  t.ok(tf.some((f) => f.includes('"tool_calls"')), 'tool-call fragments were streamed')

  const good = await (await postChat(gw, chatBody('held answer', { stream: true }), { ...auth, 'x-verify-before-emit': 'true' })).text()
  t.equal(JSON.parse(frames(good).at(-2)!).x402_gateway.verified, true)
  t.ok(frames(good).some((f) => f.includes('"content"')), 'a verified held answer is delivered')

  for (const kind of ['tampered_output', 'bad_signature']) {
    stack.backend.setFault({ kind } as never, )
    const res = await postChat(gw, chatBody(`held ${kind}`, { stream: true }), { ...auth, 'x-verify-before-emit': 'true' })
    const text = await res.text()
    stack.backend.setFault(null)
    const fs = frames(text)
    t.notOk(fs.slice(0, -2).some((f) => f.includes('"content"')), `${kind}: no answer bytes were emitted`)
    const last = JSON.parse(fs.at(-2)!)
    t.equal(last.error.code, 'proof_unverified')
    t.equal(last.x402_gateway.verified, false)
    t.equal(last.x402_gateway.charged, '0')
    t.notOk(text.includes('"choices"'), `${kind}: not even the proof frame's content`)
  }
})
