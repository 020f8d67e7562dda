import { once } from 'node:events'
import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { decodePaymentSignatureHeader } from '@x402/core/http'
import { extractPaymentIdentifier } from '@x402/extensions/payment-identifier'
import { GatewayError } from '../src/errors.ts'
import { formatLedger, ledgerToAtomicCeil } from '../src/money.ts'
import { prepareChat, type PreparedChat } from '../src/chat/prepare.ts'
import { reserveFor, type Reservation } from '../src/chat/charge.ts'
import { forwardNonStream, forwardStream, type StreamSink } from '../src/chat/forward.ts'
import type { StoredResponse } from '../src/ledger/types.ts'
import { paymentResponseHeaders, type Payer } from '../plugins/paid.ts'
import { toGatewayError } from '../plugins/errors.ts'
import { toAsset } from '../src/metrics.ts'
import { chatSchema } from './schemas.ts'

const DESCRIPTION = 'Verified (TEE) chat completion; the payment becomes credit, each request spends what it used'
const IDEMPOTENCY_TTL_MS = 24 * 3600_000
const MAX_OPEN_RESERVATIONS = 16

/** The x402 payment-identifier extension's id, read from the (already size-limited) payment header. */
function paymentIdentifierOf (req: FastifyRequest): string | undefined {
  const header = req.headers['payment-signature']
  if (typeof header !== 'string' || header.length > 8192) return undefined
  try {
    return extractPaymentIdentifier(decodePaymentSignatureHeader(header), true) ?? undefined
  } catch { return undefined }
}

function hasPaymentIdentifier (req: FastifyRequest): boolean {
  return paymentIdentifierOf(req) !== undefined
}

/** Client idempotency key: the Idempotency-Key header, or the x402 payment-identifier extension. */
function idempotencyKeyOf (req: FastifyRequest): string | undefined {
  const h = req.headers['idempotency-key']
  if (typeof h === 'string') {
    if (!/^[\x21-\x7e]{1,128}$/.test(h)) throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_idempotency_key' }, 'Idempotency-Key must be 1-128 visible ASCII characters.')
    return `key:${h}`
  }
  const id = paymentIdentifierOf(req)
  if (id !== undefined) return `pid:${id}`
  return undefined
}

export default async function chatRoutes (app: FastifyInstance) {
  const { config } = app

  app.post('/v1/chat/completions', { bodyLimit: config.limits.bodyBytes, schema: chatSchema }, async (req, reply) => {
    const startedAt = performance.now()
    // Per request (X-Verify-Before-Emit: true|false) or by default from VERIFY_BEFORE_EMIT.
    const vbe = req.headers['x-verify-before-emit']
    const prepared = prepareChat(req.body, app.prices, { ...config.limits, verifyBeforeEmit: vbe === 'true' || (vbe !== 'false' && config.limits.verifyBeforeEmit) })
    const requestId = req.id
    const offer = app.offerFor(prepared.reservation)

    // Judged before any payment is taken: a bad key must not leave the client paid but unanswered.
    const idemKey = idempotencyKeyOf(req)
    let payer: Payer | undefined
    try {
      payer = await app.payerOf(req, {
        minAtomic: ledgerToAtomicCeil(prepared.reservation, config.x402.assetDecimals),
        description: DESCRIPTION,
        idempotent: typeof req.headers['idempotency-key'] === 'string' || hasPaymentIdentifier(req),
      })
    } catch (err) {
      if (err instanceof GatewayError && err.status === 402) return app.sendPaymentRequired(req, reply, { amountAtomic: offer, description: DESCRIPTION, err })
      throw err
    }
    if (!payer) return app.sendPaymentRequired(req, reply, { amountAtomic: offer, description: DESCRIPTION, err: new GatewayError('PAYMENT_REQUIRED', { reason: 'payment_required' }) })

    if (idemKey) {
      const bodyHash = createHash('sha256').update(JSON.stringify(req.body)).digest('hex')
      const begun = await app.ledger.beginIdempotent({ account: payer.account, key: idemKey, bodyHash, requestId, now: app.clock(), expiresAt: app.clock() + IDEMPOTENCY_TTL_MS })
      if (begun.state === 'conflict') throw new GatewayError('IDEMPOTENCY_CONFLICT')
      if (begun.state === 'in_flight') throw new GatewayError('IDEMPOTENCY_IN_FLIGHT', { request_id: begun.requestId })
      if (begun.state === 'started' && payer.replayedPayment) {
        await app.ledger.abandonIdempotent({ account: payer.account, key: idemKey })
        return app.sendPaymentRequired(req, reply, { amountAtomic: offer, description: DESCRIPTION, err: new GatewayError('PAYMENT_ALREADY_USED', { reason: 'payment_already_used' }) })
      }
      if (begun.state === 'completed') {
        return reply.code(begun.response.status as 200).headers({ ...begun.response.headers, ...paymentResponseHeaders(payer.payment), 'idempotent-replayed': 'true' }).send(begun.response.body)
      }
    }
    try {
      const stored = await serve(app, req, reply, prepared, payer, offer, startedAt)
      if (idemKey) {
        if (stored) await app.ledger.completeIdempotent({ account: payer.account, key: idemKey, response: stored })
        else await app.ledger.abandonIdempotent({ account: payer.account, key: idemKey })
      }
      return reply
    } catch (err) {
      if (idemKey) await app.ledger.abandonIdempotent({ account: payer.account, key: idemKey }).catch(() => undefined)
      throw err
    }
  })
}

