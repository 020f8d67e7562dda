import type pg from 'pg'
import { SYSTEM_ACCOUNTS } from './accounts.ts'
import { PaymentClaimNotFound, PaymentClaimSettled, PaymentClaimState } from './errors.ts'
import { big, type Db, num, numOrNull, q } from './postgres-db.ts'
import type { PgTransfers } from './postgres-transfers.ts'
import { canonicalMeta, claimKeyString } from './validate.ts'
import type {
  ClaimResult, ListPaymentClaimsInput, PaymentClaim, PaymentClaimKey, PaymentClaimStatus, PaymentClaimUpdate, TransferResult,
} from './types.ts'

// Durable x402 replay protection on PostgreSQL, mirroring sqlite-payments.ts. Keys arrive
// normalised (validate.normalizeClaimKey). Whatever changes a claim first locks its row, so two
// replicas settling, crediting or reversing one claim take turns and the second sees the first's outcome.

interface PgClaimRow {
  network: string
  asset: string
  payer: string
  nonce: string
  request_id: string
  amount: string
  status: PaymentClaimStatus
  tx_hash: string | null
  error: string | null
  deposit_id: string | null
  created_at: string
  updated_at: string
  valid_before: string | null
  provisional: boolean
  reversal_id: string | null
  reversed_amount: string | null
  shortfall: string | null
  reversed_at: string | null
}

/** The claim key as $1..$4. */
export const KEY = 'network = $1 AND asset = $2 AND payer = $3 AND nonce = $4'
export const keyParams = (k: PaymentClaimKey): unknown[] => [k.network, k.asset, k.payer, k.nonce]

function toClaim (r: PgClaimRow): PaymentClaim {
  return {
    network: r.network,
    asset: r.asset,
    payer: r.payer,
    nonce: r.nonce,
    requestId: r.request_id,
    amount: big(r.amount),
    status: r.status,
    txHash: r.tx_hash,
    error: r.error,
    depositId: r.deposit_id,
    createdAt: num(r.created_at),
    updatedAt: num(r.updated_at),
    validBefore: numOrNull(r.valid_before),
    provisional: r.provisional,
    reversal: r.reversal_id === null
      ? null
      : { id: r.reversal_id, reversed: big(r.reversed_amount!), shortfall: big(r.shortfall!), at: num(r.reversed_at!) },
  }
}

/** A provisional deposit that is neither settled nor reversed yet. */
export function isOpenProvisional (c: PaymentClaim): boolean {
  return c.provisional === true && (c.status === 'settling' || c.status === 'unknown')
}

export class PgPaymentClaims {
  constructor (private readonly engine: PgTransfers, private readonly clock: () => number) {}

  async get (db: Db, key: PaymentClaimKey, { lock = false } = {}): Promise<PaymentClaim | null> {
    const r = await q<PgClaimRow>(db, `SELECT * FROM payment_claims WHERE ${KEY}${lock ? ' FOR NO KEY UPDATE' : ''}`, keyParams(key))
    return r.rows[0] ? toClaim(r.rows[0]) : null
  }

  /** Locks the claim row for the rest of the transaction; throws PaymentClaimNotFound. */
  async lock (c: pg.PoolClient, key: PaymentClaimKey): Promise<PaymentClaim> {
    const current = await this.get(c, key, { lock: true })
    if (!current) throw new PaymentClaimNotFound(claimKeyString(key))
    return current
  }

  async list (db: Db, l: ListPaymentClaimsInput): Promise<PaymentClaim[]> {
    const r = await q<PgClaimRow>(db, `SELECT * FROM payment_claims WHERE status = ANY($1::text[]) AND updated_at < $2
      ORDER BY updated_at, created_at, network, asset, payer, nonce LIMIT $3`, [l.statuses, l.updatedBefore, l.limit])
    return r.rows.map(toClaim)
  }

