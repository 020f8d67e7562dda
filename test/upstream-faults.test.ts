import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, payingFetch, ADMIN_TOKEN } from './helpers/gateway.ts'

// Each request here carries a fresh payment (spending stored credit needs SIWX or a key, which
// come later), so "no charge" means: the payer's credit equals exactly what it deposited.

t.test('upstream failures and unverifiable answers cost nothing and return a clear error', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { UPSTREAM_HEADERS_TIMEOUT_MS: '1500', UPSTREAM_BODY_TIMEOUT_MS: '1500' })
  t.teardown(() => gw.close())
  const pay = payingFetch(stack.payer.privateKey)
  const account = payerAccount(stack.chain.chainId, stack.payer.address)

  const cases: { fault: Record<string, unknown>, status: number, code: string, stream?: boolean }[] = [
    { fault: { kind: 'http_500' }, status: 502, code: 'upstream_error' },
    { fault: { kind: 'http_503' }, status: 502, code: 'upstream_error' },
    { fault: { kind: 'http_504' }, status: 504, code: 'upstream_timeout' },
    { fault: { kind: 'hang' }, status: 504, code: 'upstream_timeout' },
    { fault: { kind: 'bad_signature' }, status: 502, code: 'proof_unverified' },
    { fault: { kind: 'tampered_output' }, status: 502, code: 'proof_unverified' },
  ]
  let deposits = 0n
  for (const c of cases) {
    stack.backend.setFault(c.fault as never)
    const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody(`fault ${String(c.fault.kind)}`)) })
    stack.backend.setFault(null)
    deposits += 1_000_000_000n
    const json = await res.json()
    t.equal(res.status, c.status, `${c.fault.kind}: status`)
    t.equal(json.error?.code, c.code, `${c.fault.kind}: code`)
    t.type(json.error?.metadata?.remedy, 'string')
    // The backend marks its own 500 as not retryable; provider trouble (502/503/504, hang) is.
    if (c.code !== 'proof_unverified' && c.fault.kind !== 'http_500') t.match(res.headers.get('retry-after'), /^\d+$/, `${c.fault.kind}: Retry-After`)
    t.ok(res.headers.get('payment-response'), `${c.fault.kind}: the payment still settled and is credit`)
    const bal = await gw.app.ledger.balance(account)
    t.equal(bal.available, deposits, `${c.fault.kind}: nothing charged`)
    t.equal(bal.debitsPending, 0n, `${c.fault.kind}: reservation released`)
    const rec = await (await fetch(`${gw.url}/v1/receipts/${res.headers.get('x-request-id')}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
    t.equal(rec.status, 'failed')
    t.equal(rec.charged, '0')
    t.equal(rec.error_code, c.code.toUpperCase())
  }
  t.equal((await gw.app.ledger.totals()).sumOfAllAccounts, 0n)
})

t.test('an unreachable upstream is a 502 with no charge', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { UPSTREAM_URL: 'http://127.0.0.1:9', UPSTREAM_TEE_PUBLIC_KEY: stack.backend.publicKeyPem })
  t.teardown(() => gw.close())
  const pay = payingFetch(stack.payer.privateKey)
  const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody()) })
  t.equal(res.status, 502)
  t.equal((await res.json()).error.code, 'upstream_unavailable')
  const bal = await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(bal.available, 1_000_000_000n)
})
