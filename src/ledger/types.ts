// The ledger contract, independent of storage. Every method is one atomic transaction in the store;
// the invariants (payer available >= 0, sum of accounts = 0, a pending resolves once, a payment
// nonce credits once) are enforced where the data lives, so two replicas sharing a store cannot
// break them by racing. Amounts are bigint ledger units (see src/money.ts), never numbers.

import type { LedgerAccessStore, UsageWindow } from './types-access.ts'

export type * from './types-access.ts'

export type TransferKind = 'deposit' | 'grant' | 'clawback' | 'pending' | 'post' | 'void' | 'expire' | 'refund' | 'upstream_cost'
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
export interface ReserveInput {
  id: string
  account: string
  amount: bigint
  timeoutAt: number
  reference: string
  /**
   * When set, refuse (too_many_reservations) if the account already holds this many open pending
   * reservations whose timeoutAt is still in the future, counted in the reserve's own transaction.
   */
  maxOpen?: number
}
/**
 * What the gateway paid the upstream (enclave) for one request, in ledger units (> 0): posted as a
 * kind 'upstream_cost' transfer system:revenue → system:upstream_cost whose reference is the
 * reservation's reference (the request id). At most one per request; idempotent on id.
 */
export interface UpstreamCostInput { id: string, amount: bigint, meta?: TransferMeta }
/**
 * amount may be 0n (release everything, but record that the request was settled, not voided).
 * upstreamCost, when given, is recorded in the same transaction (see UpstreamCostInput).
 */
export interface PostInput { pendingId: string, id: string, amount: bigint, upstreamCost?: UpstreamCostInput }
export interface VoidInput { pendingId: string, id: string, reason: string, upstreamCost?: UpstreamCostInput }
export interface RecordUpstreamCostInput extends UpstreamCostInput {
  /** The request's reservation (any state): the cost's reference is its reference. */
  pendingId: string
}
/** One model's money over a window (transfer times): what payers were charged and what the upstream cost. */
export interface MarginRow {
  /** The receipt's model; null for ledger entries without a receipt. */
  model: string | null
  /** Requests with a charge (post, possibly 0) or an upstream cost in the window. */
  requests: number
  /** Posted charges (pending → system:revenue). */
  revenue: bigint
  /** upstream_cost transfers. */
  upstreamCost: bigint
}

/** Every failure carries the payer's available credit at the time of the refusal. */
export type ReserveResult =
  | { ok: true, transfer: Transfer, duplicate: boolean }
  | { ok: false, code: 'insufficient_credit', available: bigint }
  | { ok: false, code: 'too_many_reservations', open: number, available: bigint }
  | { ok: false, code: 'account_blocked', available: bigint }

/** The durable x402 replay key (PROTOCOLS.md §2); payer and nonce (and a hex asset) compare lowercased. */
export interface PaymentClaimKey { network: string, asset: string, payer: string, nonce: string }
export interface PaymentClaimInput extends PaymentClaimKey {
  requestId: string
  /** Atomic units of the asset, as signed; not ledger units. */
  amount: bigint
  /** Unix seconds: the EIP-3009 authorization's validBefore, for reconciliation. */
  validBefore?: number
}
export type PaymentClaimStatus = 'claimed' | 'settling' | 'settled' | 'failed' | 'unknown'
export interface PaymentClaim extends PaymentClaimKey {
  requestId: string
  amount: bigint
  status: PaymentClaimStatus
  txHash: string | null
  error: string | null
  /**
   * Set once, by settlePaymentAndDeposit or provisionalDeposit; a claim with a deposit can never
   * credit again (not even after the provisional deposit was reversed).
   */
  depositId: string | null
  createdAt: number
  updatedAt: number
  /** Unix seconds, as given to claimPayment; null when it was not given. */
  validBefore?: number | null
  /** True when depositId was credited by provisionalDeposit (before the settlement confirmed). */
  provisional?: boolean
  /** Set once, by reverseProvisionalDeposit. */
  reversal?: ProvisionalReversal | null
}
export interface ProvisionalReversal {
  /** The id passed to reverseProvisionalDeposit (also the refund transfer's id when reversed > 0n). */
  id: string
  reversed: bigint
  shortfall: bigint
  at: number
}
export interface ListPaymentClaimsInput {
  statuses: PaymentClaimStatus[]
  /** Epoch ms: only claims last updated strictly before this. */
  updatedBefore: number
  limit: number
}
export type ClaimResult =
  | { claimed: true }
  | { claimed: false, existing: { status: PaymentClaimStatus, requestId: string, txHash: string | null } }
/** Omitted fields are left unchanged. */
export interface PaymentClaimUpdate { status: 'settling' | 'settled' | 'failed' | 'unknown', txHash?: string, error?: string }
export interface SettleDepositInput { txHash: string, depositId: string, account: string, amount: bigint }
export interface ProvisionalDepositInput { depositId: string, account: string, amount: bigint }
export interface ReverseProvisionalInput { id: string, reason: string, now: number }
export interface ReverseProvisionalResult {
  /** Moved back from the payer to system:deposits (at most the payer's available credit). */
  reversed: bigint
  /** deposit - reversed: what the payer had already spent or reserved and could not be taken back. */
  shortfall: bigint
}

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

