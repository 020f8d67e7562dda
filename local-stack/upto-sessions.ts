import { randomUUID } from 'node:crypto'
import { createWalletClient, defineChain, getAddress, http, publicActions, type Address, type Hex } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { x402Facilitator } from '@x402/core/facilitator'
import { decodePaymentSignatureHeader, encodePaymentRequiredHeader } from '@x402/core/http'
import type { PaymentPayload, PaymentRequired, PaymentRequirements } from '@x402/core/types'
import { walletFacilitatorSigner } from '../src/x402/facilitator.ts'
import { UptoEvmScheme } from '@x402/evm/upto/facilitator'

// The reference backend's side of PROTOCOLS.md §7 "Payment to the backend": an unpaid call gets
// an x402 v2 `upto` offer (cap per permit); a paid call (PAYMENT-SIGNATURE, a Permit2 permit
// signed by @x402/evm's UptoEvmScheme client) is verified with @x402/evm's upto *facilitator*
// scheme against the local chain and opens a session, announced in `X-Upto-Session`. Calls that
// send the session back are charged against the permit's cap; once the cap is used up or the
// session has idled out, the next call is challenged again. Each session is settled once, on
// chain, for what it was charged (a single Permit2 transfer through the x402 upto proxy, sent
// by this backend's own facilitator key): when it is used up, when it expires, or on demand.

export interface UptoPaymentOptions {
  rpcUrl: string
  chainId: number
  /** The token charged (the local stand-in for OPG). */
  token: Address
  /** Its decimals; costs (`cost_opg`, 18 decimals) are converted to atomic units, rounded up. */
  tokenDecimals: number
  payTo: Address
  /** Key of the account that settles (named in every permit's witness as the facilitator). */
  facilitatorPrivateKey: Hex
  /** The cap asked for in each permit, atomic units. */
  capAtomic: bigint
  /** A session unused this long is closed (settled) and challenged again. Default 5 minutes. */
  sessionIdleMs?: number
  /** Permit validity asked for (maxTimeoutSeconds). Default 1 hour. */
  maxTimeoutSeconds?: number
}

export interface UptoSession {
  id: string
  payer: Address
  cap: bigint
  spent: bigint
  calls: number
  openedAt: number
  lastUsedAt: number
  state: 'open' | 'used_up' | 'expired' | 'settled' | 'settle_failed'
  settlementTx?: string
  payload: PaymentPayload
  requirements: PaymentRequirements
}

export interface UptoStats {
  /** 402 challenges sent. */
  challenges: number
  /** Permits accepted (sessions opened). */
  permitsAccepted: number
  /** Permits refused (verification failed or replayed). */
  permitsRefused: number
  /** Calls served on an existing session. */
  sessionCalls: number
  /** On-chain settlements (token transfers). */
  settlements: number
  settledAtomic: bigint
}

export type Admission =
  | { ok: true, session: UptoSession, opened: boolean }
  | { ok: false, status: 402, headers: Record<string, string>, body: PaymentRequired }

export class UptoSessions {
  readonly stats: UptoStats = { challenges: 0, permitsAccepted: 0, permitsRefused: 0, sessionCalls: 0, settlements: 0, settledAtomic: 0n }
  readonly sessions = new Map<string, UptoSession>()
  readonly facilitatorAddress: Address
  private readonly facilitator: x402Facilitator
  private readonly usedNonces = new Set<string>()
  private settleQueue: Promise<unknown> = Promise.resolve()
  private readonly pending = new Set<Promise<unknown>>()
  private cap: bigint

