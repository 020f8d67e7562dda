import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { SharedStateUnavailable } from '../src/shared-state.ts'

// Every error leaves as the OpenAI error envelope with a stable code; nothing leaves as a bare 500
// with a stack, and a 402 never leaves without its PAYMENT-REQUIRED header (routes attach it).
export function toGatewayError (err: FastifyError | Error): GatewayError {
  if (err instanceof GatewayError) return err
  if (err instanceof SharedStateUnavailable) return new GatewayError('SHARED_STATE_UNAVAILABLE')
  const e = err as FastifyError
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE': return new GatewayError('BODY_TOO_LARGE')
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': return new GatewayError('BAD_REQUEST_BODY', { reason: 'unsupported_media_type' }, 'Send the body as application/json.')
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY': return new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_json' })
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH': return new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_content_length' })
    case 'OVERLOADED': return new GatewayError('OVERLOADED')
    case 'FST_ERR_VALIDATION': return new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_field', detail: e.message.slice(0, 200) })
  }
  if (e instanceof SyntaxError || (e.statusCode === 400)) return new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_json' })
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new GatewayError('BAD_REQUEST_BODY', { reason: (e.code ?? 'bad_request').toLowerCase() }, e.message.slice(0, 200))
  }
  return new GatewayError('INTERNAL')
}

const RETRY_AFTER_SECONDS: Partial<Record<string, number>> = {
  UPSTREAM_UNAVAILABLE: 2, UPSTREAM_ERROR: 2, UPSTREAM_TIMEOUT: 5, FACILITATOR_UNAVAILABLE: 5,
  SHARED_STATE_UNAVAILABLE: 5, LEDGER_UNAVAILABLE: 5, OVERLOADED: 5, PAYMENT_SETTLEMENT_UNKNOWN: 30,
}

export default fp(async function errorsPlugin (app: FastifyInstance) {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const g = toGatewayError(err)
    if (g.status >= 500) req.log.error({ err }, 'request failed')
    else req.log.info({ code: g.code }, 'request refused')
    if (g.status === 402) reply.header('cache-control', 'no-store')
    // Transient upstream or dependency trouble: tell clients (and SDK retry logic) when to retry.
    if (RETRY_AFTER_SECONDS[g.code] !== undefined && g.metadata.retryable !== false && !reply.hasHeader('retry-after')) {
      reply.header('retry-after', String(RETRY_AFTER_SECONDS[g.code]))
    }
    reply.code(g.status).send(g.toBody())
  })
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(new GatewayError('NOT_FOUND', { reason: 'no_such_route' }, `No route ${req.method} ${req.url.split('?')[0].slice(0, 200)}.`).toBody())
  })
}, { name: 'errors' })
