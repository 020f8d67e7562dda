import { GatewayError } from '../errors.ts'
import { UpstreamClient, type UpstreamResponse, type UpstreamTarget, type UpstreamTimeouts } from './client.ts'
import type { UpstreamPayer } from './payment.ts'

/** What a request handler gets to talk to: one enclave, by way of `post`. */
export type EnclaveClient = Pick<UpstreamClient, 'target' | 'post'>

export interface PoolLogger { warn (obj: object, msg: string): void }

export interface EnclavePoolOptions {
  timeouts: UpstreamTimeouts
  /** How long an enclave that failed to connect is passed over while others are available. */
  failureCooldownMs?: number
  now?: () => number
  logger?: PoolLogger
  createClient?: (target: UpstreamTarget, timeouts: UpstreamTimeouts) => UpstreamClient
}

interface Member {
  key: string
  client: UpstreamClient
  inFlight: number
  downUntil: number
}

// Errors that can only happen before the enclave saw a complete request or answered it: nothing was
// processed, so another enclave may take the request without risking a double charge upstream.
const CONNECT_PHASE_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETUNREACH', 'ENETDOWN',
  'ENOTFOUND', 'EAI_AGAIN', 'EPROTO',
  'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED',
  // OpenSSL verification results, as Node reports them when the pinned certificate does not match.
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'CERT_SIGNATURE_FAILURE', 'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID', 'CERT_UNTRUSTED', 'CERT_REJECTED', 'INVALID_CA',
])

/**
 * True when the enclave never produced an HTTP response: refused, reset or timed out while
 * connecting, or the TLS handshake failed. Header and body timeouts are excluded on purpose (the
 * enclave has the request and may be working on it), as are aborts by our own caller.
 */
export function isConnectionFailure (err: unknown): boolean {
  if (!(err instanceof GatewayError)) return false
  if (err.code !== 'UPSTREAM_UNAVAILABLE' && err.code !== 'UPSTREAM_TIMEOUT') return false
  const reason = err.metadata.reason
  if (typeof reason !== 'string') return false
  return CONNECT_PHASE_CODES.has(reason) || reason.startsWith('ERR_TLS_') || reason.startsWith('ERR_SSL_')
}

/**
 * One keep-alive client per enclave. Requests go to the enclave with the fewest in flight, ties
 * taken in turn, and enclaves that just failed to connect are passed over for a short while.
 */
export class EnclavePool {
  private members: Member[] = []
  private cursor = 0
  private readonly cooldownMs: number
  private readonly now: () => number
  private readonly createClient: (target: UpstreamTarget, timeouts: UpstreamTimeouts) => UpstreamClient
  private payer?: UpstreamPayer

  constructor (private readonly opts: EnclavePoolOptions) {
    this.cooldownMs = opts.failureCooldownMs ?? 30_000
    this.now = opts.now ?? Date.now
    this.createClient = opts.createClient ?? ((target, timeouts) => new UpstreamClient(target, timeouts))
  }

  /**
   * Replaces the membership. Unchanged enclaves keep their client (and warm connections); a changed
   * endpoint or certificate gets a new client; removed clients close once their requests finish.
   */
  update (targets: readonly UpstreamTarget[]): void {
    const previous = new Map(this.members.map((m) => [m.client.target.teeId, m]))
    const next: Member[] = []
    const seen = new Set<string>()
    for (const target of targets) {
      if (seen.has(target.teeId)) continue
      seen.add(target.teeId)
      const key = memberKey(target)
      const old = previous.get(target.teeId)
      if (old?.key === key) {
        next.push(old)
        previous.delete(target.teeId)
      } else {
        next.push({ key, client: this.createClient(target, this.opts.timeouts), inFlight: 0, downUntil: 0 })
      }
    }
    this.members = next
    for (const gone of previous.values()) this.retire(gone)
  }

  /**
   * The operator wallet that answers the enclaves' x402 `upto` challenges (PROTOCOLS.md §7).
   * Without one, a backend asking to be paid fails the request with `upstream_payment_required`.
   */
  setPayer (payer: UpstreamPayer | undefined): void { this.payer = payer }

  get size (): number { return this.members.length }

