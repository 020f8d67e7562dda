import t, { type Test } from 'tap'
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts'
import type { Address } from 'viem'
import { loadConfig } from '../config/schema.ts'
import { createFacilitator, type Facilitator } from '../src/x402/facilitator.ts'
import { createReconciler } from '../src/x402/reconcile.ts'
import { openPostgresLedger } from '../src/ledger/postgres.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { atomicToLedger } from '../src/money.ts'
import { startLocalStack, type LocalStack } from '../local-stack/stack.ts'
import { mintTestUSD } from '../local-stack/chain.ts'
import { ADMIN_TOKEN, startGateway } from './helpers/gateway.ts'
import { startGatewayProcess, type GatewayProcess } from './helpers/gateway-process.ts'
import { postgresUnavailable, startTestPostgres } from './helpers/postgres.ts'
import {
  buyKey, chaosFacilitator, normalRequest, paidOnChain, proxiedUrl, sleep, startTcpProxy, startWorkload, summarize,
  type ClientSpec, type GatewayLike, type Outcome,
} from './helpers/chaos.ts'

// Chaos: scripted faults while a workload runs (a few concurrent clients, paying per request with
// the official x402 client or spending credit with an API key, JSON and SSE alternately), against
// the real local stack (anvil, the EIP-3009 token, the reference TEE backend).
//
//   1. upstream faults: 5xx bursts, hangs (before and after headers), mid-stream aborts, missing
//      usage, a bad signature;
//   2. chain RPC down during settlement (the gateway's RPC goes through a TCP proxy that is cut);
//   3. facilitator timeout after broadcast: the settle transaction lands, its answer is lost;
//   4. chain RPC cut right after the settle transaction was broadcast;
//   5. PostgreSQL restarted (pg_ctl stop -m fast; start) mid-workload.
//
// After each fault, for every payer: what the ledger credited equals what it paid on chain, what
// it was debited equals the sum charged on its receipts, nothing is left reserved, the ledger sums
// to zero and passes its invariant check, every payment claim is decided (settled or failed, after
// the reconciler ran), every answer matched the response contract (no 500, 5xx only with a
// dependency error code, nothing charged for a failed or unverified answer, what the client was told
// it was charged is what the receipt says), and a normal request succeeds again.
//
// A SIGKILLed replica is covered by test/replicas-postgres.test.ts, not here.
//
// The default run takes about a minute. CHAOS_LONG=1 runs each fault script several times over
// with a longer workload (a few minutes): `CHAOS_LONG=1 npx tap test/chaos.test.ts --timeout 900`.
// PostgreSQL: a private cluster from the binaries on PATH or /usr/lib/postgresql, or
// TEST_DATABASE_URL (there "restart" terminates the sessions instead); without either the database
// part is skipped (loudly), except under CI=true, where it fails.

const LONG = process.env.CHAOS_LONG === '1'
const ROUNDS = LONG ? 4 : 1
const quiet = { info () {}, warn () {} }
/** Longer than viem's retries (3, from 150 ms doubling) last, so a cut RPC really fails calls. */
const OUTAGE_MS = 3000

// Known gateway bugs this file reveals (assertions marked todo; see the report of issue 6).

t.setTimeout(LONG ? 900_000 : 240_000)

let stack: LocalStack
t.before(async () => { stack = await startLocalStack({ chunkDelayMs: 10 }) })
t.teardown(() => stack?.stop())

interface Payer { address: Address, privateKey: `0x${string}`, account: string }

async function freshPayer (): Promise<Payer> {
  const privateKey = generatePrivateKey()
  const address = privateKeyToAccount(privateKey).address
  await mintTestUSD(stack.chain, stack.token, address, 100_000_000n)
  return { address, privateKey, account: payerAccount(stack.chain.chainId, address) }
}

