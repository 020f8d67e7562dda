import { randomUUID } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { GatewayConfig } from '../config/schema.ts'
import errorsPlugin from '../plugins/errors.ts'
import corePlugin from '../plugins/core.ts'
import chatRoutes from '../routes/chat.ts'
import receiptRoutes from '../routes/receipts.ts'
import modelRoutes from '../routes/models.ts'
import healthRoutes from '../routes/health.ts'
import type { LedgerStore } from './ledger/types.ts'
import { openSqliteLedger } from './ledger/sqlite.ts'
import { createFacilitator, type Facilitator } from './x402/facilitator.ts'
import { loadPriceTable, type PriceTable } from './pricing.ts'

export const EXAMPLE_PRICING = resolve(dirname(fileURLToPath(import.meta.url)), '../config/pricing.example.json')

export interface AppOptions {
  config: GatewayConfig
  ledger?: LedgerStore
  facilitator?: Facilitator
  prices?: PriceTable
  clock?: () => number
  logger?: FastifyServerOptions['logger']
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
    // Slow-body clients are cut off rather than holding a socket and a parser forever.
    requestTimeout: 30_000,
    connectionTimeout: 0,
    keepAliveTimeout: 72_000,
    return503OnClosing: true,
  })

  let ledger = opts.ledger
  if (!ledger) {
    if (config.database.kind !== 'sqlite') throw new Error('only sqlite ledgers are supported')
    if (config.database.path !== ':memory:') mkdirSync(dirname(resolve(config.database.path)), { recursive: true })
    ledger = await openSqliteLedger(config.database.path)
  }

  app.addHook('onRequest', async (req, reply) => { reply.header('x-request-id', req.id) })

  await app.register(errorsPlugin)
  await app.register(corePlugin, {
    config,
    ledger,
    facilitator: opts.facilitator ?? createFacilitator(config.x402),
    prices: opts.prices ?? loadPriceTable(config.pricingFile ?? EXAMPLE_PRICING),
    clock: opts.clock ?? Date.now,
  })
  await app.register(healthRoutes)
  await app.register(modelRoutes)
  await app.register(chatRoutes)
  await app.register(receiptRoutes)
  return app
}
