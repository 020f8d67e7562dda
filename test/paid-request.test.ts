import t from 'tap'
import { decodePaymentResponseHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import { x402Client } from '@x402/core/client'
import { ExactEvmSchemeV1 } from '@x402/evm/exact/v1/client'
import { privateKeyToAccount } from 'viem/accounts'
import { parseEventLogs, erc20Abi } from 'viem'
import { balanceOf } from '../local-stack/chain.ts'
import { parseDecimal } from '../src/money.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, payingFetch, ADMIN_TOKEN } from './helpers/gateway.ts'

t.test('the official x402 client pays once; the payment settles on chain, credits once, and buys a verified answer', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const pay = payingFetch(stack.payer.privateKey)
  const before = await balanceOf(stack.chain, stack.token, stack.payer.address)

  const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody('Tell me about enclaves')) })
  t.equal(res.status, 200)
  const body = await res.json()
  t.type(body.choices[0].message.content, 'string')
  t.ok(body.choices[0].message.content.length > 0)
  t.equal(res.headers.get('x-opengradient-verified'), 'true')
  t.equal(res.headers.get('x-opengradient-tee-id'), stack.backend.teeId)
  t.equal(res.headers.get('x-tee-signature'), body.tee_signature)
  t.equal(res.headers.get('x-tee-request-hash'), body.tee_request_hash)
  t.equal(res.headers.get('x-tee-output-hash'), body.tee_output_hash)
  t.equal(res.headers.get('x-tee-timestamp'), String(body.tee_timestamp))

  const settle = decodePaymentResponseHeader(res.headers.get('payment-response')!)
  t.equal(settle.success, true)
  t.match(settle.transaction, /^0x[0-9a-f]{64}$/)
  const receipt = await stack.chain.publicClient.getTransactionReceipt({ hash: settle.transaction as `0x${string}` })
  const transfers = parseEventLogs({ abi: erc20Abi, logs: receipt.logs, eventName: 'Transfer' })
  t.equal(transfers.length, 1, 'exactly one Transfer in the settlement')
  t.equal(transfers[0].args.to.toLowerCase(), stack.payTo.address.toLowerCase())
  t.equal(transfers[0].args.value, 1_000_000n)
  t.equal(await balanceOf(stack.chain, stack.token, stack.payer.address), before - 1_000_000n, 'the payer paid exactly once')

  const charged = res.headers.get('x-credits-charged')!
  const balance = res.headers.get('x-credits-balance')!
  t.match(charged, /^0\.\d+$/)
  t.ok(Number(charged) > 0, 'the answer cost something')
  // deposit 1.00 (1e9 ledger units) minus the charge, exactly, in bigint
  const units = (s: string) => parseDecimal(s, 9)
  t.equal(units(balance), 1_000_000_000n - units(charged))
  const ledgerBalance = await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(ledgerBalance.available, 1_000_000_000n - units(charged))
  t.equal(ledgerBalance.debitsPending, 0n, 'no reservation left open')
  const totals = await gw.app.ledger.totals()
  t.equal(totals.sumOfAllAccounts, 0n, 'the ledger balances')

  const requestId = res.headers.get('x-request-id')!
  const unauth = await fetch(`${gw.url}/v1/receipts/${requestId}`)
  t.equal(unauth.status, 401)
  const rec = await (await fetch(`${gw.url}/v1/receipts/${requestId}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
  t.equal(rec.id, requestId)
  t.equal(rec.status, 'completed')
  t.equal(rec.verified, true)
  t.equal(rec.charged, charged)
  t.equal(rec.payment_transaction, settle.transaction)
  t.equal(rec.proof.tee_signature, body.tee_signature)
  t.equal(rec.usage.completion_tokens, body.usage.completion_tokens)
})

t.test('a v1 client paying with X-PAYMENT is served too', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const unpaid = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  const body402 = await unpaid.json()
  const a = body402.accepts[0]
  const requiredV1 = {
    x402Version: 1,
    accepts: [{ scheme: 'exact', network: 'base-sepolia', maxAmountRequired: a.amount, resource: body402.resource.url, description: '', mimeType: 'application/json', outputSchema: {}, payTo: a.payTo, maxTimeoutSeconds: a.maxTimeoutSeconds, asset: a.asset, extra: a.extra }],
  }
  const client = new x402Client().registerV1('base-sepolia', new ExactEvmSchemeV1(privateKeyToAccount(stack.payer.privateKey)))
  const payload = await client.createPaymentPayload(requiredV1 as never)
  t.equal(payload.x402Version, 1)
  const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-payment': encodePaymentSignatureHeader(payload) }, body: JSON.stringify(chatBody()) })
  t.equal(res.status, 200)
  t.ok(res.headers.get('x-payment-response'), 'v1 receipt header')
  t.notOk(res.headers.get('payment-response'))
  t.equal(res.headers.get('x-opengradient-verified'), 'true')
  const settle = decodePaymentResponseHeader(res.headers.get('x-payment-response')!)
  t.equal(settle.success, true)
})
