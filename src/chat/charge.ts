import type { LedgerStore, UpstreamCostInput } from '../ledger/types.ts'
import { LEDGER_DECIMALS } from '../money.ts'
import { chargeFor, estimateUsage, type Usage } from '../pricing.ts'
import type { PreparedChat } from './prepare.ts'

// Reserve → post/void, in one place. Every path out of a request ends here exactly once.

export interface Reservation { pendingId: string, account: string, amount: bigint, requestId: string }

export async function reserveFor (ledger: LedgerStore, account: string, prepared: PreparedChat, requestId: string, timeoutAt: number, maxOpen?: number): Promise<
  { ok: true, reservation: Reservation } | { ok: false, code: string, available: bigint }> {
  const pendingId = `reserve:${requestId}`
  const r = await ledger.reserve({ id: pendingId, account, amount: prepared.reservation, timeoutAt, reference: requestId, maxOpen })
  if (!r.ok) return { ok: false, code: r.code, available: r.available }
  return { ok: true, reservation: { pendingId, account, amount: prepared.reservation, requestId } }
}

export interface UsageReport { usage?: { prompt_tokens?: unknown, completion_tokens?: unknown }, costUsd?: string, outputChars: number }

/** Reads usage as reported, or estimates it by the documented rule when the backend sent none. */
export function usageOf (prepared: PreparedChat, report: UsageReport): { usage: Usage, estimated: boolean } {
  const p = report.usage?.prompt_tokens
  const c = report.usage?.completion_tokens
  if (Number.isSafeInteger(p) && Number.isSafeInteger(c) && (p as number) >= 0 && (c as number) >= 0) {
    return { usage: { promptTokens: p as number, completionTokens: c as number }, estimated: false }
  }
  return { usage: estimateUsage(prepared.promptBytes, report.outputChars), estimated: true }
}

/** The ledger id of a request's upstream cost transfer (system:revenue → system:upstream_cost). */
export const upstreamCostId = (requestId: string) => `upstream:${requestId}`

/** Upstream costs above this are not believed (a broken or hostile cost block), and not recorded. */
const MAX_UPSTREAM_COST_USD = 1_000_000n

/**
 * The enclave's reported cost_usd in ledger units (nano-USD; the payment asset is a USD
 * stablecoin), rounded UP to the next unit: the books never show the upstream cheaper than it was.
 * Accepts a plain decimal ("0.000123") or a JSON number's exponent form ("1.5e-7", what String()
 * gives for small numbers). Undefined for a missing, malformed, negative or absurdly large cost.
 */
export function upstreamCostUnits (costUsd: string | undefined): bigint | undefined {
  if (costUsd === undefined) return undefined
  const m = /^(\d{1,30})(?:\.(\d{1,40}))?(?:[eE]([+-]?\d{1,3}))?$/.exec(costUsd.trim())
  if (!m) return undefined
  const frac = m[2] ?? ''
  const exp = Number(m[3] ?? '0')
  if (Math.abs(exp) > 60) return undefined
  const digits = BigInt(m[1] + frac)
  // value = digits × 10^(exp − frac.length) USD = digits × 10^(shift) ledger units
  const shift = LEDGER_DECIMALS + exp - frac.length
  const units = shift >= 0 ? digits * 10n ** BigInt(shift) : (digits + 10n ** BigInt(-shift) - 1n) / 10n ** BigInt(-shift)
  if (units > MAX_UPSTREAM_COST_USD * 10n ** BigInt(LEDGER_DECIMALS)) return undefined
  return units
}

function upstreamInput (r: Reservation, costUsd: string | undefined): UpstreamCostInput | undefined {
  const amount = upstreamCostUnits(costUsd)
  if (amount === undefined || amount === 0n) return undefined
  return { id: upstreamCostId(r.requestId), amount, meta: { cost_usd: costUsd!.trim().slice(0, 64) } }
}

/**
 * Resolves the reservation with the upstream cost in the same transaction. If the resolution is
 * refused (the reservation expired or was resolved elsewhere), the cost is still recorded on its
 * own before the refusal propagates: the enclave was paid either way.
 */
async function resolveWithCost<T> (ledger: LedgerStore, r: Reservation, upstream: UpstreamCostInput | undefined, resolve: () => Promise<T>): Promise<T> {
  try {
    return await resolve()
  } catch (err) {
    if (upstream && (err as { code?: string }).code === 'LEDGER_PENDING_RESOLVED') {
      await ledger.recordUpstreamCost({ ...upstream, pendingId: r.pendingId }).catch(() => undefined)
    }
    throw err
  }
}

export async function postCharge (ledger: LedgerStore, r: Reservation, prepared: PreparedChat, report: UsageReport) {
  const { usage, estimated } = usageOf(prepared, report)
  const amount = chargeFor(prepared.price, usage, report.costUsd, r.amount)
  const upstreamCost = upstreamInput(r, report.costUsd)
  await resolveWithCost(ledger, r, upstreamCost, () => ledger.post({ pendingId: r.pendingId, id: `post:${r.requestId}`, amount, upstreamCost }))
  const balance = await ledger.balance(r.account)
  return { amount, usage, estimated, balance: balance.available, upstreamCost: upstreamCost?.amount ?? 0n }
}

/**
 * Releases the reservation: the payer is not charged. A cost the enclave reported is recorded all
 * the same (an unverified answer was still paid for upstream), so the margin shows the loss.
 */
export async function voidReservation (ledger: LedgerStore, r: Reservation, reason: string, costUsd?: string) {
  const upstreamCost = upstreamInput(r, costUsd)
  await resolveWithCost(ledger, r, upstreamCost, () => ledger.void({ pendingId: r.pendingId, id: `void:${r.requestId}`, reason, upstreamCost }))
  const balance = await ledger.balance(r.account)
  return { amount: 0n, balance: balance.available, upstreamCost: upstreamCost?.amount ?? 0n }
}