/** Reserve, forward, verify, post or void. Returns what an idempotent retry should see, if it succeeded. */
async function serve (app: FastifyInstance, req: FastifyRequest, reply: FastifyReply, prepared: PreparedChat, payer: Payer, offer: bigint, startedAt: number): Promise<StoredResponse | undefined> {
  const { config } = app
  const requestId = req.id
  const reserved = await reserveFor(app.ledger, payer.account, prepared, requestId, app.clock() + config.limits.reservationTimeoutMs, MAX_OPEN_RESERVATIONS)
  if (!reserved.ok) {
    const err = reserved.code === 'too_many_reservations'
      ? new GatewayError('TOO_MANY_RESERVATIONS', { limit: MAX_OPEN_RESERVATIONS })
      : reserved.code === 'account_blocked'
        ? new GatewayError('ACCOUNT_BLOCKED')
        : new GatewayError('INSUFFICIENT_CREDIT', { reason: 'insufficient_credit', needed: formatLedger(prepared.reservation), available: formatLedger(reserved.available) })
    if (err.status !== 402) { reply.headers(paymentResponseHeaders(payer.payment)); throw err }
    app.sendPaymentRequired(req, reply, { amountAtomic: offer, description: DESCRIPTION, err, payer })
    return undefined
  }
  const r = reserved.reservation
  await app.ledger.putReceipt({
    id: requestId, payer: payer.account, model: prepared.model, stream: prepared.stream, status: 'pending',
    promptTokens: 0, completionTokens: 0, reservedAmount: r.amount, chargedAmount: 0n, upstreamCost: null,
    verified: null, verifyError: null, proof: null, paymentTx: payer.payment?.settle.transaction ?? null, errorCode: null,
    createdAt: app.clock(), completedAt: null,
  })

  const m = app.metrics
  const model = prepared.model
  const deps = {
    ledger: app.ledger,
    enclaves: app.enclaves,
    log: req.log,
    onUpstreamHeaders: (s: number) => m.upstreamLatency.observe({ model }, s),
    onFirstContent: (s: number) => m.ttft.observe({ model }, s),
    onVerdict: (result: string) => m.proofs.inc({ result }),
  }
  const controller = new AbortController()
  m.reservationsOpen.inc()
  try {
    if (prepared.stream) {
      m.streamsInFlight.inc()
      const open = app.openStreams
      open.add(controller)
      try {
        return await streamAnswer(app, req, reply, prepared, r, payer, controller, deps)
      } finally { m.streamsInFlight.dec(); open.delete(controller) }
    }
    const out = await forwardNonStream(deps, prepared, r, controller.signal)
    recordUsage(app, model, out.charged, out.usage)
    m.overhead.observe(Math.max(0, performance.now() - startedAt - out.upstreamMs) / 1000)
    await app.ledger.updateReceipt(requestId, {
      status: 'completed', promptTokens: out.usage.promptTokens, completionTokens: out.usage.completionTokens,
      chargedAmount: out.charged, upstreamCost: out.costUsd ?? null, verified: true, proof: out.proof as never, completedAt: app.clock(),
    })
    const headers: Record<string, string> = {
      'content-type': 'application/json; charset=utf-8',
      'x-opengradient-verified': 'true',
      'x-opengradient-tee-id': String(out.verdict.teeId ?? out.proof.tee_id),
      'x-tee-signature': String(out.proof.tee_signature),
      'x-tee-request-hash': String(out.proof.tee_request_hash),
      'x-tee-output-hash': String(out.proof.tee_output_hash),
      'x-tee-timestamp': String(out.proof.tee_timestamp),
      'x-credits-charged': formatLedger(out.charged),
      'x-credits-balance': formatLedger(out.balance),
      'x-original-request-id': requestId,
    }
    reply.headers(paymentResponseHeaders(payer.payment)).headers(headers).send(out.bodyText)
    return { status: 200, headers, body: out.bodyText }
  } catch (err) {
    const g = err instanceof GatewayError ? err : new GatewayError('INTERNAL')
    await app.ledger.updateReceipt(requestId, {
      status: 'failed', errorCode: g.code, verified: g.code === 'PROOF_UNVERIFIED' ? false : null,
      verifyError: g.code === 'PROOF_UNVERIFIED' ? String(g.metadata.reason ?? '') : null, completedAt: app.clock(),
    }).catch((e: unknown) => req.log.error({ err: e }, 'receipt update failed'))
    if (!reply.sent) reply.headers(paymentResponseHeaders(payer.payment))
    throw err
  } finally {
    m.reservationsOpen.dec()
  }
}

