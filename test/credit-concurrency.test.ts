import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, buyApiKey, postChat, chatBody } from './helpers/gateway.ts'

t.test('credit for N requests, 3N at once: exactly N are served, the rest get 402, the balance never goes negative', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { TOPUP_AMOUNT: '0.01' })
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  // Reservation per request is fixed by the body; size N from it so the credit covers exactly N.
  const body = chatBody('concurrency', { max_tokens: 200 })
  const probe = await postChat(gw, body, { authorization: `Bearer ${key}` })
  t.equal(probe.status, 200)
  const rec = await gw.app.ledger.getReceipt(probe.headers.get('x-request-id')!)
  const reservation = rec!.reservedAmount
  const balance = (await gw.app.ledger.balance(account)).available
  const N = Number(balance / reservation)
  t.ok(N >= 3 && 3 * N <= 16, `credit covers ${N} reservations (and 3N stays within the per-payer in-flight cap)`)

  // A slow backend keeps every admitted request in flight until all 3N have tried to reserve, so
  // "affordable" is exactly N: nothing finishes early and frees credit.
  stack.backend.setFault({ kind: 'slow', delayMs: 100 })
  const results = await Promise.all(Array.from({ length: 3 * N }, () => postChat(gw, body, { authorization: `Bearer ${key}` }).then(async (r) => ({ status: r.status, json: await r.json() }))))
  const ok = results.filter((r) => r.status === 200).length
  const refused = results.filter((r) => r.status === 402)
  t.equal(ok, N, `exactly the ${N} affordable requests are served`)
  t.equal(ok + refused.length, 3 * N, 'everything else is a 402')
  for (const r of refused) t.equal(r.json.error.code, 'insufficient_credit')
  const after = await gw.app.ledger.balance(account)
  t.ok(after.available >= 0n, 'never negative')
  t.equal(after.debitsPending, 0n)
  t.equal((await gw.app.ledger.totals()).sumOfAllAccounts, 0n)
  await gw.app.ledger.checkInvariants()
})
