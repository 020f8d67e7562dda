import net from 'node:net'
import { performance } from 'node:perf_hooks'
import type { Test } from 'tap'
import fc from 'fast-check'
import { balanceOf } from '../../local-stack/chain.ts'
import type { LocalStack } from '../../local-stack/stack.ts'
import { SYSTEM_ACCOUNTS } from '../../src/ledger/accounts.ts'
import type { TestGateway } from './gateway.ts'

// Shared machinery of the test/fuzz-*.test.ts files ("Hostile input"): fast-check settings, a raw
// HTTP/1.1 client that sends exactly the bytes it is given, the response contract every case must
// meet, the "no money moved" invariant, and generators of hostile values.
//
// Environment:
//   FUZZ_SEED=<int>   replay a run (every fuzz test prints the seed it used)
//   FUZZ_RUNS=<int>   cases per property (default: each test's modest number)
//   FUZZ_SHRINK=1     shrink a failing case to a minimal counterexample (slower)
//   FUZZ_STRICT=1     known bugs fail the suite instead of being reported as TODO
//   FUZZ_LONG=1       also run the slow tests (the 30 s request timeout, measured for real)

type T = Test

export const STRICT = process.env.FUZZ_STRICT === '1'
export const LONG = process.env.FUZZ_LONG === '1'

/** Assertion options for a known bug: a TODO (suite stays green) unless FUZZ_STRICT=1. */
export function todo (bug: string): { todo?: string } {
  return STRICT ? {} : { todo: bug }
}

export interface FuzzParams { seed: number, numRuns: number, endOnFailure: boolean }

/** Seed and run count for one property: fixed by default, overridable, always printed. */
export function fuzzParams (t: T, name: string, defaults: { seed: number, runs: number }): FuzzParams {
  const seed = process.env.FUZZ_SEED !== undefined ? Number(process.env.FUZZ_SEED) : defaults.seed
  const numRuns = process.env.FUZZ_RUNS !== undefined ? Number(process.env.FUZZ_RUNS) : defaults.runs
  if (!Number.isInteger(seed) || !Number.isInteger(numRuns) || numRuns < 1) throw new Error('FUZZ_SEED and FUZZ_RUNS must be integers')
  t.comment(`${name}: seed=${seed} numRuns=${numRuns} (FUZZ_SEED=${seed} FUZZ_RUNS=${numRuns} to replay)`)
  return { seed, numRuns, endOnFailure: process.env.FUZZ_SHRINK !== '1' }
}

/** Long strings cut in the middle, so a report shows both ends. */
export function clip (s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n / 2)}…[${s.length - n} chars]…${s.slice(-n / 2)}`
}

function describe (v: unknown): string {
  if (Buffer.isBuffer(v)) return `<${v.length} bytes> ${clip(JSON.stringify(v.toString('latin1')), 600)}`
  if (typeof v === 'string') return clip(JSON.stringify(v), 600)
  return clip(fc.stringify(v), 600)
}

/** Runs an async property; a failure becomes one tap failure carrying the seed and counterexample. */
export async function runProperty<Ts> (t: T, name: string, prop: fc.IAsyncProperty<Ts>, params: FuzzParams): Promise<void> {
  const details = await fc.check(prop, params)
  if (details.failed) {
    const example = details.counterexample === null ? 'none' : (details.counterexample as unknown[]).map(describe).join(', ')
    const err = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance)
    t.fail(`${name}: failed after ${details.numRuns} cases (seed=${details.seed}, path=${details.counterexamplePath}): ${clip(err, 800)}\ncounterexample: ${example}`)
  } else {
    t.pass(`${name}: ${details.numRuns} cases`)
  }
}

/**
 * The client shares the gateway's event loop, so back-to-back cases keep it saturated, and the
 * gateway's load shedding (@fastify/under-pressure: 503 overloaded) could fire because of the
 * test client itself (it did while shedding also looked at cumulative event-loop utilisation).
 * Each case first waits, if need be, until the process has been idle enough since the gateway
 * started. Call `pacer()` right after starting the gateway.
 */
export function pacer (maxUtilization = 0.85): () => Promise<void> {
  const start = performance.eventLoopUtilization()
  return async () => {
    while (performance.eventLoopUtilization(start).utilization > maxUtilization) await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** Tally of outcomes (status or code), printed as a comment so a run shows what it exercised. */
export class Tally {
  readonly counts = new Map<string, number>()
  add (key: string): void { this.counts.set(key, (this.counts.get(key) ?? 0) + 1) }
  get total (): number { let n = 0; for (const v of this.counts.values()) n += v; return n }
  toString (): string { return [...this.counts.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k}=${v}`).join(' ') }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1