/** Paying clients and credit clients (each credit client's key bought with x402 first). */
async function makeClients (gw: GatewayLike, paid: number, credit: number): Promise<{ clients: ClientSpec[], payers: Payer[], probeKey: string }> {
  const clients: ClientSpec[] = []
  const payers: Payer[] = []
  for (let i = 0; i < paid + credit + 1; i++) payers.push(await freshPayer())
  for (let i = 0; i < paid; i++) clients.push({ name: `paid${i}`, kind: 'paid', privateKey: payers[i].privateKey })
  for (let i = paid; i < paid + credit; i++) {
    clients.push({ name: `credit${i - paid}`, kind: 'credit', privateKey: payers[i].privateKey, apiKey: await buyKey(gw, payers[i].privateKey) })
  }
  const probeKey = await buyKey(gw, payers[paid + credit].privateKey)
  return { clients, payers, probeKey }
}

function localFacilitator (rpcUrl?: string): Facilitator {
  return createFacilitator(loadConfig(stack.gatewayEnv(rpcUrl ? { RPC_URL: rpcUrl } : {})).x402)
}

/**
 * Decides every payment claim still open, as the gateway's reconciler would given time: first as
 * its 30-second timer would now (unknown outcomes), then as it would an hour on (authorizations
 * expired unused, claims stuck in settling past their grace). Returns the claims left undecided.
 */
async function resolveClaims (ledger: LedgerStore, facilitator: Facilitator, rpcUrl: string) {
  const cfg = loadConfig(stack.gatewayEnv()).x402
  const reconciler = (shiftMs: number, settlingGraceMs?: number) => createReconciler({
    cfg, rpcUrl, ledger, confirmTransfer: facilitator.confirmTransfer!, nowMs: () => Date.now() + shiftMs, log: quiet, settlingGraceMs,
  })
  const now = await reconciler(0).runOnce()
  const later = await reconciler(3600_000, 0).runOnce()
  const open = await ledger.listPaymentClaims({ statuses: ['claimed', 'settling', 'unknown'], updatedBefore: Date.now() + 7200_000, limit: 100 })
  return { now, later, open }
}

/** A broken answer explained by a known bug: asserted on its own, as a todo. */
interface KnownProblem { what: string, todo?: string, match (o: Outcome): boolean }

interface AuditOptions {
  known?: KnownProblem[]
  /** tap options for the "credited = paid on chain" assertion (a todo when a known bug breaks it). */
  chainTodo?: string
  /** Expire reservations left open, as the sweep does RESERVATION_TIMEOUT_SECONDS on (ms). */
  expireOrphansAfterMs?: number
  /** Same as chainTodo, for "no receipt left pending". */
  receiptTodo?: string
}

