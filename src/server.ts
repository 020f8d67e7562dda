import { existsSync } from 'node:fs'
import Fastify from 'fastify'
import closeWithGrace from 'close-with-grace'
import { loadConfig, ConfigError } from '../config/schema.ts'
import { buildApp, REDACT } from './app.ts'
import { GatewayMetrics } from './metrics.ts'

// Thin entry: configuration, the app, listen, and a graceful drain on SIGTERM/SIGINT.
if (existsSync('.env')) process.loadEnvFile('.env')

let config
try {
  config = loadConfig(process.env)
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`gateway: ${err.message}\n`)
    process.exit(78) // EX_CONFIG
  }
  throw err
}

const metrics = new GatewayMetrics()
const app = await buildApp({
  config,
  metrics,
  serveMetrics: config.metricsPort === undefined,
  logger: {
    level: config.logLevel,
    redact: REDACT,
    ...(config.logPretty && process.stdout.isTTY ? { transport: { target: 'pino-pretty' } } : {}),
  },
})

// Metrics on a port of their own keep scrapes off the public listener.
const metricsApp = config.metricsPort === undefined ? undefined : Fastify({ logger: false })
metricsApp?.get('/metrics', async (_req, reply) => reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics()))

// On SIGTERM: stop accepting (readiness turns 503, new requests get 503), let open streams run
// until the grace period is nearly over, then cut them: each voids its reservation and ends with
// an error frame. Then the stores close and the process exits 0.
const graceMs = config.shutdownGraceMs
closeWithGrace({ delay: graceMs + 5000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'closing after error')
  else app.log.info({ signal, graceMs }, 'draining')
  const cut = setTimeout(() => {
    const n = app.abortStreams()
    if (n > 0) app.log.warn({ streams: n }, 'grace period over: cutting open streams')
  }, graceMs)
  cut.unref()
  await Promise.all([app.close(), metricsApp?.close()])
  clearTimeout(cut)
  app.log.info('closed')
})

await app.listen({ port: config.port, host: config.host })
if (metricsApp && config.metricsPort !== undefined) await metricsApp.listen({ port: config.metricsPort, host: config.host })
