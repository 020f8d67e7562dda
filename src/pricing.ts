import { readFileSync } from 'node:fs'
import { z } from 'zod'
import { parseDecimal, divCeil } from './money.ts'

// Prices are USD per 1M tokens in configuration and nano-USD (ledger units, see money.ts) here.
// The payment asset is assumed to be a USD stablecoin: one asset unit is one dollar.

const usd = z.string().regex(/^\d{1,9}(\.\d{1,9})?$/, 'expected a decimal USD amount such as "1.25"')
const modelSchema = z.object({
  inputUsdPer1M: usd,
  outputUsdPer1M: usd,
  requestFeeUsd: usd.optional(),
  upstreamMarkup: z.string().regex(/^\d{1,3}(\.\d{1,6})?$/).optional(),
  upstreamModel: z.string().min(1).max(128).optional(),
})
const fileSchema = z.object({ note: z.string().optional(), models: z.record(z.string().min(1).max(128), modelSchema) })

export interface ModelPrice {
  id: string
  /** nano-USD per 1M tokens */
  inputPer1M: bigint
  outputPer1M: bigint
  requestFee: bigint
  /** markup over the backend's cost_usd, as a fraction scaled by 1e6 (1.2 → 1_200_000n) */
  markupMicros?: bigint
}

export interface PriceTable { models: Map<string, ModelPrice> }

export function parsePriceTable (json: unknown): PriceTable {
  const parsed = fileSchema.parse(json)
  const models = new Map<string, ModelPrice>()
  for (const [id, m] of Object.entries(parsed.models)) {
    models.set(id, {
      id,
      inputPer1M: parseDecimal(m.inputUsdPer1M, 9),
      outputPer1M: parseDecimal(m.outputUsdPer1M, 9),
      requestFee: m.requestFeeUsd ? parseDecimal(m.requestFeeUsd, 9) : 0n,
      markupMicros: m.upstreamMarkup ? parseDecimal(m.upstreamMarkup, 6) : undefined,
    })
  }
  return { models }
}

export function loadPriceTable (path: string): PriceTable {
  return parsePriceTable(JSON.parse(readFileSync(path, 'utf8')))
}

export const tokenCost = (tokens: bigint, per1M: bigint) => divCeil(tokens * per1M, 1_000_000n)

/**
 * Worst case for one request: every prompt byte a token (byte-level BPE never emits more tokens
 * than bytes, plus a few framing tokens per message) and the full max_tokens of output.
 */
export function reservationFor (price: ModelPrice, promptBytes: number, messages: number, maxOutputTokens: number, cap: bigint): bigint {
  const promptTokens = BigInt(promptBytes + 8 * messages + 16)
  const worst = tokenCost(promptTokens, price.inputPer1M) + tokenCost(BigInt(maxOutputTokens), price.outputPer1M) + price.requestFee
  return worst < cap ? worst : cap
}

export interface Usage { promptTokens: number, completionTokens: number }

/**
 * The actual charge: tokens at the configured price plus the fee, or the marked-up backend cost
 * when that is higher; never above the reservation (the reservation is the promise we made).
 */
export function chargeFor (price: ModelPrice, usage: Usage, upstreamCostUsd: string | undefined, reserved: bigint): bigint {
  let cost = tokenCost(BigInt(usage.promptTokens), price.inputPer1M) + tokenCost(BigInt(usage.completionTokens), price.outputPer1M) + price.requestFee
  if (price.markupMicros !== undefined && upstreamCostUsd !== undefined && /^\d{1,9}(\.\d{1,18})?$/.test(upstreamCostUsd)) {
    const upstreamNano = parseDecimal(upstreamCostUsd.replace(/(\.\d{9})\d+$/, '$1'), 9)
    const marked = divCeil(upstreamNano * price.markupMicros, 1_000_000n)
    if (marked > cost) cost = marked
  }
  return cost < reserved ? cost : reserved
}

/**
 * When the backend reports no usage (PROTOCOLS.md §7: it can happen), the request is charged by
 * estimate rather than free or at the reservation: prompt bytes / 4 and output characters / 4,
 * each rounded up, the usual rule of thumb for English text with BPE tokenizers.
 */
export function estimateUsage (promptBytes: number, outputChars: number): Usage {
  return { promptTokens: Math.ceil(promptBytes / 4), completionTokens: Math.ceil(outputChars / 4) }
}
