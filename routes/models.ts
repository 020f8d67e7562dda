import type { FastifyInstance } from 'fastify'
import { formatDecimal } from '../src/money.ts'

export default async function modelRoutes (app: FastifyInstance) {
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [...app.prices.models.values()].map((m) => ({
      id: m.id,
      object: 'model',
      owned_by: 'opengradient-tee',
      pricing: {
        input_usd_per_1m: formatDecimal(m.inputPer1M, 9),
        output_usd_per_1m: formatDecimal(m.outputPer1M, 9),
        request_fee_usd: formatDecimal(m.requestFee, 9),
        ...(m.markupMicros !== undefined ? { upstream_markup: formatDecimal(m.markupMicros, 6) } : {}),
      },
    })),
  }))
}
