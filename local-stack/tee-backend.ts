import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import https from 'node:https'
import { createPublicKey, randomUUID } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { buildCanonicalRequest, CanonicalRequestError } from '../src/proof/canonical.ts'
import { isJsonObject, parseJson, pythonJsonDumps, type JsonObject, type JsonValue } from '../src/proof/json.ts'
import { keccakHex, teeIdForPublicKey } from '../src/proof/hash.ts'
import { generateTeeKeyPair, signTeeProof } from '../src/proof/sign.ts'
import { completionTokens, costBlock, DEFAULT_PRICES, promptTokens, simulateAnswer, type ModelPrice, type SimulatedAnswer } from './text.ts'
import { UptoSessions, type UptoPaymentOptions, type UptoSession } from './upto-sessions.ts'

// A local stand-in for OpenGradient's tee-gateway (PROTOCOLS.md §7): same endpoints, same proof,
// same error shapes, with fault injection. It canonicalizes what it receives the way the enclave
// does (refusing `developer`, hashing missing tool-call fields as null), so a gateway that forgets
// to send the normalised wire body fails here as it would against the real thing.

export type FaultKind =
  | 'http_500' | 'http_502' | 'http_503' | 'http_504' | 'hang' | 'hang_after_headers' | 'abort_mid_stream'
  | 'bad_signature' | 'tampered_output' | 'missing_usage' | 'in_band_error' | 'slow'
export const FAULT_KINDS: readonly FaultKind[] = ['http_500', 'http_502', 'http_503', 'http_504', 'hang', 'hang_after_headers',
  'abort_mid_stream', 'bad_signature', 'tampered_output', 'missing_usage', 'in_band_error', 'slow']

export interface Fault {
  kind: FaultKind
  /** How many chat requests it applies to; unset = until cleared. */
  count?: number
  /** For `slow`: delay per chunk (default 200 ms). */
  delayMs?: number
}

export interface TeeBackendOptions {
  port?: number
  host?: string
  /** PKCS#8 PEM; a fresh RSA-2048 key when unset. */
  privateKeyPem?: string
  chunkDelayMs?: number
  /** Accepted models; any model when unset. */
  models?: string[]
  prices?: Record<string, ModelPrice>
  opgPriceUsd?: number
  /** Serve HTTPS with this certificate instead of plain HTTP. */
  tls?: { certPem: string, keyPem: string }
  /** Unix seconds for tee_timestamp. */
  clock?: () => number
  /**
   * Charge for chat calls with x402 `upto` over Permit2 and `X-Upto-Session` sessions, as
   * OpenGradient's gateway does (see upto-sessions.ts). Unset: chat is free (older tests).
   */
  payment?: UptoPaymentOptions
}

export interface TeeBackendStats { received: number, completed: number, aborted: number, faulted: number }

export interface TeeBackend {
  url: string
  port: number
  teeId: string
  publicKeyPem: string
  stats: TeeBackendStats
  /** The last chat request as received: raw body and the request hash the enclave computed. */
  readonly lastRequest: { body: string, requestHash: string } | undefined
  setFault (fault: Fault | null): void
  /** The payment side when `payment` was given: sessions, counters, settlement. */
  readonly upto?: UptoSessions
  /** The last X-SETTLEMENT-TYPE a chat call carried. */
  readonly lastSettlementType: string | undefined
  close (): Promise<void>
}

const MAX_BODY = 8 * 1024 * 1024
const ERRORS: Record<number, JsonObject> = {
  400: { error: 'Bad request', exception_type: 'ValueError', source: 'gateway', provider_status: null, retryable: false },
  500: { error: 'Internal server error', exception_type: 'InternalServerError', source: 'gateway', provider_status: null, retryable: false },
  502: { error: 'Provider unavailable: connection failed', exception_type: 'APIConnectionError', source: 'provider', provider_status: 502, retryable: true },
  503: { error: 'Provider rate limit exceeded', exception_type: 'RateLimitError', source: 'provider', provider_status: 429, retryable: true },
  504: { error: 'Provider timed out', exception_type: 'APITimeoutError', source: 'provider', provider_status: null, retryable: true },
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

function readBody (req: IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = []
    let size = 0
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > MAX_BODY) { resolve(undefined); req.resume(); return }
      parts.push(c)
    })
    req.on('end', () => resolve(size > MAX_BODY ? undefined : Buffer.concat(parts)))
    req.on('error', reject)
  })
}

