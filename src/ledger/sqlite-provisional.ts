import type Database from 'better-sqlite3'
import { SYSTEM_ACCOUNTS } from './accounts.ts'
import { PaymentClaimNotFound, PaymentClaimSettled, PaymentClaimState } from './errors.ts'
import type { PaymentClaims } from './sqlite-payments.ts'
import type { TransferEngine } from './sqlite-transfers.ts'
import { canonicalMeta, claimKeyString } from './validate.ts'
import type { AccountBlock, PaymentClaimKey, ReverseProvisionalResult, TransferResult } from './types.ts'

// Optimistic settlement: a payer is credited before the on-chain settlement confirms, and if it then
// fails the credit is taken back as far as it is still there, and the payer is blocked until an
// operator resolves the rest. Every method runs inside the store's transaction.

export class Blocks {
  private readonly insert: Database.Statement
  private readonly remove: Database.Statement
  private readonly select: Database.Statement

  constructor (db: Database.Database) {
    this.insert = db.prepare('INSERT INTO blocked_accounts (account, reason, since) VALUES (?, ?, ?) ON CONFLICT DO NOTHING')
    this.remove = db.prepare('DELETE FROM blocked_accounts WHERE account = ?')
    this.select = db.prepare('SELECT reason, since FROM blocked_accounts WHERE account = ?')
  }

  /** Keeps the first reason and time when the account is already blocked. */
  block (account: string, reason: string, now: number): boolean {
    return this.insert.run(account, reason, BigInt(now)).changes === 1
  }

  unblock (account: string): boolean {
    return this.remove.run(account).changes === 1
  }

  get (account: string): AccountBlock | null {
    const r = this.select.get(account) as { reason: string, since: bigint } | undefined
    return r ? { reason: r.reason, since: Number(r.since) } : null
  }
}

export class Provisional {
  private readonly link: Database.Statement
  private readonly markReversed: Database.Statement

  constructor (db: Database.Database, private readonly engine: TransferEngine, private readonly claims: PaymentClaims,
    private readonly blocks: Blocks, private readonly clock: () => number) {
    const key = 'network = @network AND asset = @asset AND payer = @payer AND nonce = @nonce'
    this.link = db.prepare(`UPDATE payment_claims SET status = 'settling', deposit_id = @depositId, provisional = 1, updated_at = @now
      WHERE ${key} AND deposit_id IS NULL AND status IN ('claimed', 'settling', 'unknown')`)
    this.markReversed = db.prepare(`UPDATE payment_claims SET status = 'failed', error = @reason, reversal_id = @id,
      reversed_amount = @reversed, shortfall = @shortfall, reversed_at = @now, updated_at = @now
      WHERE ${key} AND provisional = 1 AND reversal_id IS NULL AND status IN ('settling', 'unknown')`)
  }

  deposit (key: PaymentClaimKey, depositId: string, account: string, amount: bigint): TransferResult {
    const k = claimKeyString(key)
    const current = this.claims.get(key)
    if (!current) throw new PaymentClaimNotFound(k)
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
      return this.engine.existing(id, fingerprint)!
    }
    if (current.status === 'settled' || current.status === 'failed') {
      throw new PaymentClaimState(k, current.status, 'only a claimed, settling or unknown claim can be credited provisionally')
    }
    const result = this.engine.postSimple(t)
    // deposit_id is UNIQUE and the claim's triggers check the link: any refusal rolls back the deposit too.
    if (this.link.run({ ...key, depositId, now: BigInt(this.clock()) }).changes !== 1) {
      throw new PaymentClaimState(k, current.status, 'changed while being credited')
    }
    return result
  }

  reverse (key: PaymentClaimKey, id: string, reason: string, now: number): ReverseProvisionalResult {
    const k = claimKeyString(key)
    const current = this.claims.get(key)
    if (!current) throw new PaymentClaimNotFound(k)
    if (current.reversal) {
      if (current.reversal.id === id) return { reversed: current.reversal.reversed, shortfall: current.reversal.shortfall }
      throw new PaymentClaimState(k, current.status, `its provisional deposit was already reversed by ${current.reversal.id}`)
    }
    if (current.depositId === null || !current.provisional) {
      if (current.status === 'settled') throw new PaymentClaimSettled(k, current.depositId)
      throw new PaymentClaimState(k, current.status, 'it has no provisional deposit to reverse')
    }
    if (current.status === 'settled') throw new PaymentClaimSettled(k, current.depositId)
    const deposit = this.engine.get(current.depositId)!
    const payer = deposit.creditAccount
    // Never below zero: whatever the payer already spent or holds in reservations is the shortfall.
    const available = this.engine.balance(payer).available
    const reversed = available <= 0n ? 0n : available < deposit.amount ? available : deposit.amount
    const shortfall = deposit.amount - reversed
    if (reversed > 0n) {
      this.engine.postSimple({
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
    const marked = this.markReversed.run({ ...key, id, reason, reversed, shortfall, now: BigInt(now) })
    if (marked.changes !== 1) throw new PaymentClaimState(k, current.status, 'changed while being reversed')
    if (reversed > 0n || shortfall > 0n) this.blocks.block(payer, reason, now)
    return { reversed, shortfall }
  }
}
