// The ledger contract, independent of storage. Every method is one atomic transaction in the store;
// the invariants (payer available >= 0, sum of accounts = 0, a pending resolves once, a payment
// nonce credits once) are enforced where the data lives, so two replicas sharing a store cannot
// break them by racing. Amounts are bigint ledger units (see src/money.ts), never numbers.

export type TransferKind = 'deposit' | 'grant' | 'clawback' | 'pending' | 'post' | 'void' | 'expire' | 'refund'
export type PendingState = 'pending' | 'posted' | 'voided' | 'expired'
/** Flat JSON only, so that idempotency can compare it canonically. */
export type TransferMeta = Record<string, string | number | boolean | null>

export interface Transfer {
  id: string
  kind: TransferKind
  debitAccount: string
  creditAccount: string
  amount: bigint
  /** For post/void/expire: the pending transfer this one resolves. */
  pendingId: string | null
  /** For pending transfers: their current state; null for every other kind. */
  state: PendingState | null
  /** For pending transfers: epoch ms after which they expire. */
  timeoutAt: number | null
  reference: string | null
  meta: TransferMeta | null
  createdAt: number
}

export interface TransferResult {
  transfer: Transfer
  /** True when this id was already posted with identical fields: nothing was posted this time. */
  duplicate: boolean
}

export interface Balance {
  account: string
  creditsPosted: bigint
  debitsPosted: bigint
  debitsPending: bigint
  /** creditsPosted - debitsPosted - debitsPending; never negative for payer accounts. */
  available: bigint
}

export interface DepositInput { id: string, account: string, amount: bigint, reference: string, meta?: TransferMeta }
export interface GrantInput { id: string, account: string, amount: bigint, reason: string }
export interface ReserveInput { id: string, account: string, amount: bigint, timeoutAt: number, reference: string }
/** amount may be 0n (release everything, but record that the request was settled, not voided). */
export interface PostInput { pendingId: string, id: string, amount: bigint }
export interface VoidInput { pendingId: string, id: string, reason: string }

export type ReserveResult =
  | { ok: true, transfer: Transfer, duplicate: boolean }
  | { ok: false, code: 'insufficient_credit', available: bigint }

/** The durable x402 replay key (PROTOCOLS.md §2); payer and nonce (and a hex asset) compare lowercased. */
export interface PaymentClaimKey { network: string, asset: string, payer: string, nonce: string }
export interface PaymentClaimInput extends PaymentClaimKey {
  requestId: string
  /** Atomic units of the asset, as signed; not ledger units. */
  amount: bigint
}
export type PaymentClaimStatus = 'claimed' | 'settling' | 'settled' | 'failed' | 'unknown'
export interface PaymentClaim extends PaymentClaimKey {
  requestId: string
  amount: bigint
  status: PaymentClaimStatus
  txHash: string | null
  error: string | null
  /** Set once, by settlePaymentAndDeposit; a claim with a deposit can never credit again. */
  depositId: string | null
  createdAt: number
  updatedAt: number
}
export type ClaimResult =
  | { claimed: true }
  | { claimed: false, existing: { status: PaymentClaimStatus, requestId: string, txHash: string | null } }
/** Omitted fields are left unchanged. */
export interface PaymentClaimUpdate { status: 'settling' | 'settled' | 'failed' | 'unknown', txHash?: string, error?: string }
export interface SettleDepositInput { txHash: string, depositId: string, account: string, amount: bigint }

export type ReceiptStatus = 'pending' | 'completed' | 'failed'
export interface Receipt {
  /** The request id. */
  id: string
  payer: string | null
  model: string
  stream: boolean
  status: ReceiptStatus
  promptTokens: number
  completionTokens: number
  reservedAmount: bigint
  chargedAmount: bigint
  /** The upstream's reported cost_usd, verbatim (a decimal string), for reconciliation. */
  upstreamCost: string | null
  verified: boolean | null
  verifyError: string | null
  proof: Record<string, unknown> | null
  paymentTx: string | null
  errorCode: string | null
  createdAt: number
  completedAt: number | null
}
export type ReceiptPatch = Partial<Omit<Receipt, 'id' | 'createdAt'>>

export interface LedgerTotals {
  /** Sum over accounts of credits_posted - debits_posted: 0n in a healthy ledger. */
  sumOfAllAccounts: bigint
  pendingCount: number
}

export interface LedgerStore {
  /** system:deposits → payer. Idempotent on id; same id with other fields → TransferIdConflict. */
  deposit (input: DepositInput): Promise<TransferResult>
  /** system:grants → payer (free credit). Idempotent on id. */
  grant (input: GrantInput): Promise<TransferResult>
  /** payer → system:grants. Throws InsufficientCredit rather than take a payer below zero. */
  clawback (input: GrantInput): Promise<TransferResult>
  /**
   * Pending payer → system:revenue, or insufficient_credit. timeoutAt must be in the future (else
   * LedgerArgumentInvalid). Idempotent on id (a repeat reports the transfer's current state).
   */
  reserve (input: ReserveInput): Promise<ReserveResult>
  /**
   * Settles amount (0 ≤ amount ≤ pending) and releases the rest. Repeating the same id with the same
   * pendingId and amount returns the first result as a duplicate; a different id on a resolved
   * pending throws PendingAlreadyResolved. A pending past its timeoutAt (by the store's clock) is
   * expired in the same call and PendingAlreadyResolved('expired') is thrown, so the outcome never
   * depends on whether the expiry sweep has run yet.
   */
  post (input: PostInput): Promise<TransferResult>
  /** Releases the whole pending amount; same idempotency and expiry rules as post. */
  void (input: VoidInput): Promise<TransferResult>
  /** Expires every pending transfer with timeoutAt <= now; returns how many. */
  expirePending (now: number): Promise<number>
  /** Zeros for an account that has never moved money. */
  balance (account: string): Promise<Balance>
  /** Most recent first. */
  transfers (account: string, opts?: { limit?: number }): Promise<Transfer[]>
  getTransfer (id: string): Promise<Transfer | null>

  /** Inserts the claim only if the key is absent, in one statement. Refused claims are never retried. */
  claimPayment (input: PaymentClaimInput): Promise<ClaimResult>
  /** Throws PaymentClaimNotFound; PaymentClaimSettled once it credited a deposit or when un-settling it. */
  updatePaymentClaim (key: PaymentClaimKey, update: PaymentClaimUpdate): Promise<PaymentClaim>
  getPaymentClaim (key: PaymentClaimKey): Promise<PaymentClaim | null>
  /**
   * In one transaction: posts the deposit and marks the claim settled with it. Calling it again
   * with the same depositId returns the deposit as a duplicate; with another depositId it throws
   * PaymentClaimSettled. Either way a claim credits at most once.
   */
  settlePaymentAndDeposit (key: PaymentClaimKey, input: SettleDepositInput): Promise<TransferResult>

  /** Inserts or replaces the receipt with this id. */
  putReceipt (receipt: Receipt): Promise<void>
  /** Returns the updated receipt, or null when there is none with this id. */
  updateReceipt (id: string, patch: ReceiptPatch): Promise<Receipt | null>
  getReceipt (id: string): Promise<Receipt | null>
  /** A payer's receipts, most recent first. */
  receipts (payer: string, opts?: { limit?: number }): Promise<Receipt[]>

  totals (): Promise<LedgerTotals>
  /** Throws LedgerInvariantBroken listing every broken invariant. */
  checkInvariants (): Promise<void>
  close (): Promise<void>
}
