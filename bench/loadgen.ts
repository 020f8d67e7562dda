import { setMaxListeners } from 'node:events'
import autocannon from 'autocannon'
import { Pool } from 'undici'
import { summarize, type LatencySummary } from './stats.ts'

// The load generators, run inside bench/loadgen-child.ts. Every latency is kept as an exact
// float (ms) and summarised here: autocannon's own histogram rounds to whole milliseconds, which
// is too coarse for sub-millisecond overhead, so its 'response' events are recorded instead.

// The local enclaves serve HTTPS with a self-signed certificate; the load generator is a client
// measuring speed, not checking identity (autocannon does the same).
const INSECURE = { rejectUnauthorized: false }

export interface Target {
  /** Origin, e.g. http://127.0.0.1:1234 */
  origin: string
  path: string
  body: string
  /** One header set per connection / request, used round-robin (e.g. one API key per payer). */
  headersList: Record<string, string>[]
}

export interface CannonResult {
  ok: number
  non2xx: number
  errors: number
  seconds: number
  rps: number
  latency: LatencySummary
  statuses: Record<string, number>
}

/** Closed loop: `connections` keep-alive connections, each sending back to back. */
export function cannon (t: Target & { connections: number, seconds: number, overallRate?: number }): Promise<CannonResult> {
  const lat: number[] = []
  const statuses: Record<string, number> = {}
  let next = 0
  return new Promise((resolve, reject) => {
    const inst = autocannon({
      url: t.origin + t.path,
      method: 'POST',
      body: t.body,
      connections: t.connections,
      duration: t.seconds,
      timeout: 30,
      ...(t.overallRate ? { overallRate: t.overallRate } : {}),
      setupClient: (client) => client.setHeaders(t.headersList[next++ % t.headersList.length]),
    }, (err, res) => {
      if (err) return reject(err)
      const ok = lat.length
      resolve({ ok, non2xx: res.non2xx, errors: res.errors + res.timeouts, seconds: res.duration, rps: ok / res.duration, latency: summarize(lat), statuses })
    })
    inst.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
      statuses[status] = (statuses[status] ?? 0) + 1
      if (status >= 200 && status < 300) lat.push(ms)
    })
  })
}

export interface PacedResult extends CannonResult {
  /** Latency measured from the scheduled send time (includes generator lag; no coordinated omission). */
  fromSchedule: LatencySummary
  offeredRps: number
  maxInFlight: number
  /** Requests still unanswered when the drain time ran out (also counted in errors). */
  unfinished: number
}

/**
 * Open loop at a fixed rate: requests are scheduled every 1/rate s whatever the responses do
 * (autocannon's overallRate instead gives each connection a per-second quota that it spends back
 * to back at the start of every second, which measures bursts at saturation, not a steady rate).
 */
