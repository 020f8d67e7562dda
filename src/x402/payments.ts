import type { Hex } from 'viem'
import type { SettleResponse } from '@x402/core/types'
import { GatewayError } from '../errors.ts'
import { atomicToLedger } from '../money.ts'
import type { LedgerStore } from '../ledger/types.ts'
import { payerAccount } from '../ledger/accounts.ts'
import { decodePayment, type DecodeContext, type DecodedPayment } from './payment-header.ts'
import type { Facilitator } from './facilitator.ts'
import type { SharedState } from '../shared-state.ts'
import type { X402Config } from './requirements.ts'

const claimCacheKey = (k: { network: string, asset: string, payer: string, nonce: string }) =>
  `${k.network}:${k.asset.toLowerCase()}:${k.payer.toLowerCase()}:${k.nonce.toLowerCase()}`

/** One payment, one deposit id: the request path and the reconciler must agree on it. */
export function depositIdFor (key: { network: string, asset: string, payer: string, nonce: string }): string {
  return `deposit:${key.network}:${key.asset.toLowerCase()}:${key.payer.toLowerCase()}:${key.nonce.toLowerCase()}`
}

export interface AcceptedPayment {
  version: 1 | 2
  account: string
  payer: string
  depositedUnits: bigint
  /** Optimistic mode: credited on verification, settlement still running (no transaction yet). */
  pending: boolean
  settle: SettleResponse
}

export interface PaymentLogger { info (o: object, msg: string): void, warn (o: object, msg: string): void }

/**
 * The payment rules in one place: decode and check our own policy, verify with the facilitator,
 * durably claim (network, asset, from, nonce), settle, confirm the Transfer log, then post the
 * deposit in the same transaction that marks the claim settled. The claim comes before anything
 * is served or settled, so a header replayed to this or any replica sharing the ledger is refused.
 */
export class PaymentService {
  constructor (
    private readonly cfg: X402Config,
    private readonly facilitator: Facilitator,
    private readonly ledger: LedgerStore,
    private readonly log: PaymentLogger,
    private readonly nowSeconds: () => number = () => Math.floor(Date.now() / 1000),
    /** Fast replay cache shared by replicas (Redis); the durable claim stays the guarantee. */
    private readonly shared?: SharedState,
    /** Outcome reporting for metrics; deposits carry their ledger units. */
    private readonly report: (result: 'verified' | 'invalid' | 'replayed' | 'settled' | 'failed' | 'unknown' | 'provisional', depositedUnits?: bigint) => void = () => undefined,
  ) {}

  async accept (header: string, headerName: 'payment-signature' | 'x-payment', ctx: Omit<DecodeContext, 'cfg' | 'nowSeconds'> & { requestId: string }): Promise<AcceptedPayment> {
    const decoded = decodePayment(header, headerName, { ...ctx, cfg: this.cfg, nowSeconds: this.nowSeconds() })
    const payload = decoded.payload as never
    const requirements = decoded.requirements as never

    const key = decoded.claimKey
    // Fast refusal of a known replay, without a facilitator round trip. The durable claim below
    // is still what guarantees it; this only gives the clearest reason early.
    await this.refuseIfClaimed(key)

    let verify
    try {
      verify = await this.facilitator.verify(payload, requirements)
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'facilitator verify failed')
      throw new GatewayError('FACILITATOR_UNAVAILABLE', { reason: 'verify_failed' })
    }
    if (!verify.isValid) {
      this.report('invalid')
      // A replay that lost the race to settlement fails simulation with a generic reason; say why.
      await this.refuseIfClaimed(key)
      throw new GatewayError('PAYMENT_INVALID', { reason: verify.invalidReason ?? 'invalid_payment' }, `The payment was not accepted: ${verify.invalidReason ?? 'invalid'}.`)
    }

