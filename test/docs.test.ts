import t from 'tap'
import { withStack, startGateway } from './helpers/gateway.ts'

t.test('OpenAPI at /docs documents the paid routes, their 402 and the payment headers', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const ui = await fetch(`${gw.url}/docs`)
  t.equal(ui.status, 200)
  const spec = await (await fetch(`${gw.url}/docs/json`)).json()
  t.equal(spec.openapi.slice(0, 2), '3.')
  const chat = spec.paths['/v1/chat/completions'].post
  t.ok(chat.responses['402'], '402 documented')
  const headers = chat.parameters.filter((p: { in: string }) => p.in === 'header').map((p: { name: string }) => p.name)
  for (const h of ['payment-signature', 'x-payment', 'sign-in-with-x', 'idempotency-key']) t.ok(headers.includes(h), `${h} documented`)
  t.ok(spec.paths['/v1/credits/topup'].post.responses['402'])
  t.ok(spec.components.securitySchemes.x402Payment)
})
