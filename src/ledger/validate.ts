import { LedgerAmountInvalid, LedgerArgumentInvalid } from './errors.ts'
import type {
  BeginIdempotentInput, CreateApiKeyInput, IdempotentKey, ListPaymentClaimsInput, PaymentClaimStatus, PaymentClaimKey,
  StoredResponse, TransferMeta, UpstreamCostInput, UsageWindow,
} from './types.ts'

// Argument checks shared by every store. They reject malformed calls early with a typed error; the
// money invariants themselves are enforced again by the store's schema, not trusted to this file.

/** Both SQLite INTEGER and PostgreSQL BIGINT are signed 64-bit. */
export const MAX_AMOUNT = 2n ** 63n - 1n
const MAX_ID_LENGTH = 256
const MAX_TEXT_LENGTH = 1024

export function checkAmount (field: string, value: unknown, { allowZero = false } = {}): bigint {
  if (typeof value !== 'bigint' || value > MAX_AMOUNT || value < 0n || (value === 0n && !allowZero)) {
    throw new LedgerAmountInvalid(field, value)
  }
  return value
}

export function checkId (field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_ID_LENGTH) {
    throw new LedgerArgumentInvalid(field, `must be a non-empty string of at most ${MAX_ID_LENGTH} characters`)
  }
  return value
}

export function checkText (field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length > MAX_TEXT_LENGTH) {
    throw new LedgerArgumentInvalid(field, `must be a string of at most ${MAX_TEXT_LENGTH} characters`)
  }
  return value
}

export function checkEpochMs (field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new LedgerArgumentInvalid(field, 'must be a non-negative integer of epoch milliseconds')
  }
  return value
}

export function checkLimit (value: unknown, fallback = 50, max = 1000): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new LedgerArgumentInvalid('limit', 'must be a positive integer')
  }
  return Math.min(value, max)
}

/**
 * Key order must not matter when a retried request is compared with the stored one, so meta is
 * serialised with sorted keys; an empty object means "no meta".
 */
export function canonicalMeta (meta: TransferMeta | null | undefined): string | null {
  if (meta == null) return null
  if (typeof meta !== 'object' || Array.isArray(meta)) throw new LedgerArgumentInvalid('meta', 'must be a flat object')
  const entries = Object.entries(meta).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  if (entries.length === 0) return null
  for (const [k, v] of entries) {
    if (v !== null && !['string', 'number', 'boolean'].includes(typeof v)) {
      throw new LedgerArgumentInvalid(`meta.${k}`, 'must be a string, number, boolean or null')
    }
  }
  return JSON.stringify(Object.fromEntries(entries))
}

/**
 * EVM addresses and EIP-3009 nonces are hex and case-insensitive; comparing them lowercased stops
 * a replay that merely changes letter case. The network id (CAIP-2) is compared as given.
 */
export function normalizeClaimKey (key: PaymentClaimKey): PaymentClaimKey {
  const network = checkId('network', key?.network)
  const asset = checkId('asset', key.asset)
  return {
    network,
    asset: /^0x[0-9a-fA-F]+$/.test(asset) ? asset.toLowerCase() : asset,
    payer: checkId('payer', key.payer).toLowerCase(),
    nonce: checkId('nonce', key.nonce).toLowerCase(),
  }
}

export function claimKeyString (k: PaymentClaimKey): string {
  return `${k.network}/${k.asset}/${k.payer}/${k.nonce}`
}

/** A count or limit that must be a positive integer (maxPerAccount, maxOpen). */
export function checkPositiveInt (field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new LedgerArgumentInvalid(field, 'must be a positive integer')
  }
  return value
}

export function checkOffset (value: unknown): number {
  if (value === undefined) return 0
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new LedgerArgumentInvalid('offset', 'must be a non-negative integer')
  }
  return value
}

