import t from 'tap'
import { erc20Abi } from 'viem'
import { loadConfig } from '../config/schema.ts'
import { createFacilitator, type Facilitator } from '../src/x402/facilitator.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { balanceOf } from '../local-stack/chain.ts'
import { withStack, startGateway, chatBody, payingFetch, signPaymentFor, postChat, ADMIN_TOKEN } from './helpers/gateway.ts'

t.test('a settle that times out after broadcast is reconciled from the chain to exactly one deposit', async (t) => {
  const stack = await withStack(t)
  const real = createFacilitator(loadConfig(stack.gatewayEnv()).x402)
  // The transaction really is sent and mined; only the answer is lost, as with a facilitator timeout.
  const lossy: Facilitator = { ...real, settle: async (p, r) => { await real.settle(p, r); throw new Error('facilitator timeout') } }
  const gw = await startGateway(stack, {}, { facilitator: lossy })
  t.teardown(() => gw.close())
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  const body = chatBody('unknown outcome')
  const { header } = await signPaymentFor(gw, stack.payer.privateKey, body)

  const res = await postChat(gw, body, { 'payment-signature': header })
  t.equal(res.status, 502)
  t.equal((await res.json()).error.code, 'payment_settlement_unknown')
  t.equal((await gw.app.ledger.balance(account)).creditsPosted, 0n, 'not credited while unknown')
  const replay = await postChat(gw, body, { 'payment-signature': header })
  t.equal(replay.status, 402, 'the client paying again with the same header is refused')

  const first = await gw.app.reconciler!.runOnce()
  t.equal(first.deposited, 1)
  const second = await gw.app.reconciler!.runOnce()
  t.equal(second.deposited, 0, 'a second pass finds nothing left to do')
  const bal = await gw.app.ledger.balance(account)
  t.equal(bal.creditsPosted, 1_000_000_000n, 'exactly one deposit')
  await gw.app.ledger.checkInvariants()
})

t.test('optimistic mode serves before settlement; a payment that then fails is reversed and the payer blocked', async (t) => {
  const stack = await withStack(t)
  const real = createFacilitator(loadConfig(stack.gatewayEnv()).x402)
  let drainBeforeSettle = false
  // Before settling, the payer empties its wallet on chain: the real settlement then really fails.
  const racing: Facilitator = {
    ...real,
    settle: async (p, r) => {
      if (drainBeforeSettle) {
        const bal = await balanceOf(stack.chain, stack.token, stack.payer.address)
        const hash = await stack.chain.walletClient(1).writeContract({ address: stack.token, abi: erc20Abi, functionName: 'transfer', args: [stack.payer2.address, bal] })
        await stack.chain.publicClient.waitForTransactionReceipt({ hash })
      }
      return real.settle(p, r)
    },
  }
  const gw = await startGateway(stack, { SETTLEMENT_MODE: 'optimistic' }, { facilitator: racing })
  t.teardown(() => gw.close())
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  const pay = payingFetch(stack.payer.privateKey)

  const ok = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody('optimistic')) })
  t.equal(ok.status, 200)
  t.equal(ok.headers.get('x-payment-status'), 'pending', 'served before settlement')
  await gw.app.payments.drain()
  t.equal((await gw.app.ledger.balance(account)).creditsPosted, 1_000_000_000n, 'settled: one deposit, not two')

  drainBeforeSettle = true
  const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody('optimistic 2')) })
  t.equal(res.status, 200, 'served on the verified payment')
  await gw.app.payments.drain()
  const block = await gw.app.ledger.accountBlock(account)
  t.ok(block, 'the payer is blocked after the failed settlement')
  const bal = await gw.app.ledger.balance(account)
  t.ok(bal.available >= 0n)
  t.ok(bal.creditsPosted - bal.debitsPosted < 2_000_000_000n - 10n, 'the failed deposit was reversed')
  await gw.app.ledger.grant({ id: 'grant-during-block', account, amount: 1_000_000n, reason: 'test' })
  const r = await gw.app.ledger.reserve({ id: 'reserve-while-blocked', account, amount: 1n, timeoutAt: Date.now() + 60_000, reference: 'x' })
  t.equal(r.ok ? 'ok' : r.code, 'account_blocked', 'a blocked payer cannot spend, even with credit')
  const unblock = await fetch(`${gw.url}/admin/accounts/${account}/unblock`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })
  t.equal(unblock.status, 200)
  t.equal(await gw.app.ledger.accountBlock(account), null)
  await gw.app.ledger.checkInvariants()
})
