import { Pool, errors as undiciErrors } from 'undici'
import type { Readable } from 'node:stream'
import { GatewayError } from '../errors.ts'

export interface UpstreamTarget {
  /** Origin plus optional base path, e.g. https://10.0.0.7:443 */
  url: string
  teeId: string
  publicKeyPem: string
  tlsCertPem?: string
}

export interface UpstreamTimeouts { connectTimeoutMs: number, headersTimeoutMs: number, bodyTimeoutMs: number }

export interface UpstreamResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Readable & { text (): Promise<string> }
}

/**
 * One keep-alive pool per enclave, over undici's dispatcher API rather than fetch (no WHATWG
 * stream wrapping on the hot path). The upstream is always from configuration or the registry,
 * never from the client.
 */
export class UpstreamClient {
  private readonly pool: Pool
  private readonly base: URL

  constructor (readonly target: UpstreamTarget, private readonly timeouts: UpstreamTimeouts) {
    this.base = new URL(target.url)
    this.pool = new Pool(this.base.origin, {
      connections: 64,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connect: {
        timeout: timeouts.connectTimeoutMs,
        // Enclaves are reached by IP with a self-signed certificate: that certificate is the only
        // trust anchor, and verification stays on (hostname checks cannot apply to an IP).
        ...(target.tlsCertPem ? { ca: target.tlsCertPem, rejectUnauthorized: true, checkServerIdentity: () => undefined } : {}),
      },
      headersTimeout: timeouts.headersTimeoutMs,
      bodyTimeout: timeouts.bodyTimeoutMs,
    })
  }

  async post (path: string, body: string, signal?: AbortSignal, extraHeaders: Record<string, string> = {}): Promise<UpstreamResponse> {
    const basePath = this.base.pathname.replace(/\/$/, '')
    try {
      const res = await this.pool.request({
        method: 'POST',
        path: basePath + path,
        body,
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...extraHeaders },
        signal,
      })
      return { status: res.statusCode, headers: res.headers, body: res.body as UpstreamResponse['body'] }
    } catch (err) {
      throw mapUpstreamError(err)
    }
  }

  close (): Promise<void> { return this.pool.close() }
}

/** Turns transport failures into typed gateway errors; `connection` tells retry logic no HTTP answer came. */
export function mapUpstreamError (err: unknown): GatewayError {
  if (err instanceof GatewayError) return err
  const e = err as { code?: string, name?: string, message?: string }
  if (e instanceof undiciErrors.HeadersTimeoutError || e instanceof undiciErrors.BodyTimeoutError || e.code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new GatewayError('UPSTREAM_TIMEOUT', { reason: e.code ?? 'timeout' })
  }
  if (e.name === 'AbortError' || e.code === 'UND_ERR_ABORTED') {
    return new GatewayError('UPSTREAM_UNAVAILABLE', { reason: 'aborted' })
  }
  return new GatewayError('UPSTREAM_UNAVAILABLE', { reason: e.code ?? 'connection_failed' })
}
