import { StringDecoder } from 'node:string_decoder'
import { GatewayError } from '../errors.ts'
import type { LedgerStore } from '../ledger/types.ts'
import { formatLedger } from '../money.ts'
import { SseSplitter } from '../upstream/sse.ts'
import { mapUpstreamError, type UpstreamResponse, type UpstreamTarget } from '../upstream/client.ts'
import type { EnclavePool } from '../upstream/pool.ts'
import { canonicalOutputOf, StreamAccumulator } from '../proof/output.ts'
import { verifyTeeProof, type TeeProof } from '../proof/verify.ts'
import type { PreparedChat } from './prepare.ts'
import { postCharge, voidReservation, type Reservation } from './charge.ts'

export interface ForwardDeps {
  ledger: LedgerStore
  /** The enclaves; a connection failure (no HTTP answer) is retried once on another. */
  enclaves: Pick<EnclavePool, 'withFailover'>
  log: { warn (o: object, msg: string): void, error (o: object, msg: string): void }
  /** Observability hooks; the engine reports, the caller decides what to record. */
  onUpstreamHeaders? (seconds: number): void
  onFirstContent? (seconds: number): void
  onVerdict? (result: 'verified' | 'malformed' | 'tee_id' | 'request_hash' | 'output_hash' | 'signature'): void
}

export interface Verdict { verified: boolean, teeId?: string, step?: string, reason?: string }

const MAX_UPSTREAM_BODY = 8 * 1024 * 1024

/** The enclave's reported cost (`opengradient.cost_usd`, string or number), verbatim as a string. */
function costUsdOf (og: unknown): string | undefined {
  const c = (og as { cost_usd?: unknown } | undefined)?.cost_usd
  if (typeof c === 'string') return c
  if (typeof c === 'number' && Number.isFinite(c)) return String(c)
  return undefined
}

function proofOf (o: Record<string, unknown>): TeeProof {
  return {
    tee_id: o.tee_id, tee_request_hash: o.tee_request_hash, tee_output_hash: o.tee_output_hash,
    tee_timestamp: o.tee_timestamp, tee_signature: o.tee_signature,
  } as TeeProof
}

/** Sends the body to an enclave; the answer's proof must then verify against that enclave's key. */
async function send (deps: ForwardDeps, prepared: PreparedChat, signal: AbortSignal): Promise<{ res: UpstreamResponse, target: UpstreamTarget }> {
  return deps.enclaves.withFailover(async (c) => ({ res: await c.post('/v1/chat/completions', prepared.wireBody, signal), target: c.target }))
}

/** Maps a non-200 upstream answer (PROTOCOLS.md §7 error shape) to a gateway error. */
async function upstreamFailure (res: UpstreamResponse): Promise<GatewayError> {
  let detail: unknown
  try { detail = JSON.parse((await res.body.text()).slice(0, 4096)) } catch { detail = undefined }
  const d = (detail ?? {}) as { error?: unknown, retryable?: unknown, source?: unknown }
  const meta = { upstream_status: res.status, upstream_error: typeof d.error === 'string' ? d.error.slice(0, 300) : undefined, retryable: d.retryable === true }
  if (res.status === 400 || res.status === 404 || res.status === 422) return new GatewayError('UPSTREAM_BAD_REQUEST', meta)
  if (res.status === 504) return new GatewayError('UPSTREAM_TIMEOUT', meta)
  return new GatewayError('UPSTREAM_ERROR', meta)
}

export interface NonStreamResult {
  bodyText: string
  proof: TeeProof
  verdict: Verdict
  charged: bigint
  balance: bigint
  usage: { promptTokens: number, completionTokens: number }
  costUsd?: string
  /** Time spent waiting on the upstream (headers and body), for the overhead metric. */
  upstreamMs: number
}

