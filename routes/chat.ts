import { once } from 'node:events'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { encodePaymentRequiredHeader, encodePaymentResponseHeader } from '@x402/core/http'
import { GatewayError } from '../src/errors.ts'
import { formatLedger, ledgerToAtomicCeil } from '../src/money.ts'
import { prepareChat, type PreparedChat } from '../src/chat/prepare.ts'
import { reserveFor, type Reservation } from '../src/chat/charge.ts'
import { forwardNonStream, forwardStream, type StreamSink } from '../src/chat/forward.ts'
import { buildPaymentRequired } from '../src/x402/requirements.ts'
import type { AcceptedPayment } from '../src/x402/payments.ts'

const DESCRIPTION = 'Verified (TEE) chat completion; the payment becomes credit, each request spends what it used'

function resourceUrl (req: FastifyRequest): string {
  return `${req.protocol}://${req.host}${req.url.split('?')[0]}`
}

/** A 402 always carries the challenge in the header (v2) and the same JSON in the body (v1). */
function sendPaymentRequired (app: FastifyInstance, req: FastifyRequest, reply: FastifyReply, prepared: PreparedChat, err: GatewayError) {
  const amountAtomic = [app.config.x402.topupAtomic, ledgerToAtomicCeil(prepared.reservation, app.config.x402.assetDecimals)]
    .reduce((a, b) => (a > b ? a : b))
  const reason = typeof err.metadata.reason === 'string' ? err.metadata.reason : err.code.toLowerCase()
  const challenge = buildPaymentRequired({ cfg: app.config.x402, amountAtomic, resourceUrl: resourceUrl(req), description: DESCRIPTION, error: reason })
  return reply.code(402)
    .header('cache-control', 'no-store')
    .header('payment-required', encodePaymentRequiredHeader(challenge))
    .send({ ...challenge, code: err.code.toLowerCase(), message: err.message, remedy: err.remedy, metadata: err.metadata })
}

function paymentResponseHeaders (p: AcceptedPayment | undefined): Record<string, string> {
  if (!p) return {}
  const value = encodePaymentResponseHeader(p.settle)
  return p.version === 2 ? { 'payment-response': value } : { 'x-payment-response': value }
}

