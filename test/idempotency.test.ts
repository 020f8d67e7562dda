import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, buyApiKey, postChat, chatBody } from './helpers/gateway.ts'

t.test('Idempotency-Key: a retry returns the stored result with one charge and one upstream call', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}`, 'idempotency-key': 'order-42-attempt' }
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  const before = stack.backend.stats.received
  const body = chatBody('idempotent question')

  const first = await postChat(gw, body, auth)
  t.equal(first.status, 200)
  const firstText = await first.text()
  const balanceAfterFirst = (await gw.app.ledger.balance(account)).available
  const second = await postChat(gw, body, auth)
  t.equal(second.status, 200)
  t.equal(await second.text(), firstText, 'the same answer')
  t.equal(second.headers.get('idempotent-replayed'), 'true')
  t.equal(second.headers.get('x-original-request-id'), first.headers.get('x-request-id'))
  t.equal(stack.backend.stats.received - before, 1, 'one upstream call')
  t.equal((await gw.app.ledger.balance(account)).available, balanceAfterFirst, 'one charge')

  const conflict = await postChat(gw, chatBody('a different question'), auth)
  t.equal(conflict.status, 422)
  t.equal((await conflict.json()).error.code, 'idempotency_conflict')

  // Another payer using the same key string is a different record (keys are per payer).
  const key2 = await buyApiKey(gw, stack.payer2.privateKey)
  const other = await postChat(gw, body, { authorization: `Bearer ${key2}`, 'idempotency-key': 'order-42-attempt' })
  t.equal(other.status, 200)
  t.not(other.headers.get('idempotent-replayed'), 'true', 'no cross-payer replay')
})

t.test('a retry while the first attempt is still running gets 409', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  stack.backend.setFault({ kind: 'slow', delayMs: 80 })
  const auth = { authorization: `Bearer ${key}`, 'idempotency-key': 'slow-one' }
  const body = chatBody('slow')
  const first = postChat(gw, body, auth)
  await new Promise((r) => setTimeout(r, 300))
  const second = await postChat(gw, body, auth)
  t.equal(second.status, 409)
  t.equal((await second.json()).error.code, 'idempotency_in_flight')
  t.equal((await first).status, 200)
  stack.backend.setFault(null)
  const third = await postChat(gw, body, auth)
  t.equal(third.headers.get('idempotent-replayed'), 'true', 'after it finished, the retry gets the stored result')
})

t.test('a failed attempt is not stored: the retry runs again and can succeed', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}`, 'idempotency-key': 'retry-after-fault' }
  stack.backend.setFault({ kind: 'http_502', count: 1 })
  t.equal((await postChat(gw, chatBody('x'), auth)).status, 502)
  const ok = await postChat(gw, chatBody('x'), auth)
  t.equal(ok.status, 200)
  t.not(ok.headers.get('idempotent-replayed'), 'true')
})
