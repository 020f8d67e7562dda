import t from 'tap'
import { readFileSync } from 'node:fs'
import { GatewayMetrics } from '../src/metrics.ts'

t.test('every metric the Grafana dashboard queries exists in the registry', async (t) => {
  const dash = JSON.parse(readFileSync(new URL('../deploy/grafana-dashboard.json', import.meta.url), 'utf8'))
  const exprs: string[] = dash.panels.flatMap((p: { targets: { expr: string }[] }) => p.targets.map((x) => x.expr))
  const used = new Set(exprs.flatMap((e) => e.match(/gateway_[a-z_]+/g) ?? []).map((n) => n.replace(/_(bucket|sum|count)$/, '')))
  const names = new Set((await new GatewayMetrics({ defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => m.name))
  t.ok(used.size >= 10)
  for (const n of used) t.ok(names.has(n), `${n} is exported`)
})
