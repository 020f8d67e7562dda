import t from 'tap'
import { decodePaymentSignatureHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import { balanceOf } from '../local-stack/chain.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, signPaymentFor } from './helpers/gateway.ts'

type Mutate = (p: Record<string, any>) => void

t.test('malformed and mismatched payment headers get a 4xx with a reason, never a 500, never a charge', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const body = chatBody('malformed payments')
  const { header } = await signPaymentFor(gw, stack.payer.privateKey, body)
  const good = decodePaymentSignatureHeader(header) as unknown as Record<string, any>
  const mutated = (m: Mutate) => {
    const copy = structuredClone(good)
    m(copy)
    return encodePaymentSignatureHeader(copy as never)
  }
  const before = await balanceOf(stack.chain, stack.token, stack.payer.address)

  const cases: { name: string, header: string, status: number, reason?: string, code?: string, name2?: string }[] = [
    { name: 'not base64', header: '%%%not-base64%%%', status: 400, code: 'payment_header_malformed' },
    { name: 'base64url alphabet', header: header.replace(/\+/g, '-').replace(/\//g, '_') + (header.includes('+') || header.includes('/') ? '' : '-'), status: 400, code: 'payment_header_malformed' },
    { name: 'base64 of garbage', header: Buffer.from('{"x402Version":2,').toString('base64'), status: 400, code: 'payment_header_malformed' },
    { name: 'JSON that is not an object', header: Buffer.from('"hello"').toString('base64'), status: 400, code: 'payment_header_malformed' },
    { name: 'missing payload', header: mutated((p) => { delete p.payload }), status: 400, code: 'payment_header_malformed' },
    { name: 'unknown version', header: mutated((p) => { p.x402Version = 7 }), status: 402, reason: 'unsupported_version' },
    { name: 'wrong network', header: mutated((p) => { p.accepted.network = 'eip155:1' }), status: 402, reason: 'invalid_network' },
    { name: 'wrong asset', header: mutated((p) => { p.accepted.asset = '0x' + '12'.repeat(20) }), status: 402, reason: 'invalid_asset' },
    { name: 'wrong payTo', header: mutated((p) => { p.accepted.payTo = '0x' + '34'.repeat(20) }), status: 402, reason: 'invalid_exact_evm_recipient_mismatch' },
    { name: 'authorization to someone else', header: mutated((p) => { p.payload.authorization.to = '0x' + '34'.repeat(20) }), status: 402, reason: 'invalid_exact_evm_recipient_mismatch' },
    { name: 'value differs from amount', header: mutated((p) => { p.payload.authorization.value = '999999' }), status: 402, reason: 'invalid_exact_evm_authorization_value' },
    { name: 'expired window', header: mutated((p) => { p.payload.authorization.validBefore = '1000' }), status: 402, reason: 'invalid_exact_evm_authorization_valid_before' },
    { name: 'not yet valid', header: mutated((p) => { p.payload.authorization.validAfter = String(Math.floor(Date.now() / 1000) + 3600) }), status: 402, reason: 'invalid_exact_evm_authorization_valid_after' },
    { name: 'amount above the maximum', header: mutated((p) => { p.accepted.amount = '1000000000000'; p.payload.authorization.value = '1000000000000' }), status: 402, reason: 'amount_above_maximum' },
    { name: 'wrong token domain name', header: mutated((p) => { p.accepted.extra.name = 'USD Coin' }), status: 402, reason: 'invalid_exact_evm_domain' },
    { name: 'tampered signature', header: mutated((p) => { const s: string = p.payload.signature; p.payload.signature = s.slice(0, 10) + (s[10] === 'a' ? 'b' : 'a') + s.slice(11) }), status: 402 },
    { name: 'v2 payload in the v1 header', header: `x-payment:${header}`, status: 402, reason: 'unsupported_version' },
    { name: 'oversize header', header: 'A'.repeat(10_000), status: 431, code: 'payment_header_too_large' },
  ]

  for (const c of cases) {
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (c.header.startsWith('x-payment:')) headers['x-payment'] = c.header.slice('x-payment:'.length)
    else headers['payment-signature'] = c.header
    const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(body) })
    const json = await res.json()
    t.equal(res.status, c.status, `${c.name}: status`)
    if (c.code) t.equal(json.error?.code, c.code, `${c.name}: code`)
    if (res.status === 402) {
      t.ok(res.headers.get('payment-required'), `${c.name}: challenge header`)
      t.equal(res.headers.get('cache-control'), 'no-store')
      t.equal(json.code, 'payment_invalid', `${c.name}: code`)
      if (c.reason) t.equal(json.error, c.reason, `${c.name}: reason`)
      else t.type(json.error, 'string')
    }
  }

  t.equal(await balanceOf(stack.chain, stack.token, stack.payer.address), before, 'nothing moved on chain')
  const bal = await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(bal.creditsPosted, 0n, 'nothing credited')

  // The untouched header still works afterwards: refusals did not burn the nonce.
  const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'payment-signature': header }, body: JSON.stringify(body) })
  t.equal(res.status, 200)
})

t.test('a payment smaller than the request\'s reservation is refused before settlement', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { TOPUP_AMOUNT: '0.01', MAX_OUTPUT_TOKENS: '100000' })
  t.teardown(() => gw.close())
  const { header } = await signPaymentFor(gw, stack.payer.privateKey, chatBody('small'))
  const big = chatBody('big', { model: 'claude-sonnet-4-6', max_tokens: 100_000 })
  const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'payment-signature': header }, body: JSON.stringify(big) })
  t.equal(res.status, 402)
  t.equal((await res.json()).error, 'insufficient_amount')
  t.equal((await gw.app.ledger.totals()).sumOfAllAccounts, 0n)
  t.equal((await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))).creditsPosted, 0n)
})
