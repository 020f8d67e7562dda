import { createServer, connect, type Server, type Socket } from 'node:net'
import { parseAbiItem, type Address } from 'viem'
import type { Facilitator } from '../../src/x402/facilitator.ts'
import type { LocalStack } from '../../local-stack/stack.ts'
import { payingFetch } from './gateway.ts'

/** Anything serving the gateway's HTTP API: an in-process app or a gateway process. */
export interface GatewayLike { url: string }

// Tools for test/chaos.test.ts: a TCP proxy that can be cut (the chain RPC going down, optionally
// right after a transaction was broadcast), facilitator wrappers that lose or delay a settle's
// answer, and a small workload of concurrent clients whose every answer is classified and checked
// against the gateway's response contract.

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// TCP proxy

export interface TcpProxy {
  /** 127.0.0.1:port, forwarding to the target. */
  readonly port: number
  readonly down: boolean
  readonly stats: { connections: number, refused: number, cuts: number }
  /** Destroys every open connection and resets new ones until restore(). */
  cut (): void
  restore (): void
  /**
   * Arms a one-shot trigger: the first client request containing `marker` is forwarded, and as soon
   * as the first bytes of its answer have been passed back, the proxy is cut. Resolves then.
   */
  cutAfterResponseTo (marker: string): Promise<void>
  close (): Promise<void>
}