export async function forwardNonStream (deps: ForwardDeps, prepared: PreparedChat, r: Reservation, signal: AbortSignal): Promise<NonStreamResult> {
  let bodyText: string
  let target: UpstreamTarget
  const started = performance.now()
  let upstreamMs = 0
  try {
    const sent = await send(deps, prepared, signal)
    const res = sent.res
    target = sent.target
    deps.onUpstreamHeaders?.((performance.now() - started) / 1000)
    if (res.status !== 200) throw await upstreamFailure(res)
    bodyText = await res.body.text()
    upstreamMs = performance.now() - started
  } catch (err) {
    await voidReservation(deps.ledger, r, 'upstream_failed')
    throw mapUpstreamError(err)
  }
  let body: Record<string, unknown>
  try {
    if (bodyText.length > MAX_UPSTREAM_BODY) throw new Error('too large')
    body = JSON.parse(bodyText)
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new Error('not an object')
  } catch {
    await voidReservation(deps.ledger, r, 'bad_upstream_response')
    throw new GatewayError('UPSTREAM_BAD_RESPONSE', { reason: 'invalid_json' })
  }
  const proof = proofOf(body)
  let outputCanonical: string
  try { outputCanonical = canonicalOutputOf(body) } catch { outputCanonical = '' }
  const verdict = verifyTeeProof({ requestHash: prepared.requestHash, outputCanonical, proof, trustedKey: target.publicKeyPem, expectedTeeId: target.teeId })
  deps.onVerdict?.(verdict.verified ? 'verified' : verdict.step)
  const costUsd = costUsdOf(body.opengradient)
  if (!verdict.verified) {
    // Not charged, but the enclave's reported cost is booked: the margin shows the loss.
    await voidReservation(deps.ledger, r, 'proof_unverified', costUsd)
    throw new GatewayError('PROOF_UNVERIFIED', { reason: verdict.step, detail: verdict.reason })
  }
  const charge = await postCharge(deps.ledger, r, prepared, {
    usage: body.usage as never, costUsd, outputChars: outputCanonical.length,
  })
  return { bodyText, proof, verdict, charged: charge.amount, balance: charge.balance, usage: charge.usage, costUsd, upstreamMs }
}

/** Where a stream is written; the route supplies it (Fastify's raw response), the engine stays framework-free. */
export interface StreamSink {
  start (headers: Record<string, string>): void
  write (chunk: string): Promise<void>
  end (): void
  readonly closed: boolean
}

export interface StreamResult {
  verdict: Verdict
  charged: bigint
  balance: bigint
  usage?: { promptTokens: number, completionTokens: number }
  proof?: TeeProof
  costUsd?: string
  outcome: 'completed' | 'unverified' | 'upstream_failed' | 'client_disconnected'
}

/**
 * Passes SSE through event by event as it arrives. The one frame held back is the proof frame
 * (the one with tee_signature): it is verified and charged first, then sent with an added
 * `x402_gateway` object, then [DONE]. Status and headers are sent only once the upstream said 200,
 * so an upstream failure before that is still a clean JSON error.
 */
