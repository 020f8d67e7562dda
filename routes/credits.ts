import type { FastifyInstance } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { formatDecimal, formatLedger, parseDecimal } from '../src/money.ts'
import { paymentResponseHeaders } from '../plugins/paid.ts'
import { payerReadSchema, topupSchema } from './schemas.ts'

const DESCRIPTION = 'Credit top-up for verified inference; the whole payment becomes spendable credit'
const DAY = 86_400_000

export default async function creditRoutes (app: FastifyInstance) {
  const { config } = app
  const decimals = config.x402.assetDecimals

  app.post<{ Querystring: { amount?: string } }>('/v1/credits/topup', { schema: topupSchema }, async (req, reply) => {
    const raw = req.query.amount ?? formatDecimal(config.x402.topupAtomic, decimals)
    let amount: bigint
    try { amount = parseDecimal(String(raw), decimals) } catch { amount = -1n }
    const min = 10n ** BigInt(Math.max(0, decimals - 2)) // 0.01 of the asset
    if (amount < min || amount > config.x402.topupMaxAtomic) {
      throw new GatewayError('TOPUP_AMOUNT_INVALID', { min: formatDecimal(min, decimals), max: formatDecimal(config.x402.topupMaxAtomic, decimals) })
    }
    let payer
    try {
      // A top-up is always a payment: SIWX or a key identify a payer but pay nothing.
      if (req.headers['payment-signature'] || req.headers['x-payment']) payer = await app.payerOf(req, { minAtomic: amount, description: DESCRIPTION })
    } catch (err) {
      if (err instanceof GatewayError && err.status === 402) return app.sendPaymentRequired(req, reply, { amountAtomic: amount, description: DESCRIPTION, err })
      throw err
    }
    if (!payer?.payment) {
      return app.sendPaymentRequired(req, reply, { amountAtomic: amount, description: DESCRIPTION, err: new GatewayError('PAYMENT_REQUIRED', { reason: 'payment_required' }) })
    }
    const balance = await app.ledger.balance(payer.account)
    return reply.headers(paymentResponseHeaders(payer.payment)).send({
      account: payer.account,
      deposited: formatLedger(payer.payment.depositedUnits),
      balance: formatLedger(balance.available),
      transaction: payer.payment.settle.transaction,
    })
  })

  app.get('/v1/credits', { schema: payerReadSchema('Balance, open reservations and recent transfers', 'credits') }, async (req) => {
    const who = await app.requirePayer(req)
    const [balance, pending, transfers] = await Promise.all([
      app.ledger.balance(who.account),
      app.ledger.pendingReservations(who.account),
      app.ledger.transfers(who.account, { limit: 20 }),
    ])
    return {
      account: who.account,
      asset: { network: config.x402.network, address: config.x402.asset, symbol: config.x402.assetName },
      balance: formatLedger(balance.available),
      deposited: formatLedger(balance.creditsPosted),
      spent: formatLedger(balance.debitsPosted),
      reserved: formatLedger(balance.debitsPending),
      pending_reservations: pending.map((p) => ({ id: p.id, amount: formatLedger(p.amount), request_id: p.reference, expires_at: p.timeoutAt ? new Date(p.timeoutAt).toISOString() : null })),
      recent_transfers: transfers.map((t) => ({
        id: t.id,
        kind: t.kind,
        amount: formatLedger(t.amount),
        direction: t.creditAccount === who.account ? 'in' : 'out',
        reference: t.reference,
        at: new Date(t.createdAt).toISOString(),
      })),
    }
  })

  app.get<{ Querystring: { from?: string, to?: string, format?: string } }>('/v1/usage', { schema: payerReadSchema('Per-day usage (JSON, or CSV with format=csv)', 'credits') }, async (req, reply) => {
    const who = await app.requirePayer(req)
    const { fromMs, toMs } = usageWindow(req.query, app.clock())
    const rows = await app.ledger.usageByDay(who.account, { fromMs, toMs })
    const out = rows.map((r) => ({
      day: r.day,
      requests: r.requests,
      verified_requests: r.verifiedRequests,
      share_verified: r.requests === 0 ? 0 : Number((r.verifiedRequests / r.requests).toFixed(4)),
      prompt_tokens: r.promptTokens,
      completion_tokens: r.completionTokens,
      credit_spent: formatLedger(r.charged),
    }))
    if (req.query.format === 'csv' || (req.headers.accept ?? '').includes('text/csv')) {
      const header = 'day,requests,verified_requests,share_verified,prompt_tokens,completion_tokens,credit_spent'
      const lines = out.map((r) => [r.day, r.requests, r.verified_requests, r.share_verified, r.prompt_tokens, r.completion_tokens, r.credit_spent].join(','))
      return reply.header('content-type', 'text/csv; charset=utf-8').send([header, ...lines].join('\n') + '\n')
    }
    return { account: who.account, from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString(), data: out }
  })
}

export function usageWindow (q: { from?: string, to?: string }, now: number): { fromMs: number, toMs: number } {
  const parse = (v: string | undefined, def: number) => {
    if (v === undefined) return def
    const ms = /^\d{4}-\d{2}-\d{2}$/.test(v) ? Date.parse(v + 'T00:00:00Z') : NaN
    if (Number.isNaN(ms)) throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_date', detail: 'from/to must be YYYY-MM-DD' }, 'from and to must be dates (YYYY-MM-DD).')
    return ms
  }
  const toMs = parse(q.to, now) + (q.to ? DAY : 0)
  const fromMs = parse(q.from, toMs - 30 * DAY)
  if (fromMs > toMs || toMs - fromMs > 366 * DAY) throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_window' }, 'The window must be at most 366 days, from before to.')
  return { fromMs, toMs }
}
