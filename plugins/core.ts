import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../config/schema.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import type { Facilitator } from '../src/x402/facilitator.ts'
import { PaymentService } from '../src/x402/payments.ts'
import { UpstreamClient } from '../src/upstream/client.ts'
import type { PriceTable } from '../src/pricing.ts'
import { teeIdForPublicKey } from '../src/proof/verify.ts'

export interface CoreDeps {
  config: GatewayConfig
  ledger: LedgerStore
  facilitator: Facilitator
  prices: PriceTable
  clock: () => number
}

declare module 'fastify' {
  interface FastifyInstance {
    config: GatewayConfig
    ledger: LedgerStore
    payments: PaymentService
    upstream: UpstreamClient
    prices: PriceTable
    clock: () => number
  }
}

// Decorates the instance with the engine's pieces. They are built by the caller (app factory or
// test) so that tests can hand in a store or a clock; this plugin only wires and closes them.
export default fp<CoreDeps>(async function corePlugin (app: FastifyInstance, deps: CoreDeps) {
  const { config } = deps
  app.decorate('config', config)
  app.decorate('ledger', deps.ledger)
  app.decorate('prices', deps.prices)
  app.decorate('clock', deps.clock)
  app.decorate('payments', new PaymentService(config.x402, deps.facilitator, deps.ledger, app.log, () => Math.floor(deps.clock() / 1000)))
  const pem = config.upstream.teePublicKeyPem!
  app.decorate('upstream', new UpstreamClient({
    url: config.upstream.url!,
    teeId: teeIdForPublicKey(pem),
    publicKeyPem: pem,
    tlsCertPem: config.upstream.tlsCertPem,
  }, config.upstream))

  // A crash can leave reservations open; they are expired before the first request is served.
  const expired = await deps.ledger.expirePending(deps.clock())
  if (expired > 0) app.log.warn({ expired }, 'expired reservations left open by an earlier run')
  const sweep = setInterval(() => {
    deps.ledger.expirePending(deps.clock()).catch((err) => app.log.error({ err }, 'expiring reservations failed'))
  }, 60_000)
  sweep.unref()

  app.addHook('onClose', async () => {
    clearInterval(sweep)
    await app.upstream.close()
    await deps.facilitator.close?.()
    await deps.ledger.close()
  })
}, { name: 'core' })
