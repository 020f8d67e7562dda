import type Database from 'better-sqlite3'
import { SYSTEM_ACCOUNTS } from './accounts.ts'
import { PaymentClaimNotFound, PaymentClaimSettled } from './errors.ts'
import type { TransferEngine } from './sqlite-transfers.ts'
import { canonicalMeta, claimKeyString } from './validate.ts'
import type { ClaimResult, PaymentClaim, PaymentClaimKey, PaymentClaimStatus, PaymentClaimUpdate, TransferResult } from './types.ts'

// Durable x402 replay protection. Keys arrive already normalised (validate.normalizeClaimKey) and the
// table's CHECK refuses any that are not; every method runs inside the store's transaction.

interface ClaimRow {
  network: string
  asset: string
  payer: string
  nonce: string
  request_id: string
  amount: bigint
  status: PaymentClaimStatus
  tx_hash: string | null
  error: string | null
  deposit_id: string | null
  created_at: bigint
  updated_at: bigint
}

const KEY = 'network = @network AND asset = @asset AND payer = @payer AND nonce = @nonce'

function toClaim (r: ClaimRow): PaymentClaim {
  return {
    network: r.network,
    asset: r.asset,
    payer: r.payer,
    nonce: r.nonce,
    requestId: r.request_id,
    amount: r.amount,
    status: r.status,
    txHash: r.tx_hash,
    error: r.error,
    depositId: r.deposit_id,
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
  }
}

export class PaymentClaims {
  private readonly insert: Database.Statement
  private readonly select: Database.Statement
  private readonly patch: Database.Statement
  private readonly settle: Database.Statement

  constructor (db: Database.Database, private readonly engine: TransferEngine, private readonly clock: () => number) {
    // One statement decides who owns the nonce: whichever INSERT lands first, on any replica.
    this.insert = db.prepare(`INSERT INTO payment_claims (network, asset, payer, nonce, request_id, amount, status, created_at, updated_at)
      VALUES (@network, @asset, @payer, @nonce, @requestId, @amount, 'claimed', @now, @now) ON CONFLICT DO NOTHING`)
    this.select = db.prepare(`SELECT * FROM payment_claims WHERE ${KEY}`)
    this.patch = db.prepare(`UPDATE payment_claims SET status = @status, tx_hash = coalesce(@txHash, tx_hash),
      error = coalesce(@error, error), updated_at = @now WHERE ${KEY} AND deposit_id IS NULL`)
    this.settle = db.prepare(`UPDATE payment_claims SET status = 'settled', tx_hash = @txHash, deposit_id = @depositId,
      error = NULL, updated_at = @now WHERE ${KEY} AND deposit_id IS NULL`)
  }

  get (key: PaymentClaimKey): PaymentClaim | null {
    const row = this.select.get(key) as ClaimRow | undefined
    return row ? toClaim(row) : null
  }

  claim (key: PaymentClaimKey, requestId: string, amount: bigint): ClaimResult {
    const { changes } = this.insert.run({ ...key, requestId, amount, now: BigInt(this.clock()) })
    if (changes === 1) return { claimed: true }
    const existing = this.get(key)!
    return { claimed: false, existing: { status: existing.status, requestId: existing.requestId, txHash: existing.txHash } }
  }

  update (key: PaymentClaimKey, u: PaymentClaimUpdate): PaymentClaim {
    const current = this.get(key)
    if (!current) throw new PaymentClaimNotFound(claimKeyString(key))
    // A settled claim may be re-marked settled (e.g. with its tx hash) but never un-settled.
    if (current.depositId !== null || (current.status === 'settled' && u.status !== 'settled')) {
      throw new PaymentClaimSettled(claimKeyString(key), current.depositId)
    }
    this.patch.run({ ...key, status: u.status, txHash: u.txHash ?? null, error: u.error ?? null, now: BigInt(this.clock()) })
    return this.get(key)!
  }

  /** Posts the deposit and links it to the claim; the link is set once, so the nonce credits once. */
  settleAndDeposit (key: PaymentClaimKey, txHash: string, depositId: string, account: string, amount: bigint): TransferResult {
    const current = this.get(key)
    if (!current) throw new PaymentClaimNotFound(claimKeyString(key))
    const deposit = {
      id: depositId,
      kind: 'deposit' as const,
      debitAccount: SYSTEM_ACCOUNTS.deposits,
      creditAccount: account,
      amount,
      reference: claimKeyString(key),
      meta: canonicalMeta({ txHash }),
    }
    if (current.depositId !== null) {
      if (current.depositId !== depositId) throw new PaymentClaimSettled(claimKeyString(key), current.depositId)
      const { id, ...fingerprint } = deposit
      return this.engine.existing(id, fingerprint)!
    }
    const result = this.engine.postSimple(deposit)
    // deposit_id is UNIQUE: if this deposit id already credits another claim, the statement throws
    // and the whole transaction, deposit included, rolls back.
    this.settle.run({ ...key, txHash, depositId, now: BigInt(this.clock()) })
    return result
  }
}
