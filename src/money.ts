// Money is bigint everywhere. The ledger counts in nano-units of the payment asset (1e-9 of one
// token, i.e. 1/1000 of a USDC atomic unit), fine enough that $0.001 per 1M tokens is exactly one
// unit per token. Conversions happen only at the edges (x402 amounts, headers, prices).

export const LEDGER_DECIMALS = 9

export class MoneyFormatError extends Error {
  constructor (readonly input: string, why: string) {
    super(`${JSON.stringify(input).slice(0, 40)} is not a valid amount: ${why}`)
  }
}

/** Parses a non-negative decimal string ("1.25", "0.0001") into an integer scaled by 10^decimals. */
export function parseDecimal (input: string, decimals: number): bigint {
  const m = /^(\d{1,30})(?:\.(\d{1,30}))?$/.exec(input.trim())
  if (!m) throw new MoneyFormatError(input, 'expected digits with an optional decimal point')
  const frac = m[2] ?? ''
  if (frac.length > decimals && /[1-9]/.test(frac.slice(decimals))) {
    throw new MoneyFormatError(input, `more than ${decimals} decimal places`)
  }
  return BigInt(m[1]) * 10n ** BigInt(decimals) + BigInt((frac + '0'.repeat(decimals)).slice(0, decimals) || '0')
}

/** Formats a scaled integer as a decimal string with trailing zeros trimmed ("0.00125", "3"). */
export function formatDecimal (value: bigint, decimals: number): string {
  const neg = value < 0n
  const abs = neg ? -value : value
  const scale = 10n ** BigInt(decimals)
  const whole = abs / scale
  const frac = (abs % scale).toString().padStart(decimals, '0').replace(/0+$/, '')
  return (neg ? '-' : '') + whole.toString() + (frac ? '.' + frac : '')
}

export function atomicToLedger (atomic: bigint, assetDecimals: number): bigint {
  if (assetDecimals > LEDGER_DECIMALS) throw new RangeError('asset has more decimals than the ledger unit')
  return atomic * 10n ** BigInt(LEDGER_DECIMALS - assetDecimals)
}

/** Rounds up: a request never costs less than its price because of unit conversion. */
export function ledgerToAtomicCeil (units: bigint, assetDecimals: number): bigint {
  const f = 10n ** BigInt(LEDGER_DECIMALS - assetDecimals)
  return (units + f - 1n) / f
}

export function divCeil (a: bigint, b: bigint): bigint {
  return a <= 0n ? 0n : (a + b - 1n) / b
}

/** Ledger units as asset units for headers and JSON ("0.000012345"). */
export function formatLedger (units: bigint): string {
  return formatDecimal(units, LEDGER_DECIMALS)
}