export interface RawRequest {
  method?: string
  /** The request-target, sent verbatim (a Buffer for bytes that are not ASCII). */
  target: string | Buffer
  /** Header lines, sent verbatim and in order (Host and Connection: close are added unless given). */
  headers?: Array<[string, string | Buffer]>
  body?: string | Buffer
  /** Content-Length to declare: the body's length by default, null to send none. */
  contentLength?: number | null
}

export interface RawResponse {
  /** 0 when no response arrived. */
  status: number
  headers: Record<string, string>
  body: Buffer
  text: string
  /** The body parsed as JSON, or undefined. */
  json: any
  /** The server closed the connection (it always should: we send Connection: close). */
  closed: boolean
  /** A socket error (e.g. ECONNRESET), if any. */
  error?: string
  /** Bytes after the first response (pipelined responses). */
  rest: Buffer
  ms: number
}

export function portOf (url: string): number {
  return Number(new URL(url).port)
}

function concatRequest (port: number, r: RawRequest): Buffer {
  const headers = r.headers ?? []
  const has = (name: string) => headers.some(([n]) => n.toLowerCase() === name)
  const parts: Buffer[] = [Buffer.from(`${r.method ?? 'GET'} `, 'latin1'), typeof r.target === 'string' ? Buffer.from(r.target, 'latin1') : r.target, Buffer.from(' HTTP/1.1\r\n', 'latin1')]
  const line = (name: string, value: string | Buffer) => {
    parts.push(Buffer.from(`${name}: `, 'latin1'), typeof value === 'string' ? Buffer.from(value, 'latin1') : value, Buffer.from('\r\n', 'latin1'))
  }
  if (!has('host')) line('Host', `127.0.0.1:${port}`)
  for (const [name, value] of headers) line(name, value)
  const body = r.body === undefined ? undefined : (typeof r.body === 'string' ? Buffer.from(r.body, 'utf8') : r.body)
  if (r.contentLength !== null && !has('content-length') && !has('transfer-encoding') && (body !== undefined || r.contentLength !== undefined)) {
    line('Content-Length', String(r.contentLength ?? body!.length))
  }
  if (!has('connection')) line('Connection', 'close')
  parts.push(Buffer.from('\r\n', 'latin1'))
  if (body) parts.push(body)
  return Buffer.concat(parts)
}

function dechunk (b: Buffer): Buffer {
  const out: Buffer[] = []
  let i = 0
  for (;;) {
    const eol = b.indexOf('\r\n', i, 'latin1')
    if (eol < 0) break
    const size = parseInt(b.subarray(i, eol).toString('latin1'), 16)
    if (!Number.isFinite(size) || size === 0) break
    out.push(b.subarray(eol + 2, eol + 2 + size))
    i = eol + 2 + size + 2
  }
  return Buffer.concat(out)
}

/** Parses the first response in `raw` (status 0 when there is none); `rest` is what follows it. */
export function parseResponse (raw: Buffer): Pick<RawResponse, 'status' | 'headers' | 'body' | 'text' | 'json' | 'rest'> {
  const end = raw.indexOf('\r\n\r\n', 0, 'latin1')
  if (end < 0) return { status: 0, headers: {}, body: Buffer.alloc(0), text: '', json: undefined, rest: Buffer.alloc(0) }
  const lines = raw.subarray(0, end).toString('latin1').split('\r\n')
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0])
  const headers: Record<string, string> = {}
  for (const l of lines.slice(1)) {
    const c = l.indexOf(':')
    if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim()
  }
  let body: Buffer = raw.subarray(end + 4)
  let rest: Buffer = Buffer.alloc(0)
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) body = dechunk(body)
  else if (headers['content-length'] !== undefined) {
    rest = body.subarray(Number(headers['content-length']))
    body = body.subarray(0, Number(headers['content-length']))
  }
  const text = body.toString('utf8')
  let json: unknown
  try { json = JSON.parse(text) } catch { json = undefined }
  return { status: m ? Number(m[1]) : 0, headers, body, text, json, rest }
}

