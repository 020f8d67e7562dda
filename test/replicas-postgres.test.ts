import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { decodePaymentRequiredHeader, decodePaymentSignatureHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import { balanceOf } from '../local-stack/chain.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { openPostgresLedger } from '../src/ledger/postgres.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import { generateApiKey } from '../src/auth/keys.ts'
import { parseDecimal, LEDGER_DECIMALS } from '../src/money.ts'
import { startLocalStack, type LocalStack } from '../local-stack/stack.ts'
import { ADMIN_TOKEN, chatBody, payingFetch, x402ClientFor } from './helpers/gateway.ts'
import { startGatewayProcess, type GatewayProcess } from './helpers/gateway-process.ts'
import { postgresUnavailable, startTestPostgres, type TestPostgres } from './helpers/postgres.ts'

// Several real gateway processes (`node --import tsx src/server.ts`) on one PostgreSQL ledger,
// against the local stack (anvil, the EIP-3009 test token, the reference TEE backend) and paid by
// the official @x402/fetch client. What a replica set must show: credit is spent once across
// replicas, a payment credits once across replicas, a killed replica's reservations expire, and a
// drained replica resolves every reservation before it exits 0.

// The chain and the PostgreSQL cluster start side by side.
const t0 = Date.now()
const stacking = startLocalStack()
const dropStack = () => stacking.then((s) => s.stop(), () => {})
const server = await startTestPostgres().catch(async (err) => { await dropStack(); throw err })
if (!server) {
  await dropStack()
  const reason = `PostgreSQL replica tests SKIPPED: ${postgresUnavailable}`
  process.stderr.write(`\n!!! ${reason}\n\n`)
  t.comment(reason)
  t.plan(0, reason)
} else {
  t.teardown(() => server.stop())
  const stack = await stacking
  t.teardown(() => stack.stop())
  t.comment(`chain and PostgreSQL ready after ${Date.now() - t0} ms`)
  await replicaTests(server, stack)
}

async function replicaTests (pg: TestPostgres, stack: LocalStack): Promise<void> {
  const chainId = stack.chain.chainId
  // One database and one pair of replicas for the whole file (a process start costs seconds on a
  // busy machine); each test uses payers of its own, so its balances are its own. The tests run
  // in order: the third kills and restarts A, the fourth drains the restarted A.
  // The database starts empty: both replicas migrate it at the same time on start-up.
  const db = await pg.createDatabase()
  const common = stack.gatewayEnv({
    DATABASE_URL: db,
    ADMIN_TOKEN,
    // Parallel test files on 2 cores lag the event loop by design.
    LOAD_SHED_EVENT_LOOP_DELAY_MS: '0',
    LOG_LEVEL: 'warn',
    TOPUP_AMOUNT: '0.015',
    SHUTDOWN_GRACE_MS: '1000',
  })
  // Reservations time out after 10 s (the least allowed), so that the ones A's SIGKILL leaves open
  // expire quickly; replicas share their configuration, so B sweeps on the same schedule (every 1 s).
  const envA = { ...common, RESERVATION_TIMEOUT_SECONDS: '10' }
  const started = await Promise.allSettled([startGatewayProcess(envA), startGatewayProcess(envA)])
  const procs = started.flatMap((s) => s.status === 'fulfilled' ? [s.value] : [])
  t.teardown(() => Promise.all(procs.map((g) => g.stop(3_000))))
  for (const s of started) if (s.status === 'rejected') throw s.reason
  t.comment(`both replicas ready after ${Date.now() - t0} ms`)
  let a = procs[0]
  const b = procs[1]
  const ledger = await openPostgresLedger(db, { poolSize: 4 })
  t.teardown(() => ledger.close())

  /** A payer with granted credit and an API key, made directly in the shared ledger. */
  async function grantedPayer (amount: bigint): Promise<{ account: string, key: string }> {
    const account = payerAccount(chainId, '0x' + randomBytes(20).toString('hex'))
    await ledger.grant({ id: `grant:${account}`, account, amount, reason: 'replica test' })
    const k = generateApiKey()
    await ledger.createApiKey({ id: k.id, account, name: null, prefix: k.prefix, hash: k.hash, createdAt: Date.now(), maxPerAccount: 5 })
    return { account, key: k.secret }
  }

  function chat (gw: GatewayProcess, body: unknown, headers: Record<string, string>): Promise<Response> {
    return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  }

  /** A stream that resolves once its response head arrived; `done` has the whole text (cut or not). */
  async function openStream (gw: GatewayProcess, key: string, body: unknown) {
    const res = await chat(gw, body, { authorization: `Bearer ${key}` })
    const requestId = res.headers.get('x-request-id') ?? ''
    const reader = res.body!.getReader()
    const decoder = new TextDecoder()
    let text = ''
    let cut = false
    const done = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read()
          if (done) break
          text += decoder.decode(value, { stream: true })
        }
      } catch { cut = true }
      return { text, cut }
    })()
    return { status: res.status, requestId, done }
  }

  /** A 402 body has `code` beside the PaymentRequired fields; other errors use OpenAI's envelope. */
  const codeOf = (json: any): string | undefined => json?.code ?? json?.error?.code
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

  t.test('two replicas, one ledger: credit for N, 3N at once across both replicas, exactly N served', async (t) => {
    // Credit bought with x402 on replica A (official client, settled on chain).
    const bought = await payingFetch(stack.payer.privateKey)(`${a.url}/v1/keys`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'replicas' }) })
    t.equal(bought.status, 201, 'a key bought with x402 on replica A')
    const { key } = await bought.json() as { key: string }
    const auth = { authorization: `Bearer ${key}` }
    const account = payerAccount(chainId, stack.payer.address)

    // max_tokens 12 makes every answer exactly 12 chunks long (so equally slow); the long prompt
    // makes each reservation (0.0019) a seventh of the 0.015 credit.
    const body = chatBody('x'.repeat(800), { max_tokens: 12 })
    const probe = await chat(b, body, auth)
    t.equal(probe.status, 200, 'the key works on replica B')
    const reservation = (await ledger.getReceipt(probe.headers.get('x-request-id')!))!.reservedAmount
    const before = await ledger.balance(account)
    const N = Number(before.available / reservation)
    t.ok(N >= 5 && N <= 10, `the credit covers N = ${N} reservations of ${reservation}`)

    // Slow answers (12 x 300 ms) keep every admitted request in flight until all 3N have tried to
    // reserve, so nothing finishes early and frees credit: "affordable" is exactly N.
    stack.backend.setFault({ kind: 'slow', delayMs: 300 })
    t.teardown(() => stack.backend.setFault(null))
    let sampling = true
    const samples: bigint[] = []
    const sampler = (async () => {
      while (sampling) {
        samples.push((await ledger.balance(account)).available)
        await sleep(25)
      }
    })()
    const results = await Promise.all(Array.from({ length: 3 * N }, (_, i) => chat(i % 2 === 0 ? a : b, body, auth)
      .then(async (r) => ({ replica: i % 2 === 0 ? 'A' : 'B', status: r.status, id: r.headers.get('x-request-id')!, charged: r.headers.get('x-credits-charged'), json: await r.json() }))))
    sampling = false
    await sampler
    stack.backend.setFault(null)

    const ok = results.filter((r) => r.status === 200)
    const refused = results.filter((r) => r.status === 402)
    t.equal(ok.length, N, `exactly N = ${N} of ${3 * N} are served (A ${ok.filter((r) => r.replica === 'A').length}, B ${ok.filter((r) => r.replica === 'B').length})`)
    t.equal(refused.length, 2 * N, `the other ${2 * N} are 402: ${JSON.stringify(results.filter((r) => r.status !== 200 && r.status !== 402).map((r) => [r.status, codeOf(r.json)]))}`)
    // A payer known by its key gets OpenAI's error envelope (SDKs read error.code), with the challenge in the header.
    t.same([...new Set(refused.map((r) => r.json.error?.code))], ['insufficient_credit'], 'every refusal is insufficient_credit')
    t.ok(samples.length > 10 && samples.every((s) => s >= 0n), `available never negative over ${samples.length} samples (min ${samples.reduce((m, s) => s < m ? s : m, before.available)})`)

    const after = await ledger.balance(account)
    t.ok(after.available >= 0n, 'never negative afterwards')
    t.equal(after.debitsPending, 0n, 'no reservation left open')
    const receipts = await ledger.receipts(account, { limit: 1000 })
    const served = new Set(ok.map((r) => r.id))
    const burst = receipts.filter((r) => served.has(r.id))
    t.equal(burst.length, N, 'one receipt per served request')
    t.ok(burst.every((r) => r.status === 'completed' && r.verified === true && r.chargedAmount > 0n && r.chargedAmount <= r.reservedAmount), 'each is completed, verified, charged within its reservation')
    t.equal(receipts.length, N + 1, 'no receipt for a refused request (N served + the probe)')
    const receiptSum = burst.reduce((s, r) => s + r.chargedAmount, 0n)
    const headerSum = ok.reduce((s, r) => s + parseDecimal(r.charged!, LEDGER_DECIMALS), 0n)
    t.equal(headerSum, receiptSum, 'X-Credits-Charged agrees with the receipts')
    t.equal(before.available - after.available, receiptSum, 'the balance fell by exactly the sum of the receipts')
    t.equal(after.debitsPosted, receipts.reduce((s, r) => s + r.chargedAmount, 0n), 'everything ever debited is on a receipt')
    t.equal((await ledger.totals()).sumOfAllAccounts, 0n, 'the ledger sums to zero')
    await t.resolves(ledger.checkInvariants(), 'the ledger audit finds nothing')
  })

  t.test('one x402 payment header sent to both replicas at once credits exactly once and moves the token once', async (t) => {
    const payer = stack.payer2
    const account = payerAccount(chainId, payer.address)
    const body = chatBody('one payment, two replicas')
    // The 402 from replica A, signed by the official client without being sent.
    const challenge = await chat(a, body, {})
    t.equal(challenge.status, 402)
    const required = decodePaymentRequiredHeader(challenge.headers.get('payment-required')!)
    const payload = await x402ClientFor(payer.privateKey).createPaymentPayload(required)
    const header = encodePaymentSignatureHeader(payload)
    const amount = BigInt(payload.accepted.amount)
    const nonce = String((decodePaymentSignatureHeader(header).payload as { authorization: { nonce: string } }).authorization.nonce)
    const payerBefore = await balanceOf(stack.chain, stack.token, payer.address)
    const payToBefore = await balanceOf(stack.chain, stack.token, stack.payTo.address)

    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => chat(i % 2 === 0 ? a : b, body, { 'payment-signature': header })
      .then(async (r) => ({ replica: i % 2 === 0 ? 'A' : 'B', status: r.status, challenge: r.headers.get('payment-required'), json: await r.json() }))))
    const ok = results.filter((r) => r.status === 200)
    const refused = results.filter((r) => r.status === 402)
    t.equal(ok.length, 1, `exactly one request is served on the payment (on replica ${ok[0]?.replica})`)
    t.equal(refused.length, 11, `the 11 duplicates are 402: ${JSON.stringify(results.filter((r) => r.status !== 200 && r.status !== 402).map((r) => [r.replica, r.status, r.json]))}`)
    t.ok(refused.some((r) => r.replica === 'A') && refused.some((r) => r.replica === 'B'), 'both replicas refused duplicates')
    for (const reason of new Set(refused.map((r) => r.json.error))) {
      t.ok(['payment_already_used', 'invalid_exact_evm_nonce_already_used'].includes(reason), `refusal reason: ${reason}`)
    }
    t.ok(refused.every((r) => r.challenge), 'each refusal carries a fresh challenge')

    t.equal(await balanceOf(stack.chain, stack.token, payer.address), payerBefore - amount, 'the payer paid once on chain')
    t.equal(await balanceOf(stack.chain, stack.token, stack.payTo.address), payToBefore + amount, 'the operator received it once')
    const bal = await ledger.balance(account)
    t.equal(bal.creditsPosted, amount * 1000n, 'credited once (atomic units of 6 decimals are 1000 ledger units)')
    t.equal((await ledger.transfers(account, { limit: 100 })).filter((x) => x.kind === 'deposit').length, 1, 'one deposit transfer')
    const claim = await ledger.getPaymentClaim({ network: required.accepts[0].network, asset: required.accepts[0].asset, payer: payer.address, nonce })
    t.equal(claim?.status, 'settled', 'the claim is settled')
    t.ok(claim?.depositId && claim.txHash, 'with its deposit and transaction')

    const later = await Promise.all([a, b].map((gw) => chat(gw, body, { 'payment-signature': header })))
    t.same(later.map((r) => r.status), [402, 402], 'a later replay is refused by either replica')
    t.equal((await ledger.balance(account)).creditsPosted, amount * 1000n, 'still credited once')
    t.equal((await ledger.totals()).sumOfAllAccounts, 0n, 'the ledger sums to zero')
    await t.resolves(ledger.checkInvariants(), 'the ledger audit finds nothing')
  })

  t.test('SIGKILL one replica mid-load: its reservations expire after the timeout, the ledger balances, the restarted replica serves', async (t) => {
    const payers = await Promise.all([0, 1, 2].map(() => grantedPayer(1_000_000_000n)))
    // 12 chunks each, 400 ms apart: every request is in flight for about 5 s, long enough to set
    // everything up and kill A before any of its answers is complete.
    stack.backend.setFault({ kind: 'slow', delayMs: 400 })
    t.teardown(() => stack.backend.setFault(null))
    const body = chatBody('kill me', { max_tokens: 12 })
    const streamBody = { ...body, stream: true }

    // On each replica: 4 streams per payer; on A also 2 plain requests, in flight, never answered.
    const [onA, onB] = await Promise.all([a, b].map((gw) => Promise.all(Array.from({ length: 8 }, (_, i) => openStream(gw, payers[i % 2].key, streamBody)))))
    const plainOnA = [0, 1].map((i) => chat(a, body, { authorization: `Bearer ${payers[i].key}` }).then((r) => r.status, (err: Error) => err.message))
    // A third payer whose whole credit one stream on A holds: what is left after it is taken back.
    const tight = payers[2]
    const tightStream = await openStream(a, tight.key, streamBody)
    onA.push(tightStream)
    const reserved = (await ledger.getReceipt(tightStream.requestId))!.reservedAmount
    const clawedBack = (await ledger.balance(tight.account)).available
    await ledger.clawback({ id: `clawback:${tight.account}`, account: tight.account, amount: clawedBack, reason: 'leave only the reservation' })
    t.equal((await ledger.balance(tight.account)).debitsPending, reserved, 'the tight payer\'s credit is all in its stream\'s reservation')
    t.ok([...onA, ...onB].every((s) => s.status === 200), 'all 17 streams are open')
    const pendingNow = async () => (await Promise.all(payers.map((p) => ledger.pendingReservations(p.account)))).flat()
    for (let i = 0; i < 200 && (await pendingNow()).length < 19; i++) await sleep(10)
    t.equal((await pendingNow()).length, 19, '19 reservations are open (9 streams on A, 8 on B, 2 plain requests on A)')

    a.kill('SIGKILL')
    t.same(await a.exited, { code: null, signal: 'SIGKILL' }, 'replica A was killed')
    const [endA, endB] = await Promise.all([onA, onB].map((list) => Promise.all(list.map((s) => s.done))))
    t.ok(endA.every((e) => e.cut || !e.text.includes('"verified":true')), 'A\'s streams were cut without an answer')
    t.ok(endB.every((e) => !e.cut && e.text.includes('"verified":true') && e.text.trimEnd().endsWith('data: [DONE]')), 'B\'s streams finished, verified, undisturbed')
    t.ok((await Promise.all(plainOnA)).every((s) => typeof s === 'string'), 'A\'s plain requests never got an answer')

    const orphans = await pendingNow()
    const aIds = new Set(onA.map((s) => s.requestId))
    t.equal(orphans.length, 11, 'the kill left A\'s 11 reservations open (B resolved all of its own)')
    t.ok(onA.every((s) => orphans.some((o) => o.reference === s.requestId)), 'among them every stream A was serving')
    t.ok(orphans.every((o) => !onB.some((s) => s.requestId === o.reference)), 'none of B\'s')
    stack.backend.setFault(null)
    const meanwhile = await chat(b, body, { authorization: `Bearer ${payers[0].key}` })
    t.equal(meanwhile.status, 200, 'replica B serves while A is down')

    // Past every orphan's timeout, still with A down.
    const due = Math.max(...orphans.map((o) => o.timeoutAt!))
    await sleep(Math.max(0, due - Date.now()) + 300)
    // The surviving replica sweeps at a tenth of the timeout, and a reserve that would be
    // refused expires the payer's overdue reservations itself: credit is back within a second or so.
    let held = -1n
    for (const until = Date.now() + 5_000; Date.now() < until; await sleep(100)) {
      held = (await Promise.all(payers.map((p) => ledger.balance(p.account)))).reduce((s, b) => s + b.debitsPending, 0n)
      if (held === 0n) break
    }
    t.equal(held, 0n, 'soon past their timeout, the dead replica\'s reservations no longer hold the payers\' credit')
    const retry = await openStream(b, tight.key, streamBody)
    t.equal(retry.status, 200, 'the tight payer, whose credit the dead replica held, is served by replica B once that reservation timed out')
    await retry.done

    // Restart A on the same database (and port): it expires what is due before serving.
    const a2 = await startGatewayProcess(envA, { port: a.port })
    procs.push(a2)
    a = a2
    t.same(await pendingNow(), [], 'after the restart no reservation is left pending')
    for (const o of orphans) t.equal((await ledger.getTransfer(o.id))?.state, 'expired', `${o.reference} expired`)
    for (const p of payers) {
      const bal = await ledger.balance(p.account)
      const charged = (await ledger.receipts(p.account, { limit: 1000 })).reduce((s, r) => s + r.chargedAmount, 0n)
      t.equal(bal.debitsPending, 0n)
      t.equal(bal.debitsPosted - (p === tight ? clawedBack : 0n), charged, 'the payer paid exactly what its receipts say, nothing for the killed requests')
    }
    const killedReceipts = (await Promise.all([...aIds].map((id) => ledger.getReceipt(id))))
    t.ok(killedReceipts.every((r) => r !== null && r.chargedAmount === 0n), 'the killed streams charged nothing')
    t.same(killedReceipts.map((r) => r!.status).filter((s) => s === 'pending'), [], 'no receipt of a killed request still says pending')
    t.ok(killedReceipts.every((r) => r!.errorCode === 'RESERVATION_EXPIRED'), 'each says its reservation expired')
    const res = await chat(a2, body, { authorization: `Bearer ${payers[1].key}` })
    t.equal(res.status, 200, 'the restarted replica serves')
    t.equal(res.headers.get('x-opengradient-verified'), 'true')
    t.equal((await ledger.totals()).sumOfAllAccounts, 0n, 'the ledger sums to zero')
    await t.resolves(ledger.checkInvariants(), 'the ledger audit finds nothing')
  })

  t.test('SIGTERM a replica with 50 open streams: each finishes or is cut at the grace limit, nothing pending, exit 0, the other replica serves on', async (t) => {
    // The restarted A (or a fresh one, should the test before have failed before restarting it).
    if (a.gone) {
      a = await startGatewayProcess(envA)
      procs.push(a)
    }
    // Four payers: the per-payer cap on open reservations is 16.
    const payers = await Promise.all([0, 1, 2, 3].map(() => grantedPayer(1_000_000_000n)))
    // 12 to 40 chunks, 100 ms apart: the short answers finish within the grace period, the long ones are cut.
    stack.backend.setFault({ kind: 'slow', delayMs: 100 })
    t.teardown(() => stack.backend.setFault(null))
    const streams = await Promise.all(Array.from({ length: 50 }, (_, i) => openStream(a, payers[i % 4].key, chatBody(`drain ${i}`, { stream: true, max_tokens: 64 }))))
    const onB = await Promise.all([0, 1].map((i) => openStream(b, payers[i].key, chatBody(`other ${i}`, { stream: true, max_tokens: 64 }))))
    t.ok([...streams, ...onB].every((s) => s.status === 200), 'all 50 streams on A (and 2 on B) are open')

    const sigtermAt = Date.now()
    a.kill('SIGTERM')
    const ends = await Promise.all(streams.map((s) => s.done))
    const exit = await a.exited
    const took = Date.now() - sigtermAt
    t.same(exit, { code: 0, signal: null }, `exit code 0 after ${took} ms\n${exit.code === 0 ? '' : a.output()}`)
    const finished = ends.filter((e) => e.text.includes('"verified":true')).length
    const cut = ends.filter((e) => e.text.includes('"upstream_stream_incomplete"')).length
    t.equal(finished + cut, 50, `every stream ended cleanly: ${finished} finished, ${cut} cut at the grace limit`)
    t.ok(ends.every((e) => !e.cut && e.text.trimEnd().endsWith('data: [DONE]')), 'each ends with data: [DONE]')
    t.ok(took < 1000 + 5000, `within the grace period (plus the 5 s close-with-grace margin): ${took} ms`)

    const endB = await Promise.all(onB.map((s) => s.done))
    t.ok(endB.every((e) => e.text.includes('"verified":true')), 'B\'s streams finished undisturbed')
    stack.backend.setFault(null)
    t.equal((await chat(b, chatBody('after the drain'), { authorization: `Bearer ${payers[0].key}` })).status, 200, 'replica B serves on')
    const open: string[] = []
    for (const p of payers) {
      t.same(await ledger.pendingReservations(p.account), [], 'no reservation left pending')
      const bal = await ledger.balance(p.account)
      t.equal(bal.debitsPending, 0n)
      const receipts = await ledger.receipts(p.account, { limit: 1000 })
      t.equal(bal.debitsPosted, receipts.reduce((s, r) => s + r.chargedAmount, 0n), 'the payer paid exactly what its receipts say')
      open.push(...receipts.filter((r) => r.status === 'pending').map((r) => r.id))
    }
    // Each stream's receipt is written before its response ends, so a drain cannot lose it.
    t.same(open, [], `no receipt of the drained replica still says pending (${open.length} of the 50 do)`)
    t.equal((await ledger.totals()).sumOfAllAccounts, 0n, 'the ledger sums to zero')
    await t.resolves(ledger.checkInvariants(), 'the ledger audit finds nothing')
  })
}