/** The money and contract checks shared by every fault. */
async function audit (t: Test, ledger: LedgerStore, payers: Payer[], outcomes: Outcome[], opts: AuditOptions = {}) {
  const show = (o: Outcome) => `${o.client} ${o.stream ? 'sse' : 'json'} ${o.requestId}: ${o.problem ?? o.transportError}`
  let rest = outcomes.filter((o) => o.problem || o.transportError)
  for (const k of opts.known ?? []) {
    const hit = rest.filter((o) => k.match(o))
    rest = rest.filter((o) => !k.match(o))
    for (const o of hit.slice(0, 5)) t.comment(`${k.what}: ${show(o)}`)
    t.same(hit.map(show), [], k.what, k.todo ? { todo: k.todo } : {})
  }
  t.same(rest.filter((o) => o.problem).map(show), [], 'every answer kept the response contract (no 500, no charge for a failed answer)')
  t.same(rest.filter((o) => o.transportError).map(show), [], 'no connection was dropped without an answer')

  if (opts.expireOrphansAfterMs) {
    // What the gateway's sweep does once the timeout and the receipt grace have passed.
    const later = Date.now() + opts.expireOrphansAfterMs + 1000
    const expired = await ledger.expirePending(later)
    const closed = await ledger.closeStaleReceipts(later, later)
    if (expired > 0 || closed > 0) t.comment(`the sweep expired ${expired} reservation(s) and finished ${closed} receipt(s) the fault left open`)
  }

  for (const p of payers) {
    const bal = await ledger.balance(p.account)
    const paid = await paidOnChain(stack, p.address, stack.payTo.address)
    const deposits = (await ledger.transfers(p.account, { limit: 1000 })).filter((x) => x.kind === 'deposit')
    const todo = opts.chainTodo ? { todo: opts.chainTodo } : {}
    t.equal(bal.creditsPosted, atomicToLedger(paid.total, 6), `${p.address.slice(0, 10)}: credited exactly what it paid on chain`, todo)
    t.equal(deposits.length, paid.count, `${p.address.slice(0, 10)}: one deposit per payment that landed (${paid.count})`, todo)
    const receipts = await ledger.receipts(p.account, { limit: 1000 })
    const charged = receipts.reduce((s, r) => s + r.chargedAmount, 0n)
    if (bal.debitsPosted !== charged || receipts.some((r) => r.status === 'pending')) {
      for (const r of receipts.filter((x) => x.status !== 'completed')) {
        const reserve = await ledger.getTransfer(`reserve:${r.id}`)
        const post = await ledger.getTransfer(`post:${r.id}`)
        const seen = outcomes.find((o) => o.requestId === r.id)
        t.comment(`receipt ${r.id} ${r.status} charged ${r.chargedAmount}; reservation ${reserve?.state}, post ${post?.amount ?? 'none'}; client saw ${seen ? `${seen.status} ${seen.code ?? ''} ${seen.problem ?? ''}` : 'no answer'}`)
      }
    }
    t.equal(bal.debitsPosted, charged, `${p.address.slice(0, 10)}: debited exactly what its receipts charged`, opts.receiptTodo ? { todo: opts.receiptTodo } : {})
    t.equal(bal.debitsPending, 0n, `${p.address.slice(0, 10)}: nothing left reserved`)
    t.same(receipts.filter((r) => r.status === 'pending').map((r) => r.id), [], `${p.address.slice(0, 10)}: no receipt left pending`, opts.receiptTodo ? { todo: opts.receiptTodo } : {})
  }

  // What each client was told matches the receipt; failed answers cost nothing.
  const mismatches: string[] = []
  const stale: string[] = []
  for (const o of outcomes) {
    if (!o.requestId) continue
    const r = await ledger.getReceipt(o.requestId)
    if (!r) {
      if (o.ok) mismatches.push(`${o.requestId}: served but no receipt`)
      continue
    }
    if (o.ok && r.status === 'pending') stale.push(`${o.requestId}: told ${o.charged}, receipt still pending (${r.chargedAmount})`)
    else if (o.ok && (r.status !== 'completed' || r.chargedAmount !== o.charged)) mismatches.push(`${o.requestId}: told ${o.charged}, receipt ${r.status} ${r.chargedAmount}`)
    if (!o.ok && r.chargedAmount !== 0n) mismatches.push(`${o.requestId}: failed (${o.status} ${o.code}) but charged ${r.chargedAmount}`)
  }
  t.same(mismatches, [], 'receipts agree with what clients were told; failed answers were not charged')
  t.same(stale, [], 'every answer served has its final receipt', opts.receiptTodo ? { todo: opts.receiptTodo } : {})

  const totals = await ledger.totals()
  t.equal(totals.sumOfAllAccounts, 0n, 'the ledger sums to zero')
  t.equal(totals.pendingCount, 0, 'no pending transfer anywhere')
  await t.resolves(ledger.checkInvariants(), 'ledger invariants hold')
}

async function servesAgain (t: Test, gw: GatewayLike, key: string) {
  const json = await normalRequest(gw, key)
  t.ok(json.ok, `a normal request succeeds afterwards (${json.status} ${json.code ?? json.problem ?? ''})`)
  const sse = await normalRequest(gw, key, true)
  t.ok(sse.ok, `a normal stream succeeds afterwards (${sse.status} ${sse.code ?? sse.problem ?? ''})`)
}