export async function startTcpProxy (target: { host: string, port: number }): Promise<TcpProxy> {
  const open = new Set<Socket>()
  const stats = { connections: 0, refused: 0, cuts: 0 }
  let down = false
  let trigger: { marker: string, fired: () => void } | undefined

  const cut = () => {
    down = true
    stats.cuts++
    for (const s of open) s.destroy()
    open.clear()
  }

  const server: Server = createServer((client) => {
    if (down) { stats.refused++; client.resetAndDestroy(); return }
    stats.connections++
    const upstream = connect(target.port, target.host)
    open.add(client); open.add(upstream)
    let armed = false
    const drop = () => { open.delete(client); open.delete(upstream); client.destroy(); upstream.destroy() }
    client.on('error', drop); upstream.on('error', drop)
    client.on('close', drop); upstream.on('close', drop)
    client.on('data', (chunk: Buffer) => {
      if (trigger && chunk.includes(trigger.marker)) armed = true
      upstream.write(chunk)
    })
    upstream.on('data', (chunk: Buffer) => {
      if (armed && trigger) {
        const fired = trigger.fired
        trigger = undefined
        // The answer's first bytes reach the client, then everything goes down.
        client.write(chunk, () => { cut(); fired() })
        return
      }
      client.write(chunk)
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve() })
  })
  const port = (server.address() as { port: number }).port
  return {
    port,
    get down () { return down },
    stats,
    cut,
    restore () { down = false },
    cutAfterResponseTo (marker) {
      return new Promise<void>((resolve) => { trigger = { marker, fired: resolve } })
    },
    close () {
      cut()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

/** The proxy's URL for an http(s) target URL (same path). */
export function proxiedUrl (targetUrl: string, proxy: TcpProxy): string {
  const u = new URL(targetUrl)
  u.hostname = '127.0.0.1'
  u.port = String(proxy.port)
  return u.toString().replace(/\/$/, '')
}

// ---------------------------------------------------------------------------------------------
// Facilitator wrappers

export interface SettleHooks {
  /** Runs before the n-th settle (1-based), while no other settle of this wrapper is running. */
  before? (n: number): Promise<void> | void
  /**
   * After the real settle returned (the transaction is mined): true to lose the answer, as with a
   * facilitator that times out after broadcasting. The gateway then sees only an error.
   */
  loseAnswer? (n: number): boolean
  /** How long the lost answer keeps the request waiting before the timeout error. */
  lostAfterMs?: number
  /**
   * After the real settle returned (mined): true to answer as @x402/evm does when its wait for the
   * receipt fails after the broadcast (RPC down longer than confirmationTimeoutMs): success false,
   * errorReason settlement_pending, with the transaction hash.
   */
  pendingAnswer? (n: number): boolean
}

/** Serialises settles (so a hook never interleaves with a broadcast) and applies the hooks. */
export function chaosFacilitator (real: Facilitator, hooks: SettleHooks): Facilitator & { settles: number, lost: number, pending: number } {
  let queue: Promise<unknown> = Promise.resolve()
  const state = { settles: 0, lost: 0, pending: 0 }
  const wrapped: Facilitator & { settles: number, lost: number, pending: number } = {
    ...real,
    get settles () { return state.settles },
    get lost () { return state.lost },
    get pending () { return state.pending },
    settle (p, r) {
      const run = async () => {
        const n = ++state.settles
        await hooks.before?.(n)
        const out = await real.settle(p, r)
        if (hooks.loseAnswer?.(n)) {
          state.lost++
          await sleep(hooks.lostAfterMs ?? 0)
          throw new Error('facilitator timeout (chaos: the settle was broadcast, its answer lost)')
        }
        if (out.success && hooks.pendingAnswer?.(n)) {
          state.pending++
          return { ...out, success: false, errorReason: 'settlement_pending', errorMessage: `Timed out while waiting for transaction with hash "${out.transaction}" to be confirmed.` }
        }
        return out
      }
      const next = queue.then(run, run)
      queue = next.catch(() => undefined)
      return next
    },
  }
  return wrapped
}

// ---------------------------------------------------------------------------------------------
// Chain truth

const transferEvent = parseAbiItem('event Transfer(address indexed from, address indexed to, uint256 value)')

/** What `from` really paid `to` on chain: the sum (atomic units) and number of Transfer logs. */
export async function paidOnChain (stack: LocalStack, from: Address, to: Address): Promise<{ total: bigint, count: number }> {
  const logs = await stack.chain.publicClient.getLogs({ address: stack.token, event: transferEvent, args: { from, to }, fromBlock: 0n, toBlock: 'latest' })
  return { total: logs.reduce((sum, l) => sum + (l.args.value ?? 0n), 0n), count: logs.length }
}

// ---------------------------------------------------------------------------------------------
// Workload

/** Error codes a client may see from the gateway while something it depends on is failing. */
export const TRANSIENT_5XX = new Set([
  'upstream_unavailable', 'upstream_error', 'upstream_timeout', 'upstream_bad_response', 'proof_unverified',
  'ledger_unavailable', 'facilitator_unavailable', 'payment_settlement_unknown', 'overloaded', 'shared_state_unavailable',
])
export const ALLOWED_402 = new Set(['payment_invalid', 'payment_settlement_failed', 'insufficient_credit'])

export interface ClientSpec {
  name: string
  kind: 'paid' | 'credit'
  /** Private key: a paid client signs a fresh payment per request with the official x402 client. */
  privateKey: `0x${string}`
  /** For credit clients: the API key. */
  apiKey?: string
}

export interface Outcome {
  client: string
  kind: 'paid' | 'credit'
  stream: boolean
  status: number
  requestId: string | null
  /** Error code of a non-200 answer, or of a stream's closing error frame. */
  code?: string
  /** 200 and verified (for streams: final frame verified). */
  ok: boolean
  /** What the gateway said it charged (ledger units): header or final frame. Undefined if it said nothing. */
  charged?: bigint
  /** A problem with the answer's shape (broken contract), or a transport error. */
  problem?: string
  /** The client's fetch failed (connection reset etc.). */
  transportError?: string
  /** The answer did not complete within the client's timeout (the gateway left it hanging). */
  hung?: boolean
  /** When the request was sent (epoch ms) and how long it took. */
  at: number
  ms: number
}

function parseUnits (s: string | null | undefined): bigint | undefined {
  if (s == null || !/^\d+(\.\d{1,9})?$/.test(s)) return undefined
  const [w, f = ''] = s.split('.')
  return BigInt(w) * 1_000_000_000n + BigInt(f.padEnd(9, '0'))
}

/** Classifies one answer against the response contract (README: Response contract, errors). */
async function classify (res: Response, base: Omit<Outcome, 'status' | 'requestId' | 'ok' | 'ms'>, started: number): Promise<Outcome> {
  const out: Outcome = { ...base, status: res.status, requestId: res.headers.get('x-request-id'), ok: false, ms: 0 }
  const problems: string[] = []
  const text = await res.text().catch((err: Error) => {
    if (err.name === 'TimeoutError') out.hung = true
    problems.push(`body read failed: ${err.message}`)
    return ''
  })
  if (res.status === 200 && !base.stream) {
    if (res.headers.get('x-opengradient-verified') !== 'true') problems.push('200 without X-OpenGradient-Verified: true')
    out.charged = parseUnits(res.headers.get('x-credits-charged'))
    if (out.charged === undefined) problems.push('200 without X-Credits-Charged')
    try { JSON.parse(text) } catch { problems.push('200 body is not JSON') }
    out.ok = problems.length === 0
  } else if (res.status === 200) {
    const frames = text.split('\n\n').filter((f) => f.startsWith('data: ')).map((f) => f.slice(6))
    if (frames[frames.length - 1] !== '[DONE]') problems.push('stream did not end with [DONE]')
    const last = frames.filter((f) => f !== '[DONE]').pop()
    let gw: { verified?: boolean, charged?: string } | undefined
    let err: { code?: string } | undefined
    try {
      const obj = JSON.parse(last ?? 'null')
      gw = obj?.x402_gateway
      err = obj?.error
    } catch { problems.push('final stream frame is not JSON') }
    if (!gw) problems.push('final stream frame has no x402_gateway')
    else {
      out.charged = parseUnits(gw.charged)
      if (out.charged === undefined) problems.push('x402_gateway.charged missing')
      if (gw.verified === true) out.ok = true
      else {
        out.code = err?.code ?? 'unverified'
        if (out.charged !== 0n) problems.push(`unverified stream charged ${gw.charged}`)
      }
    }
  } else {
    let body: { error?: unknown, code?: unknown } | undefined
    try { body = JSON.parse(text) } catch { problems.push(`${res.status} body is not JSON`) }
    // A 402 is the PaymentRequired object plus `code`; every other error is OpenAI's envelope.
    const code = res.status === 402 ? body?.code : (body?.error as { code?: unknown } | undefined)?.code
    out.code = typeof code === 'string' ? code : undefined
    if (res.status === 500 || (res.status > 500 && !TRANSIENT_5XX.has(out.code ?? ''))) problems.push(`${res.status} ${out.code ?? text.slice(0, 200)}`)
    if (res.status === 402 && !ALLOWED_402.has(out.code ?? '')) problems.push(`402 ${out.code}`)
    if (res.status < 500 && res.status !== 402) problems.push(`unexpected ${res.status} ${out.code ?? ''}`)
  }
  if (problems.length > 0) out.problem = problems.join('; ')
  out.ms = Math.round(performance.now() - started)
  return out
}

export function chatRequest (i: number, stream: boolean) {
  return { model: 'gpt-4.1', messages: [{ role: 'user', content: `chaos request ${i}` }], max_tokens: 24 + (i % 5) * 8, stream }
}

export interface Workload {
  outcomes: Outcome[]
  /** Resolves when every client has stopped (after stop()). */
  stop (): Promise<Outcome[]>
}

/**
 * Each client sends requests one after another (alternating JSON and SSE) until stop(); answers
 * are classified as they come. `pauseMs` spaces a client's requests.
 */
export function startWorkload (gw: GatewayLike, clients: ClientSpec[], opts: { pauseMs?: number, requestTimeoutMs?: number } = {}): Workload {
  const outcomes: Outcome[] = []
  let stopping = false
  let seq = 0
  const loops = clients.map(async (c, ci) => {
    const pay = c.kind === 'paid' ? payingFetch(c.privateKey) : fetch
    for (let n = 0; !stopping; n++) {
      const i = seq++
      const stream = (n + ci) % 2 === 1
      const started = performance.now()
      const base = { client: c.name, kind: c.kind, stream, at: Date.now() }
      try {
        const headers: Record<string, string> = { 'content-type': 'application/json' }
        if (c.apiKey) headers.authorization = `Bearer ${c.apiKey}`
        // A bound on every request, so a gateway that hangs fails the test instead of stalling it.
        const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(chatRequest(i, stream)), signal: AbortSignal.timeout(opts.requestTimeoutMs ?? 30_000) })
        const o = await classify(res, base, started)
        outcomes.push(o)
        if (o.status >= 500) await sleep(100) // a client backs off a little on 5xx
      } catch (err) {
        const e = err as Error & { cause?: Error }
        outcomes.push({ ...base, status: 0, requestId: null, ok: false, hung: e.name === 'TimeoutError', transportError: `${e.message}${e.cause ? `: ${e.cause.message}` : ''}`, ms: Math.round(performance.now() - started) })
        await sleep(250) // nothing listening: do not spin
      }
      if (opts.pauseMs) await sleep(opts.pauseMs)
    }
  })
  return {
    outcomes,
    async stop () {
      stopping = true
      await Promise.all(loops)
      return outcomes
    },
  }
}

/** One request that must succeed: the gateway serves again. */
export async function normalRequest (gw: GatewayLike, apiKey: string, stream = false): Promise<Outcome> {
  const started = performance.now()
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: JSON.stringify(chatRequest(0, stream)),
  })
  return classify(res, { client: 'probe', kind: 'credit', stream, at: Date.now() }, started)
}

/** Buys an API key with x402 (POST /v1/keys answers 402, the official client pays). */
export async function buyKey (gw: GatewayLike, privateKey: `0x${string}`): Promise<string> {
  const res = await payingFetch(privateKey)(`${gw.url}/v1/keys`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'chaos' }) })
  if (res.status !== 201) throw new Error(`buying a key failed: ${res.status} ${await res.text()}`)
  return (await res.json()).key
}

export function summarize (outcomes: Outcome[]): string {
  const counts = new Map<string, number>()
  for (const o of outcomes) {
    const k = o.hung ? 'hung' : o.transportError ? 'transport' : o.ok ? `${o.status} ok` : `${o.status} ${o.code ?? ''}`.trim()
    counts.set(k, (counts.get(k) ?? 0) + 1)
  }
  return [...counts].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}: ${v}`).join(', ')
}

export { parseUnits, sleep }