    const claim = await this.ledger.claimPayment({ ...key, requestId: ctx.requestId, amount: decoded.amountAtomic, validBefore: Math.min(Number(decoded.authorization.validBefore), Number.MAX_SAFE_INTEGER) })
    this.report('verified')
    if (claim.claimed) await this.shared?.markClaimed(claimCacheKey(key), 24 * 3600_000)
    if (!claim.claimed) {
      this.report('replayed')
      throw new GatewayError('PAYMENT_ALREADY_USED', { reason: 'payment_already_used', status: claim.existing.status })
    }

    const account = payerAccount(this.cfg.chainId, decoded.payer)
    const depositedUnits = atomicToLedger(decoded.amountAtomic, this.cfg.assetDecimals)
    const depositId = depositIdFor(key)

    if (this.cfg.settlementMode === 'optimistic' && decoded.amountAtomic <= this.cfg.optimisticMaxAtomic) {
      // Serve on the verified payment now; settle in the background. The credit is usable at
      // once, and the cap bounds what a payment that later fails to settle can have bought.
      await this.ledger.updatePaymentClaim(key, { status: 'settling' })
      await this.ledger.provisionalDeposit(key, { depositId, account, amount: depositedUnits })
      this.report('provisional', depositedUnits)
      const settling = this.settleInBackground(decoded, { account, depositId, depositedUnits, requestId: ctx.requestId })
      this.inFlight.add(settling)
      void settling.finally(() => this.inFlight.delete(settling))
      return { version: decoded.version, account, payer: decoded.payer, depositedUnits, pending: true, settle: { success: true, transaction: '', network: this.cfg.network, payer: decoded.payer } }
    }

