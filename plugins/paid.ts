import fp from 'fastify-plugin'
import { randomBytes } from 'node:crypto'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { encodePaymentRequiredHeader, encodePaymentResponseHeader } from '@x402/core/http'
import { GatewayError } from '../src/errors.ts'
import { formatDecimal, ledgerToAtomicCeil } from '../src/money.ts'
import { buildPaymentRequired } from '../src/x402/requirements.ts'
import type { AcceptedPayment } from '../src/x402/payments.ts'
import { PAYMENT_IDENTIFIER, declarePaymentIdentifierExtension } from '@x402/extensions/payment-identifier'
import { siwxDeclaration } from '../src/auth/siwx.ts'
import { originOf, type Identity } from './auth.ts'

export interface Payer {
  account: string
  /** Set when a payment settled on this request. */
  payment?: AcceptedPayment
  identity?: Identity
  /** The request re-sent an already settled payment (idempotent retry): only a stored result may answer it. */
  replayedPayment?: boolean
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * The payer of a paid route: a payment header (verified, claimed, settled, deposited), else
     * SIWX or an API key. Undefined when nothing was presented. A refused payment throws a 402 error.
     */
    payerOf (req: FastifyRequest, opts: { minAtomic: bigint, description: string, idempotent?: boolean }): Promise<Payer | undefined>
    /** Sends the 402: challenge in PAYMENT-REQUIRED, same JSON in the body (OpenAI envelope for API-key callers). */
    sendPaymentRequired (req: FastifyRequest, reply: FastifyReply, opts: { amountAtomic: bigint, description: string, err: GatewayError, payer?: Payer }): FastifyReply
    /** The topup offered for a request that needs `reservation` ledger units. */
    offerFor (reservation: bigint): bigint
  }
}

export function resourceUrl (req: FastifyRequest): string {
  // Only the path: an absolute-form request target (POST http://elsewhere/v1/...) must neither
  // break the URL nor name another origin in the challenge.
  let path: string
  try {
    path = new URL(req.url, 'http://gateway.invalid').pathname
  } catch {
    path = req.routeOptions.url ?? '/'
  }
  return `${originOf(req)}${path}`
}

export function paymentResponseHeaders (p: AcceptedPayment | undefined): Record<string, string> {
  if (!p) return {}
  // Optimistic mode: nothing has settled yet, so there is no receipt to give; say so instead.
  if (p.pending) return { 'x-payment-status': 'pending' }
  const value = encodePaymentResponseHeader(p.settle)
  return p.version === 2 ? { 'payment-response': value } : { 'x-payment-response': value }
}

export default fp(async function paidPlugin (app: FastifyInstance) {
  const { config } = app

  app.decorate('offerFor', (reservation: bigint) => {
    const needed = ledgerToAtomicCeil(reservation, config.x402.assetDecimals)
    return needed > config.x402.topupAtomic ? needed : config.x402.topupAtomic
  })

  app.decorate('payerOf', async (req: FastifyRequest, opts: { minAtomic: bigint, description: string, idempotent?: boolean }): Promise<Payer | undefined> => {
    const sig = req.headers['payment-signature']
    const xPayment = req.headers['x-payment']
    if (typeof sig === 'string' || typeof xPayment === 'string') {
      const header = (sig ?? xPayment) as string
      const name = typeof sig === 'string' ? 'payment-signature' : 'x-payment'
      const ctx = { minAtomic: opts.minAtomic, resourceUrl: resourceUrl(req), description: opts.description }
      try {
        const payment = await app.payments.accept(header, name, { ...ctx, requestId: req.id })
        return { account: payment.account, payment }
      } catch (err) {
        // An idempotent retry may re-send the payment of its first attempt; it may read that
        // attempt's stored result (the route enforces "stored result only"), never be served anew.
        const retried = err instanceof GatewayError && err.code === 'PAYMENT_ALREADY_USED' && opts.idempotent
          ? await app.payments.settledPayerOf(header, name, ctx)
          : undefined
        if (!retried) throw err
        return { account: retried, replayedPayment: true }
      }
    }
    try {
      const identity = await app.identify(req)
      if (identity && config.payerRateLimitPerMinute > 0 && await app.shared.hit(`payer:${identity.account}`, 60_000) > config.payerRateLimitPerMinute) {
        throw new GatewayError('RATE_LIMITED', { scope: 'payer', limit: config.payerRateLimitPerMinute })
      }
      return identity ? { account: identity.account, identity } : undefined
    } catch (err) {
      // On a paid route a refused sign-in must be a 402: that is what makes an x402 client fall
      // back to paying, where a 401 would reach the user as an error.
      if (err instanceof GatewayError && err.metadata.siwx === true) {
        throw new GatewayError('PAYMENT_REQUIRED', { reason: String(err.metadata.reason) })
      }
      throw err
    }
  })

  app.decorate('sendPaymentRequired', (req: FastifyRequest, reply: FastifyReply, opts: { amountAtomic: bigint, description: string, err: GatewayError, payer?: Payer }) => {
    const reason = typeof opts.err.metadata.reason === 'string' ? opts.err.metadata.reason : opts.err.code.toLowerCase()
    const challenge = buildPaymentRequired({
      cfg: config.x402,
      amountAtomic: opts.amountAtomic,
      resourceUrl: resourceUrl(req),
      description: opts.description,
      error: reason,
      extensions: {
        // Every 402 invites a wallet to sign in next time instead of paying again (needs PUBLIC_URL).
        ...(config.publicUrl
          ? siwxDeclaration({ origin: config.publicUrl, resourceUrl: resourceUrl(req), network: config.x402.network, nonce: randomBytes(16).toString('hex'), nowMs: app.clock() })
          : {}),
        // Optional: a client that sends an id gets a retry answered from the stored result.
        ...{ [PAYMENT_IDENTIFIER]: declarePaymentIdentifierExtension(false) },
      },
    })
    reply.code(402)
      .header('cache-control', 'no-store')
      .header('payment-required', encodePaymentRequiredHeader(challenge))
      .headers(paymentResponseHeaders(opts.payer?.payment))
    if (opts.payer?.identity?.method === 'api_key') {
      // OpenAI SDKs read error.message: tell a human where and how to top up.
      const topupUrl = `${originOf(req)}/v1/credits/topup?amount=${formatDecimal(opts.amountAtomic, config.x402.assetDecimals)}`
      const body = opts.err.toBody()
      body.error.message = `${opts.err.message} Top up with an x402 payment at POST ${topupUrl} (any x402 client pays it), then retry.`
      body.error.metadata = { ...body.error.metadata, topup_url: topupUrl }
      return reply.send(body)
    }
    return reply.send({ ...challenge, code: opts.err.code.toLowerCase(), message: opts.err.message, remedy: opts.err.remedy, metadata: opts.err.metadata })
  })
}, { name: 'paid', dependencies: ['core', 'auth'] })
