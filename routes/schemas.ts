// Route schemas for the OpenAPI document: headers, 402 challenges and error envelopes. Request
// bodies have no schema here on purpose: Fastify's validator would coerce them (e.g. "64" → 64)
// and the body is hashed as sent; the engine validates it with codes and remedies instead.

const error = {
  type: 'object',
  description: 'OpenAI error envelope with a stable code and a remedy',
  properties: {
    error: {
      type: 'object',
      properties: {
        code: { type: 'string' }, message: { type: 'string' }, type: { type: 'string' },
        metadata: { type: 'object', additionalProperties: true, properties: { remedy: { type: 'string' } } },
      },
    },
  },
}

const paymentRequired = {
  type: 'object',
  description: 'x402 PaymentRequired (also base64 in the PAYMENT-REQUIRED header); `error` is the reason. API-key callers get the error envelope instead.',
  additionalProperties: true,
  properties: {
    x402Version: { type: 'integer' },
    error: { type: 'string' },
    resource: { type: 'object', additionalProperties: true },
    accepts: { type: 'array', items: { type: 'object', additionalProperties: true } },
    extensions: { type: 'object', additionalProperties: true, description: 'sign-in-with-x, payment-identifier' },
    code: { type: 'string' },
    remedy: { type: 'string' },
  },
}

export const paidHeaders = {
  type: 'object',
  properties: {
    'payment-signature': { type: 'string', description: 'x402 v2 payment (base64 JSON PaymentPayload)' },
    'x-payment': { type: 'string', description: 'x402 v1 payment' },
    'sign-in-with-x': { type: 'string', description: 'SIWX sign-in of a returning payer' },
    authorization: { type: 'string', description: 'Bearer <API key>' },
    'idempotency-key': { type: 'string', description: 'retry returns the stored result (1-128 chars)' },
    'x-verify-before-emit': { type: 'string', enum: ['true', 'false'], description: 'streams: hold the answer until its proof verified' },
  },
}

const security = (...names: string[]): Record<string, string[]>[] => names.map((n) => ({ [n]: [] }))

const errors = { 400: error, 401: error, 404: error, 409: error, 413: error, 422: error, 429: error, 502: error, 503: error, 504: error }

export const chatSchema = {
  summary: 'Verified chat completion (OpenAI-compatible; SSE with stream: true)',
  tags: ['inference'],
  headers: paidHeaders,
  response: {
    200: {
      description: 'The answer with X-OpenGradient-Verified, X-TEE-* proof headers, X-Credits-Charged/-Balance and PAYMENT-RESPONSE when a payment settled. Streams end with a frame carrying x402_gateway {verified, charged, balance}.',
      type: 'object', additionalProperties: true,
    },
    402: paymentRequired,
    ...errors,
  },
  security: security('x402Payment', 'siwx', 'apiKey'),
}

export const topupSchema = {
  summary: 'Buy credit with an x402 payment of ?amount=',
  tags: ['credits'],
  headers: paidHeaders,
  querystring: { type: 'object', properties: { amount: { type: 'string', description: 'asset units, e.g. 5.00' } } },
  response: { 200: { type: 'object', additionalProperties: true }, 402: paymentRequired, ...errors },
  security: security('x402Payment'),
}

export const payerReadSchema = (summary: string, tag: string) => ({
  summary, tags: [tag], response: { 200: { type: 'object', additionalProperties: true }, ...errors }, security: security('siwx', 'apiKey'),
})

export const keyCreateSchema = {
  summary: 'Create an API key (a signed-in payer, or pay the 402 to buy one with credit)',
  tags: ['keys'],
  headers: paidHeaders,
  response: { 201: { type: 'object', additionalProperties: true, description: 'The key (shown once) and its record' }, 402: paymentRequired, ...errors },
  security: security('siwx', 'apiKey', 'x402Payment'),
}
