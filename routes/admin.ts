import type { FastifyInstance } from 'fastify'
import { randomUUID } from 'node:crypto'
import { z } from 'zod'
import { GatewayError } from '../src/errors.ts'
import { formatLedger, parseDecimal } from '../src/money.ts'
import { adminTokenMatches, bearerOf } from '../src/auth/admin.ts'
import { isPayerAccount } from '../src/ledger/accounts.ts'
import { usageWindow } from './credits.ts'

const adjustSchema = z.object({
  amount: z.string().regex(/^\d{1,12}(\.\d{1,9})?$/, 'a decimal amount in asset units'),
  reason: z.string().min(3).max(200),
  // Caller-chosen id makes a retried grant idempotent.
  id: z.string().regex(/^[A-Za-z0-9_.:-]{8,100}$/).optional(),
}).strict()

// Operator routes, encapsulated under /admin. Without ADMIN_TOKEN they do not exist at all.
export default async function adminRoutes (app: FastifyInstance) {
  if (!app.config.adminToken) return
  app.addHook('onRequest', async (req) => {
    if (!adminTokenMatches(bearerOf(req.headers.authorization), app.config.adminToken)) {
      throw new GatewayError('UNAUTHORIZED', { reason: 'admin_token_required' })
    }
  })

  const account = (raw: string) => {
    // The router has decoded the param once; a second decoding tolerates double-encoded ids,
    // and anything it cannot decode is simply not an account.
    let a: string
    try {
      a = decodeURIComponent(raw).toLowerCase()
    } catch {
      a = raw.toLowerCase()
    }
    if (!isPayerAccount(a)) throw new GatewayError('NOT_FOUND', { reason: 'no_such_account' }, 'Accounts are CAIP-10: eip155:<chainId>:<address>.')
    return a
  }

  app.get<{ Querystring: { limit?: string, offset?: string } }>('/accounts', async (req) => {
    const limit = Math.min(Math.max(Number(req.query.limit) || 100, 1), 1000)
    const offset = Math.max(Number(req.query.offset) || 0, 0)
    const rows = await app.ledger.accounts({ limit, offset })
    return { data: rows.map((b) => ({ account: b.account, balance: formatLedger(b.available), deposited: formatLedger(b.creditsPosted), spent: formatLedger(b.debitsPosted), reserved: formatLedger(b.debitsPending) })) }
  })

  app.get<{ Params: { account: string } }>('/accounts/:account', async (req) => {
    const a = account(req.params.account)
    const [b, transfers, block] = await Promise.all([app.ledger.balance(a), app.ledger.transfers(a, { limit: 100 }), app.ledger.accountBlock(a)])
    return {
      account: a,
      balance: formatLedger(b.available),
      deposited: formatLedger(b.creditsPosted),
      spent: formatLedger(b.debitsPosted),
      reserved: formatLedger(b.debitsPending),
      blocked: block ? { reason: block.reason, since: new Date(block.since).toISOString() } : null,
      transfers: transfers.map((t) => ({ id: t.id, kind: t.kind, debit: t.debitAccount, credit: t.creditAccount, amount: formatLedger(t.amount), reference: t.reference, meta: t.meta, at: new Date(t.createdAt).toISOString() })),
    }
  })

  for (const op of ['grant', 'clawback'] as const) {
    app.post<{ Params: { account: string } }>(`/accounts/:account/${op}`, async (req, reply) => {
      const a = account(req.params.account)
      const parsed = adjustSchema.safeParse(req.body)
      if (!parsed.success) throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_field', detail: parsed.error.issues[0]?.message })
      const amount = parseDecimal(parsed.data.amount, 9)
      if (amount <= 0n) throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_amount' }, 'amount must be greater than zero.')
      const id = parsed.data.id ?? `${op}:${randomUUID()}`
      try {
        const r = await app.ledger[op]({ id, account: a, amount, reason: parsed.data.reason })
        req.log.info({ op, account: a, amount: amount.toString(), id }, 'admin credit adjustment')
        const b = await app.ledger.balance(a)
        return reply.code(r.duplicate ? 200 : 201).send({ id: r.transfer.id, kind: r.transfer.kind, amount: formatLedger(r.transfer.amount), duplicate: r.duplicate, balance: formatLedger(b.available) })
      } catch (err) {
        const code = (err as { code?: string }).code
        if (code === 'LEDGER_INSUFFICIENT_CREDIT') throw new GatewayError('INSUFFICIENT_CREDIT', { reason: 'clawback_exceeds_balance' }, 'The clawback exceeds the account\'s available credit.')
        if (code === 'LEDGER_TRANSFER_ID_CONFLICT') throw new GatewayError('IDEMPOTENCY_CONFLICT', { reason: 'transfer_id_conflict' })
        throw err
      }
    })
  }

  app.post<{ Params: { account: string } }>('/accounts/:account/unblock', async (req) => {
    const a = account(req.params.account)
    await app.ledger.unblockAccount(a)
    req.log.info({ account: a }, 'admin unblocked account')
    return { account: a, blocked: null }
  })

  // Margin from the ledger: revenue is what was posted to system:revenue (charges), upstream cost
  // what went on to system:upstream_cost, margin the difference; per model (the receipt's) and in total.
  app.get<{ Querystring: { from?: string, to?: string, format?: string } }>('/margin', async (req, reply) => {
    const { fromMs, toMs } = usageWindow(req.query, app.clock())
    const rows = await app.ledger.margin({ fromMs, toMs })
    const view = (r: { requests: number, revenue: bigint, upstreamCost: bigint }) => ({
      requests: r.requests, revenue: formatLedger(r.revenue), upstream_cost: formatLedger(r.upstreamCost), margin: formatLedger(r.revenue - r.upstreamCost),
    })
    const models = rows.map((r) => ({ model: r.model, ...view(r) }))
    if (req.query.format === 'csv') {
      const lines = models.map((m) => [m.model ?? '', m.requests, m.revenue, m.upstream_cost, m.margin].join(','))
      return reply.header('content-type', 'text/csv; charset=utf-8').send(['model,requests,revenue,upstream_cost,margin', ...lines].join('\n') + '\n')
    }
    const total = rows.reduce((a, r) => ({ requests: a.requests + r.requests, revenue: a.revenue + r.revenue, upstreamCost: a.upstreamCost + r.upstreamCost }),
      { requests: 0, revenue: 0n, upstreamCost: 0n })
    return { from: new Date(fromMs).toISOString(), to: new Date(toMs).toISOString(), total: view(total), models }
  })

  app.get<{ Querystring: { from?: string, to?: string, format?: string } }>('/usage', async (req, reply) => {
    const { fromMs, toMs } = usageWindow(req.query, app.clock())
    const rows = await app.ledger.usageAll({ fromMs, toMs })
    if (req.query.format === 'csv') {
      const lines = rows.map((r) => [r.day, r.payer, r.requests, r.verifiedRequests, r.promptTokens, r.completionTokens, formatLedger(r.charged)].join(','))
      return reply.header('content-type', 'text/csv; charset=utf-8').send(['day,payer,requests,verified_requests,prompt_tokens,completion_tokens,credit_spent', ...lines].join('\n') + '\n')
    }
    return { data: rows.map((r) => ({ day: r.day, payer: r.payer, requests: r.requests, verified_requests: r.verifiedRequests, prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, credit_spent: formatLedger(r.charged) })) }
  })
}