function recordUsage (app: FastifyInstance, model: string, charged: bigint, usage?: { promptTokens: number, completionTokens: number }) {
  app.metrics.debits.inc(toAsset(charged))
  if (usage) {
    app.metrics.tokens.inc({ model, direction: 'in' }, usage.promptTokens)
    app.metrics.tokens.inc({ model, direction: 'out' }, usage.completionTokens)
  }
}

async function streamAnswer (app: FastifyInstance, req: FastifyRequest, reply: FastifyReply, prepared: PreparedChat, r: Reservation,
  payer: Payer, controller: AbortController, deps: Parameters<typeof forwardStream>[0]): Promise<StoredResponse | undefined> {
  const raw = reply.raw
  let closed = false
  let started = false
  let ended = false
  const sent: string[] = []
  raw.on('close', () => {
    if (!raw.writableFinished) { closed = true; controller.abort() }
  })
  const sink: StreamSink = {
    start (headers) {
      reply.hijack()
      started = true
      raw.writeHead(200, { ...headers, 'x-request-id': req.id })
      raw.flushHeaders()
    },
    async write (chunk) {
      if (closed) return
      sent.push(chunk)
      if (!raw.write(chunk)) await Promise.race([once(raw, 'drain'), once(raw, 'close')])
    },
    // The response is finished only after the receipt is written (below): a draining replica
    // waits for open responses, so the receipt cannot be lost to the shutdown. After a client
    // disconnect the response never finishes; destroy it so the socket does not linger.
    end () { ended = true; if (closed) raw.destroy() },
    get closed () { return closed },
  }
  const finish = () => { if (!closed && !raw.writableEnded) raw.end() }
  let out: Awaited<ReturnType<typeof forwardStream>>
  try {
    out = await forwardStream(deps, prepared, r, sink, paymentResponseHeaders(payer.payment), controller)
  } catch (err) {
    // Before the head went out, the route's error handling answers with a JSON error as usual.
    if (!started) throw err
    // After it (a ledger call failed at the end of the stream): the stream still ends, with an
    // error frame and [DONE]. An unposted reservation is released by the expiry sweep, so the
    // client is not charged for it.
    const g = err instanceof GatewayError ? err : toGatewayError(err as Error)
    req.log.error({ err }, 'stream failed after its head was sent')
    if (!closed && !ended) {
      raw.write(`data: ${JSON.stringify({ ...g.toBody(), x402_gateway: { request_id: req.id, verified: false, charged: '0' } })}\n\n`)
      raw.write('data: [DONE]\n\n')
    }
    await app.ledger.updateReceipt(req.id, { status: 'failed', errorCode: g.code, completedAt: app.clock() })
      .catch((e: unknown) => req.log.error({ err: e }, 'receipt update failed'))
    finish()
    return undefined
  }
  try {
    recordUsage(app, prepared.model, out.charged, out.usage)
    await app.ledger.updateReceipt(req.id, {
      status: out.outcome === 'completed' || out.outcome === 'client_disconnected' ? 'completed' : 'failed',
      promptTokens: out.usage?.promptTokens ?? 0, completionTokens: out.usage?.completionTokens ?? 0,
      chargedAmount: out.charged, upstreamCost: out.costUsd ?? null, verified: out.verdict.verified,
      verifyError: out.verdict.verified ? null : (out.verdict.step ?? out.verdict.reason ?? null),
      proof: (out.proof ?? null) as never, errorCode: out.outcome === 'completed' ? null : out.outcome.toUpperCase(), completedAt: app.clock(),
    })
  } catch (err) {
    // The money is already right (posted or voided); only the receipt could not be written.
    req.log.error({ err }, 'receipt update failed after the stream')
    finish()
    return undefined
  }
  finish()
  if (out.outcome !== 'completed') return undefined
  return { status: 200, headers: { 'content-type': 'text/event-stream; charset=utf-8', 'x-original-request-id': req.id }, body: sent.join('') }
}
