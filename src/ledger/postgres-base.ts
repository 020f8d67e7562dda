import type pg from 'pg'
import { assertPayerAccount } from './accounts.ts'
import { PgApiKeys, PgIdempotency, PgNonces } from './postgres-access.ts'
import { q, transaction, type TxMode } from './postgres-db.ts'
import { PgReceipts, PgReports } from './postgres-reports.ts'
import { PgTransfers } from './postgres-transfers.ts'
import {
  checkApiKeyInput, checkBeginIdempotent, checkEpochMs, checkId, checkIdempotentKey, checkLimit, checkOffset,
  checkStoredResponse, checkWindow,
} from './validate.ts'
import type {
  ApiKeyRecord, Balance, BeginIdempotentInput, BeginIdempotentResult, CreateApiKeyInput, IdempotentKey, LedgerAccessStore,
  PayerUsageDay, Receipt, ReceiptPatch, StoredResponse, Transfer, UsageDay, UsageWindow,
} from './types.ts'

// The PostgreSQL store's plumbing (a connection pool, READ COMMITTED write transactions with row
// locks and retries, snapshot reads), the LedgerAccessStore methods and receipts, which move no money.
// PostgresLedger (postgres.ts) extends it with the money operations. Single statements run on the
// pool directly: each is atomic on its own.

export abstract class PgStoreBase implements LedgerAccessStore {
  protected readonly engine: PgTransfers
  protected readonly reports = new PgReports()
  private readonly keys: PgApiKeys
  private readonly nonces = new PgNonces()
  private readonly idem = new PgIdempotency()
  private readonly receiptsTable = new PgReceipts()
  private closed = false

  constructor (protected readonly pool: pg.Pool, protected readonly clock: () => number) {
    this.engine = new PgTransfers(clock)
    this.keys = new PgApiKeys(clock)
  }

  protected tx<T> (fn: (c: pg.PoolClient) => Promise<T>, mode: TxMode = 'write'): Promise<T> {
    return transaction(this.pool, fn, mode)
  }

  async createApiKey (input: CreateApiKeyInput): Promise<ApiKeyRecord> {
    const k = checkApiKeyInput({ ...input, account: assertPayerAccount(input?.account) })
    return this.tx((c) => this.keys.create(c, k))
  }

  async listApiKeys (account: string): Promise<ApiKeyRecord[]> {
    return this.keys.list(this.pool, checkId('account', account))
  }

  async revokeApiKey (account: string, id: string, now: number): Promise<boolean> {
    return this.keys.revoke(this.pool, checkId('account', account), checkId('id', id), checkEpochMs('now', now))
  }

  async findApiKeyByHash (hash: string): Promise<ApiKeyRecord | null> {
    return this.keys.find(this.pool, checkId('hash', hash))
  }

  async useNonce (scope: string, nonce: string, expiresAt: number): Promise<boolean> {
    return this.nonces.use(this.pool, checkId('scope', scope), checkId('nonce', nonce), checkEpochMs('expiresAt', expiresAt))
  }

  async pruneNonces (now: number): Promise<number> {
    return this.nonces.prune(this.pool, checkEpochMs('now', now))
  }

  async beginIdempotent (input: BeginIdempotentInput): Promise<BeginIdempotentResult> {
    const i = checkBeginIdempotent(input)
    // A transaction: the record the upsert found (and locked) cannot be abandoned before we read it.
    return this.tx((c) => this.idem.begin(c, i))
  }

  async completeIdempotent (input: IdempotentKey & { response: StoredResponse }): Promise<void> {
    const k = checkIdempotentKey(input)
    await this.idem.finish(this.pool, k, checkStoredResponse(input.response), this.clock())
  }

  async abandonIdempotent (input: IdempotentKey): Promise<void> {
    await this.idem.drop(this.pool, checkIdempotentKey(input))
  }

  async pruneIdempotent (now: number): Promise<number> {
    return this.idem.prune(this.pool, checkEpochMs('now', now))
  }

  async usageByDay (payer: string, window: UsageWindow): Promise<UsageDay[]> {
    const w = checkWindow(window)
    return this.reports.usageByDay(this.pool, checkId('payer', payer), w)
  }

  async usageAll (window: UsageWindow): Promise<PayerUsageDay[]> {
    return this.reports.usageAll(this.pool, checkWindow(window))
  }

  async pendingReservations (account: string): Promise<Transfer[]> {
    return this.reports.pendingReservations(this.pool, checkId('account', account))
  }

  async accounts (opts: { limit?: number, offset?: number } = {}): Promise<Balance[]> {
    return this.reports.accounts(this.pool, checkLimit(opts.limit), checkOffset(opts.offset))
  }

  async putReceipt (receipt: Receipt): Promise<void> {
    await this.receiptsTable.put(this.pool, receipt)
  }

  async updateReceipt (id: string, patch: ReceiptPatch): Promise<Receipt | null> {
    const rid = checkId('id', id)
    return this.tx((c) => this.receiptsTable.update(c, rid, patch))
  }

  async getReceipt (id: string): Promise<Receipt | null> {
    return this.receiptsTable.get(this.pool, checkId('id', id))
  }

  async closeStaleReceipts (before: number, now: number): Promise<number> {
    checkEpochMs('before', before)
    checkEpochMs('now', now)
    // One statement; the reservation decides (see LedgerStore.closeStaleReceipts).
    const r = await q(this.pool, `UPDATE receipts AS r SET
        charged_amount = CASE p.state WHEN 'posted'
          THEN COALESCE((SELECT amount FROM transfers WHERE kind = 'post' AND pending_id = p.id), 0) ELSE 0 END,
        error_code = CASE p.state WHEN 'posted' THEN r.error_code
          ELSE COALESCE(r.error_code, CASE p.state WHEN 'expired' THEN 'RESERVATION_EXPIRED' ELSE 'INTERRUPTED' END) END,
        status = CASE p.state WHEN 'posted' THEN 'completed' ELSE 'failed' END,
        completed_at = $2
      FROM transfers AS p
      WHERE p.id = 'reserve:' || r.id AND r.status = 'pending'
        AND (p.state = 'expired' OR (r.created_at <= $1 AND p.state IN ('posted', 'voided')))`, [before, now])
    return r.rowCount ?? 0
  }

  async receipts (payer: string, opts: { limit?: number } = {}): Promise<Receipt[]> {
    return this.receiptsTable.list(this.pool, checkId('payer', payer), checkLimit(opts.limit))
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.pool.end()
  }
}
