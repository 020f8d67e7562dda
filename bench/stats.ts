// Small numeric helpers shared by the driver and the load generator.

/** Exact percentile (nearest-rank) of an unsorted sample; NaN when empty. */
export function percentile (values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN
  const sorted = Float64Array.from(values).sort()
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]
}

export interface LatencySummary { count: number, mean: number, p50: number, p90: number, p99: number, max: number }

export function summarize (values: readonly number[]): LatencySummary {
  if (values.length === 0) return { count: 0, mean: Number.NaN, p50: Number.NaN, p90: Number.NaN, p99: Number.NaN, max: Number.NaN }
  const sorted = Float64Array.from(values).sort()
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]
  let sum = 0
  for (const v of sorted) sum += v
  return { count: sorted.length, mean: sum / sorted.length, p50: at(50), p90: at(90), p99: at(99), max: sorted[sorted.length - 1] }
}

export function median (values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x))
  if (v.length === 0) return Number.NaN
  const s = [...v].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

export function min (values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x))
  return v.length ? Math.min(...v) : Number.NaN
}

export function max (values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x))
  return v.length ? Math.max(...v) : Number.NaN
}
