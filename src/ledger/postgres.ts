import pg from 'pg'
import { assertPayerAccount, SYSTEM_ACCOUNTS } from './accounts.ts'
import { InsufficientCredit, LedgerArgumentInvalid, LedgerInvariantBroken, PendingAlreadyResolved, PendingNotFound } from './errors.ts'
import { PgAudit } from './postgres-audit.ts'
import { PgStoreBase } from './postgres-base.ts'
import { isCheck, isRefusal } from './postgres-db.ts'
import { PgPaymentClaims } from './postgres-payments.ts'
import { PgBlocks, PgProvisional } from './postgres-provisional.ts'
import { migrate } from './postgres-schema.ts'
import { sameRequest } from './postgres-transfers.ts'
import type { NewTransfer } from './sqlite-transfers.ts'
import { grantTransfer, reserveTransfer } from './inputs.ts'
import {
  canonicalMeta, checkAmount, checkEpochMs, checkId, checkLimit, checkListClaims, checkPositiveInt, checkText,
  checkUnixSeconds, checkUpstreamCost, checkWindow, type CheckedUpstreamCost, normalizeClaimKey,
} from './validate.ts'
import type {
  AccountBlock, Balance, ClaimResult, DepositInput, GrantInput, LedgerStore, LedgerTotals, ListPaymentClaimsInput,
  MarginRow, PaymentClaim, PaymentClaimInput, PaymentClaimKey, PaymentClaimUpdate, PostInput, ProvisionalDepositInput,
  RecordUpstreamCostInput, ReserveInput, ReserveResult, ReverseProvisionalInput, ReverseProvisionalResult, SettleDepositInput,
  Transfer, TransferResult, UsageWindow, VoidInput,
} from './types.ts'

export interface PostgresLedgerOptions {
  clock?: () => number
  /** Connections in this replica's pool (default 10). */
  poolSize?: number
}

const CLAIM_STATUSES = new Set(['settling', 'settled', 'failed', 'unknown'])

/**
 * Connects to a PostgreSQL ledger (postgres:// or postgresql:// URL), applying any pending
 * migrations first. Any number of replicas may share the database: every operation is one
 * transaction whose decisions are taken under row locks, and the invariants are in the schema.
 */
export async function openPostgresLedger (url: string, opts: PostgresLedgerOptions = {}): Promise<LedgerStore> {
  const clock = opts.clock ?? Date.now
  const pool = new pg.Pool({
    connectionString: url,
    max: Math.max(1, Math.floor(opts.poolSize ?? 10)),
    application_name: 'x402-ledger',
    // While the database is down or restarting, fail fast (503 ledger_unavailable) rather than
    // queue requests behind a connect that may never finish.
    connectionTimeoutMillis: 5_000,
  })
  // An idle connection the server dropped is discarded by the pool; the next query reconnects.
  // Without a listener the 'error' event would crash the process.
  pool.on('error', () => {})
  try {
    await migrate(pool, clock())
  } catch (err) {
    await pool.end().catch(() => {})
    throw err
  }
  return new PostgresLedger(pool, clock)
}

/** The money operations; the transaction plumbing and the access records are in PgStoreBase. */
class PostgresLedger extends PgStoreBase implements LedgerStore {
  private readonly claims: PgPaymentClaims
  private readonly audit = new PgAudit()
  private readonly blocks = new PgBlocks()
  private readonly provisional: PgProvisional

  constructor (pool: pg.Pool, clock: () => number) {
    super(pool, clock)
    this.claims = new PgPaymentClaims(this.engine, clock)
    this.provisional = new PgProvisional(this.engine, this.claims, this.blocks, clock)
  }

  private available (account: string): Promise<bigint> {
    return this.engine.balance(this.pool, account).then((b) => b.available)
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
    return this.tx((c) => this.engine.postSimple(c, t), 'autocommit')
  }

  async grant (input: GrantInput): Promise<TransferResult> {
    const t = grantTransfer('grant', input)
    return this.tx((c) => this.engine.postSimple(c, t), 'autocommit')
  }

  async clawback (input: GrantInput): Promise<TransferResult> {
    const t = grantTransfer('clawback', input)
    try {
      return await this.tx(async (c) => {
        // Locked: the credit seen here is the credit the clawback takes, on every replica.
        const { available } = await this.engine.lockAccount(c, t.debitAccount)
        const { id, ...fingerprint } = t
        const seen = await this.engine.existing(c, id, { ...fingerprint, meta: t.meta ?? null })
        if (seen) return seen
        if (t.amount > available) throw new InsufficientCredit(t.debitAccount, available, t.amount)
        return { transfer: await this.engine.append(c, t), duplicate: false }
      })
    } catch (err) {
      if (!isCheck(err, 'payer_not_negative')) throw err
      throw new InsufficientCredit(t.debitAccount, await this.available(t.debitAccount), t.amount)
    }
  }

