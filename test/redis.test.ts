import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { startTestRedis } from './helpers/redis.ts'
import { withStack, startGateway, chatBody, signPaymentFor, postChat, payingFetch } from './helpers/gateway.ts'

t.test('Redis shared by replicas: IP rate limit, replay cache across replicas, fail closed when down', async (t) => {
  const redis = await startTestRedis()
  if (!redis) { t.plan(0, 'skip: redis-server is not installed (CI installs it and fails without it)'); return }
  t.teardown(() => redis.stop())
  const stack = await withStack(t)
  const env = { REDIS_URL: redis.url }
  const a = await startGateway(stack, env)
  const b = await startGateway(stack, env) // a second replica (its own SQLite file: only Redis is shared)
  t.teardown(() => Promise.all([a.close(), b.close()]))

  const body = chatBody('replicas')
  const { header } = await signPaymentFor(a, stack.payer.privateKey, body)
  t.equal((await postChat(a, body, { 'payment-signature': header })).status, 200)
  const replay = await postChat(b, body, { 'payment-signature': header })
  t.equal(replay.status, 402, 'the other replica refuses the replayed header from the shared cache')
  t.equal((await replay.json()).error, 'payment_already_used')
  t.equal((await b.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))).creditsPosted, 0n, 'and credits nothing')

  const limited = await startGateway(stack, { ...env, RATE_LIMIT_PER_MINUTE: '3' })
  t.teardown(() => limited.close())
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) statuses.push((await fetch(`${limited.url}/v1/models`)).status)
  t.same(statuses.slice(0, 3), [200, 200, 200])
  const over = await fetch(`${limited.url}/v1/models`)
  t.equal(over.status, 429)
  t.equal((await over.json()).error.code, 'rate_limited')
  t.ok(over.headers.get('retry-after'))

  await redis.stop()
  const down = await payingFetch(stack.payer.privateKey)(`${a.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody('redis down')) })
  t.equal(down.status, 503, 'with Redis down a payment is refused, not served on trust')
  t.equal((await down.json()).error.code, 'shared_state_unavailable')
  t.equal((await a.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))).creditsPosted, 1_000_000_000n, 'nothing more credited')
})
