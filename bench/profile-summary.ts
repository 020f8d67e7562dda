import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

// Summarises a V8 .cpuprofile (node --cpu-prof): top functions by self time, by inclusive time,
// and self time per source (package or project file).
//   npx tsx bench/profile-summary.ts <file.cpuprofile> [top]

interface CallFrame { functionName: string, url: string, lineNumber: number, columnNumber: number }
interface ProfileNode { id: number, callFrame: CallFrame, children?: number[] }
interface CpuProfile { nodes: ProfileNode[], startTime: number, endTime: number, samples: number[], timeDeltas: number[] }

function shortUrl (url: string): string {
  if (!url) return ''
  const u = url.replace(/^file:\/\//, '')
  const nm = u.lastIndexOf('/node_modules/')
  if (nm >= 0) return u.slice(nm + '/node_modules/'.length)
  const root = u.indexOf('/work/main/')
  return root >= 0 ? u.slice(root + '/work/main/'.length) : u
}

/** The package (node_modules) or project directory a function belongs to. */
function sourceOf (url: string): string {
  const s = shortUrl(url)
  if (!s) return '(native/V8)'
  if (s.startsWith('node:')) return s
  if (url.includes('/node_modules/')) {
    const parts = s.split('/')
    return parts[0].startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]
  }
  return s
}

function keyOf (f: CallFrame): string {
  const name = f.functionName || '(anonymous)'
  const s = shortUrl(f.url)
  return s ? `${name}  ${s}:${f.lineNumber + 1}` : name
}

export interface ProfileSummary { totalMs: number, idleMs: number, gcMs: number, self: [string, number][], inclusive: [string, number][], bySource: [string, number][] }

export function summarizeProfile (file: string): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const n of p.nodes) byId.set(n.id, n)
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const self = new Map<string, number>()
  const inclusive = new Map<string, number>()
  const bySource = new Map<string, number>()
  let total = 0
  let idle = 0
  let gc = 0
  for (let i = 0; i < p.samples.length; i++) {
    const us = p.timeDeltas[i + 1] ?? 0 // the delta after a sample is the time it stood for
    const node = byId.get(p.samples[i])
    if (!node) continue
    total += us
    const name = node.callFrame.functionName
    if (name === '(idle)') { idle += us; continue }
    if (name === '(garbage collector)') gc += us
    const k = keyOf(node.callFrame)
    self.set(k, (self.get(k) ?? 0) + us)
    const src = name.startsWith('(') ? name : sourceOf(node.callFrame.url)
    bySource.set(src, (bySource.get(src) ?? 0) + us)
    const seen = new Set<string>()
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const kk = keyOf(byId.get(id)!.callFrame)
      if (seen.has(kk)) continue
      seen.add(kk)
      inclusive.set(kk, (inclusive.get(kk) ?? 0) + us)
    }
  }
  const sorted = (m: Map<string, number>) => [...m.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v / 1000] as [string, number])
  return { totalMs: total / 1000, idleMs: idle / 1000, gcMs: gc / 1000, self: sorted(self), inclusive: sorted(inclusive), bySource: sorted(bySource) }
}

export function formatProfileSummary (s: ProfileSummary, top = 25, requests?: number): string {
  const busy = s.totalMs - s.idleMs
  const pct = (ms: number) => `${((ms / busy) * 100).toFixed(1).padStart(5)}%`
  const perReq = (ms: number) => requests ? `${((ms * 1000) / requests).toFixed(1).padStart(7)} µs/req` : ''
  const lines = [
    `profile: ${s.totalMs.toFixed(0)} ms sampled, ${busy.toFixed(0)} ms busy (${((busy / s.totalMs) * 100).toFixed(0)}%), GC ${s.gcMs.toFixed(0)} ms${requests ? `, ${requests} requests → ${((busy * 1000) / requests).toFixed(0)} µs busy/req` : ''}`,
    '', `top ${top} by self time (% of busy time):`,
    ...s.self.slice(0, top).map(([k, ms]) => `  ${pct(ms)} ${perReq(ms)}  ${k}`),
    '', 'self time by source:',
    ...s.bySource.slice(0, 20).map(([k, ms]) => `  ${pct(ms)} ${perReq(ms)}  ${k}`),
    '', `top ${top} by inclusive time (project code, excluding framework entry points):`,
    ...s.inclusive.filter(([k]) => /\s(src|plugins|routes|config)\//.test(k)).slice(0, top).map(([k, ms]) => `  ${pct(ms)} ${perReq(ms)}  ${k}`),
  ]
  return lines.join('\n')
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2]
  if (!file) { console.error('usage: tsx bench/profile-summary.ts <file.cpuprofile> [top] [requests]'); process.exit(2) }
  console.log(formatProfileSummary(summarizeProfile(file), Number(process.argv[3] ?? 25), process.argv[4] ? Number(process.argv[4]) : undefined))
}
