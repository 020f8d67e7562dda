import type Database from 'better-sqlite3'
import { SYSTEM_ACCOUNTS } from './accounts.ts'
import { PaymentClaimNotFound, PaymentClaimSettled, PaymentClaimState } from './errors.ts'
import type { TransferEngine } from './sqlite-transfers.ts'
import { canonicalMeta, claimKeyString } from './validate.ts'
import type {
  ClaimResult, ListPaymentClaimsInput, PaymentClaim, PaymentClaimKey, PaymentClaimStatus, PaymentClaimUpdate, TransferResult,
} from './types.ts'

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
  valid_before: bigint | null
  provisional: bigint
  reversal_id: string | null
  reversed_amount: bigint | null
  shortfall: bigint | null
  reversed_at: bigint | null
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
    validBefore: r.valid_before === null ? null : Number(r.valid_before),
    provisional: r.provisional === 1n,
    reversal: r.reversal_id === null
      ? null
      : { id: r.reversal_id, reversed: r.reversed_amount!, shortfall: r.shortfall!, at: Number(r.reversed_at) },
  }
}

/** A provisional deposit that is neither settled nor reversed yet. */
export function isOpenProvisional (c: PaymentClaim): boolean {
  return c.provisional === true && (c.status === 'settling' || c.status === 'unknown')
}

export class PaymentClaims {
  private readonly insert: Database.Statement
  private readonly select: Database.Statement
  private readonly patch: Database.Statement
  private readonly settle: Database.Statement
  private readonly confirm: Database.Statement
  private readonly byStatus: Database.Statement

  constructor (db: Database.Database, private readonly engine: TransferEngine, private readonly clock: () => number) {
    // One statement decides who owns the nonce: whichever INSERT lands first, on any replica.
    this.insert = db.prepare(`INSERT INTO payment_claims (network, asset, payer, nonce, request_id, amount, status, created_at, updated_at, valid_before)
      VALUES (@network, @asset, @payer, @nonce, @requestId, @amount, 'claimed', @now, @now, @validBefore) ON CONFLICT DO NOTHING`)
    this.select = db.prepare(`SELECT * FROM payment_claims WHERE ${KEY}`)
    // An open provisional claim may only move between settling and unknown (with its tx hash/error).
    this.patch = db.prepare(`UPDATE payment_claims SET status = @status, tx_hash = coalesce(@txHash, tx_hash),
      error = coalesce(@error, error), updated_at = @now WHERE ${KEY} AND (deposit_id IS NULL
        OR (provisional = 1 AND status IN ('settling', 'unknown') AND @status IN ('settling', 'unknown')))`)
    this.settle = db.prepare(`UPDATE payment_claims SET status = 'settled', tx_hash = @txHash, deposit_id = @depositId,
      error = NULL, updated_at = @now WHERE ${KEY} AND deposit_id IS NULL`)
    this.confirm = db.prepare(`UPDATE payment_claims SET status = 'settled', tx_hash = @txHash, error = NULL, updated_at = @now
      WHERE ${KEY} AND deposit_id = @depositId AND provisional = 1 AND status IN ('settling', 'unknown')`)
    this.byStatus = db.prepare(`SELECT * FROM payment_claims WHERE status IN (SELECT value FROM json_each(@statuses))
      AND updated_at < @before ORDER BY updated_at, created_at LIMIT @limit`)
  }

  get (key: PaymentClaimKey): PaymentClaim | null {
    const row = this.select.get(key) as ClaimRow | undefined
    return row ? toClaim(row) : null
  }

  list (q: ListPaymentClaimsInput): PaymentClaim[] {
    const rows = this.byStatus.all({ statuses: JSON.stringify(q.statuses), before: BigInt(q.updatedBefore), limit: BigInt(q.limit) })
    return (rows as ClaimRow[]).map(toClaim)
  }

  claim (key: PaymentClaimKey, requestId: string, amount: bigint, validBefore: number | null = null): ClaimResult {
    const { changes } = this.insert.run({
      ...key, requestId, amount, validBefore: validBefore === null ? null : BigInt(validBefore), now: BigInt(this.clock()),
    })
    if (changes === 1) return { claimed: true }
    const existing = this.get(key)!
    return { claimed: false, existing: { status: existing.status, requestId: existing.requestId, txHash: existing.txHash } }
  }

  update (key: PaymentClaimKey, u: PaymentClaimUpdate): PaymentClaim {
    const current = this.get(key)
    if (!current) throw new PaymentClaimNotFound(claimKeyString(key))
    if (isOpenProvisional(current) && u.status !== 'settling' && u.status !== 'unknown') {
      throw new PaymentClaimState(claimKeyString(key), current.status,
        'it has a provisional deposit: settle it with settlePaymentAndDeposit or reverse it with reverseProvisionalDeposit')
    }
    if (current.reversal) throw new PaymentClaimState(claimKeyString(key), current.status, 'its provisional deposit was reversed')
    // A settled claim may be re-marked settled (e.g. with its tx hash) but never un-settled.
    if ((current.depositId !== null && !isOpenProvisional(current)) || (current.status === 'settled' && u.status !== 'settled')) {
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
      const { id, meta, ...fingerprint } = deposit
      if (!current.provisional) return this.engine.existing(id, { ...fingerprint, meta })!
      // Credited provisionally: the same deposit (its meta says provisional) now settles the claim.
      if (current.reversal) throw new PaymentClaimState(claimKeyString(key), current.status, 'its provisional deposit was reversed')
      const seen = this.engine.existing(id, fingerprint)!
      if (current.status !== 'settled') this.confirm.run({ ...key, txHash, depositId, now: BigInt(this.clock()) })
      return seen
    }
    const result = this.engine.postSimple(deposit)
    // deposit_id is UNIQUE: if this deposit id already credits another claim, the statement throws
    // and the whole transaction, deposit included, rolls back.
    this.settle.run({ ...key, txHash, depositId, now: BigInt(this.clock()) })
    return result
  }
}
