import Database from 'better-sqlite3'
import { assertPayerAccount, SYSTEM_ACCOUNTS } from './accounts.ts'
import { InsufficientCredit, LedgerArgumentInvalid, LedgerInvariantBroken, PendingAlreadyResolved, PendingNotFound } from './errors.ts'
import { Audit } from './sqlite-audit.ts'
import { SqliteStoreBase } from './sqlite-base.ts'
import { PaymentClaims } from './sqlite-payments.ts'
import { Blocks, Provisional } from './sqlite-provisional.ts'
import { Receipts } from './sqlite-receipts.ts'
import { migrate } from './sqlite-schema.ts'
import type { NewTransfer } from './sqlite-transfers.ts'
import { grantTransfer, reserveTransfer } from './inputs.ts'
import {
  canonicalMeta, checkAmount, checkEpochMs, checkId, checkLimit, checkListClaims, checkPositiveInt, checkText,
  checkUnixSeconds, checkUpstreamCost, checkWindow, type CheckedUpstreamCost, normalizeClaimKey,
} from './validate.ts'
import type {
  AccountBlock, Balance, ClaimResult, DepositInput, GrantInput, LedgerStore, LedgerTotals, ListPaymentClaimsInput,
  MarginRow, PaymentClaim, PaymentClaimInput, PaymentClaimKey, PaymentClaimUpdate, PostInput, ProvisionalDepositInput, Receipt,
  ReceiptPatch, RecordUpstreamCostInput, ReserveInput, ReserveResult, ReverseProvisionalInput, ReverseProvisionalResult,
  SettleDepositInput, Transfer, TransferResult, UsageWindow, VoidInput,
} from './types.ts'

export interface SqliteLedgerOptions {
  clock?: () => number
  /** How long a writer waits for another connection's write lock before failing with SQLITE_BUSY. */
  busyTimeoutMs?: number
}

const CLAIM_STATUSES = new Set(['settling', 'settled', 'failed', 'unknown'])

/**
 * Opens (creating and migrating if needed) a ledger file. One file serves one replica; several
 * connections to the same file are safe because every operation is one BEGIN IMMEDIATE transaction
 * and the invariants are in the schema. `:memory:` gives a private ledger for tests.
 */
