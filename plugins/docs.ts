import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'

// OpenAPI generated from the route schemas (see routes/schemas.ts), served at /docs. Response
// schemas are documentation only: the serializer below is plain JSON.stringify, so a schema can
// never strip a field from what a client receives.
export default fp(async function docsPlugin (app: FastifyInstance) {
  app.setSerializerCompiler(() => (data) => JSON.stringify(data))
  await app.register(swagger, {
    openapi: {
      info: {
        title: 'x402 verified-inference gateway',
        version: '0.1.0',
        description: 'Pay with x402 (PAYMENT-SIGNATURE / X-PAYMENT), spend credit by SIGN-IN-WITH-X or API key; every answer carries the TEE proof of verified execution.',
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'An API key (sk-x402-...) bought with x402, or the admin token on /admin' },
          x402Payment: { type: 'apiKey', in: 'header', name: 'PAYMENT-SIGNATURE', description: 'base64 JSON x402 v2 PaymentPayload (v1: X-PAYMENT)' },
          siwx: { type: 'apiKey', in: 'header', name: 'SIGN-IN-WITH-X', description: 'base64 JSON signed CAIP-122 sign-in, bound to PUBLIC_URL' },
        },
      },
    },
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
}, { name: 'docs' })