export async function paced (t: Target & { rate: number, seconds: number, connections: number, drainSeconds?: number }): Promise<PacedResult> {
  const pool = new Pool(t.origin, { connections: t.connections, pipelining: 1, keepAliveTimeout: 60_000, connect: INSECURE })
  const lat: number[] = []
  const fromSchedule: number[] = []
  const statuses: Record<string, number> = {}
  let errors = 0
  let inFlight = 0
  let maxInFlight = 0
  const total = Math.floor(t.rate * t.seconds)
  const interval = 1000 / t.rate
  const running = new Set<Promise<void>>()
  // Open every connection first (TLS handshakes to the backend cost it a millisecond each), and
  // keep the pool small: at a steady rate a few connections carry the load, and a large pool
  // would open (and handshake) more connections exactly when a burst is being measured.
  await Promise.all(Array.from({ length: t.connections }, () => pool.request({ path: '/', method: 'GET' }).then((r) => r.body.dump(), () => undefined)))

  const fire = (i: number, scheduled: number) => {
    const headers = { 'content-type': 'application/json', ...t.headersList[i % t.headersList.length] }
    const started = performance.now()
    inFlight++
    if (inFlight > maxInFlight) maxInFlight = inFlight
    const p = pool.request({ path: t.path, method: 'POST', headers, body: t.body })
      .then(async (res) => {
        await res.body.arrayBuffer()
        const end = performance.now()
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
        if (res.statusCode >= 200 && res.statusCode < 300) { lat.push(end - started); fromSchedule.push(end - scheduled) }
      }, () => { errors++ })
      .finally(() => { inFlight--; running.delete(p) })
    running.add(p)
  }

  const t0 = performance.now() + 20
  let sent = 0
  await new Promise<void>((resolve) => {
    const tick = () => {
      const now = performance.now()
      while (sent < total && t0 + sent * interval <= now) { fire(sent, t0 + sent * interval); sent++ }
      if (sent >= total) return resolve()
      setTimeout(tick, Math.max(0, t0 + sent * interval - performance.now() - 0.5))
    }
    tick()
  })
  const lastSent = performance.now()
  // A server far below the offered rate would leave a queue that takes minutes to drain: wait at
  // most `drainSeconds` for the stragglers, then count them as errors (the achieved rate shows it).
  const drained = await Promise.race([Promise.all([...running]).then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), (t.drainSeconds ?? Math.max(2, t.seconds)) * 1000))])
  const unfinished = drained ? 0 : running.size
  const errorsAtDrain = errors
  if (drained) await pool.close()
  else await pool.destroy().catch(() => undefined)
  const ok = lat.length
  const seconds = (lastSent - t0) / 1000
  return {
    ok, non2xx: Object.entries(statuses).filter(([s]) => !s.startsWith('2')).reduce((a, [, n]) => a + n, 0), errors: errorsAtDrain + unfinished, unfinished,
    seconds, rps: ok / seconds, offeredRps: t.rate, latency: summarize(lat), fromSchedule: summarize(fromSchedule), statuses, maxInFlight,
  }
}

export interface StreamsResult {
  ok: number
  failed: number
  seconds: number
  streamsPerSec: number
  /** Time to the response headers. */
  headers: LatencySummary
  /** Time to the first byte of the body (the first SSE frame): what a chat UI waits for. */
  ttfb: LatencySummary
  total: LatencySummary
  statuses: Record<string, number>
}

/** `concurrency` workers, each opening one stream after another until the time is up. */
export async function streams (t: Target & { concurrency: number, seconds: number, expectVerified: boolean }): Promise<StreamsResult> {
  const pool = new Pool(t.origin, { connections: t.concurrency, pipelining: 1, keepAliveTimeout: 60_000, connect: INSECURE })
  const heads: number[] = []
  const ttfbs: number[] = []
  const totals: number[] = []
  const statuses: Record<string, number> = {}
  let ok = 0
  let failed = 0
  let n = 0
  const started = performance.now()
  const deadline = started + t.seconds * 1000
  const worker = async () => {
    while (performance.now() < deadline) {
      const headers = { 'content-type': 'application/json', ...t.headersList[n++ % t.headersList.length] }
      const t0 = performance.now()
      try {
        const res = await pool.request({ path: t.path, method: 'POST', headers, body: t.body })
        const th = performance.now()
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
        let first = 0
        let tail = ''
        for await (const chunk of res.body) {
          if (!first) first = performance.now()
          tail = (tail + (chunk as Buffer).toString('utf8')).slice(-4096)
        }
        const end = performance.now()
        const good = res.statusCode === 200 && tail.includes('data: [DONE]') && (!t.expectVerified || tail.includes('"verified":true'))
        if (!good) { failed++; continue }
        ok++
        heads.push(th - t0)
        ttfbs.push(first - t0)
        totals.push(end - t0)
      } catch {
        failed++
      }
    }
  }
  await Promise.all(Array.from({ length: t.concurrency }, worker))
  const seconds = (performance.now() - started) / 1000
  await pool.close()
  return { ok, failed, seconds, streamsPerSec: ok / seconds, headers: summarize(heads), ttfb: summarize(ttfbs), total: summarize(totals), statuses }
}

export interface PaidResult extends CannonResult { used: number, exhausted: boolean }