export default async function chatRoutes (app: FastifyInstance) {
  const { config } = app

  app.post('/v1/chat/completions', { bodyLimit: config.limits.bodyBytes }, async (req, reply) => {
    const prepared = prepareChat(req.body, app.prices, config.limits)
    const requestId = req.id

    let payment: AcceptedPayment | undefined
    let account: string | undefined
    const sig = req.headers['payment-signature']
    const xPayment = req.headers['x-payment']
    try {
      if (typeof sig === 'string' || typeof xPayment === 'string') {
        payment = await app.payments.accept((sig ?? xPayment) as string, typeof sig === 'string' ? 'payment-signature' : 'x-payment', {
          minAtomic: ledgerToAtomicCeil(prepared.reservation, config.x402.assetDecimals),
          resourceUrl: resourceUrl(req),
          description: DESCRIPTION,
          requestId,
        })
        account = payment.account
      }
    } catch (err) {
      if (err instanceof GatewayError && err.status === 402) return sendPaymentRequired(app, req, reply, prepared, err)
      throw err
    }
    if (!account) return sendPaymentRequired(app, req, reply, prepared, new GatewayError('PAYMENT_REQUIRED', { reason: 'payment_required' }))

    const reserved = await reserveFor(app.ledger, account, prepared, requestId, app.clock() + config.limits.reservationTimeoutMs)
    if (!reserved.ok) {
      reply.headers(paymentResponseHeaders(payment))
      return sendPaymentRequired(app, req, reply, prepared, new GatewayError('INSUFFICIENT_CREDIT', {
        reason: 'insufficient_credit', needed: formatLedger(prepared.reservation), available: formatLedger(reserved.available),
      }))
    }
    const r = reserved.reservation
    await app.ledger.putReceipt({
      id: requestId, payer: account, model: prepared.model, stream: prepared.stream, status: 'pending',
      promptTokens: 0, completionTokens: 0, reservedAmount: r.amount, chargedAmount: 0n, upstreamCost: null,
      verified: null, verifyError: null, proof: null, paymentTx: payment?.settle.transaction ?? null, errorCode: null,
      createdAt: app.clock(), completedAt: null,
    })

    const deps = { ledger: app.ledger, upstream: app.upstream, teePublicKeyPem: app.upstream.target.publicKeyPem, log: req.log }
    const controller = new AbortController()
    try {
      if (prepared.stream) return await streamAnswer(app, req, reply, prepared, r, payment, controller, deps)
      const out = await forwardNonStream(deps, prepared, r, controller.signal)
      await app.ledger.updateReceipt(requestId, {
        status: 'completed', promptTokens: out.usage.promptTokens, completionTokens: out.usage.completionTokens,
        chargedAmount: out.charged, upstreamCost: out.costUsd ?? null, verified: true, proof: out.proof as never, completedAt: app.clock(),
      })
      return reply
        .headers(paymentResponseHeaders(payment))
        .header('content-type', 'application/json; charset=utf-8')
        .header('x-opengradient-verified', 'true')
        .header('x-opengradient-tee-id', String(out.verdict.teeId ?? out.proof.tee_id))
        .header('x-tee-signature', String(out.proof.tee_signature))
        .header('x-tee-request-hash', String(out.proof.tee_request_hash))
        .header('x-tee-output-hash', String(out.proof.tee_output_hash))
        .header('x-tee-timestamp', String(out.proof.tee_timestamp))
        .header('x-credits-charged', formatLedger(out.charged))
        .header('x-credits-balance', formatLedger(out.balance))
        .send(out.bodyText)
    } catch (err) {
      const g = err instanceof GatewayError ? err : new GatewayError('INTERNAL')
      await app.ledger.updateReceipt(requestId, {
        status: 'failed', errorCode: g.code, verified: g.code === 'PROOF_UNVERIFIED' ? false : null,
        verifyError: g.code === 'PROOF_UNVERIFIED' ? String(g.metadata.reason ?? '') : null, completedAt: app.clock(),
      }).catch((e) => req.log.error({ err: e }, 'receipt update failed'))
      if (!reply.sent) reply.headers(paymentResponseHeaders(payment))
      throw err
    }
  })
}

async function streamAnswer (app: FastifyInstance, req: FastifyRequest, reply: FastifyReply, prepared: PreparedChat, r: Reservation,
  payment: AcceptedPayment | undefined, controller: AbortController, deps: Parameters<typeof forwardStream>[0]) {
  const raw = reply.raw
  let closed = false
  raw.on('close', () => {
    if (!raw.writableFinished) { closed = true; controller.abort() }
  })
  const sink: StreamSink = {
    start (headers) {
      reply.hijack()
      raw.writeHead(200, { ...headers, 'x-request-id': req.id })
      raw.flushHeaders()
    },
    async write (chunk) {
      if (closed) return
      if (!raw.write(chunk)) await Promise.race([once(raw, 'drain'), once(raw, 'close')])
    },
    end () { if (!closed) raw.end() },
    get closed () { return closed },
  }
  const out = await forwardStream(deps, prepared, r, sink, paymentResponseHeaders(payment), controller)
  await app.ledger.updateReceipt(req.id, {
    status: out.outcome === 'completed' || out.outcome === 'client_disconnected' ? 'completed' : 'failed',
    promptTokens: out.usage?.promptTokens ?? 0, completionTokens: out.usage?.completionTokens ?? 0,
    chargedAmount: out.charged, upstreamCost: out.costUsd ?? null, verified: out.verdict.verified,
    verifyError: out.verdict.verified ? null : (out.verdict.step ?? out.verdict.reason ?? null),
    proof: (out.proof ?? null) as never, errorCode: out.outcome === 'completed' ? null : out.outcome.toUpperCase(), completedAt: app.clock(),
  })
  return reply
}
