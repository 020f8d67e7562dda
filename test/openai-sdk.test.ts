import t from 'tap'
import OpenAI from 'openai'
import { parseDecimal } from '../src/money.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, buyApiKey } from './helpers/gateway.ts'

t.test('the openai SDK with a key bought via x402 gets verified answers, streaming and not', async (t) => {
  const stack = await withStack(t, { chunkDelayMs: 2 })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  t.match(key, /^sk-x402-/)
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  t.equal((await gw.app.ledger.balance(account)).available, 1_000_000_000n, 'the key came with the payment as credit')

  const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 })
  const { data, response } = await client.chat.completions.create({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'hello from the SDK' }], max_tokens: 32 }).withResponse()
  t.type(data.choices[0].message.content, 'string')
  t.equal(response.headers.get('x-opengradient-verified'), 'true')
  const charged1 = parseDecimal(response.headers.get('x-credits-charged')!, 9)
  t.ok(charged1 > 0n)

  const stream = await client.chat.completions.create({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'stream from the SDK' }], max_tokens: 32, stream: true })
  let text = ''
  let gateway: { verified: boolean, charged: string } | undefined
  for await (const chunk of stream) {
    text += chunk.choices?.[0]?.delta?.content ?? ''
    const extra = (chunk as unknown as { x402_gateway?: { verified: boolean, charged: string } }).x402_gateway
    if (extra) gateway = extra
  }
  t.ok(text.length > 0, 'streamed text arrived through the SDK')
  t.equal(gateway?.verified, true)
  const charged2 = parseDecimal(gateway!.charged, 9)
  t.equal((await gw.app.ledger.balance(account)).available, 1_000_000_000n - charged1 - charged2, 'balance fell by exactly the two charges')

  const models = await client.models.list()
  t.ok(models.data.some((m) => m.id === 'gpt-4.1'), 'models list works through the SDK')
})

t.test('a key with no credit left gets a 402 the SDK surfaces with where to top up', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { TOPUP_AMOUNT: '0.01' })
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 })
  // 0.01 of credit cannot cover the worst case of 4096 output tokens of claude-sonnet-4-6 (≈ $0.06).
  const err = await client.chat.completions.create({ model: 'claude-sonnet-4-6', messages: [{ role: 'user', content: 'expensive' }] }).then(() => undefined, (e: unknown) => e)
  t.ok(err instanceof OpenAI.APIError, 'the SDK raises an APIError')
  const e = err as InstanceType<typeof OpenAI.APIError>
  t.equal(e.status, 402)
  t.equal(e.code, 'insufficient_credit')
  t.match(e.message, /top up/i)
  t.match(e.message, /\/v1\/credits\/topup\?amount=/)
  t.ok(e.headers?.get('payment-required'), 'the x402 challenge is still in the header')

  const bad = new OpenAI({ apiKey: 'sk-x402-' + 'A'.repeat(43), baseURL: `${gw.url}/v1`, maxRetries: 0 })
  const e401 = await bad.chat.completions.create({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'x' }] }).then(() => undefined, (x: unknown) => x) as InstanceType<typeof OpenAI.APIError>
  t.equal(e401.status, 401, 'an unknown key is a 401, never a free answer')
})