/** Paid requests: each one carries its own pre-signed PAYMENT-SIGNATURE; `concurrency` in flight. */
export async function paid (t: Omit<Target, 'headersList'> & { payments: string[], concurrency: number, seconds: number }): Promise<PaidResult> {
  const pool = new Pool(t.origin, { connections: t.concurrency, pipelining: 1, keepAliveTimeout: 60_000, connect: INSECURE })
  const lat: number[] = []
  const statuses: Record<string, number> = {}
  let errors = 0
  let next = 0
  const started = performance.now()
  const deadline = started + t.seconds * 1000
  const worker = async () => {
    while (performance.now() < deadline && next < t.payments.length) {
      const header = t.payments[next++]
      const t0 = performance.now()
      try {
        const res = await pool.request({ path: t.path, method: 'POST', headers: { 'content-type': 'application/json', 'payment-signature': header }, body: t.body })
        await res.body.arrayBuffer()
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
        if (res.statusCode === 200) lat.push(performance.now() - t0)
      } catch { errors++ }
    }
  }
  await Promise.all(Array.from({ length: t.concurrency }, worker))
  const seconds = (performance.now() - started) / 1000
  await pool.close()
  const ok = lat.length
  return {
    ok, non2xx: Object.entries(statuses).filter(([s]) => s !== '200').reduce((a, [, c]) => a + c, 0), errors, seconds, rps: ok / seconds,
    latency: summarize(lat), statuses, used: next, exhausted: next >= t.payments.length && performance.now() < deadline,
  }
}

export interface SoakProgress { atSec: number, open: number, waitingForHeaders: number, streaming: number, completed: number, failed: number }
export interface SoakResult { progress: SoakProgress[], ttfb: LatencySummary, headers: LatencySummary, completed: number, failed: number, neverStarted: number, statuses: Record<string, number> }

/**
 * Keeps `concurrency` streams open for `seconds`: a stream that ends is replaced at once. Reports
 * progress every `reportEverySec` through `onProgress`. Timeouts are off on the client side: a
 * stream that waits is what is being observed.
 */
export async function soak (t: Target & { concurrency: number, seconds: number, reportEverySec: number }, onProgress: (p: SoakProgress) => void): Promise<SoakResult> {
  const pool = new Pool(t.origin, { connections: t.concurrency + 16, pipelining: 1, headersTimeout: 0, bodyTimeout: 0, keepAliveTimeout: 60_000, connect: INSECURE })
  const heads: number[] = []
  const ttfbs: number[] = []
  const statuses: Record<string, number> = {}
  let waiting = 0
  let streaming = 0
  let completed = 0
  let failed = 0
  let n = 0
  const progress: SoakProgress[] = []
  const controller = new AbortController()
  setMaxListeners(0, controller.signal) // one signal shared by every stream of the soak
  const started = performance.now()
  const deadline = started + t.seconds * 1000
  const report = () => {
    const p = { atSec: Math.round((performance.now() - started) / 1000), open: waiting + streaming, waitingForHeaders: waiting, streaming, completed, failed }
    progress.push(p)
    onProgress(p)
  }
  const timer = setInterval(report, t.reportEverySec * 1000)
  const worker = async () => {
    while (performance.now() < deadline && !controller.signal.aborted) {
      const headers = { 'content-type': 'application/json', ...t.headersList[n++ % t.headersList.length] }
      const t0 = performance.now()
      waiting++
      let headed = false
      try {
        const res = await pool.request({ path: t.path, method: 'POST', headers, body: t.body, signal: controller.signal })
        waiting--; headed = true; streaming++
        heads.push(performance.now() - t0)
        statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
        let first = true
        for await (const _chunk of res.body) {
          if (first) { first = false; ttfbs.push(performance.now() - t0) }
        }
        streaming--
        if (res.statusCode === 200) completed++; else failed++
      } catch {
        if (headed) streaming--; else waiting--
        if (!controller.signal.aborted) failed++
      }
    }
  }
  const workers = Array.from({ length: t.concurrency }, worker)
  const stop = setTimeout(() => controller.abort(), Math.max(0, deadline - performance.now()))
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - performance.now()) + 50))
  report()
  const neverStarted = waiting
  controller.abort()
  clearInterval(timer)
  clearTimeout(stop)
  await Promise.race([Promise.allSettled(workers), new Promise((resolve) => setTimeout(resolve, 5000))])
  await pool.destroy().catch(() => undefined)
  return { progress, ttfb: summarize(ttfbs), headers: summarize(heads), completed, failed, neverStarted, statuses }
}

