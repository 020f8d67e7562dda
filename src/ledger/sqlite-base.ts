import type Database from 'better-sqlite3'
import { assertPayerAccount } from './accounts.ts'
import { ApiKeys, Nonces } from './sqlite-access.ts'
import { Idempotency } from './sqlite-idempotency.ts'
import { Reports } from './sqlite-reports.ts'
import { TransferEngine } from './sqlite-transfers.ts'
import {
  checkApiKeyInput, checkBeginIdempotent, checkEpochMs, checkId, checkIdempotentKey, checkLimit, checkOffset,
  checkStoredResponse, checkWindow,
} from './validate.ts'
import type {
  ApiKeyRecord, Balance, BeginIdempotentInput, BeginIdempotentResult, CreateApiKeyInput, IdempotentKey, LedgerAccessStore,
  PayerUsageDay, StoredResponse, Transfer, UsageDay, UsageWindow,
} from './types.ts'

// The SQLite store's plumbing (one connection, IMMEDIATE write transactions, snapshot reads) and
// the LedgerAccessStore methods, which move no money: API keys, nonces, idempotency records,
// reports. SqliteLedger (sqlite.ts) extends it with the money operations.

export abstract class SqliteStoreBase implements LedgerAccessStore {
  protected readonly engine: TransferEngine
  protected readonly reports: Reports
  private readonly keys: ApiKeys
  private readonly nonces: Nonces
  private readonly idem: Idempotency

  constructor (protected readonly db: Database.Database, protected readonly clock: () => number) {
    this.engine = new TransferEngine(db, clock)
    this.reports = new Reports(db)
    this.keys = new ApiKeys(db, clock)
    this.nonces = new Nonces(db)
    this.idem = new Idempotency(db)
    this.inTransaction = db.transaction((fn: () => unknown) => fn())
  }

  // IMMEDIATE takes the write lock before the first read, so no other connection can slip a write
  // between this operation's checks and its insert (a DEFERRED transaction could, or deadlock).
  protected tx<T> (fn: () => T): T {
    return this.inTransaction.immediate(fn) as T
  }

  /** A read-only snapshot: WAL readers never block the writer. */
  protected snapshot<T> (fn: () => T): T {
    return this.inTransaction.deferred(fn) as T
  }

  // One transaction wrapper for every operation (building one per call showed in the profile).
  private readonly inTransaction: Database.Transaction<(fn: () => unknown) => unknown>

  async createApiKey (input: CreateApiKeyInput): Promise<ApiKeyRecord> {
    const k = checkApiKeyInput({ ...input, account: assertPayerAccount(input?.account) })
    return this.tx(() => this.keys.create(k))
  }

  async listApiKeys (account: string): Promise<ApiKeyRecord[]> {
    return this.keys.list(checkId('account', account))
  }

  async revokeApiKey (account: string, id: string, now: number): Promise<boolean> {
    return this.keys.revokeKey(checkId('account', account), checkId('id', id), checkEpochMs('now', now))
  }

  async findApiKeyByHash (hash: string): Promise<ApiKeyRecord | null> {
    return this.keys.find(checkId('hash', hash))
  }

  async useNonce (scope: string, nonce: string, expiresAt: number): Promise<boolean> {
    return this.nonces.use(checkId('scope', scope), checkId('nonce', nonce), checkEpochMs('expiresAt', expiresAt))
  }

  async pruneNonces (now: number): Promise<number> {
    return this.nonces.pruneBefore(checkEpochMs('now', now))
  }

  async beginIdempotent (input: BeginIdempotentInput): Promise<BeginIdempotentResult> {
    const i = checkBeginIdempotent(input)
    return this.tx(() => this.idem.begin(i))
  }

  async completeIdempotent (input: IdempotentKey & { response: StoredResponse }): Promise<void> {
    const k = checkIdempotentKey(input)
    this.idem.finish(k, checkStoredResponse(input.response), this.clock())
  }

  async abandonIdempotent (input: IdempotentKey): Promise<void> {
    this.idem.drop(checkIdempotentKey(input))
  }

  async pruneIdempotent (now: number): Promise<number> {
    return this.idem.pruneBefore(checkEpochMs('now', now))
  }

  async usageByDay (payer: string, window: UsageWindow): Promise<UsageDay[]> {
    const w = checkWindow(window)
    return this.snapshot(() => this.reports.usageByDay(checkId('payer', payer), w))
  }

  async usageAll (window: UsageWindow): Promise<PayerUsageDay[]> {
    const w = checkWindow(window)
    return this.snapshot(() => this.reports.usageAll(w))
  }

  async pendingReservations (account: string): Promise<Transfer[]> {
    return this.reports.pendingReservations(checkId('account', account))
  }

  async accounts (opts: { limit?: number, offset?: number } = {}): Promise<Balance[]> {
    return this.reports.accounts(checkLimit(opts.limit), checkOffset(opts.offset))
  }

  async close (): Promise<void> {
    if (this.db.open) this.db.close()
  }
}
