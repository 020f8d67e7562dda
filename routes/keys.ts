import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { GatewayError } from '../src/errors.ts'
import { generateApiKey } from '../src/auth/keys.ts'
import { paymentResponseHeaders } from '../plugins/paid.ts'
import { keyCreateSchema, payerReadSchema } from './schemas.ts'

const MAX_KEYS_PER_ACCOUNT = 20
const createSchema = z.object({ name: z.string().min(1).max(64).optional() }).strict()

function view (k: { id: string, name: string | null, prefix: string, createdAt: number, revokedAt: number | null, lastUsedAt: number | null }) {
  return {
    id: k.id,
    name: k.name,
    prefix: k.prefix,
    created_at: new Date(k.createdAt).toISOString(),
    revoked_at: k.revokedAt ? new Date(k.revokedAt).toISOString() : null,
    last_used_at: k.lastUsedAt ? new Date(k.lastUsedAt).toISOString() : null,
  }
}

// A payer signed in with SIWX (or holding a key) manages the keys that spend its credit.
export default async function keyRoutes (app: FastifyInstance) {
  // Without credentials the route answers 402 for a top-up: an x402 client pays it and gets a key
  // and that much credit in one step ("an API key bought with x402").
  app.post('/v1/keys', { schema: keyCreateSchema }, async (req, reply) => {
    const description = 'API key for OpenAI-compatible clients, with the payment as its first credit'
    // The body is judged before any payment is taken: a bad body must not cost the payer anything.
    const parsed = createSchema.safeParse(req.body ?? {})
    if (!parsed.success) throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_field', detail: parsed.error.issues[0]?.message })
    let payer
    try {
      payer = await app.payerOf(req, { minAtomic: app.config.x402.topupAtomic, description })
    } catch (err) {
      if (err instanceof GatewayError && err.status === 402) return app.sendPaymentRequired(req, reply, { amountAtomic: app.config.x402.topupAtomic, description, err })
      throw err
    }
    if (!payer) return app.sendPaymentRequired(req, reply, { amountAtomic: app.config.x402.topupAtomic, description, err: new GatewayError('PAYMENT_REQUIRED', { reason: 'payment_required' }) })
    const who = { account: payer.account }
    reply.headers(paymentResponseHeaders(payer.payment))
    const key = generateApiKey()
    try {
      const rec = await app.ledger.createApiKey({ id: key.id, account: who.account, name: parsed.data.name ?? null, prefix: key.prefix, hash: key.hash, createdAt: app.clock(), maxPerAccount: MAX_KEYS_PER_ACCOUNT })
      return reply.code(201).header('cache-control', 'no-store').send({ ...view(rec), key: key.secret, note: 'Store this key now: it is shown only once.' })
    } catch (err) {
      if ((err as { code?: string }).code === 'LEDGER_TOO_MANY_KEYS') throw new GatewayError('TOO_MANY_KEYS', { limit: MAX_KEYS_PER_ACCOUNT })
      throw err
    }
  })

  app.get('/v1/keys', { schema: payerReadSchema('List your API keys (prefixes only)', 'keys') }, async (req) => {
    const who = await app.requirePayer(req)
    return { object: 'list', data: (await app.ledger.listApiKeys(who.account)).map(view) }
  })

  app.delete<{ Params: { id: string } }>('/v1/keys/:id', async (req) => {
    const who = await app.requirePayer(req)
    const id = req.params.id
    const ok = id.length > 0 && id.length <= 128 && await app.ledger.revokeApiKey(who.account, id, app.clock())
    // Someone else's key and a missing key look the same: no probing of other payers' ids.
    if (!ok) throw new GatewayError('NOT_FOUND', { reason: 'no_such_key' })
    return { id: req.params.id, revoked: true }
  })
}
