import type { LedgerStore } from '../ledger/types.ts'
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

export async function postCharge (ledger: LedgerStore, r: Reservation, prepared: PreparedChat, report: UsageReport) {
  const { usage, estimated } = usageOf(prepared, report)
  const amount = chargeFor(prepared.price, usage, report.costUsd, r.amount)
  await ledger.post({ pendingId: r.pendingId, id: `post:${r.requestId}`, amount })
  const balance = await ledger.balance(r.account)
  return { amount, usage, estimated, balance: balance.available }
}

export async function voidReservation (ledger: LedgerStore, r: Reservation, reason: string) {
  await ledger.void({ pendingId: r.pendingId, id: `void:${r.requestId}`, reason })
  const balance = await ledger.balance(r.account)
  return { amount: 0n, balance: balance.available }
}