// Waiting for the flush lets a fault cut the connection after the client has the frames; a
// client that leaves mid-write ends the wait too.
function flushed (res: ServerResponse, chunk: string): Promise<void> {
  return new Promise((resolve) => {
    const done = () => { res.off('close', done); resolve() }
    res.once('close', done)
    res.write(chunk, done)
  })
}

function sendJson (res: ServerResponse, status: number, body: unknown): void {
  const text = pythonJsonDumps(body, { sortKeys: false })
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

function sendError (res: ServerResponse, status: number, message?: string): void {
  sendJson(res, status, message ? { ...ERRORS[status], error: message } : ERRORS[status])
}

function parseFault (v: unknown): Fault | null {
  if (v === null || (isJsonObject(v) && v.kind === null)) return null
  if (!isJsonObject(v) || !FAULT_KINDS.includes(v.kind as FaultKind)) throw new TypeError('unknown fault kind')
  const count = v.count === undefined ? undefined : Number(v.count)
  const delayMs = v.delayMs === undefined ? undefined : Number(v.delayMs)
  if (count !== undefined && !(Number.isInteger(count) && count > 0)) throw new TypeError('count must be a positive integer')
  if (delayMs !== undefined && !(delayMs >= 0)) throw new TypeError('delayMs must be >= 0')
  return { kind: v.kind as FaultKind, ...(count !== undefined ? { count } : {}), ...(delayMs !== undefined ? { delayMs } : {}) }
}

// The visible output differs from the signed one in a way any verifier must notice.
function tamper (answer: SimulatedAnswer): SimulatedAnswer {
  if (answer.kind === 'text') return { kind: 'text', chunks: answer.chunks.length > 0 ? ['Tampered', ...answer.chunks.slice(1)] : ['Tampered'] }
  const args = '{"tampered": true}'
  return { kind: 'tool_calls', calls: answer.calls.map((c) => ({ ...c, function: { ...c.function, arguments: args } })), argumentFragments: [args] }
}

function outputOf (answer: SimulatedAnswer): string {
  return answer.kind === 'text' ? answer.chunks.join('') : pythonJsonDumps(answer.calls)
}

// The SSE frames of an answer, without the final proof frame.
function deltaFrames (answer: SimulatedAnswer, head: JsonObject): JsonObject[] {
  const frame = (delta: JsonObject): JsonObject => ({ ...head, choices: [{ index: 0, delta: { role: 'assistant', ...delta }, finish_reason: null }] })
  if (answer.kind === 'text') return answer.chunks.map((content) => frame({ content }))
  const c = answer.calls[0]
  return [
    frame({ tool_calls: [{ index: 0, id: c.id, type: 'function', function: { name: c.function.name, arguments: '' } }] }),
    ...answer.argumentFragments.map((a) => frame({ tool_calls: [{ index: 0, function: { arguments: a } }] })),
  ]
}

export async function startTeeBackend (opts: TeeBackendOptions = {}): Promise<TeeBackend> {
  const privateKeyPem = opts.privateKeyPem ?? generateTeeKeyPair().privateKeyPem
  const publicKeyPem = createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString()
  const teeId = teeIdForPublicKey(publicKeyPem)
  const clock = opts.clock ?? (() => Math.floor(Date.now() / 1000))
  const prices = opts.prices ?? DEFAULT_PRICES
  const stats: TeeBackendStats = { received: 0, completed: 0, aborted: 0, faulted: 0 }
  let fault: Fault | null = null
  let lastRequest: { body: string, requestHash: string } | undefined
  let lastSettlementType: string | undefined
  const upto = opts.payment ? new UptoSessions(opts.payment) : undefined
  const sweeper = upto ? setInterval(() => upto.sweep(), Math.min(opts.payment!.sessionIdleMs ?? 300_000, 1000)) : undefined
  sweeper?.unref()

  const takeFault = (): Fault | null => {
    const f = fault
    if (!f) return null
    stats.faulted++
    if (f.count !== undefined) fault = f.count <= 1 ? null : { ...f, count: f.count - 1 }
    return f
  }

  async function chat (req: IncomingMessage, res: ServerResponse): Promise<void> {
    stats.received++
    let closed = false
    res.on('close', () => { closed = true; if (res.writableFinished) stats.completed++; else stats.aborted++ })
    const raw = await readBody(req)
    if (!raw) return sendError(res, 400, 'Request body too large')
    const st = req.headers['x-settlement-type']
    lastSettlementType = Array.isArray(st) ? st[0] : st
    // Payment comes first, as an x402 middleware in front of the handler would do it.
    let session: UptoSession | undefined
    if (upto) {
      const admission = await upto.admit(req.headers, `${opts.tls ? 'https' : 'http'}://${req.headers.host ?? 'localhost'}/v1/chat/completions`)
      if (!admission.ok) {
        const text = JSON.stringify(admission.body)
        res.writeHead(402, { ...admission.headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
        res.end(text)
        return
      }
      session = admission.session
      res.setHeader('x-upto-session', session.id)
    }
    let body: JsonValue
    let canonical: JsonObject
    try {
      body = parseJson(raw)
      canonical = buildCanonicalRequest(body, { enclave: true })
    } catch (err) {
      return sendError(res, 400, err instanceof CanonicalRequestError ? err.message : 'Invalid JSON body')
    }
    const model = canonical.model as string
    if (opts.models && !opts.models.includes(model)) return sendError(res, 400, `Unknown model: ${model}`)
    const canonicalJson = pythonJsonDumps(canonical)
    const requestHash = keccakHex(canonicalJson)
    lastRequest = { body: raw.toString('utf8'), requestHash }
    const stream = isJsonObject(body) && body.stream === true
    const f = takeFault()
    const kind = f?.kind

    if (kind === 'http_500' || kind === 'http_502' || kind === 'http_503' || kind === 'http_504') return sendError(res, Number(kind.slice(5)))
    if (kind === 'hang') return
    if (kind === 'hang_after_headers') {
      res.writeHead(200, { 'content-type': stream ? 'text/event-stream' : 'application/json' })
      res.flushHeaders()
      return
    }

    const answer = simulateAnswer(canonical, requestHash)
    const signedOutput = outputOf(answer)
    const outputHash = keccakHex(signedOutput)
    const timestamp = clock()
    // bad_signature: a well-formed signature, but over another output hash.
    const signedHash = kind === 'bad_signature' ? keccakHex(signedOutput + '\u0000') : outputHash
    const proof: JsonObject = {
      tee_signature: signTeeProof({ requestHash, outputHash: signedHash, timestamp, privateKey: privateKeyPem }),
      tee_request_hash: requestHash,
      tee_output_hash: outputHash,
      tee_timestamp: timestamp,
      tee_id: teeId,
    }
    const shown = kind === 'tampered_output' ? tamper(answer) : answer
    const prompt = promptTokens(canonicalJson)
    const completion = completionTokens(answer)
    const usage = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
    const og = costBlock(model, prompt, completion, prices, opts.opgPriceUsd ?? 0.05)
    // The call is charged to its session once the answer exists (the cost is known now).
    if (session && upto) upto.charge(session, upto.atomicFromOpg(og.cost_opg as string))
    const accounting = kind === 'missing_usage' ? {} : { usage, opengradient: og }
    const finish = answer.kind === 'tool_calls' ? 'tool_calls' : 'stop'
    const head = { id: `chatcmpl-${randomUUID()}`, object: stream ? 'chat.completion.chunk' : 'chat.completion', created: timestamp, model }
    const inBandError = { ...ERRORS[502], error: 'Provider stream failed' }
    const delay = kind === 'slow' ? (f?.delayMs ?? 200) : (opts.chunkDelayMs ?? 0)

    if (!stream) {
      if (kind === 'in_band_error') return sendJson(res, 200, inBandError)
      const message: JsonObject = shown.kind === 'text'
        ? { role: 'assistant', content: shown.chunks.join('') }
        : { role: 'assistant', content: '', tool_calls: shown.calls as unknown as JsonValue }
      const text = pythonJsonDumps({ ...head, choices: [{ index: 0, message, finish_reason: finish }], ...proof, ...accounting }, { sortKeys: false })
      if (kind === 'slow') await sleep(delay * Math.max(1, deltaFrames(answer, head).length))
      if (closed) return
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
      if (kind === 'abort_mid_stream') {
        res.write(text.slice(0, Math.floor(text.length / 2)), () => res.destroy())
        return
      }
      res.end(text)
      return
    }

    const includeUsage = isJsonObject(body) && isJsonObject(body.stream_options) && body.stream_options.include_usage === true
    const final: JsonObject = {
      ...head,
      choices: [{ index: 0, delta: {}, finish_reason: finish }],
      ...proof,
      ...(kind === 'missing_usage' ? {} : { ...(includeUsage ? { usage } : {}), opengradient: og }),
    }
    let frames = deltaFrames(shown, head)
    if (kind === 'in_band_error') frames = frames.slice(0, 2)
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    res.flushHeaders()
    const cut = kind === 'abort_mid_stream' ? Math.max(1, Math.floor(frames.length / 2)) : Infinity
    for (let i = 0; i < frames.length; i++) {
      if (closed) return
      if (i === cut) { res.destroy(); return }
      await flushed(res, `data: ${pythonJsonDumps(frames[i], { sortKeys: false })}\n\n`)
      if (delay > 0) await sleep(delay)
    }
    if (closed) return
    if (kind === 'abort_mid_stream') { res.destroy(); return }
    res.write(`data: ${pythonJsonDumps(kind === 'in_band_error' ? inBandError : final, { sortKeys: false })}\n\n`)
    res.end('data: [DONE]\n\n')
  }

  async function control (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const raw = await readBody(req)
    try {
      fault = parseFault(JSON.parse(raw?.toString('utf8') || 'null'))
      sendJson(res, 200, { ok: true, fault })
    } catch (err) {
      sendJson(res, 400, { ok: false, error: (err as Error).message })
    }
  }

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0]
    const route = `${req.method} ${path}`
    let work: Promise<void> | undefined
    if (route === 'POST /v1/chat/completions') work = chat(req, res)
    else if (route === 'POST /__control/fault') work = control(req, res)
    else if (route === 'GET /__control/stats') sendJson(res, 200, stats)
    else if (route === 'GET /signing-key') {
      res.writeHead(200, { 'content-type': 'application/x-pem-file' })
      res.end(publicKeyPem)
    } else if (route === 'GET /health') sendJson(res, 200, { status: 'ok', tee_id: teeId })
    else sendJson(res, 404, { error: 'Not found' })
    if (work) work.catch(() => { if (!res.headersSent) sendError(res, 500); else res.destroy() })
  }

  const server = opts.tls ? https.createServer({ cert: opts.tls.certPem, key: opts.tls.keyPem }, handler) : http.createServer(handler)
  const host = opts.host ?? '127.0.0.1'
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, host, () => { server.off('error', reject); resolve() })
  })
  const port = (server.address() as AddressInfo).port
  return {
    url: `${opts.tls ? 'https' : 'http'}://${host}:${port}`,
    port,
    teeId,
    publicKeyPem,
    stats,
    get lastRequest () { return lastRequest },
    get lastSettlementType () { return lastSettlementType },
    upto,
    setFault (f) { fault = parseFault(f) },
    close () {
      if (sweeper) clearInterval(sweeper)
      return new Promise<void>((resolve) => {
        server.close(() => resolve())
        // Hung requests and keep-alive sockets would hold close() open forever.
        server.closeAllConnections()
      })
    },
  }
}