export async function openSqliteLedger (path: string, opts: SqliteLedgerOptions = {}): Promise<LedgerStore> {
  const clock = opts.clock ?? Date.now
  const db = new Database(path)
  try {
    db.defaultSafeIntegers(true)
    // busy_timeout first: the WAL switch itself needs a lock another connection may hold.
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(opts.busyTimeoutMs ?? 5000))}`)
    db.pragma('journal_mode = WAL')
    // FULL: a deposit acknowledged to a payer must survive power loss, not only a process crash.
    db.pragma('synchronous = FULL')
    db.pragma('foreign_keys = ON')
    migrate(db, clock())
  } catch (err) {
    db.close()
    throw err
  }
  return new SqliteLedger(db, clock)
}

function isNegativePayer (err: unknown): boolean {
  return err instanceof Database.SqliteError && err.code === 'SQLITE_CONSTRAINT_CHECK' &&
    err.message.includes('payer_not_negative')
}

/** The transfers_refuse_blocked trigger (a backstop: reserve checks the block first). */
function isBlockedPayer (err: unknown): boolean {
  return err instanceof Database.SqliteError && err.message.includes('ledger: account_blocked')
}

/** The money operations; the transaction plumbing and the access records are in SqliteStoreBase. */
class SqliteLedger extends SqliteStoreBase implements LedgerStore {
  private readonly claims: PaymentClaims
  private readonly receiptsTable: Receipts
  private readonly audit: Audit
  private readonly blocks: Blocks
  private readonly provisional: Provisional

  constructor (db: Database.Database, clock: () => number) {
    super(db, clock)
    this.claims = new PaymentClaims(db, this.engine, clock)
    this.receiptsTable = new Receipts(db)
    this.audit = new Audit(db)
    this.blocks = new Blocks(db)
    this.provisional = new Provisional(db, this.engine, this.claims, this.blocks, clock)
  }

  async deposit (input: DepositInput): Promise<TransferResult> {
    const t: NewTransfer = {
      id: checkId('id', input.id),
      kind: 'deposit',
      debitAccount: SYSTEM_ACCOUNTS.deposits,
      creditAccount: assertPayerAccount(input.account),
      amount: checkAmount('amount', input.amount),
      reference: checkText('reference', input.reference),
      meta: canonicalMeta(input.meta),
    }
    return this.tx(() => this.engine.postSimple(t))
  }

  async grant (input: GrantInput): Promise<TransferResult> {
    return this.tx(() => this.engine.postSimple(grantTransfer('grant', input)))
  }

  async clawback (input: GrantInput): Promise<TransferResult> {
    const t = grantTransfer('clawback', input)
    try {
      return this.tx(() => this.engine.postSimple(t))
    } catch (err) {
      if (!isNegativePayer(err)) throw err
      throw new InsufficientCredit(t.debitAccount, this.engine.balance(t.debitAccount).available, t.amount)
    }
  }

  async reserve (input: ReserveInput): Promise<ReserveResult> {
    const t = reserveTransfer(input)
    const maxOpen = input.maxOpen === undefined ? undefined : checkPositiveInt('maxOpen', input.maxOpen)
    const available = (): bigint => this.engine.balance(t.debitAccount).available
    try {
      return this.tx((): ReserveResult => {
        const { id, ...fingerprint } = t
        const seen = this.engine.existing(id, fingerprint)
        if (seen) return { ok: true as const, ...seen }
        const now = this.clock()
        if (t.timeoutAt! <= now) throw new LedgerArgumentInvalid('timeoutAt', 'is already past')
        // Decided under the write lock, so a block or a concurrent reserve cannot slip in between.
        if (this.blocks.get(t.debitAccount)) return { ok: false, code: 'account_blocked', available: available() }
        if (maxOpen !== undefined) {
          const open = this.reports.openReservations(t.debitAccount, now)
          if (open >= maxOpen) return { ok: false, code: 'too_many_reservations', open, available: available() }
        }
        // Reservations past their timeout no longer hold credit, swept or not: a reserve that would
        // be refused expires the payer's overdue ones first (a crashed replica's, say), then decides.
        if (available() < t.amount) {
          for (const p of this.engine.dueFor(t.debitAccount, now)) this.engine.expire(p)
          const left = available()
          if (left < t.amount) return { ok: false, code: 'insufficient_credit', available: left }
        }
        // The CHECK on the payer's row also refuses an overdraft, atomically with the insert.
        return { ok: true as const, transfer: this.engine.append(t), duplicate: false }
      })
    } catch (err) {
      if (isBlockedPayer(err)) return { ok: false, code: 'account_blocked', available: available() }
      if (!isNegativePayer(err)) throw err
      return { ok: false, code: 'insufficient_credit', available: available() }
    }
  }

  async post (input: PostInput): Promise<TransferResult> {
    const pendingId = checkId('pendingId', input.pendingId)
    const id = checkId('id', input.id)
    const amount = checkAmount('amount', input.amount, { allowZero: true })
    const upstream = checkUpstreamCost(input.upstreamCost)
    return this.resolve(pendingId, upstream, () => {
      const seen = this.engine.existing(id, { kind: 'post', pendingId, amount })
      if (seen) return seen
      const open = this.engine.openPending(pendingId)
      if ('expiredNow' in open) return null
      return { transfer: this.engine.resolve('post', id, open.pending, amount, null), duplicate: false }
    })
  }

  async void (input: VoidInput): Promise<TransferResult> {
    const pendingId = checkId('pendingId', input.pendingId)
    const id = checkId('id', input.id)
    const meta = canonicalMeta({ reason: checkText('reason', input.reason) })
    const upstream = checkUpstreamCost(input.upstreamCost)
    return this.resolve(pendingId, upstream, () => {
      const seen = this.engine.existing(id, { kind: 'void', pendingId, meta })
      if (seen) return seen
      const open = this.engine.openPending(pendingId)
      if ('expiredNow' in open) return null
      return { transfer: this.engine.resolve('void', id, open.pending, open.pending.amount, meta), duplicate: false }
    })
  }

  /**
   * null from the step means "expired during this call": commit that, then report it. The upstream
   * cost is recorded in the same transaction whatever the step decided (the upstream was paid
   * either way); a step that throws records nothing.
   */
  private resolve (pendingId: string, upstream: CheckedUpstreamCost | undefined, step: () => TransferResult | null): TransferResult {
    const result = this.tx(() => {
      const r = step()
      if (upstream) this.engine.upstreamCost(this.engine.get(pendingId)!, upstream)
      return r
    })
    if (result === null) throw new PendingAlreadyResolved(pendingId, 'expired')
    return result
  }

  async recordUpstreamCost (input: RecordUpstreamCostInput): Promise<TransferResult> {
    const pendingId = checkId('pendingId', input?.pendingId)
    const upstream = checkUpstreamCost(input)!
    return this.tx(() => {
      const p = this.engine.get(pendingId)
      if (!p || p.kind !== 'pending') throw new PendingNotFound(pendingId)
      return this.engine.upstreamCost(p, upstream)
    })
  }

  async margin (window: UsageWindow): Promise<MarginRow[]> {
    const w = checkWindow(window)
    return this.snapshot(() => this.reports.margin(w))
  }

  async expirePending (now: number): Promise<number> {
    checkEpochMs('now', now)
    return this.tx(() => {
      const due = this.engine.dueBefore(now)
      for (const p of due) this.engine.expire(p)
      return due.length
    })
  }

  async balance (account: string): Promise<Balance> {
    return this.engine.balance(checkId('account', account))
  }

  async transfers (account: string, opts: { limit?: number } = {}): Promise<Transfer[]> {
    return this.engine.list(checkId('account', account), checkLimit(opts.limit))
  }

  async getTransfer (id: string): Promise<Transfer | null> {
    return this.engine.get(checkId('id', id))
  }

  async claimPayment (input: PaymentClaimInput): Promise<ClaimResult> {
    const key = normalizeClaimKey(input)
    const requestId = checkId('requestId', input.requestId)
    const amount = checkAmount('amount', input.amount)
    const validBefore = input.validBefore === undefined ? null : checkUnixSeconds('validBefore', input.validBefore)
    return this.claims.claim(key, requestId, amount, validBefore)
  }

  async updatePaymentClaim (key: PaymentClaimKey, update: PaymentClaimUpdate): Promise<PaymentClaim> {
    const k = normalizeClaimKey(key)
    if (!CLAIM_STATUSES.has(update?.status)) throw new LedgerArgumentInvalid('status', 'must be settling, settled, failed or unknown')
    if (update.txHash !== undefined) checkText('txHash', update.txHash)
    if (update.error !== undefined) checkText('error', update.error)
    return this.tx(() => this.claims.update(k, update))
  }

  async getPaymentClaim (key: PaymentClaimKey): Promise<PaymentClaim | null> {
    return this.claims.get(normalizeClaimKey(key))
  }

  async settlePaymentAndDeposit (key: PaymentClaimKey, input: SettleDepositInput): Promise<TransferResult> {
    const k = normalizeClaimKey(key)
    const txHash = checkText('txHash', input.txHash)
    const depositId = checkId('depositId', input.depositId)
    const account = assertPayerAccount(input.account)
    const amount = checkAmount('amount', input.amount)
    return this.tx(() => this.claims.settleAndDeposit(k, txHash, depositId, account, amount))
  }

  async provisionalDeposit (key: PaymentClaimKey, input: ProvisionalDepositInput): Promise<TransferResult> {
    const k = normalizeClaimKey(key)
    const depositId = checkId('depositId', input?.depositId)
    const account = assertPayerAccount(input.account)
    const amount = checkAmount('amount', input.amount)
    return this.tx(() => this.provisional.deposit(k, depositId, account, amount))
  }

  async reverseProvisionalDeposit (key: PaymentClaimKey, input: ReverseProvisionalInput): Promise<ReverseProvisionalResult> {
    const k = normalizeClaimKey(key)
    const id = checkId('id', input?.id)
    const reason = checkText('reason', input.reason)
    const now = checkEpochMs('now', input.now)
    return this.tx(() => this.provisional.reverse(k, id, reason, now))
  }

  async listPaymentClaims (input: ListPaymentClaimsInput): Promise<PaymentClaim[]> {
    const q = checkListClaims(input)
    return this.claims.list(q)
  }

  async blockAccount (account: string, reason: string, now: number): Promise<boolean> {
    return this.blocks.block(assertPayerAccount(account), checkText('reason', reason), checkEpochMs('now', now))
  }

  async unblockAccount (account: string): Promise<boolean> {
    return this.blocks.unblock(assertPayerAccount(account))
  }

  async accountBlock (account: string): Promise<AccountBlock | null> {
    return this.blocks.get(checkId('account', account))
  }

  async putReceipt (receipt: Receipt): Promise<void> {
    this.receiptsTable.put(receipt)
  }

  async updateReceipt (id: string, patch: ReceiptPatch): Promise<Receipt | null> {
    return this.tx(() => this.receiptsTable.update(checkId('id', id), patch))
  }

  async getReceipt (id: string): Promise<Receipt | null> {
    return this.receiptsTable.get(checkId('id', id))
  }

  async receipts (payer: string, opts: { limit?: number } = {}): Promise<Receipt[]> {
    return this.receiptsTable.list(checkId('payer', payer), checkLimit(opts.limit))
  }

  async closeStaleReceipts (before: number, now: number): Promise<number> {
    checkEpochMs('before', before)
    checkEpochMs('now', now)
    return this.tx(() => this.receiptsTable.closeStale(before, now))
  }

  async totals (): Promise<LedgerTotals> {
    return this.snapshot(() => this.audit.totals())
  }

  async checkInvariants (): Promise<void> {
    // One transaction, so the audit reads a single consistent snapshot.
    const problems = this.snapshot(() => this.audit.problems())
    if (problems.length > 0) throw new LedgerInvariantBroken(problems)
  }

}