    const settle = await this.settleAndConfirm(decoded, ctx.requestId)
    await this.ledger.settlePaymentAndDeposit(key, { txHash: settle.transaction, depositId, account, amount: depositedUnits })
    this.report('settled', depositedUnits)
    this.log.info({ requestId: ctx.requestId, tx: settle.transaction, amount: decoded.amountAtomic.toString() }, 'payment settled and deposited')
    return { version: decoded.version, account, payer: decoded.payer, depositedUnits, pending: false, settle: { ...settle, payer: settle.payer ?? decoded.payer } }
  }

  /** Waits for background settlements (tests, graceful shutdown). */
  async drain (): Promise<void> {
    await Promise.allSettled([...this.inFlight])
  }

  private readonly inFlight = new Set<Promise<void>>()

  private async settleInBackground (decoded: DecodedPayment, p: { account: string, depositId: string, depositedUnits: bigint, requestId: string }): Promise<void> {
    const key = decoded.claimKey
    try {
      const settle = await this.settleAndConfirm(decoded, p.requestId, true)
      // Same deposit id as the provisional one: this marks the claim settled without crediting twice.
      await this.ledger.settlePaymentAndDeposit(key, { txHash: settle.transaction, depositId: p.depositId, account: p.account, amount: p.depositedUnits })
      this.report('settled')
      this.log.info({ requestId: p.requestId, tx: settle.transaction }, 'optimistic payment settled')
    } catch (err) {
      if (err instanceof GatewayError && err.code === 'PAYMENT_SETTLEMENT_FAILED') {
        const r = await this.ledger.reverseProvisionalDeposit(key, { id: `reverse:${p.depositId}`, reason: String(err.metadata.reason ?? 'settle_failed'), now: Date.now() })
        this.log.warn({ requestId: p.requestId, reversed: r.reversed.toString(), shortfall: r.shortfall.toString() }, 'optimistic payment failed to settle; deposit reversed, payer blocked')
      } else {
        // Unknown outcome: the reconciler decides from the chain (and reverses if it never lands).
        this.log.warn({ requestId: p.requestId, err: (err as Error).message }, 'optimistic settlement outcome unknown')
      }
    }
  }

  /** Settles through the facilitator and confirms the Transfer log; records failures on the claim. */
  private async settleAndConfirm (decoded: DecodedPayment, requestId: string, provisional = false): Promise<SettleResponse & { transaction: Hex }> {
    const key = decoded.claimKey
    // A provisionally credited claim is marked failed only by reversing its deposit (the caller).
    const markFailed = async (update: { txHash?: string, error: string }) => {
      if (!provisional) await this.ledger.updatePaymentClaim(key, { status: 'failed', ...update })
    }
    let settle: SettleResponse
    try {
      await this.ledger.updatePaymentClaim(key, { status: 'settling' })
      settle = await this.facilitator.settle(decoded.payload as never, decoded.requirements as never)
    } catch (err) {
      await this.ledger.updatePaymentClaim(key, { status: 'unknown', error: String((err as Error).message).slice(0, 200) })
      this.report('unknown')
      this.log.warn({ requestId, err: (err as Error).message }, 'settlement outcome unknown')
      throw new GatewayError('PAYMENT_SETTLEMENT_UNKNOWN', { reason: 'settlement_outcome_unknown' })
    }
    const broadcast = /^0x[0-9a-fA-F]{64}$/.test(settle.transaction ?? '')
    if (!settle.success && broadcast) {
      // A transaction went out but its fate was not seen (e.g. "settlement_pending" after the
      // receipt wait timed out): it may well land. Never call that failed; the reconciler reads
      // the chain and credits it once, or fails it once the authorization can no longer be used.
      await this.ledger.updatePaymentClaim(key, { status: 'unknown', txHash: settle.transaction, error: settle.errorReason ?? 'settle_unconfirmed' })
      this.report('unknown')
      this.log.warn({ requestId, tx: settle.transaction, reason: settle.errorReason }, 'settlement broadcast, outcome unknown')
      throw new GatewayError('PAYMENT_SETTLEMENT_UNKNOWN', { reason: settle.errorReason ?? 'settlement_outcome_unknown', transaction: settle.transaction })
    }
    if (!settle.success || !broadcast) {
      await markFailed({ error: settle.errorReason ?? 'settle_failed' })
      this.report('failed')
      throw new GatewayError('PAYMENT_SETTLEMENT_FAILED', { reason: settle.errorReason ?? 'settle_failed' })
    }
    const tx = settle.transaction as Hex
    if (this.facilitator.confirmTransfer) {
      let confirmed: boolean
      try {
        confirmed = await this.facilitator.confirmTransfer(tx, decoded.payer, decoded.amountAtomic)
      } catch {
        await this.ledger.updatePaymentClaim(key, { status: 'unknown', txHash: tx, error: 'confirmation_failed' })
        throw new GatewayError('PAYMENT_SETTLEMENT_UNKNOWN', { reason: 'confirmation_failed', transaction: tx })
      }
      if (!confirmed) {
        await markFailed({ txHash: tx, error: 'transfer_log_missing' })
        throw new GatewayError('PAYMENT_SETTLEMENT_FAILED', { reason: 'transfer_not_confirmed', transaction: tx })
      }
    }
    return { ...settle, transaction: tx }
  }

  private async refuseIfClaimed (key: DecodedPayment['claimKey']): Promise<void> {
    if (await this.shared?.isClaimed(claimCacheKey(key))) throw new GatewayError('PAYMENT_ALREADY_USED', { reason: 'payment_already_used' })
    const existing = await this.ledger.getPaymentClaim(key)
    if (existing) throw new GatewayError('PAYMENT_ALREADY_USED', { reason: 'payment_already_used', status: existing.status })
  }

  /**
   * For an idempotent retry that re-sends a payment header which already settled: the payer it
   * credited, so the stored result of the first attempt can be returned. Never credits anything.
   */
  async settledPayerOf (header: string, headerName: 'payment-signature' | 'x-payment', ctx: Omit<DecodeContext, 'cfg' | 'nowSeconds'>): Promise<string | undefined> {
    let decoded: DecodedPayment
    try {
      decoded = decodePayment(header, headerName, { ...ctx, cfg: this.cfg, nowSeconds: this.nowSeconds(), minAtomic: 0n })
    } catch { return undefined }
    const claim = await this.ledger.getPaymentClaim(decoded.claimKey)
    return claim?.status === 'settled' ? payerAccount(this.cfg.chainId, decoded.payer) : undefined
  }
}
