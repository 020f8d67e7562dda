import { createPublicClient, http, parseAbiItem, type Hex } from 'viem'
import type { LedgerStore, PaymentClaim } from '../ledger/types.ts'
import { payerAccount } from '../ledger/accounts.ts'
import { atomicToLedger } from '../money.ts'
import { depositIdFor } from './payments.ts'
import type { X402Config } from './requirements.ts'
import type { Facilitator } from './facilitator.ts'

// A settle that timed out has an unknown outcome (PROTOCOLS.md §2). This job decides it from the
// chain: the authorization was used and the matching Transfer is in that transaction → deposit
// (idempotently, under the same deposit id the request would have used); the authorization can no
// longer be used (expired, unused) → failed. Anything else stays unknown and is looked at again.

const authorizationStateAbi = [{
  type: 'function', name: 'authorizationState', stateMutability: 'view',
  inputs: [{ name: 'authorizer', type: 'address' }, { name: 'nonce', type: 'bytes32' }],
  outputs: [{ type: 'bool' }],
}] as const
const authorizationUsed = parseAbiItem('event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce)')

export interface ReconcileResult { examined: number, deposited: number, failed: number, stillUnknown: number }

export interface ReconcilerDeps {
  cfg: X402Config
  rpcUrl: string
  ledger: LedgerStore
  confirmTransfer: NonNullable<Facilitator['confirmTransfer']>
  nowMs: () => number
  log: { info (o: object, m: string): void, warn (o: object, m: string): void }
  /** Claims stuck in 'settling' this long are presumed to have died mid-settle (crash). */
  settlingGraceMs?: number
}

export function createReconciler (deps: ReconcilerDeps) {
  const client = createPublicClient({ transport: http(deps.rpcUrl, { timeout: 15_000 }) })
  const asset = deps.cfg.asset

  /** A claim that already credited provisionally (optimistic mode) is reversed, not just marked. */
  async function fail (claim: PaymentClaim, reason: string, tx?: Hex) {
    if (claim.depositId) {
      await deps.ledger.reverseProvisionalDeposit(claim, { id: `reverse:${claim.depositId}`, reason, now: deps.nowMs() })
    } else {
      await deps.ledger.updatePaymentClaim(claim, { status: 'failed', txHash: tx, error: reason })
    }
  }

  async function decide (claim: PaymentClaim): Promise<'deposited' | 'failed' | 'unknown'> {
    const payer = claim.payer as Hex
    const nonce = claim.nonce as Hex
    const used = await client.readContract({ address: asset, abi: authorizationStateAbi, functionName: 'authorizationState', args: [payer, nonce] })
    if (!used) {
      const expired = claim.validBefore != null && deps.nowMs() / 1000 > claim.validBefore + 60
      if (!expired) return 'unknown'
      await fail(claim, 'authorization_expired_unused')
      return 'failed'
    }
    const logs = await client.getLogs({ address: asset, event: authorizationUsed, args: { authorizer: payer, nonce }, fromBlock: 0n, toBlock: 'latest' })
    const tx = logs[0]?.transactionHash
    if (!tx || !(await deps.confirmTransfer(tx, claim.payer, claim.amount))) {
      // Used, but not by a transfer to us (e.g. cancelAuthorization): not a payment.
      await fail(claim, 'authorization_used_without_payment', tx)
      return 'failed'
    }
    await deps.ledger.settlePaymentAndDeposit(claim, {
      txHash: tx,
      depositId: depositIdFor(claim),
      account: payerAccount(deps.cfg.chainId, claim.payer),
      amount: atomicToLedger(claim.amount, deps.cfg.assetDecimals),
    })
    return 'deposited'
  }

  async function runOnce (): Promise<ReconcileResult> {
    const now = deps.nowMs()
    const claims = [
      ...await deps.ledger.listPaymentClaims({ statuses: ['unknown'], updatedBefore: now, limit: 100 }),
      ...await deps.ledger.listPaymentClaims({ statuses: ['settling', 'claimed'], updatedBefore: now - (deps.settlingGraceMs ?? 10 * 60_000), limit: 100 }),
    ]
    const result: ReconcileResult = { examined: claims.length, deposited: 0, failed: 0, stillUnknown: 0 }
    for (const claim of claims) {
      try {
        const outcome = await decide(claim)
        if (outcome === 'deposited') result.deposited++
        else if (outcome === 'failed') result.failed++
        else result.stillUnknown++
        if (outcome !== 'unknown') deps.log.info({ payer: claim.payer, nonce: claim.nonce, outcome }, 'reconciled payment')
      } catch (err) {
        result.stillUnknown++
        deps.log.warn({ nonce: claim.nonce, err: (err as Error).message }, 'reconciliation attempt failed')
      }
    }
    return result
  }

  let timer: NodeJS.Timeout | undefined
  return {
    runOnce,
    start (everyMs = 30_000) {
      timer = setInterval(() => { runOnce().catch(() => undefined) }, everyMs)
      timer.unref()
    },
    stop () { if (timer) clearInterval(timer) },
  }
}
