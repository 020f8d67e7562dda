import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { bearerOf } from '../src/auth/admin.ts'
import { hashApiKey, looksLikeApiKey } from '../src/auth/keys.ts'
import { verifySiwxHeader } from '../src/auth/siwx.ts'
import { payerAccount } from '../src/ledger/accounts.ts'

export interface Identity { account: string, address: string, method: 'siwx' | 'api_key', keyId?: string }

declare module 'fastify' {
  interface FastifyInstance {
    /** The payer behind SIGN-IN-WITH-X or an API key, or undefined when neither is presented. Invalid credentials throw 401. */
    identify (req: FastifyRequest): Promise<Identity | undefined>
    /** Like identify, but a missing credential is a 401. */
    requirePayer (req: FastifyRequest): Promise<Identity>
  }
}

/**
 * The origin for resource URLs: the configured PUBLIC_URL, else what the request says. Only the
 * configured one may bind a sign-in: a Host header is chosen by whoever sends the request, so a
 * sign-in signed for another site could otherwise be replayed here with that site's Host.
 */
export function originOf (req: FastifyRequest): string {
  return (req.server.config.publicUrl) ?? `${req.protocol}://${req.host}`
}

// Identification order after a payment header (handled by the paid routes themselves):
// SIGN-IN-WITH-X, then Authorization: Bearer <api key> (DESIGN.md "The payment model").
export default fp(async function authPlugin (app: FastifyInstance) {
  const { config } = app
  app.decorate('identify', async (req: FastifyRequest): Promise<Identity | undefined> => {
    const siwx = req.headers['sign-in-with-x']
    if (typeof siwx === 'string' && config.publicUrl) {
      const v = await verifySiwxHeader(siwx, {
        origin: config.publicUrl,
        network: config.x402.network,
        nowMs: app.clock(),
        useNonce: (nonce, expiresAtMs) => app.ledger.useNonce('siwx', nonce, expiresAtMs),
      })
      if (!v.ok) throw new GatewayError('UNAUTHORIZED', { reason: v.code, detail: v.reason, siwx: true }, `SIGN-IN-WITH-X was refused: ${v.code}.`)
      return { account: payerAccount(config.x402.chainId, v.address), address: v.address, method: 'siwx' }
    }
    const token = bearerOf(req.headers.authorization)
    if (token !== undefined) {
      if (!looksLikeApiKey(token)) throw new GatewayError('UNAUTHORIZED', { reason: 'invalid_api_key' }, 'The API key is not valid.')
      const key = await app.ledger.findApiKeyByHash(hashApiKey(token))
      if (!key) throw new GatewayError('UNAUTHORIZED', { reason: 'invalid_api_key' }, 'The API key is not valid or was revoked.')
      return { account: key.account, address: key.account.split(':')[2], method: 'api_key', keyId: key.id }
    }
    return undefined
  })
  if (!config.publicUrl) app.log.warn('PUBLIC_URL is not set: SIGN-IN-WITH-X is not offered or accepted')
  app.decorate('requirePayer', async (req: FastifyRequest): Promise<Identity> => {
    const id = await app.identify(req)
    if (!id) throw new GatewayError('UNAUTHORIZED', { reason: 'credentials_required' }, 'Sign in with SIGN-IN-WITH-X or send Authorization: Bearer <api key>.')
    return id
  })
}, { name: 'auth', dependencies: ['core'] })
