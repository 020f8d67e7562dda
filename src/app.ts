import { randomUUID } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import underPressure from '@fastify/under-pressure'
import rateLimit from '@fastify/rate-limit'
import { createRedisClient, memorySharedState, redisSharedState } from './shared-state.ts'
import { GatewayError } from './errors.ts'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { GatewayConfig } from '../config/schema.ts'
import errorsPlugin, { clientErrorReply, frameworkErrorReply } from '../plugins/errors.ts'
import metricsPlugin from '../plugins/metrics.ts'
import docsPlugin from '../plugins/docs.ts'
import { GatewayMetrics, instrumentLedger } from './metrics.ts'
import corePlugin from '../plugins/core.ts'
import chatRoutes from '../routes/chat.ts'
import receiptRoutes from '../routes/receipts.ts'
import keyRoutes from '../routes/keys.ts'
import creditRoutes from '../routes/credits.ts'
import adminRoutes from '../routes/admin.ts'
import authPlugin from '../plugins/auth.ts'
import paidPlugin from '../plugins/paid.ts'
import modelRoutes from '../routes/models.ts'
import healthRoutes from '../routes/health.ts'
import type { LedgerStore } from './ledger/types.ts'
import { openSqliteLedger } from './ledger/sqlite.ts'
import { openPostgresLedger } from './ledger/postgres.ts'
import { createFacilitator, type Facilitator } from './x402/facilitator.ts'
import { loadPriceTable, type PriceTable } from './pricing.ts'
import { UpstreamPayer, type AllowanceReport } from './upstream/payment.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The operator wallet paying the TEE backend (x402 `upto`); absent without UPSTREAM_PAYER_PRIVATE_KEY. */
    upstreamPayer?: UpstreamPayer
    /** The start-up Permit2 allowance check of that wallet. */
    upstreamPayerCheck?: AllowanceReport
  }
}

export const EXAMPLE_PRICING = resolve(dirname(fileURLToPath(import.meta.url)), '../config/pricing.example.json')

export interface AppOptions {
  config: GatewayConfig
  ledger?: LedgerStore
  facilitator?: Facilitator
  prices?: PriceTable
  clock?: () => number
  logger?: FastifyServerOptions['logger']
  metrics?: GatewayMetrics
  /** Serve GET /metrics on this app (false when server.ts serves it on METRICS_PORT). */
  serveMetrics?: boolean
}

// Secrets travel in these headers; they never reach a log line.
export const REDACT = [
  'req.headers.authorization', 'req.headers["payment-signature"]', 'req.headers["x-payment"]',
  'req.headers["sign-in-with-x"]', 'req.headers.cookie',
]

export async function buildApp (opts: AppOptions): Promise<FastifyInstance> {
  const { config } = opts
  const app = Fastify({
    logger: opts.logger ?? { level: config.logLevel, redact: REDACT },
    genReqId: () => `req_${randomUUID().replace(/-/g, '')}`,
    trustProxy: config.trustProxy as boolean | string,
    bodyLimit: config.limits.bodyBytes,
    routerOptions: { maxParamLength: 200 },
    // Slow-body clients are cut off rather than holding a socket and a parser forever. Node derives
    // headersTimeout and its check interval when the server is built, so they are given there too:
    // set afterwards, a stalled request would hold its socket for a minute and more.
    requestTimeout: 30_000,
    http: { requestTimeout: 30_000, headersTimeout: 10_000, connectionsCheckingInterval: 1_000 },
    frameworkErrors: frameworkErrorReply,
    clientErrorHandler: clientErrorReply,
    connectionTimeout: 0,
    keepAliveTimeout: 72_000,
    return503OnClosing: true,
  })

  let ledger = opts.ledger
  if (!ledger) {
    if (config.database.kind === 'postgres') {
      // Many replicas, one ledger: the same interface and invariants, enforced in PostgreSQL.
      ledger = await openPostgresLedger(config.database.url)
    } else {
      if (config.database.path !== ':memory:') mkdirSync(dirname(resolve(config.database.path)), { recursive: true })
      ledger = await openSqliteLedger(config.database.path)
    }
  }

  app.addHook('onRequest', async (req, reply) => { reply.header('x-request-id', req.id) })
  const metrics = opts.metrics ?? new GatewayMetrics()
  ledger = instrumentLedger(ledger, metrics)

  await app.register(errorsPlugin)
  await app.register(metricsPlugin, { metrics, serveRoute: opts.serveMetrics ?? true })
  const redis = config.redisUrl ? createRedisClient(config.redisUrl) : undefined
  redis?.on('error', (err) => app.log.warn({ err: err.message }, 'redis error'))
  // Per client IP, before any authentication; shared across replicas through Redis when set.
  // A Redis outage does not open the money path: paid routes fail closed on the shared state below.
  if (config.rateLimitPerMinute > 0) await app.register(rateLimit, {
    max: config.rateLimitPerMinute,
    timeWindow: 60_000,
    skipOnError: true,
    ...(redis ? { redis, nameSpace: 'gw:ip:' } : {}),
    allowList: (req) => req.url.startsWith('/health/') || req.url === '/metrics',
    errorResponseBuilder: (_req, ctx) => new GatewayError('RATE_LIMITED', { limit: ctx.max, retry_after: ctx.after }),
  })
  await app.register(corePlugin, {
    shared: redis ? redisSharedState(redis) : memorySharedState(),
    config,
    ledger,
    facilitator: opts.facilitator ?? createFacilitator(config.x402),
    prices: opts.prices ?? loadPriceTable(config.pricingFile ?? EXAMPLE_PRICING),
    clock: opts.clock ?? Date.now,
  })
  if (config.upstream.payerPrivateKey) {
    const payer = new UpstreamPayer({
      payerPrivateKey: config.upstream.payerPrivateKey,
      settlementType: config.upstream.settlementType,
      ...config.upstream.payment,
    }, app.log)
    app.enclaves.setPayer(payer)
    app.decorate('upstreamPayer', payer)
    app.decorate('upstreamPayerCheck', undefined)
    // Reported, not fatal: the backend may still take payments some other way, and an operator
    // can approve while the gateway runs. Without the allowance every paid upstream call fails.
    app.addHook('onReady', async () => {
      const report = await payer.checkAllowance()
      app.upstreamPayerCheck = report
      const facts = { payer: report.payer, token: report.token, permit2: report.spender, allowance: report.allowance?.toString(), balance: report.balance?.toString() }
      if (report.ok) app.log.info(facts, 'upstream payer ready: Permit2 allowance in place')
      else app.log.error({ ...facts, problem: report.problem }, `upstream payer not ready: ${report.problem}`)
    })
  }
  // Shed load before the event loop drowns: a 503 with Retry-After is better than a timeout.
  await app.register(underPressure, {
    // Only lag, not utilisation: a busy loop that still answers promptly is doing its job.
    maxEventLoopDelay: config.loadShedEventLoopDelayMs,
    retryAfter: 5,
    exposeStatusRoute: false,
    customError: class extends Error { statusCode = 503; code = 'OVERLOADED' },
  })
  await app.register(authPlugin)
  await app.register(paidPlugin)
  await app.register(docsPlugin)
  await app.register(healthRoutes)
  await app.register(modelRoutes)
  await app.register(chatRoutes)
  await app.register(receiptRoutes)
  await app.register(keyRoutes)
  await app.register(creditRoutes)
  await app.register(adminRoutes, { prefix: '/admin' })
  return app
}