export async function forwardStream (deps: ForwardDeps, prepared: PreparedChat, r: Reservation, sink: StreamSink, headers: Record<string, string>, controller: AbortController): Promise<StreamResult> {
  let res: UpstreamResponse
  let target: UpstreamTarget
  const started = performance.now()
  try {
    ({ res, target } = await send(deps, prepared, controller.signal))
    deps.onUpstreamHeaders?.((performance.now() - started) / 1000)
    if (res.status !== 200) throw await upstreamFailure(res)
  } catch (err) {
    await voidReservation(deps.ledger, r, 'upstream_failed')
    throw mapUpstreamError(err)
  }

  sink.start({ ...headers, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no' })
  const splitter = new SseSplitter()
  const decoder = new StringDecoder('utf8')
  const acc = new StreamAccumulator()
  let finalFrame: Record<string, unknown> | undefined
  let inBandError: unknown
  let failed = false
  let firstContentSent = false
  // verify-before-emit: nothing of the answer is sent until its proof has verified.
  const held: string[] | undefined = prepared.verifyBeforeEmit ? [] : undefined

  const handle = async (events: ReturnType<SseSplitter['push']>) => {
    for (const ev of events) {
      if (ev.data === undefined) continue
      if (ev.data.trim() === '[DONE]') continue
      let obj: Record<string, unknown> | undefined
      try { obj = JSON.parse(ev.data) } catch { obj = undefined }
      if (obj && typeof obj === 'object') {
        if ('error' in obj && obj.choices === undefined) inBandError = obj.error
        acc.feed(obj)
        if (typeof obj.tee_signature === 'string') { finalFrame = obj; continue }
      }
      if (held) { held.push(ev.raw); continue }
      if (!sink.closed) {
        await sink.write(ev.raw)
        if (!firstContentSent && obj) { firstContentSent = true; deps.onFirstContent?.((performance.now() - started) / 1000) }
      }
    }
  }

  try {
    for await (const chunk of res.body) {
      await handle(splitter.push(decoder.write(chunk as Buffer)))
      if (sink.closed) break
    }
    if (!sink.closed) await handle(splitter.push(decoder.end()).concat(splitter.flush()))
  } catch (err) {
    failed = true
    deps.log.warn({ requestId: r.requestId, err: (err as Error).message }, 'upstream stream failed')
  }

  if (sink.closed) {
    // The client left: stop the backend and charge for what was generated so far (estimated
    // from the text sent, since usage only comes at the end).
    controller.abort()
    sink.end()
    const c = await postCharge(deps.ledger, r, prepared, { outputChars: acc.outputChars, costUsd: undefined })
    return { verdict: { verified: false, reason: 'client_disconnected' }, charged: c.amount, balance: c.balance, usage: c.usage, outcome: 'client_disconnected' }
  }

  if (failed || !finalFrame || inBandError !== undefined) {
    const v = await voidReservation(deps.ledger, r, inBandError !== undefined ? 'upstream_in_band_error' : 'upstream_stream_incomplete', costUsdOf(acc.opengradient))
    const code = inBandError !== undefined ? 'upstream_error' : 'upstream_stream_incomplete'
    await sink.write(`data: ${JSON.stringify({ error: { code, message: 'The stream ended without a verified answer; you were not charged.', type: 'api_error' }, x402_gateway: { request_id: r.requestId, verified: false, charged: '0', balance: formatLedger(v.balance) } })}\n\n`)
    await sink.write('data: [DONE]\n\n')
    sink.end()
    return { verdict: { verified: false, reason: code }, charged: 0n, balance: v.balance, outcome: 'upstream_failed' }
  }

  const proof = proofOf(finalFrame)
  const verdict = verifyTeeProof({ requestHash: prepared.requestHash, outputCanonical: acc.canonicalOutput(), proof, trustedKey: target.publicKeyPem, expectedTeeId: target.teeId })
  deps.onVerdict?.(verdict.verified ? 'verified' : verdict.step)
  const costUsd = costUsdOf(acc.opengradient)
  let charged = 0n
  let balance: bigint
  let usage: StreamResult['usage']
  if (verdict.verified) {
    const c = await postCharge(deps.ledger, r, prepared, { usage: acc.usage as never, costUsd, outputChars: acc.outputChars })
    charged = c.amount; balance = c.balance; usage = c.usage
  } else {
    balance = (await voidReservation(deps.ledger, r, 'proof_unverified', costUsd)).balance
  }
  const gw = {
    request_id: r.requestId,
    verified: verdict.verified,
    ...(verdict.verified ? { tee_id: verdict.teeId } : { failed_check: verdict.step, reason: verdict.reason }),
    charged: formatLedger(charged),
    balance: formatLedger(balance),
  }
  if (held && verdict.verified) {
    for (const raw of held) await sink.write(raw)
  }
  // Held and unverified: the answer is dropped; the client gets only the verdict (no content).
  const final = held && !verdict.verified ? { error: { code: 'proof_unverified', message: 'The answer\'s proof did not verify; it was withheld and not charged.', type: 'api_error' } } : finalFrame
  await sink.write(`data: ${JSON.stringify({ ...final, x402_gateway: gw })}\n\n`)
  await sink.write('data: [DONE]\n\n')
  sink.end()
  return { verdict, charged, balance, usage, proof, costUsd, outcome: verdict.verified ? 'completed' : 'unverified' }
}
