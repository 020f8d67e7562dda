import type { FastifyInstance } from 'fastify'

export default async function healthRoutes (app: FastifyInstance) {
  app.get('/health/live', async () => ({ status: 'ok' }))
  app.get('/health/ready', async (req, reply) => {
    try {
      await app.ledger.balance('system:deposits')
      return { status: 'ready' }
    } catch (err) {
      req.log.error({ err }, 'readiness check failed')
      return reply.code(503).send({ status: 'not_ready', checks: { ledger: 'failed' } })
    }
  })
}
