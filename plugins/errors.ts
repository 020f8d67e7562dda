import fp from 'fastify-plugin'
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { GatewayError } from '../src/errors.ts'
import { SharedStateUnavailable } from '../src/shared-state.ts'

// Every error leaves as the OpenAI error envelope with a stable code; nothing leaves as a bare 500
// with a stack, and a 402 never leaves without its PAYMENT-REQUIRED header (routes attach it).
// The ledger's database is down or restarting: a dependency outage (503, retry), not a bug (500).
// PostgreSQL: connection refused/reset, admin shutdown and "cannot connect now" (57P0x), connection
// exceptions (08xxx), too many connections (53300), and node-postgres's own connection errors.
const DB_UNAVAILABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', '57P01', '57P02', '57P03', '53300', 'SQLITE_BUSY', 'SQLITE_LOCKED'])
const DB_UNAVAILABLE_MESSAGES = /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Cannot use a pool after calling end)/

export function isLedgerUnavailable (err: unknown): boolean {
  const e = err as { code?: unknown, message?: unknown }
  if (typeof e?.code === 'string' && (DB_UNAVAILABLE_CODES.has(e.code) || e.code.startsWith('08'))) return true
  return typeof e?.message === 'string' && DB_UNAVAILABLE_MESSAGES.test(e.message)
}

export function toGatewayError (err: FastifyError | Error): GatewayError {
  if (err instanceof GatewayError) return err
  if (err instanceof SharedStateUnavailable) return new GatewayError('SHARED_STATE_UNAVAILABLE')
  if (isLedgerUnavailable(err)) return new GatewayError('LEDGER_UNAVAILABLE')
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

// Errors raised before a route exists (bad percent-encoding, an over-long path parameter) skip
// the error handler; they still leave as the envelope, with the request id.
export function frameworkErrorReply (err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const g = err.code === 'FST_ERR_MAX_PARAM_LENGTH'
    ? new GatewayError('PATH_TOO_LONG')
    : err.code === 'FST_ERR_BAD_URL' ? new GatewayError('BAD_PATH') : toGatewayError(err)
  req.log.info({ code: g.code }, 'request refused by the router')
  reply.header('x-request-id', req.id).code(g.status).send(g.toBody())
}

// Errors from Node's HTTP parser (header overflow, broken framing, the request timeout) never
// reach Fastify: answer them on the raw socket, in the same envelope, then close.
export function clientErrorReply (err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const code = err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
    ? 'REQUEST_TIMEOUT'
    : err.code === 'HPE_HEADER_OVERFLOW' ? 'HEADERS_TOO_LARGE' : 'BAD_HTTP_REQUEST'
  const g = new GatewayError(code)
  const body = JSON.stringify(g.toBody())
  const reason = STATUS_CODES[g.status] ?? 'Error'
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${g.status} ${reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}