  async reserve (input: ReserveInput): Promise<ReserveResult> {
    const t = reserveTransfer(input)
    const maxOpen = input.maxOpen === undefined ? undefined : checkPositiveInt('maxOpen', input.maxOpen)
    try {
      return await this.tx(async (c): Promise<ReserveResult> => {
        // The payer's row lock makes the block check, the open count, the credit check and the insert
        // one decision: a reserve (or reversal) of this payer on another replica waits for it.
        const { available } = await this.engine.lockAccount(c, t.debitAccount)
        const now = this.clock()
        const { id, ...fingerprint } = t
        const checks = await this.engine.reserveChecks(c, t.debitAccount, id, now, maxOpen !== undefined)
        const seen = sameRequest(id, checks.found, fingerprint)
        if (seen) return { ok: true as const, ...seen }
        if (t.timeoutAt! <= now) throw new LedgerArgumentInvalid('timeoutAt', 'is already past')
        if (checks.blocked) return { ok: false, code: 'account_blocked', available }
        if (maxOpen !== undefined && checks.open >= maxOpen) {
          return { ok: false, code: 'too_many_reservations', open: checks.open, available }
        }
        if (t.amount > available) {
          // Reservations past their timeout no longer hold credit, swept or not: a reserve that would
          // be refused expires the payer's overdue ones first (a crashed replica's, say), then decides.
          const due = await this.engine.dueFor(c, t.debitAccount, now)
          if (due.length === 0) return { ok: false, code: 'insufficient_credit', available }
          for (const p of due) await this.engine.expire(c, p)
          const left = (await this.engine.balance(c, t.debitAccount)).available
          if (t.amount > left) return { ok: false, code: 'insufficient_credit', available: left }
        }
        return { ok: true as const, transfer: await this.engine.append(c, t), duplicate: false }
      })
    } catch (err) {
      // The schema's own refusals, should the checks above ever be bypassed.
      if (isRefusal(err, 'ledger: account_blocked')) return { ok: false, code: 'account_blocked', available: await this.available(t.debitAccount) }
      if (!isCheck(err, 'payer_not_negative')) throw err
      return { ok: false, code: 'insufficient_credit', available: await this.available(t.debitAccount) }
    }
  }

  async post (input: PostInput): Promise<TransferResult> {
    const pendingId = checkId('pendingId', input.pendingId)
    const id = checkId('id', input.id)
    const amount = checkAmount('amount', input.amount, { allowZero: true })
    const upstream = checkUpstreamCost(input.upstreamCost)
    return this.resolve(pendingId, upstream, async (c, locked) => {
      const seen = await this.engine.existing(c, id, { kind: 'post', pendingId, amount })
      if (seen) return seen
      const open = await this.engine.openPending(c, pendingId, locked)
      if ('expiredNow' in open) return null
      return { transfer: await this.engine.resolve(c, 'post', id, open.pending, amount, null), duplicate: false }
    })
  }

  async void (input: VoidInput): Promise<TransferResult> {
    const pendingId = checkId('pendingId', input.pendingId)
    const id = checkId('id', input.id)
    const meta = canonicalMeta({ reason: checkText('reason', input.reason) })
    const upstream = checkUpstreamCost(input.upstreamCost)
    return this.resolve(pendingId, upstream, async (c, locked) => {
      const seen = await this.engine.existing(c, id, { kind: 'void', pendingId, meta })
      if (seen) return seen
      const open = await this.engine.openPending(c, pendingId, locked)
      if ('expiredNow' in open) return null
      return { transfer: await this.engine.resolve(c, 'void', id, open.pending, open.pending.amount, meta), duplicate: false }
    })
  }

  /**
   * Locks the pending first (a concurrent resolution of it commits before the step's checks run).
   * null from the step means "expired during this call": commit that, then report it. The upstream
   * cost is recorded in the same transaction whatever the step decided (the upstream was paid
   * either way); a step that throws records nothing.
   */
  private async resolve (pendingId: string, upstream: CheckedUpstreamCost | undefined,
    step: (c: pg.PoolClient, locked: Transfer | null) => Promise<TransferResult | null>): Promise<TransferResult> {
    const result = await this.tx(async (c) => {
      const locked = await this.engine.get(c, pendingId, { lock: true })
      const r = await step(c, locked)
      if (upstream) await this.engine.upstreamCost(c, locked!, upstream)
      return r
    })
    if (result === null) throw new PendingAlreadyResolved(pendingId, 'expired')
    return result
  }

  async recordUpstreamCost (input: RecordUpstreamCostInput): Promise<TransferResult> {
    const pendingId = checkId('pendingId', input?.pendingId)
    const upstream = checkUpstreamCost(input)!
    return this.tx(async (c) => {
      const p = await this.engine.get(c, pendingId, { lock: true })
      if (!p || p.kind !== 'pending') throw new PendingNotFound(pendingId)
      return this.engine.upstreamCost(c, p, upstream)
    })
  }

