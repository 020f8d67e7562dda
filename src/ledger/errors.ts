// Ledger errors carry a stable `code` so that callers (and the Postgres store's tests) branch on the
// code, never on the message. They are storage-agnostic: both stores throw exactly these.

export type LedgerErrorCode =
  | 'LEDGER_AMOUNT_INVALID'
  | 'LEDGER_ARGUMENT_INVALID'
  | 'LEDGER_ACCOUNT_INVALID'
  | 'LEDGER_TRANSFER_ID_CONFLICT'
  | 'LEDGER_INSUFFICIENT_CREDIT'
  | 'LEDGER_PENDING_NOT_FOUND'
  | 'LEDGER_PENDING_RESOLVED'
  | 'LEDGER_POST_EXCEEDS_PENDING'
  | 'LEDGER_CLAIM_NOT_FOUND'
  | 'LEDGER_CLAIM_SETTLED'
  | 'LEDGER_INVARIANT_BROKEN'
  | 'LEDGER_CLAIM_STATE'
  | 'LEDGER_TOO_MANY_KEYS'
  | 'LEDGER_API_KEY_CONFLICT'

export class LedgerError extends Error {
  constructor (readonly code: LedgerErrorCode, message: string) {
    super(message)
    this.name = new.target.name
  }
}

/** Amount is not a bigint, not positive (zero allowed only where documented), or beyond int64. */
export class LedgerAmountInvalid extends LedgerError {
  constructor (readonly field: string, readonly value: unknown) {
    super('LEDGER_AMOUNT_INVALID', `${field} must be a positive bigint within int64, got ${describe(value)}`)
  }
}

export class LedgerArgumentInvalid extends LedgerError {
  constructor (readonly field: string, why: string) {
    super('LEDGER_ARGUMENT_INVALID', `${field} ${why}`)
  }
}

export class LedgerAccountInvalid extends LedgerError {
  constructor (readonly account: string, why: string) {
    super('LEDGER_ACCOUNT_INVALID', `account ${JSON.stringify(account).slice(0, 80)} ${why}`)
  }
}

/** The transfer id was already used for a different request; ids are idempotency keys, never reused. */
export class TransferIdConflict extends LedgerError {
  constructor (readonly id: string, readonly differs: string[]) {
    super('LEDGER_TRANSFER_ID_CONFLICT', `transfer ${id} already exists with a different ${differs.join(', ')}`)
  }
}

export class InsufficientCredit extends LedgerError {
  constructor (readonly account: string, readonly available: bigint, readonly requested: bigint) {
    super('LEDGER_INSUFFICIENT_CREDIT', `account ${account} has ${available} available, ${requested} requested`)
  }
}

export class PendingNotFound extends LedgerError {
  constructor (readonly pendingId: string) {
    super('LEDGER_PENDING_NOT_FOUND', `no pending transfer ${pendingId}`)
  }
}

/** The pending transfer was already posted, voided or expired (including "expired just now"). */
export class PendingAlreadyResolved extends LedgerError {
  constructor (readonly pendingId: string, readonly state: 'posted' | 'voided' | 'expired') {
    super('LEDGER_PENDING_RESOLVED', `pending transfer ${pendingId} is already ${state}`)
  }
}

export class PostExceedsPending extends LedgerError {
  constructor (readonly pendingId: string, readonly pending: bigint, readonly requested: bigint) {
    super('LEDGER_POST_EXCEEDS_PENDING', `cannot post ${requested} against pending ${pendingId} of ${pending}`)
  }
}

export class PaymentClaimNotFound extends LedgerError {
  constructor (readonly key: string) {
    super('LEDGER_CLAIM_NOT_FOUND', `no payment claim ${key}`)
  }
}

/** A claim that credited a deposit is final: it can neither credit again nor change status. */
export class PaymentClaimSettled extends LedgerError {
  constructor (readonly key: string, readonly depositId: string | null) {
    super('LEDGER_CLAIM_SETTLED', `payment claim ${key} is already settled${depositId ? ` (deposit ${depositId})` : ''}`)
  }
}

/** The claim is in a state that does not allow this operation (e.g. reversing a claim with no provisional deposit). */
export class PaymentClaimState extends LedgerError {
  constructor (readonly key: string, readonly status: string, why: string) {
    super('LEDGER_CLAIM_STATE', `payment claim ${key} is ${status}: ${why}`)
  }
}

export class TooManyApiKeys extends LedgerError {
  constructor (readonly account: string, readonly limit: number) {
    super('LEDGER_TOO_MANY_KEYS', `account ${account} already has ${limit} active API keys`)
  }
}

/** An API key id or hash that is already stored. */
export class ApiKeyConflict extends LedgerError {
  constructor (readonly field: 'id' | 'hash') {
    super('LEDGER_API_KEY_CONFLICT', `an API key with this ${field} already exists`)
  }
}

export class LedgerInvariantBroken extends LedgerError {
  constructor (readonly problems: string[]) {
    super('LEDGER_INVARIANT_BROKEN', `ledger invariants broken: ${problems.join('; ')}`)
  }
}

function describe (v: unknown): string {
  return typeof v === 'bigint' ? `${v}n` : `${typeof v} ${String(v).slice(0, 40)}`
}