export interface AccountBlock { reason: string, since: number }

export interface LedgerTotals {
  /** Sum over accounts of credits_posted - debits_posted: 0n in a healthy ledger. */
  sumOfAllAccounts: bigint
  pendingCount: number
}

/**
 * The whole store contract: the money operations below plus the access, idempotency and reporting
 * records of LedgerAccessStore (types-access.ts). Implementations implement both, on one database.
 */
export interface LedgerStore extends LedgerAccessStore {
  /** system:deposits → payer. Idempotent on id; same id with other fields → TransferIdConflict. */
  deposit (input: DepositInput): Promise<TransferResult>
  /** system:grants → payer (free credit). Idempotent on id. */
  grant (input: GrantInput): Promise<TransferResult>
  /** payer → system:grants. Throws InsufficientCredit rather than take a payer below zero. */
  clawback (input: GrantInput): Promise<TransferResult>
  /**
   * Pending payer → system:revenue, or insufficient_credit. timeoutAt must be in the future (else
   * LedgerArgumentInvalid). Idempotent on id (a repeat reports the transfer's current state).
   * A new reservation is refused with account_blocked while the account is blocked, and with
   * too_many_reservations when maxOpen is set and reached; both are decided in the same transaction.
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
  /**
   * The upstream cost of a request on its own (when its reservation was already resolved or
   * expired). Throws PendingNotFound when pendingId is not a reservation; idempotent on id (same
   * fields → duplicate, other fields → TransferIdConflict); a second cost for the same request
   * under another id is refused by the schema.
   */
  recordUpstreamCost (input: RecordUpstreamCostInput): Promise<TransferResult>
  /** Revenue, upstream cost and request count per model, for transfers created in [fromMs, toMs); ordered by model. */
  margin (window: UsageWindow): Promise<MarginRow[]>
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
  /**
   * Finishes receipts their request never finished (its replica died, or the ledger failed between
   * the money and the receipt): each still 'pending' whose reservation (the pending transfer
   * `reserve:<receipt id>`, as the chat path names it) expired, or was posted or voided and the
   * receipt was created at or before `before` (a grace for its own request to write it).
   * Posted → 'completed' with the posted amount as charged; voided or expired → 'failed' with
   * charged 0 and error code RESERVATION_EXPIRED or INTERRUPTED (unless one was recorded).
   * Returns how many receipts it finished. One statement; idempotent.
   */
  closeStaleReceipts (before: number, now: number): Promise<number>

  /**
   * Provisional credit for optimistic settlement, in one transaction: posts the deposit (meta
   * {provisional: true}) and links it to the claim, which stays (or becomes) 'settling'. The claim
   * must be claimed, settling or unknown and have no deposit yet. Repeating the same depositId
   * returns the deposit as a duplicate (PaymentClaimState once it was reversed); another depositId
   * throws PaymentClaimSettled. A later settlePaymentAndDeposit with the same depositId (and
   * account, amount) returns this deposit as a duplicate and marks the claim settled: the claim
   * still credits only once. While open, updatePaymentClaim may move it between settling and
   * unknown only (other statuses: PaymentClaimState).
   */
  provisionalDeposit (key: PaymentClaimKey, input: ProvisionalDepositInput): Promise<TransferResult>
  /**
   * The settlement behind a provisional deposit failed. In one transaction: moves
   * min(deposit, payer available) back to system:deposits (kind 'refund', transfer id = input.id),
   * marks the claim 'failed' (error = reason), and blocks the account (reason, since now) when
   * anything was reversed or there is a shortfall. Never takes the payer below zero. Idempotent on
   * id: a repeat returns the first result; another id on a reversed claim throws PaymentClaimState.
   * Throws PaymentClaimState when the claim has no provisional deposit, PaymentClaimSettled when
   * it already settled.
   */
  reverseProvisionalDeposit (key: PaymentClaimKey, input: ReverseProvisionalInput): Promise<ReverseProvisionalResult>
  /** Oldest update first: the claims a reconciler should look at. */
  listPaymentClaims (input: ListPaymentClaimsInput): Promise<PaymentClaim[]>

  /** Blocks the payer's reserves until unblocked. Returns false (keeping the first reason) if already blocked. */
  blockAccount (account: string, reason: string, now: number): Promise<boolean>
  /** Returns false if the account was not blocked. */
  unblockAccount (account: string): Promise<boolean>
  accountBlock (account: string): Promise<AccountBlock | null>

  totals (): Promise<LedgerTotals>
  /** Throws LedgerInvariantBroken listing every broken invariant. */
  checkInvariants (): Promise<void>
  close (): Promise<void>
}
