import type pg from 'pg'
import { SYSTEM_ACCOUNTS } from './accounts.ts'
import { PaymentClaimSettled, PaymentClaimState } from './errors.ts'
import { type Db, num, q } from './postgres-db.ts'
import { KEY, keyParams, type PgPaymentClaims } from './postgres-payments.ts'
import type { PgTransfers } from './postgres-transfers.ts'
import { canonicalMeta, claimKeyString } from './validate.ts'
import type { AccountBlock, PaymentClaimKey, ReverseProvisionalResult, TransferResult } from './types.ts'

// Optimistic settlement on PostgreSQL, mirroring sqlite-provisional.ts: credit before the on-chain
// settlement confirms; if it then fails, take the credit back as far as it is still there and
// block the payer. The claim row is locked first, then the payer's account row.

export class PgBlocks {
  /** Keeps the first reason and time when the account is already blocked. */
  async block (db: Db, account: string, reason: string, now: number): Promise<boolean> {
    const r = await q(db, 'INSERT INTO blocked_accounts (account, reason, since) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING', [account, reason, now])
    return r.rowCount === 1
  }

  async unblock (db: Db, account: string): Promise<boolean> {
    return (await q(db, 'DELETE FROM blocked_accounts WHERE account = $1', [account])).rowCount === 1
  }

  async get (db: Db, account: string): Promise<AccountBlock | null> {
    const r = await q<{ reason: string, since: string }>(db, 'SELECT reason, since FROM blocked_accounts WHERE account = $1', [account])
    return r.rows[0] ? { reason: r.rows[0].reason, since: num(r.rows[0].since) } : null
  }
}

export class PgProvisional {
  constructor (private readonly engine: PgTransfers, private readonly claims: PgPaymentClaims,
    private readonly blocks: PgBlocks, private readonly clock: () => number) {}

  async deposit (c: pg.PoolClient, key: PaymentClaimKey, depositId: string, account: string, amount: bigint): Promise<TransferResult> {
    const k = claimKeyString(key)
    const current = await this.claims.lock(c, key)
    const t = {
      id: depositId,
      kind: 'deposit' as const,
      debitAccount: SYSTEM_ACCOUNTS.deposits,
      creditAccount: account,
      amount,
      reference: k,
      meta: canonicalMeta({ provisional: true }),
    }
    if (current.depositId !== null) {
      if (current.depositId !== depositId || !current.provisional) throw new PaymentClaimSettled(k, current.depositId)
      // A repeat is a duplicate while the credit stands (open or settled), never once it was reversed.
      if (current.reversal) throw new PaymentClaimState(k, current.status, 'its provisional deposit was reversed')
      const { id, ...fingerprint } = t
      return (await this.engine.existing(c, id, fingerprint))!
    }
    if (current.status === 'settled' || current.status === 'failed') {
      throw new PaymentClaimState(k, current.status, 'only a claimed, settling or unknown claim can be credited provisionally')
    }
    const result = await this.engine.postSimple(c, t)
    // deposit_id is UNIQUE and the claim's trigger checks the link: any refusal rolls back the deposit too.
    const linked = await q(c, `UPDATE payment_claims SET status = 'settling', deposit_id = $5, provisional = true, updated_at = $6
      WHERE ${KEY} AND deposit_id IS NULL AND status IN ('claimed', 'settling', 'unknown')`, [...keyParams(key), depositId, this.clock()])
    if (linked.rowCount !== 1) throw new PaymentClaimState(k, current.status, 'changed while being credited')
    return result
  }

  async reverse (c: pg.PoolClient, key: PaymentClaimKey, id: string, reason: string, now: number): Promise<ReverseProvisionalResult> {
    const k = claimKeyString(key)
    const current = await this.claims.lock(c, key)
    if (current.reversal) {
      if (current.reversal.id === id) return { reversed: current.reversal.reversed, shortfall: current.reversal.shortfall }
      throw new PaymentClaimState(k, current.status, `its provisional deposit was already reversed by ${current.reversal.id}`)
    }
    if (current.depositId === null || !current.provisional) {
      if (current.status === 'settled') throw new PaymentClaimSettled(k, current.depositId)
      throw new PaymentClaimState(k, current.status, 'it has no provisional deposit to reverse')
    }
    if (current.status === 'settled') throw new PaymentClaimSettled(k, current.depositId)
    const deposit = (await this.engine.get(c, current.depositId))!
    const payer = deposit.creditAccount
    // Locked, so no reserve on another replica can spend what is being taken back. Never below
    // zero: whatever the payer already spent or holds in reservations is the shortfall.
    const available = (await this.engine.lockAccount(c, payer)).available
    const reversed = available <= 0n ? 0n : available < deposit.amount ? available : deposit.amount
    const shortfall = deposit.amount - reversed
    if (reversed > 0n) {
      await this.engine.postSimple(c, {
        id,
        kind: 'refund',
        debitAccount: payer,
        creditAccount: SYSTEM_ACCOUNTS.deposits,
        amount: reversed,
        reference: k,
        meta: canonicalMeta({ reason, reverses: deposit.id }),
      })
    }
    // The claim's trigger refuses a reversal that does not match the refund transfer and the deposit.
    const marked = await q(c, `UPDATE payment_claims SET status = 'failed', error = $5, reversal_id = $6,
      reversed_amount = $7, shortfall = $8, reversed_at = $9, updated_at = $9
      WHERE ${KEY} AND provisional AND reversal_id IS NULL AND status IN ('settling', 'unknown')`,
    [...keyParams(key), reason, id, reversed, shortfall, now])
    if (marked.rowCount !== 1) throw new PaymentClaimState(k, current.status, 'changed while being reversed')
    if (reversed > 0n || shortfall > 0n) await this.blocks.block(c, payer, reason, now)
    return { reversed, shortfall }
  }
}
