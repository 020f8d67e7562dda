import { isJsonObject, JsonNumber, numberOf, pythonJsonDumps, type JsonObject, type JsonValue } from './json.ts'
import { keccakHex } from './hash.ts'

// The request half of the TEE proof. The enclave hashes json.dumps(sort_keys=True) of a fixed
// subset of the body it received (OpenGradient SDK `build_inner_request`; the vectors README lists
// the rules). Rule one is "hash what you send": the gateway forwards `buildWireRequest(body)`, and
// hashes the canonical form of exactly that object.

export type CanonicalErrorCode =
  | 'BODY_NOT_OBJECT' | 'MISSING_MODEL' | 'MISSING_MESSAGES' | 'BAD_MESSAGE' | 'UNKNOWN_ROLE'
  | 'BAD_CONTENT' | 'BAD_TOOL_CALL' | 'BAD_TEMPERATURE' | 'BAD_TOOLS'

export class CanonicalRequestError extends Error {
  constructor (readonly code: CanonicalErrorCode, message: string) {
    super(message)
    this.name = 'CanonicalRequestError'
  }
}

export interface CanonicalOptions {
  /**
   * Canonicalize as the enclave does with what it received, rather than as the SDK does with
   * what it is about to send. They differ on raw client bodies only: the enclave refuses
   * `developer` ("Unknown role: developer") and hashes missing tool-call fields as null. On a
   * wire body (already normalised) both agree.
   */
  enclave?: boolean
}

type Obj = Record<string, unknown>

// Python's dict.get: absent (or undefined, which JSON cannot carry) reads as missing.
function get (o: Obj, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(o, key) ? o[key] : undefined
}

function orNull (v: unknown): JsonValue {
  return v === undefined ? null : v as JsonValue
}

/** Python truthiness of a JSON value. */
export function pyTruthy (v: unknown): boolean {
  if (v === undefined || v === null || v === false) return false
  if (typeof v === 'string' || Array.isArray(v)) return v.length > 0
  const n = numberOf(v)
  if (n !== undefined) return n !== 0
  if (isJsonObject(v)) return Object.keys(v).length > 0
  return true
}

// Multimodal parts: text kept, every attachment reduced to {type[, filename]} (bytes and URLs
// ride along unhashed).
function canonicalUserContent (content: unknown): JsonValue {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) throw new CanonicalRequestError('BAD_CONTENT', 'user content must be a string or a list of parts')
  return content.map((part): JsonValue => {
    if (typeof part === 'string') return { type: 'text', text: part }
    if (!isJsonObject(part)) throw new CanonicalRequestError('BAD_CONTENT', 'a content part must be an object')
    if (get(part, 'type') === 'text') {
      const text = get(part, 'text')
      return { type: 'text', text: pyTruthy(text) ? text as JsonValue : '' }
    }
    const entry: JsonObject = { type: orNull(get(part, 'type')) }
    const file = get(part, 'file')
    const fromFile = isJsonObject(file) ? get(file, 'filename') : undefined
    const filename = pyTruthy(fromFile) ? fromFile : get(part, 'filename')
    if (pyTruthy(filename)) entry.filename = filename as JsonValue
    return entry
  })
}

function canonicalToolCall (tc: unknown, enclave: boolean): JsonObject {
  if (!isJsonObject(tc)) throw new CanonicalRequestError('BAD_TOOL_CALL', 'a tool call must be an object')
  const fn = get(tc, 'function')
  if (fn !== undefined && !isJsonObject(fn)) throw new CanonicalRequestError('BAD_TOOL_CALL', 'tool call "function" must be an object')
  const f = fn ?? {}
  // Only a missing key takes the default; an explicit null is kept, as dict.get does.
  const field = (o: Obj, key: string, dflt: string): JsonValue => {
    const v = get(o, key)
    return v === undefined ? (enclave ? null : dflt) : v as JsonValue
  }
  return {
    id: field(tc, 'id', ''),
    type: field(tc, 'type', 'function'),
    function: { name: field(f, 'name', ''), arguments: field(f, 'arguments', '') },
  }
}

function canonicalMessage (m: unknown, enclave: boolean): JsonObject {
  if (!isJsonObject(m)) throw new CanonicalRequestError('BAD_MESSAGE', 'each message must be an object')
  const role = get(m, 'role')
  const content = get(m, 'content')
  switch (role) {
    case 'developer':
      if (enclave) throw new CanonicalRequestError('UNKNOWN_ROLE', 'Unknown role: developer')
      return { role: 'system', content: orNull(content) }
    case 'system':
      return { role: 'system', content: orNull(content) }
    case 'user':
      return { role: 'user', content: canonicalUserContent(content) }
    case 'assistant': {
      const out: JsonObject = { role: 'assistant', content: pyTruthy(content) ? content as JsonValue : '' }
      const calls = get(m, 'tool_calls')
      if (pyTruthy(calls)) {
        if (!Array.isArray(calls)) throw new CanonicalRequestError('BAD_TOOL_CALL', 'tool_calls must be a list')
        out.tool_calls = calls.map((tc) => canonicalToolCall(tc, enclave))
      }
      return out
    }
    case 'tool':
      return { role: 'tool', content: orNull(content), tool_call_id: orNull(get(m, 'tool_call_id')) }
    case 'function':
      return { role: 'function', content: orNull(content), name: orNull(get(m, 'name')) }
    default:
      throw new CanonicalRequestError('UNKNOWN_ROLE', `unknown message role: ${String(role).slice(0, 40)}`)
  }
}