  teeIds (): string[] { return this.members.map((m) => m.client.target.teeId) }

  /** The enclave the next request would go to; throws UPSTREAM_UNAVAILABLE when none is left. */
  pick (exclude?: Set<string>): UpstreamClient {
    const member = this.choose(exclude)
    if (!member) throw new GatewayError('UPSTREAM_UNAVAILABLE', { reason: 'no_enclave' })
    return member.client
  }

  /**
   * Runs `fn` against one enclave and, if that enclave could not be reached at all, once more
   * against another. Once any HTTP response has arrived the outcome is final, whatever `fn` makes of it.
   */
  async withFailover<T> (fn: (client: EnclaveClient) => Promise<T>): Promise<T> {
    const first = this.choose()
    if (!first) throw new GatewayError('UPSTREAM_UNAVAILABLE', { reason: 'no_enclave' })
    try {
      return await this.attempt(first, fn)
    } catch (err) {
      if (!(err instanceof RetryableAttempt)) throw err
      const second = this.choose(new Set([first.client.target.teeId]))
      if (!second) throw err.cause
      try {
        return await this.attempt(second, fn)
      } catch (err2) {
        throw err2 instanceof RetryableAttempt ? err2.cause : err2
      }
    }
  }

  async close (): Promise<void> {
    const members = this.members
    this.members = []
    await Promise.all(members.map((m) => m.client.close().catch(() => {})))
  }

  private async attempt<T> (member: Member, fn: (client: EnclaveClient) => Promise<T>): Promise<T> {
    let responded = false
    let connectFailure: unknown
    const raw = async (path: string, body: string, signal: AbortSignal | undefined, headers: Record<string, string>): Promise<UpstreamResponse> => {
      try {
        const res = await member.client.post(path, body, signal, headers)
        responded = true
        return res
      } catch (err) {
        if (!responded && isConnectionFailure(err)) connectFailure = err
        throw err
      }
    }
    const payer = this.payer
    const teeId = member.client.target.teeId
    const client: EnclaveClient = {
      target: member.client.target,
      post: async (path, body, signal, extraHeaders = {}) => {
        if (payer) return payer.send(teeId, (pay) => raw(path, body, signal, { ...extraHeaders, ...pay }))
        const res = await raw(path, body, signal, extraHeaders)
        if (res.status === 402) {
          await res.body.text().catch(() => undefined)
          throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_required', upstream_status: 402 },
            'The verified inference backend asks to be paid and no operator wallet is configured (UPSTREAM_PAYER_PRIVATE_KEY).')
        }
        return res
      },
    }
    member.inFlight++
    try {
      return await fn(client)
    } catch (err) {
      if (responded || connectFailure === undefined) throw err
      member.downUntil = this.now() + this.cooldownMs
      this.opts.logger?.warn({ teeId: member.client.target.teeId, url: member.client.target.url, reason: (connectFailure as GatewayError).metadata.reason }, 'enclave unreachable')
      throw new RetryableAttempt(connectFailure)
    } finally {
      member.inFlight--
    }
  }

  private choose (exclude?: Set<string>): Member | undefined {
    const candidates = exclude ? this.members.filter((m) => !exclude.has(m.client.target.teeId)) : this.members
    if (candidates.length === 0) return undefined
    const now = this.now()
    const up = candidates.filter((m) => m.downUntil <= now)
    // With every candidate cooling down, trying one beats refusing outright.
    const pool = up.length > 0 ? up : candidates
    const start = this.cursor++ % pool.length
    let best = pool[start]
    for (let i = 1; i < pool.length; i++) {
      const m = pool[(start + i) % pool.length]
      if (m.inFlight < best.inFlight) best = m
    }
    return best
  }

  private retire (member: Member): void {
    member.client.close().catch((err: Error) => {
      this.opts.logger?.warn({ teeId: member.client.target.teeId, err: err.message }, 'closing a removed enclave client failed')
    })
  }
}

class RetryableAttempt extends Error {
  constructor (override readonly cause: unknown) { super('enclave unreachable') }
}

function memberKey (t: UpstreamTarget): string {
  return `${t.url}\n${t.tlsCertPem ?? ''}\n${t.publicKeyPem}`
}