  async margin (window: UsageWindow): Promise<MarginRow[]> {
    return this.reports.margin(this.pool, checkWindow(window))
  }

  async expirePending (now: number): Promise<number> {
    checkEpochMs('now', now)
    return this.tx(async (c) => {
      const due = await this.engine.dueBefore(c, now)
      // All payer rows up front, in id order, so this sweep never holds one payer while waiting for another.
      await this.engine.lockAccounts(c, due.map((p) => p.debitAccount))
      for (const p of due) await this.engine.expire(c, p)
      return due.length
    })
  }

  async balance (account: string): Promise<Balance> {
    return this.engine.balance(this.pool, checkId('account', account))
  }

  async transfers (account: string, opts: { limit?: number } = {}): Promise<Transfer[]> {
    return this.engine.list(this.pool, checkId('account', account), checkLimit(opts.limit))
  }

  async getTransfer (id: string): Promise<Transfer | null> {
    return this.engine.get(this.pool, checkId('id', id))
  }

  async claimPayment (input: PaymentClaimInput): Promise<ClaimResult> {
    const key = normalizeClaimKey(input)
    const requestId = checkId('requestId', input.requestId)
    const amount = checkAmount('amount', input.amount)
    const validBefore = input.validBefore === undefined ? null : checkUnixSeconds('validBefore', input.validBefore)
    return this.claims.claim(this.pool, key, requestId, amount, validBefore)
  }

  async updatePaymentClaim (key: PaymentClaimKey, update: PaymentClaimUpdate): Promise<PaymentClaim> {
    const k = normalizeClaimKey(key)
    if (!CLAIM_STATUSES.has(update?.status)) throw new LedgerArgumentInvalid('status', 'must be settling, settled, failed or unknown')
    if (update.txHash !== undefined) checkText('txHash', update.txHash)
    if (update.error !== undefined) checkText('error', update.error)
    return this.tx((c) => this.claims.update(c, k, update))
  }

  async getPaymentClaim (key: PaymentClaimKey): Promise<PaymentClaim | null> {
    return this.claims.get(this.pool, normalizeClaimKey(key))
  }

  async settlePaymentAndDeposit (key: PaymentClaimKey, input: SettleDepositInput): Promise<TransferResult> {
    const k = normalizeClaimKey(key)
    const txHash = checkText('txHash', input.txHash)
    const depositId = checkId('depositId', input.depositId)
    const account = assertPayerAccount(input.account)
    const amount = checkAmount('amount', input.amount)
    return this.tx((c) => this.claims.settleAndDeposit(c, k, txHash, depositId, account, amount))
  }

  async provisionalDeposit (key: PaymentClaimKey, input: ProvisionalDepositInput): Promise<TransferResult> {
    const k = normalizeClaimKey(key)
    const depositId = checkId('depositId', input?.depositId)
    const account = assertPayerAccount(input.account)
    const amount = checkAmount('amount', input.amount)
    return this.tx((c) => this.provisional.deposit(c, k, depositId, account, amount))
  }

  async reverseProvisionalDeposit (key: PaymentClaimKey, input: ReverseProvisionalInput): Promise<ReverseProvisionalResult> {
    const k = normalizeClaimKey(key)
    const id = checkId('id', input?.id)
    const reason = checkText('reason', input.reason)
    const now = checkEpochMs('now', input.now)
    return this.tx((c) => this.provisional.reverse(c, k, id, reason, now))
  }

  async listPaymentClaims (input: ListPaymentClaimsInput): Promise<PaymentClaim[]> {
    return this.claims.list(this.pool, checkListClaims(input))
  }

  async blockAccount (account: string, reason: string, now: number): Promise<boolean> {
    const payer = assertPayerAccount(account)
    const why = checkText('reason', reason)
    const since = checkEpochMs('now', now)
    // Under the payer's row lock, like reserve: a reserve in flight commits first, and no reserve
    // that has not yet checked the block can still succeed once this returns.
    return this.tx(async (c) => {
      await this.engine.lockAccount(c, payer)
      return this.blocks.block(c, payer, why, since)
    })
  }

  async unblockAccount (account: string): Promise<boolean> {
    return this.blocks.unblock(this.pool, assertPayerAccount(account))
  }

  async accountBlock (account: string): Promise<AccountBlock | null> {
    return this.blocks.get(this.pool, checkId('account', account))
  }

  async totals (): Promise<LedgerTotals> {
    return this.audit.totals(this.pool)
  }

  async checkInvariants (): Promise<void> {
    // One REPEATABLE READ transaction, so the audit reads a single consistent snapshot.
    const problems = await this.tx((c) => this.audit.problems(c), 'snapshot')
    if (problems.length > 0) throw new LedgerInvariantBroken(problems)
  }
}