// Python float(temperature): 1 becomes 1.0, absent or null becomes 0.0. Strings and booleans,
// which float() would also take, are refused rather than guessed at.
function canonicalTemperature (t: unknown): JsonNumber {
  if (t === undefined || t === null) return JsonNumber.fromFloat(0)
  const n = numberOf(t)
  if (n === undefined || !Number.isFinite(n)) throw new CanonicalRequestError('BAD_TEMPERATURE', 'temperature must be a finite number')
  return JsonNumber.fromFloat(n)
}

function checkedBody (body: unknown): { b: Obj, model: string, messages: unknown[] } {
  if (!isJsonObject(body)) throw new CanonicalRequestError('BODY_NOT_OBJECT', 'request body must be a JSON object')
  const model = get(body, 'model')
  if (typeof model !== 'string' || model === '') throw new CanonicalRequestError('MISSING_MODEL', "request is missing a 'model'")
  const messages = get(body, 'messages')
  if (!Array.isArray(messages) || messages.length === 0) throw new CanonicalRequestError('MISSING_MESSAGES', "request is missing 'messages'")
  return { b: body, model, messages }
}

// The hashed optional fields, in the order the SDK adds them.
function hashedOptionals (b: Obj, into: JsonObject): void {
  const maxTokens = get(b, 'max_tokens')
  if (maxTokens !== undefined && maxTokens !== null) into.max_tokens = maxTokens as JsonValue
  if (pyTruthy(get(b, 'stop'))) into.stop = get(b, 'stop') as JsonValue
  const tools = get(b, 'tools')
  if (pyTruthy(tools)) {
    if (!Array.isArray(tools)) throw new CanonicalRequestError('BAD_TOOLS', 'tools must be a list')
    into.tools = tools as JsonValue[]
  }
}

/** The object whose json.dumps(sort_keys=True) the enclave hashes. */
export function buildCanonicalRequest (body: unknown, opts: CanonicalOptions = {}): JsonObject {
  const { b, model, messages } = checkedBody(body)
  const out: JsonObject = {
    model,
    messages: messages.map((m) => canonicalMessage(m, opts.enclave === true)),
    temperature: canonicalTemperature(get(b, 'temperature')),
  }
  hashedOptionals(b, out)
  if (pyTruthy(get(b, 'response_format'))) out.response_format = get(b, 'response_format') as JsonValue
  if (pyTruthy(get(b, 'web_search'))) out.web_search = true
  return out
}

/**
 * The body to forward upstream (the SDK's wire form): the canonical fields, with user messages
 * keeping their full content (the model needs the attachments), plus the unhashed fields the
 * upstream must still see: `tool_choice`, and `stream`/`stream_options` for streams.
 */
export function buildWireRequest (body: unknown): JsonObject {
  const canonical = buildCanonicalRequest(body)
  const { b, messages } = checkedBody(body)
  const wire: JsonObject = {
    model: canonical.model,
    messages: (canonical.messages as JsonObject[]).map((cm, n) =>
      cm.role === 'user' ? { role: 'user', content: get(messages[n] as Obj, 'content') as JsonValue } : cm),
    temperature: canonical.temperature,
  }
  hashedOptionals(b, wire)
  const toolChoice = get(b, 'tool_choice')
  if (toolChoice !== undefined && toolChoice !== null) wire.tool_choice = toolChoice as JsonValue
  if (canonical.response_format !== undefined) wire.response_format = canonical.response_format
  if (canonical.web_search !== undefined) wire.web_search = true
  const stream = get(b, 'stream')
  if (typeof stream === 'boolean') wire.stream = stream
  const streamOptions = get(b, 'stream_options')
  if (stream === true && isJsonObject(streamOptions)) wire.stream_options = streamOptions as JsonObject
  return wire
}

/** Exactly the string the enclave hashes for this body. */
export function canonicalRequestJson (body: unknown, opts: CanonicalOptions = {}): string {
  return pythonJsonDumps(buildCanonicalRequest(body, opts))
}

/** keccak256 of the canonical request, hex without 0x (the form of `tee_request_hash`). */
export function requestHash (body: unknown, opts: CanonicalOptions = {}): string {
  return keccakHex(canonicalRequestJson(body, opts))
}

/**
 * The bytes to send upstream for a wire body. Python's json.loads reads them back into the values
 * the hash was computed from: ints exact, floats in repr form (which round-trips), strings
 * ASCII-escaped. JSON.stringify would turn a float 1.0 into the int 1 and change the hash.
 */
export function serializeWireBody (wire: unknown): string {
  return pythonJsonDumps(wire, { sortKeys: false, compact: true })
}