  /** One statement decides who owns the nonce: whichever INSERT lands first, on any replica. */
  async claim (db: Db, key: PaymentClaimKey, requestId: string, amount: bigint, validBefore: number | null): Promise<ClaimResult> {
    const now = this.clock()
    const r = await q(db, `INSERT INTO payment_claims (network, asset, payer, nonce, request_id, amount, status, created_at, updated_at, valid_before)
      VALUES ($1, $2, $3, $4, $5, $6, 'claimed', $7, $7, $8) ON CONFLICT DO NOTHING`, [...keyParams(key), requestId, amount, now, validBefore])
    if (r.rowCount === 1) return { claimed: true }
    const existing = (await this.get(db, key))!
    return { claimed: false, existing: { status: existing.status, requestId: existing.requestId, txHash: existing.txHash } }
  }

  async update (c: pg.PoolClient, key: PaymentClaimKey, u: PaymentClaimUpdate): Promise<PaymentClaim> {
    const current = await this.lock(c, key)
    const k = claimKeyString(key)
    if (isOpenProvisional(current) && u.status !== 'settling' && u.status !== 'unknown') {
      throw new PaymentClaimState(k, current.status,
        'it has a provisional deposit: settle it with settlePaymentAndDeposit or reverse it with reverseProvisionalDeposit')
    }
    if (current.reversal) throw new PaymentClaimState(k, current.status, 'its provisional deposit was reversed')
    // A settled claim may be re-marked settled (e.g. with its tx hash) but never un-settled.
    if ((current.depositId !== null && !isOpenProvisional(current)) || (current.status === 'settled' && u.status !== 'settled')) {
      throw new PaymentClaimSettled(k, current.depositId)
    }
    const r = await q<PgClaimRow>(c, `UPDATE payment_claims SET status = $5, tx_hash = coalesce($6, tx_hash),
      error = coalesce($7, error), updated_at = $8 WHERE ${KEY} AND (deposit_id IS NULL
        OR (provisional AND status IN ('settling', 'unknown') AND $5 IN ('settling', 'unknown'))) RETURNING *`,
    [...keyParams(key), u.status, u.txHash ?? null, u.error ?? null, this.clock()])
    return r.rows[0] ? toClaim(r.rows[0]) : (await this.get(c, key))!
  }

  /** Posts the deposit and links it to the claim; the link is set once, so the nonce credits once. */
  async settleAndDeposit (c: pg.PoolClient, key: PaymentClaimKey, txHash: string, depositId: string, account: string, amount: bigint): Promise<TransferResult> {
    const current = await this.lock(c, key)
    const k = claimKeyString(key)
    const deposit = {
      id: depositId,
      kind: 'deposit' as const,
      debitAccount: SYSTEM_ACCOUNTS.deposits,
      creditAccount: account,
      amount,
      reference: k,
      meta: canonicalMeta({ txHash }),
    }
    if (current.depositId !== null) {
      if (current.depositId !== depositId) throw new PaymentClaimSettled(k, current.depositId)
      const { id, meta, ...fingerprint } = deposit
      if (!current.provisional) return (await this.engine.existing(c, id, { ...fingerprint, meta }))!
      // Credited provisionally: the same deposit (its meta says provisional) now settles the claim.
      if (current.reversal) throw new PaymentClaimState(k, current.status, 'its provisional deposit was reversed')
      const seen = (await this.engine.existing(c, id, fingerprint))!
      if (current.status !== 'settled') {
        await q(c, `UPDATE payment_claims SET status = 'settled', tx_hash = $5, error = NULL, updated_at = $6
          WHERE ${KEY} AND deposit_id = $7 AND provisional AND status IN ('settling', 'unknown')`,
        [...keyParams(key), txHash, this.clock(), depositId])
      }
      return seen
    }
    const result = await this.engine.postSimple(c, deposit)
    // deposit_id is UNIQUE: if this deposit id already credits another claim, the statement throws
    // and the whole transaction, deposit included, rolls back.
    await q(c, `UPDATE payment_claims SET status = 'settled', tx_hash = $5, deposit_id = $6, error = NULL, updated_at = $7
      WHERE ${KEY} AND deposit_id IS NULL`, [...keyParams(key), txHash, depositId, this.clock()])
    return result
  }
}