/** Waits until the backend has served `n` more faulted requests (or gives up after ms). */
async function faultsConsumed (target: number, ms = 8000) {
  const until = Date.now() + ms
  while (stack.backend.stats.faulted < target && Date.now() < until) await sleep(25)
}

t.test('upstream faults under load: hangs, 5xx bursts, mid-stream aborts', async (t) => {
  const gw = await startGateway(stack, { UPSTREAM_HEADERS_TIMEOUT_MS: '1200', UPSTREAM_BODY_TIMEOUT_MS: '1200' })
  t.teardown(() => gw.close())
  const { clients, payers, probeKey } = await makeClients(gw, 2, 2)
  const script = [
    { kind: 'http_500', count: 3 }, { kind: 'abort_mid_stream', count: 2 }, { kind: 'hang', count: 1 },
    { kind: 'http_503', count: 3 }, { kind: 'hang_after_headers', count: 1 }, { kind: 'http_504', count: 2 },
    { kind: 'missing_usage', count: 2 }, { kind: 'bad_signature', count: 1 }, { kind: 'http_502', count: 2 },
    { kind: 'abort_mid_stream', count: 2 },
  ] as const
  const started = performance.now()
  const load = startWorkload(gw, clients)
  for (let round = 0; round < ROUNDS; round++) {
    for (const f of script) {
      const target = stack.backend.stats.faulted + f.count
      stack.backend.setFault({ ...f })
      await faultsConsumed(target)
      await sleep(150)
    }
  }
  stack.backend.setFault(null)
  await sleep(300)
  const outcomes = await load.stop()
  t.comment(`${outcomes.length} requests in ${Math.round(performance.now() - started)} ms: ${summarize(outcomes)}`)
  const codes = new Set(outcomes.map((o) => o.code))
  t.ok(codes.has('upstream_error') && codes.has('upstream_timeout'), 'the faults reached clients (upstream_error and upstream_timeout seen)')
  t.ok(outcomes.filter((o) => o.ok).length >= 4, 'and requests kept succeeding between them')
  await audit(t, gw.app.ledger, payers, outcomes)
  await servesAgain(t, gw, probeKey)
})

t.test('chain RPC down during settlement', async (t) => {
  const rpc = new URL(stack.chain.rpcUrl)
  const proxy = await startTcpProxy({ host: rpc.hostname, port: Number(rpc.port) })
  t.teardown(() => proxy.close())
  const rpcUrl = proxiedUrl(stack.chain.rpcUrl, proxy)
  let armed = false
  let outages = 0
  const facilitator = chaosFacilitator(localFacilitator(rpcUrl), {
    // Once the clients are set up, every third settle starts with the RPC cut, for longer than
    // viem's retries last. Settles are serialised, so no broadcast is in flight when it goes down.
    before: (n) => {
      if (!armed || n % 3 !== 0 || outages >= 2 * ROUNDS) return
      outages++
      proxy.cut()
      setTimeout(() => proxy.restore(), OUTAGE_MS)
    },
  })
  const gw = await startGateway(stack, { RPC_URL: rpcUrl }, { facilitator })
  t.teardown(() => gw.close())
  const { clients, payers, probeKey } = await makeClients(gw, 3, 1)
  armed = true
  const load = startWorkload(gw, clients)
  const until = Date.now() + (LONG ? 90_000 : 25_000)
  while (outages < 2 * ROUNDS && Date.now() < until) await sleep(100)
  await sleep(OUTAGE_MS + 500)
  const outcomes = await load.stop()
  proxy.restore()
  t.comment(`${outcomes.length} requests, ${outages} outages of ${OUTAGE_MS} ms: ${summarize(outcomes)}`)
  t.ok(outages >= 1, 'the RPC went down during a settlement')
  t.ok(outcomes.some((o) => o.kind === 'paid' && !o.ok), 'paying clients saw the outage')
  t.same(outcomes.filter((o) => o.kind === 'credit' && !o.ok).map((o) => `${o.status} ${o.code}`), [], 'credit clients, who need no chain, never noticed')
  const { open } = await resolveClaims(gw.app.ledger, facilitator, rpcUrl)
  t.same(open.map((c) => c.status), [], 'every payment claim is decided')
  await audit(t, gw.app.ledger, payers, outcomes)
  await servesAgain(t, gw, probeKey)
})