/**
 * One request on a fresh connection, exactly as given, then read until the server closes (we
 * send Connection: close) or `timeoutMs` passes. Never throws for what the server does.
 */
export function rawRequest (url: string, r: RawRequest, timeoutMs = 15_000): Promise<RawResponse> {
  const port = portOf(url)
  const started = performance.now()
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let error: string | undefined
    let done = false
    const s = net.connect(port, '127.0.0.1')
    const finish = (closed: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      s.destroy()
      const raw = Buffer.concat(chunks)
      resolve({ ...parseResponse(raw), closed, error, ms: performance.now() - started })
    }
    const timer = setTimeout(() => finish(false), timeoutMs)
    s.on('connect', () => { s.write(concatRequest(port, r)) })
    s.on('data', (d: Buffer) => { chunks.push(d) })
    // The server may answer and close before it read the whole (oversize) body: keep what came.
    s.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message })
    s.on('close', () => finish(true))
  })
}

/** The promise's value, or undefined after `ms` (the timer does not outlive the race). */
export async function within<V> (p: Promise<V>, ms: number): Promise<V | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined
  try {
    return await Promise.race([p, new Promise<undefined>((resolve) => { timer = setTimeout(() => resolve(undefined), ms) })])
  } finally { clearTimeout(timer) }
}

/** An open connection that sends what it is told, when it is told: for slow clients. */
export interface SlowClient {
  write (data: string | Buffer): void
  /** Resolves when the server closes the connection (with what it sent), or never. */
  readonly closed: Promise<{ atMs: number, response: ReturnType<typeof parseResponse> }>
  destroy (): void
}

export function slowClient (url: string): Promise<SlowClient> {
  const port = portOf(url)
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const s = net.connect(port, '127.0.0.1')
    const closed = new Promise<{ atMs: number, response: ReturnType<typeof parseResponse> }>((resolveClosed) => {
      s.on('close', () => resolveClosed({ atMs: performance.now() - started, response: parseResponse(Buffer.concat(chunks)) }))
    })
    s.on('data', (d: Buffer) => { chunks.push(d) })
    s.on('error', () => undefined)
    s.once('connect', () => resolve({
      write: (d) => { if (!s.destroyed) s.write(d) },
      closed,
      destroy: () => s.destroy(),
    }))
    s.once('error', reject)
  })
}

// ---------------------------------------------------------------------------------------------
// The response contract and the money invariant

/**
 * What every answer to hostile input must look like: no 5xx; a JSON body with an error code
 * (`error.code`, or for a 402 the body `code` (API-key callers: `error.code`) plus the
 * PAYMENT-REQUIRED header). Returns the
 * violations (empty when the response is fine).
 */
export function contractViolations (res: Pick<RawResponse, 'status' | 'headers' | 'json' | 'text'>, opts: { head?: boolean } = {}): string[] {
  const out: string[] = []
  if (res.status === 0) return ['no response']
  if (res.status >= 500) out.push(`server error ${res.status}: ${res.text.slice(0, 300)}`)
  if (res.status >= 400 && !opts.head) {
    const j = res.json
    if (res.status === 402) {
      // The x402 body (PaymentRequired plus `code`), or for API-key callers the OpenAI envelope.
      if (typeof j?.code !== 'string' && typeof j?.error?.code !== 'string') out.push(`402 without a body code: ${res.text.slice(0, 200)}`)
      if (!res.headers['payment-required']) out.push('402 without PAYMENT-REQUIRED')
    } else if (typeof j?.error?.code !== 'string') {
      out.push(`${res.status} without error.code: ${res.text.slice(0, 200)}`)
    }
  }
  return out
}

