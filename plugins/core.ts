import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../config/schema.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import type { Facilitator } from '../src/x402/facilitator.ts'
import { PaymentService } from '../src/x402/payments.ts'
import { EnclavePool } from '../src/upstream/pool.ts'
import { createRegistryDiscovery, enclaveTarget, type RegistryDiscovery } from '../src/upstream/registry.ts'
import type { PriceTable } from '../src/pricing.ts'
import { teeIdForPublicKey } from '../src/proof/verify.ts'
import { createReconciler } from '../src/x402/reconcile.ts'
import { toAsset } from '../src/metrics.ts'
import type { SharedState } from '../src/shared-state.ts'

export interface CoreDeps {
  shared: SharedState
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
    /** The TEE enclaves: one static upstream, or those the registry lists. */
    enclaves: EnclavePool
    /** Counters and the replay cache shared by replicas (Redis with REDIS_URL). */
    shared: SharedState
    /** Registry discovery, when UPSTREAM_URL is unset. */
    discovery?: RegistryDiscovery
    prices: PriceTable
    clock: () => number
    /** Decides payments whose settlement outcome is unknown; undefined without chain access. */
    reconciler?: ReturnType<typeof createReconciler>
    /** Controllers of the streams being served, so a shutdown can cut them at the grace limit. */
    openStreams: Set<AbortController>
    /** Cuts every open stream: each voids its reservation and ends with an error frame and [DONE]. */
    abortStreams (): number
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
  const openStreams = new Set<AbortController>()
  app.decorate('openStreams', openStreams)
  app.decorate('abortStreams', () => {
    const n = openStreams.size
    for (const c of openStreams) c.abort(new Error('shutdown'))
    return n
  })
  const m = app.metrics
  app.decorate('shared', deps.shared)
  app.decorate('payments', new PaymentService(config.x402, deps.facilitator, deps.ledger, app.log, () => Math.floor(deps.clock() / 1000), deps.shared, (result, units) => {
    m.payments.inc({ result })
    if (units !== undefined) m.deposits.inc(toAsset(units))
  }))
  const up = config.upstream
  const enclaves = new EnclavePool({ timeouts: up, logger: app.log })
  app.decorate('enclaves', enclaves)
  if (up.url) {
    const pem = up.teePublicKeyPem!
    enclaves.update([{ url: up.url, teeId: teeIdForPublicKey(pem), publicKeyPem: pem, tlsCertPem: up.tlsCertPem }])
  } else {
    // Without a static upstream, the registry decides which enclaves exist and which key each one
    // must sign with; its certificate is the only trust anchor for its connection.
    const discovery = createRegistryDiscovery({
      rpcUrl: up.registryRpcUrl,
      registryAddress: up.registryAddress,
      pinPcrHash: up.pinPcrHash as `0x${string}` | undefined,
      pinTeeId: up.pinTeeId as `0x${string}` | undefined,
      refreshMs: up.registryRefreshMs,
      logger: app.log,
      onChange: (list) => {
        enclaves.update(list.map(enclaveTarget))
        app.log.info({ enclaves: list.map((e) => ({ teeId: e.teeId, endpoint: e.endpoint })) }, 'enclave list updated')
      },
    })
    app.decorate('discovery', discovery)
    await discovery.start()
    if (enclaves.size === 0) app.log.warn('registry discovery found no usable enclave yet; requests fail with upstream_unavailable until one appears')
  }

  // A crash can leave reservations open, and receipts of requests that never finished: the
  // reservations are expired and those receipts finished (from what their reservation became)
  // before the first request is served, and then by a sweep. A receipt is left to its own
  // request for RECEIPT_GRACE_MS after its reservation is resolved.
  const RECEIPT_GRACE_MS = 30_000
  const sweepOnce = async () => {
    const now = deps.clock()
    const expired = await deps.ledger.expirePending(now)
    const closed = await deps.ledger.closeStaleReceipts(now - RECEIPT_GRACE_MS, now)
    return { expired, closed }
  }
  const first = await sweepOnce()
  if (first.expired > 0 || first.closed > 0) app.log.warn(first, 'expired reservations and finished receipts left open by an earlier run')
  // Reservations left by a crashed replica hold their payer's credit until swept: sweep at a
  // tenth of the timeout (1 s to 60 s), so credit comes back soon after the timeout, not a minute on.
  const sweepMs = Math.min(60_000, Math.max(1_000, Math.floor(deps.config.limits.reservationTimeoutMs / 10)))
  const sweep = setInterval(() => {
    sweepOnce().catch((err) => app.log.error({ err }, 'expiring reservations failed'))
  }, sweepMs)
  sweep.unref()

  const rpcUrl = config.x402.facilitator.kind === 'local' ? config.x402.facilitator.rpcUrl : config.x402.rpcUrl
  if (rpcUrl && deps.facilitator.confirmTransfer) {
    const reconciler = createReconciler({ cfg: config.x402, rpcUrl, ledger: deps.ledger, confirmTransfer: deps.facilitator.confirmTransfer, nowMs: deps.clock, log: app.log })
    app.decorate('reconciler', reconciler)
    reconciler.start(30_000)
  } else {
    app.log.warn('no RPC_URL: payments with an unknown settlement outcome cannot be reconciled automatically')
  }

  app.addHook('onClose', async () => {
    clearInterval(sweep)
    app.reconciler?.stop()
    await app.payments.drain()
    app.discovery?.stop()
    await app.enclaves.close()
    await deps.facilitator.close?.()
    await deps.ledger.close()
    await deps.shared.close()
  })
}, { name: 'core', dependencies: ['metrics'] })
