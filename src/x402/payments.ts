import type { Hex } from 'viem'
import type { SettleResponse } from '@x402/core/types'
import { GatewayError } from '../errors.ts'
import { atomicToLedger } from '../money.ts'
import type { LedgerStore } from '../ledger/types.ts'
import { payerAccount } from '../ledger/accounts.ts'
import { decodePayment, type DecodeContext, type DecodedPayment } from './payment-header.ts'
import { FacilitatorUnreachable, SettlementOutcomeUnknown, type Facilitator } from './facilitator.ts'
import type { X402Config } from './requirements.ts'

export interface AcceptedPayment {
  version: 1 | 2
  account: string
  payer: string
  depositedUnits: bigint
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
      // A replay that lost the race to settlement fails simulation with a generic reason; say why.
      await this.refuseIfClaimed(key)
      throw new GatewayError('PAYMENT_INVALID', { reason: verify.invalidReason ?? 'invalid_payment' }, `The payment was not accepted: ${verify.invalidReason ?? 'invalid'}.`)
    }

    const claim = await this.ledger.claimPayment({ ...key, requestId: ctx.requestId, amount: decoded.amountAtomic })
    if (!claim.claimed) {
      throw new GatewayError('PAYMENT_ALREADY_USED', { reason: 'payment_already_used', status: claim.existing.status })
    }

    let settle: SettleResponse
    try {
      await this.ledger.updatePaymentClaim(key, { status: 'settling' })
      settle = await this.facilitator.settle(payload, requirements)
    } catch (err) {
      const unknown = err instanceof SettlementOutcomeUnknown || err instanceof FacilitatorUnreachable
      await this.ledger.updatePaymentClaim(key, { status: unknown ? 'unknown' : 'failed', error: String((err as Error).message).slice(0, 200) })
      this.log.warn({ requestId: ctx.requestId, err: (err as Error).message }, 'settlement outcome unknown')
      throw new GatewayError('PAYMENT_SETTLEMENT_UNKNOWN', { reason: 'settlement_outcome_unknown' })
    }
    if (!settle.success || !/^0x[0-9a-fA-F]{64}$/.test(settle.transaction)) {
      await this.ledger.updatePaymentClaim(key, { status: 'failed', error: settle.errorReason ?? 'settle_failed' })
      throw new GatewayError('PAYMENT_SETTLEMENT_FAILED', { reason: settle.errorReason ?? 'settle_failed' })
    }

    const tx = settle.transaction as Hex
    if (this.facilitator.confirmTransfer) {
      let confirmed: boolean
      try {
        confirmed = await this.facilitator.confirmTransfer(tx, decoded.payer, decoded.amountAtomic)
      } catch (err) {
        await this.ledger.updatePaymentClaim(key, { status: 'unknown', txHash: tx, error: 'confirmation_failed' })
        throw new GatewayError('PAYMENT_SETTLEMENT_UNKNOWN', { reason: 'confirmation_failed', transaction: tx })
      }
      if (!confirmed) {
        await this.ledger.updatePaymentClaim(key, { status: 'failed', txHash: tx, error: 'transfer_log_missing' })
        throw new GatewayError('PAYMENT_SETTLEMENT_FAILED', { reason: 'transfer_not_confirmed', transaction: tx })
      }
    }

    const account = payerAccount(this.cfg.chainId, decoded.payer)
    const depositedUnits = atomicToLedger(decoded.amountAtomic, this.cfg.assetDecimals)
    await this.ledger.settlePaymentAndDeposit(key, {
      txHash: tx,
      depositId: `deposit:${key.network}:${key.asset}:${key.payer}:${key.nonce}`,
      account,
      amount: depositedUnits,
    })
    this.log.info({ requestId: ctx.requestId, tx, amount: decoded.amountAtomic.toString() }, 'payment settled and deposited')
    return { version: decoded.version, account, payer: decoded.payer, depositedUnits, settle: { ...settle, payer: settle.payer ?? decoded.payer } }
  }

  private async refuseIfClaimed (key: DecodedPayment['claimKey']): Promise<void> {
    const existing = await this.ledger.getPaymentClaim(key)
    if (existing) throw new GatewayError('PAYMENT_ALREADY_USED', { reason: 'payment_already_used', status: existing.status })
  }
}