/** The code of an error response: `error.code`, the 402 body `code`, or the status for others. */
export function codeOf (res: Pick<RawResponse, 'status' | 'json'>): string {
  const j = res.json
  if (res.status === 402 && typeof j?.code === 'string') return `402:${j.code}${typeof j.error === 'string' ? `/${j.error}` : ''}`
  if (typeof j?.error?.code === 'string') return `${res.status}:${j.error.code}${typeof j.error.metadata?.reason === 'string' ? `/${j.error.metadata.reason}` : ''}`
  return String(res.status)
}

/** Nothing was credited, charged or left reserved; the ledger balances. Returns the problems. */
export async function ledgerProblems (gw: TestGateway): Promise<string[]> {
  const out: string[] = []
  const totals = await gw.app.ledger.totals()
  if (totals.sumOfAllAccounts !== 0n) out.push(`ledger does not balance: sumOfAllAccounts=${totals.sumOfAllAccounts}`)
  if (totals.pendingCount !== 0) out.push(`${totals.pendingCount} reservations left open`)
  const deposits = await gw.app.ledger.balance(SYSTEM_ACCOUNTS.deposits)
  if (deposits.debitsPosted !== 0n || deposits.debitsPending !== 0n) out.push(`a deposit was credited: ${deposits.debitsPosted}`)
  const revenue = await gw.app.ledger.balance(SYSTEM_ACCOUNTS.revenue)
  if (revenue.creditsPosted !== 0n) out.push(`something was charged: ${revenue.creditsPosted}`)
  const grants = await gw.app.ledger.balance(SYSTEM_ACCOUNTS.grants)
  if (grants.debitsPosted !== 0n) out.push(`a grant was posted: ${grants.debitsPosted}`)
  return out
}

export interface ChainSnapshot { payer: bigint, payer2: bigint, payTo: bigint }

export async function chainSnapshot (stack: LocalStack): Promise<ChainSnapshot> {
  const [payer, payer2, payTo] = await Promise.all([
    balanceOf(stack.chain, stack.token, stack.payer.address),
    balanceOf(stack.chain, stack.token, stack.payer2.address),
    balanceOf(stack.chain, stack.token, stack.payTo.address),
  ])
  return { payer, payer2, payTo }
}

/** Final checks of a fuzz test: no money moved on chain or in the ledger, and the server still answers. */
export async function assertUnharmed (t: T, gw: TestGateway, stack: LocalStack, before: ChainSnapshot): Promise<void> {
  t.same(await chainSnapshot(stack), before, 'no token moved on chain')
  t.same(await ledgerProblems(gw), [], 'nothing credited, charged or reserved; the ledger balances')
  const live = await rawRequest(gw.url, { target: '/health/live' })
  t.equal(live.status, 200, 'the server still answers /health/live')
}

// ---------------------------------------------------------------------------------------------
// Hostile values

/** Bytes the HTTP parser accepts in a header value (VCHAR, SP, HTAB, obs-text), so the request reaches the app. */
export const headerValueBytes = (maxLength: number): fc.Arbitrary<Buffer> => fc.oneof(
  fc.string({ unit: 'grapheme-ascii', maxLength }).map((s) => Buffer.from(s.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, ''), 'latin1')),
  fc.string({ unit: 'grapheme', maxLength: Math.min(maxLength, 512) }).map((s) => Buffer.from(s.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, ''), 'utf8')),
  fc.uint8Array({ maxLength }).map((a) => Buffer.from(a.filter((b) => b === 9 || (b >= 0x20 && b !== 0x7f)))),
)

/** Number lexemes JSON allows but JavaScript or Python read oddly. */
export const HOSTILE_NUMBERS = [
  '1e309', '-1e309', '1E400', '-0', '-0.0', '0e0', '-0e-0', '1e-400', '5e-324', '1.7976931348623157e308',
  '9007199254740993', '-9007199254740993', '123456789012345678901234567890', '1' + '0'.repeat(400),
  '0.1', '1.0', '2.5', '-1', '1e2', '4096.0', '1e3', '0.000001',
] as const

