import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { balanceOf } from '../local-stack/chain.ts'
import { withStack, startGateway, chatBody, siwxPayingFetch, postChat } from './helpers/gateway.ts'

t.test('pay once with the official client, then 20 requests by SIWX with no further payment', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const client = siwxPayingFetch(stack.payer.privateKey)
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  const walletBefore = await balanceOf(stack.chain, stack.token, stack.payer.address)
  const post = (text: string) => client(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody(text)) })

  // First request: sign-in finds no credit (402), so the client pays; the payment becomes credit.
  const first = await post('first, paid')
  t.equal(first.status, 200)
  t.ok(first.headers.get('payment-response'), 'the first request settled a payment')
  const ids = [first.headers.get('x-request-id')!]
  for (let i = 0; i < 20; i++) {
    const r = await post(`request ${i} by sign-in`)
    t.equal(r.status, 200, `request ${i}`)
    t.notOk(r.headers.get('payment-response'), `request ${i} paid nothing`)
    t.equal(r.headers.get('x-opengradient-verified'), 'true')
    ids.push(r.headers.get('x-request-id')!)
  }
  t.equal(await balanceOf(stack.chain, stack.token, stack.payer.address), walletBefore - 1_000_000n, 'one payment on chain')
  let charged = 0n
  for (const id of ids) charged += (await gw.app.ledger.getReceipt(id))!.chargedAmount
  const bal = await gw.app.ledger.balance(account)
  t.equal(bal.creditsPosted, 1_000_000_000n)
  t.equal(bal.available, 1_000_000_000n - charged, 'the balance fell by exactly the sum of the receipts')
})

t.test('SIWX is refused when replayed, for another origin, or when PUBLIC_URL is unset', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  // Capture a real header: the official client signs in after the first 402.
  let captured: string | undefined
  const spy: typeof fetch = async (input, init) => {
    const h = new Headers(input instanceof Request ? input.headers : init?.headers)
    if (h.get('sign-in-with-x')) captured = h.get('sign-in-with-x')!
    return fetch(input, init)
  }
  const { x402Client } = await import('@x402/core/client')
  const { wrapFetchWithPayment } = await import('@x402/fetch')
  const { createSIWxClientExtension } = await import('@x402/extensions/sign-in-with-x')
  const { privateKeyToAccount } = await import('viem/accounts')
  const signInOnly = wrapFetchWithPayment(spy, new x402Client().registerExtension(createSIWxClientExtension({ signers: [privateKeyToAccount(stack.payer.privateKey)] })))
  // The top-up route always asks for payment; this client cannot pay, so it ends in an error after
  // signing in, which is all we need: the header it signed.
  await signInOnly(`${gw.url}/v1/credits/topup`, { method: 'POST' }).catch(() => undefined)
  t.ok(captured, 'the client produced a SIGN-IN-WITH-X header')
  const credits = await fetch(`${gw.url}/v1/credits`, { headers: { 'sign-in-with-x': captured! } })
  t.equal(credits.status, 200, 'a fresh sign-in reads the payer\'s own credit')
  t.equal((await credits.json()).account, payerAccount(stack.chain.chainId, stack.payer.address))
  const replay = await fetch(`${gw.url}/v1/credits`, { headers: { 'sign-in-with-x': captured! } })
  t.equal(replay.status, 401)
  t.equal((await replay.json()).error.metadata.reason, 'siwx_replayed')
  // On a paid route a refused sign-in is a 402 (so the client can fall back to paying), not a 401.
  const paid = await postChat(gw, chatBody('x'), { 'sign-in-with-x': captured! })
  t.equal(paid.status, 402)

  gw.config.publicUrl = undefined
  const off = await postChat(gw, chatBody('x'))
  const body = await off.json()
  t.notOk(body.extensions?.['sign-in-with-x'], 'without PUBLIC_URL no sign-in is offered')
})
