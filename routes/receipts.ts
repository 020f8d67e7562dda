import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { formatLedger } from '../src/money.ts'
import { adminTokenMatches, bearerOf } from '../src/auth/admin.ts'
import type { Receipt } from '../src/ledger/types.ts'

export function receiptView (r: Receipt) {
  return {
    id: r.id,
    payer: r.payer,
    model: r.model,
    stream: r.stream,
    status: r.status,
    usage: { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens },
    reserved: formatLedger(r.reservedAmount),
    charged: formatLedger(r.chargedAmount),
    upstream_cost_usd: r.upstreamCost,
    verified: r.verified,
    verify_error: r.verifyError,
    proof: r.proof,
    payment_transaction: r.paymentTx,
    error_code: r.errorCode,
    created_at: new Date(r.createdAt).toISOString(),
    completed_at: r.completedAt ? new Date(r.completedAt).toISOString() : null,
  }
}

export default async function receiptRoutes (app: FastifyInstance) {
  const isAdmin = (req: FastifyRequest) => adminTokenMatches(bearerOf(req.headers.authorization), app.config.adminToken)

  app.get<{ Params: { id: string } }>('/v1/receipts/:id', async (req) => {
    const admin = isAdmin(req)
    const who = admin ? undefined : await app.requirePayer(req)
    const r = req.params.id.length > 0 && req.params.id.length <= 128 ? await app.ledger.getReceipt(req.params.id) : null
    // Another payer's receipt is indistinguishable from a missing one (no BOLA, no id probing).
    if (!r || (!admin && r.payer !== who!.account)) throw new GatewayError('NOT_FOUND', { reason: 'no_such_receipt' })
    return receiptView(r)
  })

  app.get<{ Querystring: { limit?: string } }>('/v1/receipts', async (req) => {
    const who = await app.requirePayer(req)
    const limit = Math.min(Math.max(Number(req.query.limit) || 50, 1), 500)
    return { object: 'list', data: (await app.ledger.receipts(who.account, { limit })).map(receiptView) }
  })
}