/** EIP-3009 validBefore, in unix seconds. */
export function checkUnixSeconds (field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new LedgerArgumentInvalid(field, 'must be a non-negative integer of unix seconds')
  }
  return value
}

export function checkWindow (w: UsageWindow): UsageWindow {
  const fromMs = checkEpochMs('fromMs', w?.fromMs)
  const toMs = checkEpochMs('toMs', w.toMs)
  if (toMs < fromMs) throw new LedgerArgumentInvalid('toMs', 'must not be before fromMs')
  return { fromMs, toMs }
}

export const CLAIM_STATUSES: readonly PaymentClaimStatus[] = ['claimed', 'settling', 'settled', 'failed', 'unknown']

export function checkListClaims (input: ListPaymentClaimsInput): ListPaymentClaimsInput {
  const statuses = input?.statuses
  if (!Array.isArray(statuses) || statuses.length === 0 || !statuses.every((x) => CLAIM_STATUSES.includes(x))) {
    throw new LedgerArgumentInvalid('statuses', `must be a non-empty list of ${CLAIM_STATUSES.join(', ')}`)
  }
  return {
    statuses: [...new Set(statuses)],
    updatedBefore: checkEpochMs('updatedBefore', input.updatedBefore),
    limit: checkLimit(input.limit),
  }
}

export function checkApiKeyInput (input: CreateApiKeyInput): CreateApiKeyInput {
  if (input?.name !== null && input?.name !== undefined) checkText('name', input.name)
  return {
    id: checkId('id', input.id),
    account: input.account,
    name: input.name ?? null,
    prefix: checkId('prefix', input.prefix),
    hash: checkId('hash', input.hash),
    createdAt: checkEpochMs('createdAt', input.createdAt),
    maxPerAccount: checkPositiveInt('maxPerAccount', input.maxPerAccount),
  }
}

export function checkIdempotentKey (k: IdempotentKey): IdempotentKey {
  return {
    account: checkId('account', k?.account),
    key: checkId('key', k.key),
    ...(k.requestId === undefined ? {} : { requestId: checkId('requestId', k.requestId) }),
  }
}

export function checkBeginIdempotent (input: BeginIdempotentInput): BeginIdempotentInput {
  const { account, key } = checkIdempotentKey(input)
  const now = checkEpochMs('now', input.now)
  const expiresAt = checkEpochMs('expiresAt', input.expiresAt)
  if (expiresAt <= now) throw new LedgerArgumentInvalid('expiresAt', 'must be after now')
  return { account, key, bodyHash: checkId('bodyHash', input.bodyHash), requestId: checkId('requestId', input.requestId), now, expiresAt }
}

export function checkStoredResponse (r: StoredResponse): StoredResponse {
  if (typeof r?.status !== 'number' || !Number.isInteger(r.status) || r.status < 100 || r.status > 599) {
    throw new LedgerArgumentInvalid('response.status', 'must be an HTTP status code')
  }
  if (typeof r.headers !== 'object' || r.headers === null || Array.isArray(r.headers) ||
    !Object.values(r.headers).every((v) => typeof v === 'string')) {
    throw new LedgerArgumentInvalid('response.headers', 'must be an object of strings')
  }
  if (typeof r.body !== 'string') throw new LedgerArgumentInvalid('response.body', 'must be a string')
  return { status: r.status, headers: { ...r.headers }, body: r.body }
}

/** An upstream cost as the stores take it: id and a positive amount checked, meta canonical. */
export interface CheckedUpstreamCost { id: string, amount: bigint, meta: string | null }

export function checkUpstreamCost (input: UpstreamCostInput | undefined): CheckedUpstreamCost | undefined {
  if (input === undefined) return undefined
  if (typeof input !== 'object' || input === null) throw new LedgerArgumentInvalid('upstreamCost', 'must be an object')
  return {
    id: checkId('upstreamCost.id', input.id),
    amount: checkAmount('upstreamCost.amount', input.amount),
    meta: canonicalMeta(input.meta),
  }
}