t.test('facilitator timeout after broadcast: recorded unknown, reconciled from the chain, credited once', async (t) => {
  let armed = false
  const facilitator = chaosFacilitator(localFacilitator(), { loseAnswer: (n) => armed && n % 3 === 1, lostAfterMs: 300 })
  const gw = await startGateway(stack, {}, { facilitator })
  t.teardown(() => gw.close())
  const { clients, payers, probeKey } = await makeClients(gw, 2, 1)
  armed = true
  const load = startWorkload(gw, clients)
  const until = Date.now() + (LONG ? 90_000 : 20_000)
  while (facilitator.lost < 2 * ROUNDS && Date.now() < until) await sleep(100)
  // The reconciler runs while the workload still does, twice at once (two replicas' timers).
  const during = await Promise.all([gw.app.reconciler!.runOnce(), gw.app.reconciler!.runOnce()])
  const outcomes = await load.stop()
  t.comment(`${outcomes.length} requests, ${facilitator.lost} settle answers lost: ${summarize(outcomes)}`)
  t.ok(facilitator.lost >= 1, 'settle answers were lost after broadcast')
  t.equal(outcomes.filter((o) => o.code === 'payment_settlement_unknown').length, facilitator.lost,
    'each client whose settle answer was lost was told the outcome is unknown (502: do not pay again)')
  const after = await gw.app.reconciler!.runOnce()
  t.comment(`reconciler passes: during the workload ${during.map((r) => r.deposited).join(' + ')} deposited (two at once), after it ${after.deposited}`)
  const again = await gw.app.reconciler!.runOnce()
  t.equal(again.examined, 0, 'a further pass finds nothing left to reconcile')
  const { open } = await resolveClaims(gw.app.ledger, facilitator, stack.chain.rpcUrl)
  t.same(open.map((c) => c.status), [], 'every payment claim is decided')
  // Exactly once: the audit counts one deposit per Transfer on chain, whoever posted it.
  await audit(t, gw.app.ledger, payers, outcomes)
  await servesAgain(t, gw, probeKey)
})

t.test('chain RPC cut right after the settle transaction was broadcast', async (t) => {
  const rpc = new URL(stack.chain.rpcUrl)
  const proxy = await startTcpProxy({ host: rpc.hostname, port: Number(rpc.port) })
  t.teardown(() => proxy.close())
  const rpcUrl = proxiedUrl(stack.chain.rpcUrl, proxy)
  let armed = false
  let cuts = 0
  const facilitator = chaosFacilitator(localFacilitator(rpcUrl), {
    // The transaction is sent and mined; the RPC goes down as its hash comes back, for 3 s
    // (shorter than the settle's wait for the receipt: it must ride it out).
    before: (n) => {
      if (!armed || n % 2 !== 0 || cuts >= ROUNDS + (LONG ? 2 : 0)) return
      cuts++
      void proxy.cutAfterResponseTo('eth_sendRawTransaction').then(() => setTimeout(() => proxy.restore(), OUTAGE_MS))
    },
  })
  const gw = await startGateway(stack, { RPC_URL: rpcUrl }, { facilitator })
  t.teardown(() => gw.close())
  const { clients, payers, probeKey } = await makeClients(gw, 2, 1)
  armed = true
  const load = startWorkload(gw, clients)
  const until = Date.now() + (LONG ? 90_000 : 25_000)
  while ((cuts < ROUNDS + (LONG ? 2 : 0) || proxy.stats.cuts < cuts) && Date.now() < until) await sleep(100)
  await sleep(OUTAGE_MS + 500)
  const outcomes = await load.stop()
  proxy.restore()
  t.comment(`${outcomes.length} requests, ${proxy.stats.cuts} cuts after broadcast: ${summarize(outcomes)}`)
  t.ok(proxy.stats.cuts >= 1, 'the RPC went down right after a broadcast')
  const { open } = await resolveClaims(gw.app.ledger, facilitator, rpcUrl)
  t.same(open.map((c) => c.status), [], 'every payment claim is decided')
  await audit(t, gw.app.ledger, payers, outcomes)
  await servesAgain(t, gw, probeKey)
})

