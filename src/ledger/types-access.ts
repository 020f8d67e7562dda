import type { Balance, Transfer } from './types.ts'

// The part of the ledger contract that moves no money: API keys, single-use nonces, idempotency
// records, usage reports and the admin account listing. Same rules as types.ts: every method is
// atomic in the store, and limits are decided where the data lives. Re-exported by types.ts.

export interface UsageWindow {
  /** Epoch ms, inclusive. */
  fromMs: number
  /** Epoch ms, exclusive. */
  toMs: number
}
export interface UsageDay {
  /** YYYY-MM-DD, UTC, of the receipt's createdAt. */
  day: string
  requests: number
  /** Receipts with verified = true. */
  verifiedRequests: number
  promptTokens: number
  completionTokens: number
  /** Sum of chargedAmount, ledger units. */
  charged: bigint
}
export type PayerUsageDay = UsageDay & { payer: string }

export interface ApiKeyRecord {
  id: string
  /** The payer account the key spends from. */
  account: string
  name: string | null
  /** The visible start of the key, for the owner to recognise it. */
  prefix: string
  /** The key is never stored, only this hash of it (unique). */
  hash: string
  createdAt: number
  revokedAt: number | null
  /** Updated by findApiKeyByHash, at most once a minute. */
  lastUsedAt: number | null
}
export interface CreateApiKeyInput {
  id: string
  account: string
  name: string | null
  prefix: string
  hash: string
  createdAt: number
  /** Refuse with TooManyApiKeys (LEDGER_TOO_MANY_KEYS) when the account already has this many unrevoked keys. */
  maxPerAccount: number
}

/** A response kept for an idempotent retry. */
export type StoredResponse = { status: number, headers: Record<string, string>, body: string }
export interface BeginIdempotentInput {
  /** The scope: one client's key never collides with another's. */
  account: string
  key: string
  /** A hash of the request body: the same key with another body is a conflict. */
  bodyHash: string
  requestId: string
  now: number
  /** Epoch ms; must be after now. A record with expiresAt <= now is replaced by the next begin. */
  expiresAt: number
}
export type BeginIdempotentResult =
  | { state: 'started' }
  | { state: 'in_flight', requestId: string }
  | { state: 'completed', response: StoredResponse, requestId: string }
  | { state: 'conflict' }
export interface IdempotentKey {
  account: string
  key: string
  /** When given, only the record begun by this request is touched (not one that replaced it after expiry). */
  requestId?: string
}

export interface LedgerAccessStore {
  /** Throws TooManyApiKeys inside the transaction that would insert; ApiKeyConflict on a reused id or hash. */
  createApiKey (input: CreateApiKeyInput): Promise<ApiKeyRecord>
  /** Newest first, revoked keys included. */
  listApiKeys (account: string): Promise<ApiKeyRecord[]>
  /** False when the key does not exist, belongs to another account or is already revoked. */
  revokeApiKey (account: string, id: string, now: number): Promise<boolean>
  /** Unrevoked keys only. Touches lastUsedAt (store clock) when it is null or at least a minute old. */
  findApiKeyByHash (hash: string): Promise<ApiKeyRecord | null>

  /**
   * Single-use nonces: true the first time (scope, nonce) is used, false ever after until it is
   * pruned (an expired but unpruned nonce still counts as used). One INSERT ... ON CONFLICT DO NOTHING.
   */
  useNonce (scope: string, nonce: string, expiresAt: number): Promise<boolean>
  /** Deletes nonces with expiresAt <= now; returns how many. */
  pruneNonces (now: number): Promise<number>

  /**
   * Atomically: absent or expired (expiresAt <= now) → recorded as in flight, 'started'; present
   * with another bodyHash → 'conflict'; same body still running → 'in_flight'; same body finished →
   * 'completed' with the stored response.
   */
  beginIdempotent (input: BeginIdempotentInput): Promise<BeginIdempotentResult>
  /** Stores the response of an in-flight record; a no-op when there is none (absent, or already completed). */
  completeIdempotent (input: IdempotentKey & { response: StoredResponse }): Promise<void>
  /** Deletes an in-flight record so a retry can run; never deletes a completed one. */
  abandonIdempotent (input: IdempotentKey): Promise<void>
  /** Deletes records with expiresAt <= now (completed or not); returns how many. */
  pruneIdempotent (now: number): Promise<number>

  /** A payer's receipts in [fromMs, toMs), aggregated per UTC day, oldest day first. */
  usageByDay (payer: string, window: UsageWindow): Promise<UsageDay[]>
  /** Every payer's (admin export); receipts without a payer are left out. Ordered by day, then payer. */
  usageAll (window: UsageWindow): Promise<PayerUsageDay[]>
  /** The account's pending reservations that are still open (including any past timeoutAt not yet swept), most recent first. */
  pendingReservations (account: string): Promise<Transfer[]>
  /** Payer accounts only, ordered by account id. limit defaults to 50 (at most 1000), offset to 0. */
  accounts (opts?: { limit?: number, offset?: number }): Promise<Balance[]>
}
