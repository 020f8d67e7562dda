import { X509Certificate } from 'node:crypto'
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
      // A stream holds its connection for its whole length: the cap must allow many idle
      // streams per enclave, or they would queue inside the gateway without response headers.
      connections: 1024,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connect: {
        timeout: timeouts.connectTimeoutMs,
        // Enclaves are reached by IP with a self-signed certificate: that certificate is the only
        // trust anchor, and verification stays on (hostname checks cannot apply to an IP).
        ...(target.tlsCertPem ? pinnedTls(target.tlsCertPem) : {}),
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

  /** The enclave answers GET /health (readiness); any 2xx counts. */
  async health (): Promise<void> {
    const res = await this.pool.request({ method: 'GET', path: this.base.pathname.replace(/\/$/, '') + '/health', headersTimeout: 2000, bodyTimeout: 2000 })
    await res.body.dump()
    if (res.statusCode >= 300) throw new Error(`upstream health ${res.statusCode}`)
  }

  /** Lets in-flight requests finish for up to `graceMs`, then tears down what is left. */
  async close (graceMs = 2000): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const forced = new Promise<void>((resolve) => { timer = setTimeout(() => { this.pool.destroy().then(resolve, resolve) }, graceMs) })
    await Promise.race([this.pool.close(), forced])
    clearTimeout(timer)
  }
}

/**
 * The registered certificate is the only trust anchor, and the server must present exactly it:
 * with `ca` alone, a registered certificate that happens to be a CA (openssl's default for
 * self-signed) would also vouch for any certificate signed with its key.
 */
function pinnedTls (certPem: string) {
  const pinned = new X509Certificate(certPem).fingerprint256
  return {
    ca: certPem,
    rejectUnauthorized: true,
    checkServerIdentity: (_host: string, cert: { fingerprint256?: string }) =>
      cert.fingerprint256 === pinned ? undefined : new Error('enclave certificate does not match the registered one'),
  }
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