export const HOSTILE_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', '__defineGetter__', 'isAdmin', '', ' ', '\u0000', 'model', 'messages', 'max_tokens', 'stream', 'x402Version'] as const

const HOSTILE_STRING_LITERALS = [
  '""', '"\\u0000"', '"\\ud800"', '"\\udfff\\ud800"', '"\\u202e"', '"\\ufeff"', '"\\\\"', '"%E0%A4%A"', '"../../etc/passwd"',
  '"<script>alert(1)</script>"', '"\'; DROP TABLE transfers;--"', '"${jndi:ldap://x}"', '"__proto__"', '"gpt-4.1\\u0000"',
  '"GPT-4.1"', '"gpt-4.1 "', '"😀"', '"\\ud83d\\ude00"', '"true"', '"1e309"', '"NaN"', '"Infinity"',
] as const

/** Nested arrays/objects `depth` deep around `inner` (text). */
export function nest (depth: number, inner = '1', kind: 'array' | 'object' | 'mixed' = 'array'): string {
  let open = ''
  let close = ''
  for (let i = 0; i < depth; i++) {
    const obj = kind === 'object' || (kind === 'mixed' && i % 2 === 1)
    open += obj ? '{"a":' : '['
    close = (obj ? '}' : ']') + close
  }
  return open + inner + close
}

/** Raw JSON text of a hostile value (numbers as written, keys that are prototype names, deep nesting). */
export const hostileJsonText: fc.Arbitrary<string> = fc.letrec<{ value: string, object: string, array: string, leaf: string }>((tie) => ({
  leaf: fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...HOSTILE_NUMBERS) },
    { weight: 4, arbitrary: fc.constantFrom(...HOSTILE_STRING_LITERALS) },
    { weight: 2, arbitrary: fc.constantFrom('null', 'true', 'false', '0', '{}', '[]') },
    { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }).map((s) => JSON.stringify(s)) },
    { weight: 1, arbitrary: fc.integer({ min: 1000, max: 200_000 }).map((n) => JSON.stringify('x'.repeat(n))) },
    { weight: 2, arbitrary: fc.double().map((d) => (Number.isFinite(d) ? JSON.stringify(d) : '1e309')) },
    { weight: 1, arbitrary: fc.integer({ min: 30, max: 3000 }).chain((d) => fc.constantFrom<'array' | 'object' | 'mixed'>('array', 'object', 'mixed').map((k) => nest(d, '"deep"', k))) },
  ),
  object: fc.array(fc.tuple(fc.oneof(fc.constantFrom(...HOSTILE_KEYS), fc.string({ maxLength: 8 })), tie('value')), { maxLength: 4 })
    .map((entries) => '{' + entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',') + '}'),
  array: fc.array(tie('value'), { maxLength: 4 }).map((items) => '[' + items.join(',') + ']'),
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('leaf'), tie('object'), tie('array')),
})).value

/** Does this JSON text, as JSON.parse reads it, hold a non-finite number or nest deeper than `depth`? */
export function nonFiniteOrDeep (text: string, depth = 60): boolean {
  let v: unknown
  try { v = JSON.parse(text.replace(/^\uFEFF/, '')) } catch { return false }
  const walk = (x: unknown, d: number): boolean => {
    if (typeof x === 'number') return !Number.isFinite(x)
    if (x === null || typeof x !== 'object') return false
    if (d >= depth) return true
    return Object.values(x as Record<string, unknown>).some((c) => walk(c, d + 1))
  }
  return walk(v, 0)
}

// The gateway runs in the test's process: a prototype-pollution bug would show up right here.
const PROTO_NAMES = new Map<object, string[]>([Object.prototype, Array.prototype, Function.prototype, String.prototype].map((p) => [p, Object.getOwnPropertyNames(p).sort()]))

/** Properties added to the built-in prototypes since this module loaded (prototype pollution). */
export function prototypeProblems (): string[] {
  const out: string[] = []
  for (const [proto, names] of PROTO_NAMES) {
    const now = Object.getOwnPropertyNames(proto).sort()
    const added = now.filter((n) => !names.includes(n))
    if (added.length) out.push(`prototype polluted: ${added.join(', ')}`)
  }
  return out
}
