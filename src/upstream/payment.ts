import { createPublicClient, createWalletClient, defineChain, erc20Abi, getAddress, http, maxUint256, type Address, type Hex } from 'viem'
import { privateKeyToAccount, type PrivateKeyAccount } from 'viem/accounts'
import { x402Client } from '@x402/core/client'
import { decodePaymentRequiredHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import type { PaymentRequired, PaymentRequirements } from '@x402/core/types'
import { UptoEvmScheme } from '@x402/evm/upto/client'
import { GatewayError } from '../errors.ts'
import type { UpstreamResponse } from './client.ts'

// The operator's wallet paying the TEE backend (PROTOCOLS.md §7 "Payment to the backend"): an
// unpaid call is answered 402 with an x402 `upto` offer; the wallet signs one Permit2 permit for
// the offered cap with @x402/evm's UptoEvmScheme client, the backend answers with
// `X-Upto-Session`, and later calls send that session back instead of paying again, until the
// backend asks again (cap used up, session idle). Every call carries X-SETTLEMENT-TYPE.

/** Permit2 as @x402/evm 2.27 hard-codes it (PERMIT2_ADDRESS). */
export const PERMIT2_ADDRESS: Address = '0x000000000022D473030F116dDEE9F6B43aC78BA3'
export const UPTO_SESSION_HEADER = 'x-upto-session'
export const SETTLEMENT_TYPE_HEADER = 'x-settlement-type'

export interface UpstreamPaymentConfig {
  payerPrivateKey: Hex
  settlementType: 'private' | 'batch' | 'individual'
  /** The token the wallet agrees to sign permits for (OPG on Base by default). */
  asset: Address
  /** Largest cap the wallet signs in one permit, in the token's atomic units. */
  maxAtomic: bigint
  /** Chain access for the start-up allowance check and the approve command. */
  rpcUrl?: string
}

export interface UpstreamPaymentStats {
  /** Permits signed (one per backend session). */
  payments: number
  /** Calls that went out with an existing X-Upto-Session. */
  sessionCalls: number
  /** 402s received from the backend (first contact, used-up or expired sessions). */
  challenges: number
  /** Payments the backend refused (a 402 answering a fresh permit). */
  refused: number
}

export interface AllowanceReport {
  ok: boolean
  payer: Address
  token: Address
  spender: Address
  allowance?: bigint
  balance?: bigint
  /** What is missing, in words fit for a log line; undefined when ok. */
  problem?: string
}

export interface PaymentLogger { info (o: object, msg: string): void, warn (o: object, msg: string): void, error (o: object, msg: string): void }

interface Session { id: string, since: number }

type Send = (headers: Record<string, string>) => Promise<UpstreamResponse>

function headerValue (h: UpstreamResponse['headers'], name: string): string | undefined {
  const v = h[name]
  return Array.isArray(v) ? v[0] : v
}

export class UpstreamPayer {
  readonly account: PrivateKeyAccount
  readonly stats: UpstreamPaymentStats = { payments: 0, sessionCalls: 0, challenges: 0, refused: 0 }
  private readonly client: x402Client
  private readonly sessions = new Map<string, Session>()
  /** A payment under way per enclave: other calls wait for its session instead of paying too. */
  private readonly paying = new Map<string, Promise<void>>()
  private readonly allowedNetworks = new Set<string>()

  constructor (readonly config: UpstreamPaymentConfig, private readonly log?: PaymentLogger) {
    this.account = privateKeyToAccount(config.payerPrivateKey)
    const pick = (_v: number, accepts: PaymentRequirements[]) => {
      const offer = accepts.find((a) => a.scheme === 'upto' && a.network.startsWith('eip155:'))
      if (!offer) throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_unsupported', offered: accepts.map((a) => a.scheme) })
      return offer
    }
    this.client = new x402Client(pick).register('eip155:*', new UptoEvmScheme(this.account))
  }

  get address (): Address { return this.account.address }

  /** The session the gateway holds with an enclave, if any (for tests and the demo). */
  sessionFor (teeId: string): string | undefined { return this.sessions.get(teeId)?.id }

  private baseHeaders (session?: Session): Record<string, string> {
    return {
      [SETTLEMENT_TYPE_HEADER]: this.config.settlementType,
      ...(session ? { [UPTO_SESSION_HEADER]: session.id } : {}),
    }
  }

  private remember (teeId: string, res: UpstreamResponse, used?: Session): void {
    const id = headerValue(res.headers, UPTO_SESSION_HEADER)
    if (id && id !== used?.id && id.length <= 256) this.sessions.set(teeId, { id, since: Date.now() })
  }

  /**
   * Sends a call, answering the backend's `upto` challenge once if it asks for one. Any other
   * answer is returned untouched; a 402 after a fresh permit is a refusal (thrown, nothing retried).
   */
  async send (teeId: string, send: Send): Promise<UpstreamResponse> {
    await this.paymentsSettled(teeId)
    let session = this.sessions.get(teeId)
    let res = await send(this.baseHeaders(session))
    if (session && res.status !== 402) this.stats.sessionCalls++
    if (res.status !== 402) { this.remember(teeId, res, session); return res }

    this.stats.challenges++
    let required = await readChallenge(res)
    this.forget(teeId, session)

    // Another call may have paid while this one was out: use its session rather than pay twice.
    await this.paymentsSettled(teeId)
    session = this.sessions.get(teeId)
    if (session) {
      res = await send(this.baseHeaders(session))
      if (res.status !== 402) { this.stats.sessionCalls++; this.remember(teeId, res, session); return res }
      this.stats.challenges++
      required = await readChallenge(res)
      this.forget(teeId, session)
      await this.paymentsSettled(teeId)
    }

    // No await between the last check and setting the gate: one payer per enclave at a time.
    let done!: () => void
    const gate = new Promise<void>((resolve) => { done = resolve })
    this.paying.set(teeId, gate)
    try {
      const signature = await this.sign(teeId, required)
      res = await send({ ...this.baseHeaders(), 'payment-signature': signature })
      if (res.status === 402) {
        this.stats.refused++
        let reason: unknown
        try { reason = (await readChallenge(res)).error } catch { reason = undefined }
        this.log?.error({ teeId, payer: this.address, reason }, 'the TEE backend refused the operator wallet\'s upto payment')
        throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_refused', upstream_status: 402, upstream_error: typeof reason === 'string' ? reason.slice(0, 200) : undefined })
      }
      this.remember(teeId, res)
      return res
    } finally {
      if (this.paying.get(teeId) === gate) this.paying.delete(teeId)
      done()
    }
  }

  private async paymentsSettled (teeId: string): Promise<void> {
    for (let p = this.paying.get(teeId); p; p = this.paying.get(teeId)) await p.catch(() => undefined)
  }

  private forget (teeId: string, session: Session | undefined): void {
    if (session && this.sessions.get(teeId) === session) this.sessions.delete(teeId)
  }

  private async sign (teeId: string, required: PaymentRequired): Promise<string> {
    const offer = required.accepts.find((a) => a.scheme === 'upto')
    if (!offer) throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_unsupported', offered: required.accepts.map((a) => a.scheme) })
    let asset: Address
    try { asset = getAddress(offer.asset) } catch { throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_bad_offer' }) }
    if (asset !== getAddress(this.config.asset)) {
      this.log?.error({ teeId, offered: asset, configured: this.config.asset }, 'the TEE backend asks to be paid in a token the operator wallet is not configured for (UPSTREAM_PAYMENT_ASSET)')
      throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_asset_mismatch' })
    }
    let amount: bigint
    try { amount = BigInt(offer.amount) } catch { throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_bad_offer' }) }
    if (amount <= 0n || amount > this.config.maxAtomic) {
      this.log?.error({ teeId, asked: offer.amount, max: this.config.maxAtomic.toString() }, 'the TEE backend asks for a larger permit than UPSTREAM_PAYMENT_MAX_AMOUNT allows')
      throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_cap_exceeded' })
    }
    // The SDK's spend controls allow only its default assets unless told otherwise: allow the
    // configured token on the network the backend named, capped as configured.
    if (!this.allowedNetworks.has(offer.network)) {
      this.allowedNetworks.add(offer.network)
      this.client.setSpendControls({
        allowedAssets: [...this.allowedNetworks].map((network) => ({ network: network as `${string}:${string}`, asset: getAddress(this.config.asset), maxAmountPerPayment: this.config.maxAtomic.toString() })),
      })
    }
    try {
      const payload = await this.client.createPaymentPayload({ ...required, accepts: [offer] })
      this.stats.payments++
      this.log?.info({ teeId, payer: this.address, cap: offer.amount, asset, payTo: offer.payTo }, 'signed an upto permit for the TEE backend')
      return encodePaymentSignatureHeader(payload)
    } catch (err) {
      if (err instanceof GatewayError) throw err
      throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_sign_failed', detail: (err as Error).message.slice(0, 200) })
    }
  }

  /** Reads the wallet's Permit2 allowance and balance for the payment token. */
  async checkAllowance (timeoutMs = 5000): Promise<AllowanceReport> {
    const base = { payer: this.address, token: getAddress(this.config.asset), spender: PERMIT2_ADDRESS }
    if (!this.config.rpcUrl) {
      return { ...base, ok: false, problem: 'no RPC to check the Permit2 allowance on: set UPSTREAM_PAYMENT_RPC_URL (or RPC_URL)' }
    }
    const client = createPublicClient({ transport: http(this.config.rpcUrl, { timeout: timeoutMs, retryCount: 0 }) })
    try {
      const [allowance, balance] = await Promise.all([
        client.readContract({ address: base.token, abi: erc20Abi, functionName: 'allowance', args: [base.payer, PERMIT2_ADDRESS] }),
        client.readContract({ address: base.token, abi: erc20Abi, functionName: 'balanceOf', args: [base.payer] }),
      ])
      const problems: string[] = []
      if (allowance === 0n) problems.push(`no Permit2 allowance: token ${base.token} has not approved Permit2 ${PERMIT2_ADDRESS} for the upstream payer ${base.payer} (run \`npm run approve-permit2\`)`)
      else if (allowance < this.config.maxAtomic) problems.push(`Permit2 allowance ${allowance} for token ${base.token} is below one permit cap ${this.config.maxAtomic} (run \`npm run approve-permit2\`)`)
      if (balance === 0n) problems.push(`the upstream payer ${base.payer} holds none of token ${base.token}`)
      return { ...base, ok: problems.length === 0, allowance, balance, problem: problems.length ? problems.join('; ') : undefined }
    } catch (err) {
      return { ...base, ok: false, problem: `could not read the Permit2 allowance of ${base.payer} for token ${base.token}: ${(err as Error).message.split('\n')[0]}` }
    }
  }
}

/** The backend's 402: PAYMENT-REQUIRED header (v2), or the same object as the JSON body. */
async function readChallenge (res: UpstreamResponse): Promise<PaymentRequired> {
  const header = headerValue(res.headers, 'payment-required')
  let text = ''
  try { text = (await res.body.text()).slice(0, 65_536) } catch { text = '' }
  try {
    if (header) return decodePaymentRequiredHeader(header)
    const body = JSON.parse(text) as PaymentRequired
    if (Array.isArray(body.accepts)) return body
  } catch { /* fall through */ }
  throw new GatewayError('UPSTREAM_ERROR', { reason: 'upstream_payment_challenge_unreadable', upstream_status: 402 })
}

/**
 * Approves Permit2 to spend `amount` (default unlimited, as @x402/evm's createPermit2ApprovalTx
 * does) of `token` from the payer's wallet. Returns the transaction hash once it is mined.
 */
export async function approvePermit2 (rpcUrl: string, payerKey: Hex, token: Address, amount: bigint = maxUint256): Promise<Hex> {
  const account = privateKeyToAccount(payerKey)
  const reader = createPublicClient({ transport: http(rpcUrl) })
  const chainId = await reader.getChainId()
  const chain = defineChain({ id: chainId, name: `chain-${chainId}`, nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [rpcUrl] } } })
  const wallet = createWalletClient({ account, chain, transport: http(rpcUrl) })
  const hash = await wallet.writeContract({ address: getAddress(token), abi: erc20Abi, functionName: 'approve', args: [PERMIT2_ADDRESS, amount] })
  const receipt = await createPublicClient({ chain, transport: http(rpcUrl), pollingInterval: 100 }).waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success') throw new Error(`approve reverted (tx ${hash})`)
  return hash
}
