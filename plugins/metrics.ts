import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayMetrics } from '../src/metrics.ts'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: GatewayMetrics
  }
}

// Counts every response by its route pattern (never the raw URL: ids would explode the label
// set) and serves the registry. GET /metrics is public on the main port unless METRICS_PORT moves
// it to a port of its own (see server.ts).
export default fp<{ metrics: GatewayMetrics, serveRoute: boolean }>(async function metricsPlugin (app: FastifyInstance, opts) {
  const { metrics } = opts
  app.decorate('metrics', metrics)
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched'
    metrics.requests.inc({ route, status_class: `${Math.floor(reply.statusCode / 100)}xx` })
    if (reply.statusCode === 402) metrics.paymentRequired.inc({ route })
  })
  if (opts.serveRoute) {
    app.get('/metrics', { logLevel: 'warn' }, async (_req, reply) => {
      reply.header('content-type', metrics.registry.contentType)
      return metrics.registry.metrics()
    })
  }
}, { name: 'metrics' })