t.test('settle answers settlement_pending after broadcast (RPC down longer than the receipt wait)', async (t) => {
  // What @x402/evm answers when the RPC stays down past confirmationTimeoutMs (60 s) after the
  // broadcast: { success: false, errorReason: 'settlement_pending', transaction: <hash> }, the
  // transaction mined all the same. The default run returns that answer for a settle that did
  // land; CHAOS_LONG=1 also produces it for real, with a 65 s outage after one broadcast.
  const rpc = new URL(stack.chain.rpcUrl)
  const proxy = await startTcpProxy({ host: rpc.hostname, port: Number(rpc.port) })
  t.teardown(() => proxy.close())
  const rpcUrl = proxiedUrl(stack.chain.rpcUrl, proxy)
  let armed = false
  let longCut = false
  const facilitator = chaosFacilitator(localFacilitator(rpcUrl), {
    pendingAnswer: (n) => armed && n % 3 === 0 && n <= 6,
    before: (n) => {
      if (!LONG || !armed || n !== 2 || longCut) return
      longCut = true
      void proxy.cutAfterResponseTo('eth_sendRawTransaction').then(() => setTimeout(() => proxy.restore(), 65_000))
    },
  })
  const gw = await startGateway(stack, { RPC_URL: rpcUrl }, { facilitator })
  t.teardown(() => gw.close())
  const { clients, payers, probeKey } = await makeClients(gw, 2, 1)
  armed = true
  const load = startWorkload(gw, clients)
  const until = Date.now() + (LONG ? 120_000 : 20_000)
  while ((facilitator.pending < 2 || (longCut && proxy.down)) && Date.now() < until) await sleep(100)
  await sleep(500)
  const outcomes = await load.stop()
  proxy.restore()
  t.comment(`${outcomes.length} requests, ${facilitator.pending} settlement_pending answers${longCut ? ' + one real 65 s outage' : ''}: ${summarize(outcomes)}`)
  t.ok(facilitator.pending >= 1, 'settles answered settlement_pending after their transaction was mined')
  t.same(outcomes.filter((o) => o.code === 'payment_settlement_failed').map((o) => o.requestId), [],
    'a broadcast settlement is never reported as failed (the client is told the outcome is unknown: do not pay again)')
  await resolveClaims(gw.app.ledger, facilitator, rpcUrl)
  await audit(t, gw.app.ledger, payers, outcomes)
  await servesAgain(t, gw, probeKey)
})

