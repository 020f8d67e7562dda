import type { FastifyInstance } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { formatLedger } from '../src/money.ts'
import { adminTokenMatches, bearerOf } from '../src/auth/admin.ts'

export default async function receiptRoutes (app: FastifyInstance) {
  app.get<{ Params: { id: string } }>('/v1/receipts/:id', async (req, reply) => {
    // Until payers can authenticate (SIWX, API keys), only the operator's admin token reads receipts.
    if (!adminTokenMatches(bearerOf(req.headers.authorization), app.config.adminToken)) {
      throw new GatewayError('UNAUTHORIZED', { reason: 'admin_token_required' })
    }
    const id = req.params.id
    if (id.length > 128) throw new GatewayError('NOT_FOUND', { reason: 'no_such_receipt' })
    const r = await app.ledger.getReceipt(id)
    if (!r) throw new GatewayError('NOT_FOUND', { reason: 'no_such_receipt' })
    return reply.send({
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
    })
  })
}
