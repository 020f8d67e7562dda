// Reads one Prometheus histogram from the gateway's GET /metrics, so the gateway's own
// `gateway_overhead_seconds` can be set beside the externally measured overhead.

export type Buckets = Map<number, number>

export async function scrapeHistogram (url: string, name: string): Promise<Buckets> {
  const text = await (await fetch(`${url}/metrics`)).text()
  const out: Buckets = new Map()
  const re = new RegExp(`^${name}_bucket\\{(?:[^}]*,)?le="([^"]+)"[^}]*\\} (\\S+)$`, 'gm')
  for (const m of text.matchAll(re)) {
    const le = m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1])
    out.set(le, (out.get(le) ?? 0) + Number(m[2]))
  }
  return out
}

/** Quantile of the observations between two scrapes, linearly interpolated inside a bucket (ms). */
export function histogramQuantileMs (before: Buckets, after: Buckets, q: number): number {
  const les = [...after.keys()].sort((a, b) => a - b)
  const cum = les.map((le) => (after.get(le) ?? 0) - (before.get(le) ?? 0))
  const total = cum[cum.length - 1] ?? 0
  if (total <= 0) return Number.NaN
  const rank = q * total
  for (let i = 0; i < les.length; i++) {
    if (cum[i] >= rank) {
      const lo = i === 0 ? 0 : les[i - 1]
      const hi = les[i]
      if (!Number.isFinite(hi)) return lo * 1000
      const prev = i === 0 ? 0 : cum[i - 1]
      const frac = cum[i] === prev ? 0 : (rank - prev) / (cum[i] - prev)
      return (lo + (hi - lo) * frac) * 1000
    }
  }
  return Number.NaN
}