t.test('PostgreSQL restarted mid-workload', async (t) => {
  const pg = await startTestPostgres()
  if (!pg) {
    const reason = `chaos: PostgreSQL restart SKIPPED: ${postgresUnavailable}`
    process.stderr.write(`\n!!! ${reason}\n\n`)
    t.comment(reason)
    t.plan(0, reason)
    return
  }
  t.teardown(() => pg.stop())
  t.comment(`PostgreSQL: ${pg.source}`)
  // A real gateway process: a fault that kills it must not take the test process with it. It is
  // supervised like a container: restarted on the same port when it exits, killed and restarted
  // when its liveness probe fails 4 times in a row (every 0.5 s).
  const env = stack.gatewayEnv({
    DATABASE_URL: pg.url, ADMIN_TOKEN, LOAD_SHED_EVENT_LOOP_DELAY_MS: '0', RESERVATION_TIMEOUT_SECONDS: '10', SHUTDOWN_GRACE_MS: '500', LOG_LEVEL: 'warn',
  })
  let proc: GatewayProcess = await startGatewayProcess(env)
  const gw: GatewayLike = { url: proc.url }
  const crashes: string[] = []
  let supervising = true
  let up = true
  const supervisor = (async () => {
    let failedProbes = 0
    while (supervising) {
      const exit = await Promise.race([proc.exited, sleep(500).then(() => undefined)])
      if (!supervising) break
      if (!exit) {
        const live = await fetch(`${proc.url}/health/live`, { signal: AbortSignal.timeout(1000) }).then((r) => r.ok, () => false)
        failedProbes = live ? 0 : failedProbes + 1
        if (failedProbes < 4) continue
        proc.kill('SIGKILL')
        await proc.exited
      }
      up = false
      const log = proc.output().split('\n').filter((l) => /"level":(50|60)|Error/.test(l)).map((l) => l.slice(0, 300))
      crashes.push(`${exit ? `exited ${exit.code ?? exit.signal}` : 'unresponsive, killed'}; ${log.slice(0, 3).join(' | ')}`)
      failedProbes = 0
      proc = await startGatewayProcess(env, { port: proc.port })
      up = true
    }
  })()
  t.teardown(async () => { supervising = false; await supervisor; await proc.stop(3000) })

  const { clients, payers, probeKey } = await makeClients(gw, 2, 2)
  const load = startWorkload(gw, clients, { requestTimeoutMs: 8000 })
  for (let round = 0; round < ROUNDS; round++) {
    await sleep(1500)
    await pg.restart({ mode: 'fast', downMs: 1000 })
  }
  // The workload goes on until the gateway is back (restarted if it died) and serves a while.
  await sleep(1500)
  for (const until = Date.now() + 60_000; Date.now() < until;) {
    const ready = up && await fetch(`${gw.url}/health/ready`, { signal: AbortSignal.timeout(2000) }).then((r) => r.ok, () => false)
    if (ready) break
    await sleep(250)
  }
  const recoveredAt = Date.now()
  await sleep(2000)
  const outcomes = await load.stop()
  t.comment(`${outcomes.length} requests over ${ROUNDS} restart(s), ${crashes.length} gateway crash(es): ${summarize(outcomes)}`)
  for (const c of crashes) t.comment(`gateway crash: ${c}`)
  t.same(crashes, [], 'the gateway process survived the database restart')
  t.ok(outcomes.some((o) => !o.ok), 'the restart reached clients')
  const recovered = outcomes.filter((o) => o.at >= recoveredAt)
  t.ok(recovered.length > 0 && recovered.every((o) => o.ok), `every request after the recovery succeeded (${summarize(recovered)})`)

  const ledger = await openPostgresLedger(pg.url, { poolSize: 2 })
  t.teardown(() => ledger.close())
  const facilitator = localFacilitator()
  const { open } = await resolveClaims(ledger, facilitator, stack.chain.rpcUrl)
  t.same(open.map((c) => c.status), [], 'every payment claim is decided')
  await audit(t, ledger, payers, outcomes, {
    expireOrphansAfterMs: 10_000,
    known: [
      { what: 'no 500 while the database was down (503 ledger_unavailable instead)', match: (o) => o.status === 500 },
      { what: 'no answer left hanging: a stream whose ledger call fails still ends (error frame, [DONE])', match: (o) => o.hung === true },
      { what: 'no answer cut off by a gateway crash', match: (o) => crashes.length > 0 && !o.hung && (o.transportError !== undefined || /terminated|\[DONE\]/.test(o.problem ?? '')) },
    ],
  })
  await servesAgain(t, gw, probeKey)
})
