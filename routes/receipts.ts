import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { formatLedger } from '../src/money.ts'
import { adminTokenMatches, bearerOf } from '../src/auth/admin.ts'
import type { LedgerStore, Receipt } from '../src/ledger/types.ts'
import { upstreamCostId } from '../src/chat/charge.ts'

/**
 * What the gateway paid the enclave for this request, from the ledger (the upstream_cost transfer,
 * the reported cost_usd rounded up to a ledger unit); null when the enclave reported no cost.
 */
export async function upstreamCostOf (ledger: LedgerStore, requestId: string): Promise<bigint | null> {
  const t = await ledger.getTransfer(upstreamCostId(requestId))
  return t && t.kind === 'upstream_cost' ? t.amount : null
}

/**
 * charged, upstream_cost and margin (= charged − upstream_cost, negative when the request lost
 * money, e.g. an unverified answer the enclave still billed) are ledger amounts in asset units;
 * upstream_cost_usd is the enclave's report verbatim.
 */
export function receiptView (r: Receipt, upstreamCost: bigint | null = null) {
  return {
    id: r.id,
    payer: r.payer,
    model: r.model,
    stream: r.stream,
    status: r.status,
    usage: { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens },
    reserved: formatLedger(r.reservedAmount),
    charged: formatLedger(r.chargedAmount),
    upstream_cost: upstreamCost === null ? null : formatLedger(upstreamCost),
    margin: formatLedger(r.chargedAmount - (upstreamCost ?? 0n)),
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
    return receiptView(r, await upstreamCostOf(app.ledger, r.id))
  })

  app.get<{ Querystring: { limit?: string } }>('/v1/receipts', async (req) => {
    const who = await app.requirePayer(req)
    const limit = Math.min(Math.max(Number(req.query.limit) || 50, 1), 500)
    const receipts = await app.ledger.receipts(who.account, { limit })
    const costs = await Promise.all(receipts.map((r) => upstreamCostOf(app.ledger, r.id)))
    return { object: 'list', data: receipts.map((r, i) => receiptView(r, costs[i])) }
  })
}
