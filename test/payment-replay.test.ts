import t from 'tap'
import { balanceOf } from '../local-stack/chain.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, signPaymentFor } from './helpers/gateway.ts'

t.test('one payment header sent 20 times at once credits exactly once', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const body = chatBody('concurrent replay')
  const { header } = await signPaymentFor(gw, stack.payer.privateKey, body)
  const before = await balanceOf(stack.chain, stack.token, stack.payer.address)

  const results = await Promise.all(Array.from({ length: 20 }, () => fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'payment-signature': header }, body: JSON.stringify(body),
  }).then(async (r) => ({ status: r.status, body: await r.json(), paymentRequired: r.headers.get('payment-required') }))))

  const ok = results.filter((r) => r.status === 200)
  const refused = results.filter((r) => r.status === 402)
  t.equal(ok.length, 1, 'exactly one request is served on the payment')
  t.equal(refused.length, 19, 'every duplicate is refused with 402')
  for (const r of refused) {
    t.ok(r.paymentRequired, 'each refusal carries a fresh challenge')
    t.ok(['payment_already_used', 'invalid_exact_evm_nonce_already_used'].includes(r.body.error), `reason: ${r.body.error}`)
  }
  t.equal(await balanceOf(stack.chain, stack.token, stack.payer.address), before - 1_000_000n, 'settled on chain once')
  const bal = await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(bal.creditsPosted, 1_000_000_000n, 'credited once')
  t.equal((await gw.app.ledger.totals()).sumOfAllAccounts, 0n)

  const again = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'payment-signature': header }, body: JSON.stringify(body) })
  t.equal(again.status, 402, 'a later replay is refused too')
  t.equal((await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))).creditsPosted, 1_000_000_000n)
})
