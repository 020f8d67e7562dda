import t from 'tap'
import { Writable } from 'node:stream'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { erc20Abi, parseEventLogs, type Hex } from 'viem'
import { balanceOf, mintTestUSD } from '../local-stack/chain.ts'
import { PERMIT2_ADDRESS } from '../src/upstream/payment.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { withStack, startGateway, chatBody, buyApiKey, postChat, ADMIN_TOKEN } from './helpers/gateway.ts'

// The operator wallet pays the reference TEE backend with x402 `upto` over Permit2, on the real
// local chain: one signed permit opens a backend session (X-Upto-Session) that later calls reuse;
// the backend settles each session once, on chain, for what it charged.

const execFileP = promisify(execFile)

function logSink () {
  const lines: Record<string, unknown>[] = []
  const stream = new Writable({
    write (chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l.trim()) { try { lines.push(JSON.parse(l)) } catch { /* not JSON */ } }
      cb()
    },
  })
  return { lines, logger: { level: 'info', stream } }
}

t.test('upstream payment with upto sessions', async (t) => {
  const stack = await withStack(t, { upstreamPayment: true })
  const up = stack.upstreamPayment!
  const backend = stack.backend
  const upto = backend.upto!
  const { lines, logger } = logSink()
  const gw = await startGateway(stack, {}, { logger })
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}` }

  t.test('the operator wallet is checked at start-up', async (t) => {
    t.equal(gw.app.upstreamPayerCheck?.ok, true, 'allowance and balance in place')
    t.ok(lines.some((l) => l.msg === 'upstream payer ready: Permit2 allowance in place'))
  })

  let perCall = 0n
  t.test('five gateway requests, one upto payment: the session is reused and settled once', async (t) => {
    const operatorBefore = await balanceOf(stack.chain, up.token, up.operator.address)
    const payToBefore = await balanceOf(stack.chain, up.token, up.backendPayTo.address)
    const ids: string[] = []
    for (let i = 0; i < 5; i++) {
      const res = await postChat(gw, chatBody('Why pay per session?'), auth)
      t.equal(res.status, 200, `request ${i + 1} answered`)
      t.equal(res.headers.get('x-opengradient-verified'), 'true')
      ids.push(res.headers.get('x-request-id')!)
      await res.arrayBuffer()
    }
    // One stream on the same session.
    const streamed = await postChat(gw, chatBody('Why pay per session?', { stream: true }), auth)
    t.equal(streamed.status, 200)
    t.match(await streamed.text(), /"verified":\s*true/)

    t.equal(upto.stats.challenges, 1, 'the backend challenged once')
    t.equal(upto.stats.permitsAccepted, 1, 'one permit accepted')
    t.equal(upto.stats.sessionCalls, 5, 'five calls rode the session')
    t.equal(gw.app.upstreamPayer!.stats.payments, 1, 'the gateway signed one permit')
    t.equal(gw.app.upstreamPayer!.stats.sessionCalls, 5)
    t.equal(backend.lastSettlementType, 'batch', 'X-SETTLEMENT-TYPE forwarded from configuration')
    const [session] = [...upto.sessions.values()]
    t.equal(session.payer, up.operator.address)
    t.equal(session.calls, 6)
    t.ok(session.spent > 0n && session.spent < session.cap)
    t.equal(gw.app.upstreamPayer!.sessionFor(backend.teeId), session.id)
    t.equal(await balanceOf(stack.chain, up.token, up.operator.address), operatorBefore, 'no tokens move per request')

    // The backend settles the session: one transfer for the sum of the charges.
    await upto.settleAll()
    t.equal(upto.stats.settlements, 1)
    t.equal(session.state, 'settled')
    const receipt = await stack.chain.publicClient.getTransactionReceipt({ hash: session.settlementTx as Hex })
    const transfers = parseEventLogs({ abi: erc20Abi, logs: receipt.logs, eventName: 'Transfer' })
    t.equal(transfers.length, 1, 'exactly one token transfer for six calls')
    t.equal(transfers[0].args.from, up.operator.address)
    t.equal(transfers[0].args.to, up.backendPayTo.address)
    t.equal(transfers[0].args.value, session.spent)
    t.equal(await balanceOf(stack.chain, up.token, up.operator.address), operatorBefore - session.spent)
    t.equal(await balanceOf(stack.chain, up.token, up.backendPayTo.address), payToBefore + session.spent)

    // Receipts carry the upstream cost the backend reported.
    const rec = await (await fetch(`${gw.url}/v1/receipts/${ids[0]}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
    t.match(rec.upstream_cost_usd, /^\d/)
    t.ok(Number(rec.upstream_cost_usd) > 0)
  })

  t.test('a new challenge after the cap is used up is answered with a new permit', async (t) => {
    // The closed session is challenged; a fresh permit, capped so two calls use it up.
    const before = { challenges: upto.stats.challenges, permits: upto.stats.permitsAccepted, payments: gw.app.upstreamPayer!.stats.payments }
    const body = chatBody('Cap me')
    const first = await postChat(gw, body, auth)
    t.equal(first.status, 200, 'the closed session was replaced transparently')
    await first.arrayBuffer()
    const s1 = [...upto.sessions.values()].at(-1)!
    perCall = s1.spent
    t.ok(perCall > 0n)
    upto.setCap(perCall + 1n)
    // Close the session opened with the default cap, so the next one uses the small cap.
    await upto.settleAll()
    const a = await postChat(gw, body, auth)
    t.equal(a.status, 200)
    await a.arrayBuffer()
    const small = [...upto.sessions.values()].at(-1)!
    t.equal(small.cap, perCall + 1n)
    t.equal(small.state, 'open')
    const b = await postChat(gw, body, auth)
    t.equal(b.status, 200)
    await b.arrayBuffer()
    t.equal(small.spent, small.cap, 'the cap bounds the charges')
    const c = await postChat(gw, body, auth)
    t.equal(c.status, 200, 'the challenge after the cap was answered')
    await c.arrayBuffer()
    t.equal(upto.stats.permitsAccepted - before.permits, 3, 'closed session, small-cap session, and the one after the cap')
    t.equal(gw.app.upstreamPayer!.stats.payments - before.payments, 3)
    t.equal(upto.stats.challenges - before.challenges, 3)
    await upto.settleAll()
    t.equal(small.state, 'settled')
    const receipt = await stack.chain.publicClient.getTransactionReceipt({ hash: small.settlementTx as Hex })
    const [transfer] = parseEventLogs({ abi: erc20Abi, logs: receipt.logs, eventName: 'Transfer' })
    t.equal(transfer.args.value, small.cap, 'settled for exactly the cap')
    upto.setCap(up.capAtomic)
  })

  t.test('concurrent calls on an expired session share one new permit', async (t) => {
    await upto.settleAll()
    const before = { permits: upto.stats.permitsAccepted, payments: gw.app.upstreamPayer!.stats.payments }
    const results = await Promise.all([1, 2, 3, 4].map((i) => postChat(gw, chatBody(`Parallel ${i}`), auth)))
    for (const r of results) { t.equal(r.status, 200); await r.arrayBuffer() }
    t.equal(gw.app.upstreamPayer!.stats.payments - before.payments, 1, 'one permit signed for four concurrent calls')
    t.equal(upto.stats.permitsAccepted - before.permits, 1)
    const last = [...upto.sessions.values()].at(-1)!
    t.equal(last.calls, 4, 'all four were charged to the one session')
    await upto.settleAll()
  })

  t.test('a wallet without a Permit2 allowance is reported at start-up and refused by the backend; the client pays nothing', async (t) => {
    const unapproved = stack.chain.accounts[9]
    await mintTestUSD(stack.chain, up.token, unapproved.address, 1_000_000n)
    const allowance = await stack.chain.publicClient.readContract({ address: up.token, abi: erc20Abi, functionName: 'allowance', args: [unapproved.address, PERMIT2_ADDRESS] })
    t.equal(allowance, 0n)
    const sink = logSink()
    const gw2 = await startGateway(stack, { UPSTREAM_PAYER_PRIVATE_KEY: unapproved.privateKey }, { logger: sink.logger })
    t.teardown(() => gw2.close())
    t.equal(gw2.app.upstreamPayerCheck?.ok, false)
    t.match(gw2.app.upstreamPayerCheck?.problem, /no Permit2 allowance/)
    const logged = sink.lines.find((l) => l.level === 50 && typeof l.msg === 'string' && l.msg.startsWith('upstream payer not ready'))
    t.ok(logged, 'an error line at start-up')
    t.match(String(logged?.msg), new RegExp(`${up.token}.*${PERMIT2_ADDRESS}.*${unapproved.address}.*approve-permit2`))

    const key2 = await buyApiKey(gw2, stack.payer2.privateKey)
    const account = payerAccount(stack.chain.chainId, stack.payer2.address)
    const before = await gw2.app.ledger.balance(account)
    const refusedBefore = upto.stats.permitsRefused
    const res = await postChat(gw2, chatBody('Will you take my permit?'), { authorization: `Bearer ${key2}` })
    t.equal(res.status, 502)
    const err = await res.json()
    t.equal(err.error.code, 'upstream_error')
    t.equal(err.error.metadata.reason, 'upstream_payment_refused')
    t.match(err.error.metadata.upstream_error, /allowance/)
    t.equal(upto.stats.permitsRefused, refusedBefore + 1, 'the backend refused the permit')
    const after = await gw2.app.ledger.balance(account)
    t.equal(after.available, before.available, 'no client charge')
    t.equal(after.debitsPending, 0n)
    const rec = await (await fetch(`${gw2.url}/v1/receipts/${res.headers.get('x-request-id')}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()
    t.equal(rec.charged, '0')

    // The opt-in command fixes it; the same gateway then pays and is served.
    const env = { ...process.env, ...stack.gatewayEnv({ UPSTREAM_PAYER_PRIVATE_KEY: unapproved.privateKey }) }
    const run = await execFileP(process.execPath, ['--import', 'tsx', 'local-stack/approve-permit2.ts'], { env, cwd: process.cwd() })
    t.match(run.stdout, /upstream payer ready/)
    const approved = await stack.chain.publicClient.readContract({ address: up.token, abi: erc20Abi, functionName: 'allowance', args: [unapproved.address, PERMIT2_ADDRESS] })
    t.ok(approved > 0n, 'Permit2 approved by npm run approve-permit2')
    const ok = await postChat(gw2, chatBody('Will you take my permit now?'), { authorization: `Bearer ${key2}` })
    t.equal(ok.status, 200)
    await ok.arrayBuffer()
  })

  t.test('without an operator wallet, a paying backend is a clear error and nothing is charged', async (t) => {
    const gw3 = await startGateway(stack, { UPSTREAM_PAYER_PRIVATE_KEY: '' })
    t.teardown(() => gw3.close())
    t.equal(gw3.app.upstreamPayer, undefined)
    const key3 = await buyApiKey(gw3, stack.payer2.privateKey)
    const account = payerAccount(stack.chain.chainId, stack.payer2.address)
    const before = await gw3.app.ledger.balance(account)
    const res = await postChat(gw3, chatBody('Free?'), { authorization: `Bearer ${key3}` })
    t.equal(res.status, 502)
    const err = await res.json()
    t.equal(err.error.metadata.reason, 'upstream_payment_required')
    t.match(err.error.message, /UPSTREAM_PAYER_PRIVATE_KEY/)
    t.equal((await gw3.app.ledger.balance(account)).available, before.available)
  })
})
