import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, buyApiKey, chatBody } from './helpers/gateway.ts'

t.test('a client that leaves mid-stream pays for what was generated, not the reservation, and the upstream is cancelled', async (t) => {
  const stack = await withStack(t, { chunkDelayMs: 80 })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  const before = (await gw.app.ledger.balance(account)).available
  const abortedBefore = stack.backend.stats.aborted

  const ac = new AbortController()
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify(chatBody('long story', { stream: true, max_tokens: 40 })),
  })
  const requestId = res.headers.get('x-request-id')!
  const reader = res.body!.getReader()
  let received = ''
  while ((received.match(/"content"/g) ?? []).length < 4) {
    const { value } = await reader.read()
    received += new TextDecoder().decode(value)
  }
  ac.abort()

  let receipt
  for (let i = 0; i < 300; i++) {
    receipt = await gw.app.ledger.getReceipt(requestId)
    if (receipt?.status !== 'pending') break
    await new Promise((r) => setTimeout(r, 50))
  }
  t.equal(receipt?.status, 'completed')
  t.equal(receipt?.errorCode, 'CLIENT_DISCONNECTED')
  t.ok(receipt!.chargedAmount > 0n, 'what was generated is charged')
  t.ok(receipt!.chargedAmount < receipt!.reservedAmount, 'but not the whole reservation')
  const after = await gw.app.ledger.balance(account)
  t.equal(before - after.available, receipt!.chargedAmount, 'the balance fell by exactly the charge')
  t.equal(after.debitsPending, 0n, 'the reservation was resolved')
  for (let i = 0; i < 40 && stack.backend.stats.aborted === abortedBefore; i++) await new Promise((r) => setTimeout(r, 50))
  t.equal(stack.backend.stats.aborted, abortedBefore + 1, 'the upstream request was cancelled')
})
