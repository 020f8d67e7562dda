import t from 'tap'
import { decodePaymentRequiredHeader } from '@x402/core/http'
import { withStack, startGateway, chatBody } from './helpers/gateway.ts'

t.test('an unpaid chat completion gets a v2 challenge in the header and the same JSON in the body', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())

  const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  t.equal(res.status, 402)
  t.equal(res.headers.get('cache-control'), 'no-store')
  t.match(res.headers.get('x-request-id'), /^req_[0-9a-f]{32}$/)
  const header = decodePaymentRequiredHeader(res.headers.get('payment-required')!)
  const body = await res.json()
  t.equal(header.x402Version, 2)
  t.same(body.accepts, header.accepts, 'v1 clients read the same PaymentRequired from the body')
  t.equal(body.x402Version, 2)
  t.equal(body.error, 'payment_required')
  t.equal(body.code, 'payment_required')
  t.equal(header.accepts.length, 1)
  const a = header.accepts[0]
  t.equal(a.scheme, 'exact')
  t.equal(a.network, stack.chain.network)
  t.equal(a.asset.toLowerCase(), stack.token.toLowerCase())
  t.equal(a.payTo.toLowerCase(), stack.payTo.address.toLowerCase())
  t.same(a.extra, { name: 'USDC', version: '2' })
  t.equal(a.amount, '1000000', 'a small request is offered the configured top-up (1.00 USDC)')
  t.match(header.resource.url, /\/v1\/chat\/completions$/)
})

t.test('the offered amount is deterministic for a body and never below its reservation', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { TOPUP_AMOUNT: '0.01', MAX_OUTPUT_TOKENS: '200000', MAX_RESERVATION: '50' })
  t.teardown(() => gw.close())
  const ask = async (body: unknown) => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return decodePaymentRequiredHeader(res.headers.get('payment-required')!).accepts[0].amount
  }
  const big = chatBody('x'.repeat(10_000), { model: 'claude-sonnet-4-6', max_tokens: 100_000 })
  const first = await ask(big)
  t.equal(await ask(big), first, 'same body, same offer')
  // 100k output tokens at $15/1M alone cost $1.50, far above the 0.01 top-up.
  t.ok(BigInt(first) > 1_500_000n, `offer ${first} covers the worst case`)
  t.equal(await ask(chatBody('hi')), '10000', 'small requests get the configured top-up')
})

t.test('bad request bodies are 400 with a code, before any payment is asked', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const post = (body: string, type = 'application/json') => fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': type }, body })
  const cases: [string, string, number, string][] = [
    ['not json', '{"model":', 400, 'bad_request_body'],
    ['no messages', JSON.stringify({ model: 'gpt-4.1' }), 400, 'bad_request_body'],
    ['unknown model', JSON.stringify(chatBody('hi', { model: 'nope' })), 400, 'unknown_model'],
    ['max_tokens over the limit', JSON.stringify(chatBody('hi', { max_tokens: 10_000_000 })), 400, 'max_tokens_too_large'],
    ['oversize body', JSON.stringify(chatBody('x'.repeat(2_000_000))), 413, 'body_too_large'],
    ['prototype pollution keys', '{"model":"gpt-4.1","messages":[{"role":"user","content":"x"}],"__proto__":{"admin":true}}', 400, 'bad_request_body'],
  ]
  for (const [name, body, status, code] of cases) {
    const res = await post(body)
    t.equal(res.status, status, name)
    const json = await res.json()
    t.equal(json.error?.code, code, `${name}: code`)
    t.type(json.error?.metadata?.remedy, 'string', `${name}: remedy`)
  }
})