  constructor (private readonly opts: UptoPaymentOptions) {
    const account = privateKeyToAccount(opts.facilitatorPrivateKey)
    this.facilitatorAddress = account.address
    const chain = defineChain({ id: opts.chainId, name: `chain-${opts.chainId}`, nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [opts.rpcUrl] } } })
    const client = createWalletClient({ account, chain, transport: http(opts.rpcUrl), pollingInterval: 50 }).extend(publicActions)
    const signer = walletFacilitatorSigner(client, 30_000)
    this.facilitator = new x402Facilitator().register(`eip155:${opts.chainId}`, new UptoEvmScheme(signer))
    this.cap = opts.capAtomic
  }

  get network (): `eip155:${number}` { return `eip155:${this.opts.chainId}` }

  /** Changes the cap asked for in new permits (open sessions keep theirs). */
  setCap (capAtomic: bigint): void { this.cap = capAtomic }

  requirements (): PaymentRequirements {
    return {
      scheme: 'upto',
      network: this.network,
      asset: getAddress(this.opts.token),
      amount: this.cap.toString(),
      payTo: getAddress(this.opts.payTo),
      maxTimeoutSeconds: this.opts.maxTimeoutSeconds ?? 3600,
      extra: { facilitatorAddress: this.facilitatorAddress },
    }
  }

  private challenge (url: string, error: string): Admission {
    this.stats.challenges++
    const body: PaymentRequired = {
      x402Version: 2,
      error,
      resource: { url, description: 'Verified (TEE) chat completion', mimeType: 'application/json' },
      accepts: [this.requirements()],
    }
    return { ok: false, status: 402, headers: { 'payment-required': encodePaymentRequiredHeader(body), 'cache-control': 'no-store' }, body }
  }

  /** Closes idle sessions (each is settled for what it was charged). */
  sweep (now = Date.now()): void {
    const idle = this.opts.sessionIdleMs ?? 300_000
    for (const s of this.sessions.values()) {
      if (s.state === 'open' && now - s.lastUsedAt > idle) { s.state = 'expired'; this.settleLater(s) }
    }
  }

  /** Decides whether a call is paid for: an open session, a fresh valid permit, or a 402. */
  async admit (headers: Record<string, string | string[] | undefined>, url: string): Promise<Admission> {
    const now = Date.now()
    this.sweep(now)
    const one = (name: string) => { const v = headers[name]; return Array.isArray(v) ? v[0] : v }
    const sessionId = one('x-upto-session')
    const signature = one('payment-signature')
    if (signature) return this.open(signature, url, now)
    if (sessionId) {
      const s = this.sessions.get(sessionId)
      if (!s) return this.challenge(url, 'upto_session_unknown')
      if (s.state === 'expired') return this.challenge(url, 'upto_session_expired')
      if (s.state !== 'open') return this.challenge(url, 'upto_session_cap_used')
      s.lastUsedAt = now
      this.stats.sessionCalls++
      return { ok: true, session: s, opened: false }
    }
    return this.challenge(url, 'payment_required')
  }

  private async open (header: string, url: string, now: number): Promise<Admission> {
    let payload: PaymentPayload
    try { payload = decodePaymentSignatureHeader(header) } catch { this.stats.permitsRefused++; return this.challenge(url, 'invalid_payment_header') }
    const requirements = this.requirements()
    const auth = (payload.payload as { permit2Authorization?: { nonce?: string, from?: string } }).permit2Authorization
    const nonceKey = `${auth?.from ?? ''}:${auth?.nonce ?? ''}`
    if (this.usedNonces.has(nonceKey)) { this.stats.permitsRefused++; return this.challenge(url, 'permit_already_used') }
    let verdict
    try { verdict = await this.facilitator.verify(payload, requirements) } catch (err) {
      this.stats.permitsRefused++
      return this.challenge(url, `verify_failed: ${(err as Error).message.slice(0, 120)}`)
    }
    if (!verdict.isValid) { this.stats.permitsRefused++; return this.challenge(url, verdict.invalidReason ?? 'invalid_payment') }
    this.usedNonces.add(nonceKey)
    this.stats.permitsAccepted++
    const s: UptoSession = {
      id: `upto_${randomUUID().replace(/-/g, '')}`,
      payer: getAddress(verdict.payer ?? auth!.from!),
      cap: BigInt(requirements.amount), spent: 0n, calls: 0, openedAt: now, lastUsedAt: now, state: 'open', payload, requirements,
    }
    this.sessions.set(s.id, s)
    return { ok: true, session: s, opened: true }
  }

  /** Converts an `opengradient.cost_opg` (18-decimal base units) to the token's atomic units, rounded up. */
  atomicFromOpg (costOpg: string): bigint {
    const wei = BigInt(costOpg)
    const scale = 10n ** BigInt(18 - this.opts.tokenDecimals)
    return (wei + scale - 1n) / scale
  }

  /**
   * Charges one served call to its session, never beyond the permit's cap (the permit bounds what
   * can ever be taken; the overflow of the last call is the backend's loss). A session whose cap
   * is used up is closed and settled.
   */
  charge (s: UptoSession, amount: bigint): bigint {
    const room = s.cap - s.spent
    const take = amount < room ? amount : room
    s.spent += take
    s.calls++
    if (s.spent >= s.cap && s.state === 'open') { s.state = 'used_up'; this.settleLater(s) }
    return take
  }

  private settleLater (s: UptoSession): void {
    const p = this.settle(s).catch(() => undefined)
    this.pending.add(p)
    void p.finally(() => this.pending.delete(p))
  }

  /** One on-chain transfer per session, for what it was charged; serialised (one signer nonce). */
  private settle (s: UptoSession): Promise<void> {
    const run = async () => {
      if (s.state === 'settled' || s.settlementTx !== undefined) return
      if (s.spent === 0n) { s.state = 'settled'; return }
      const res = await this.facilitator.settle(s.payload, { ...s.requirements, amount: s.spent.toString() })
      if (res.success) {
        s.state = 'settled'
        s.settlementTx = res.transaction
        this.stats.settlements++
        this.stats.settledAtomic += s.spent
      } else {
        s.state = 'settle_failed'
        s.settlementTx = ''
      }
    }
    const next = this.settleQueue.then(run, run)
    this.settleQueue = next.catch(() => undefined)
    return next
  }

  /** Closes every open session and settles all that are not settled yet; resolves when done. */
  async settleAll (): Promise<UptoSession[]> {
    for (const s of this.sessions.values()) {
      if (s.state === 'open') s.state = 'expired'
      if (s.state !== 'settled' && s.settlementTx === undefined) this.settleLater(s)
    }
    await Promise.all([...this.pending])
    return [...this.sessions.values()]
  }
}
