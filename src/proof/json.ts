// JSON as OpenGradient's enclave sees it. The enclave is Python: it parses with `json.loads` (an
// int stays an exact int, `1.0` stays a float) and hashes `json.dumps(obj, sort_keys=True)`. A
// port has to keep number lexemes through parsing and reproduce that serializer byte for byte;
// JSON.parse/JSON.stringify differ on separators, escaping, key order and number formatting.

export const MAX_JSON_DEPTH = 64
// CPython 3.11+ refuses int() of more than 4300 digits, so json.loads fails on such a literal: the
// enclave could never have hashed one, and refusing it here keeps the two sides in agreement.
const MAX_INT_DIGITS = 4300

export class JsonParseError extends Error {
  readonly code = 'JSON_PARSE_ERROR'
  constructor (message: string, readonly position: number) {
    super(`${message} at position ${position}`)
    this.name = 'JsonParseError'
  }
}

export class JsonSerializeError extends Error {
  readonly code = 'JSON_SERIALIZE_ERROR'
  constructor (message: string) {
    super(message)
    this.name = 'JsonSerializeError'
  }
}

const NUMBER_RE = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?$/

/** A JSON number kept as written, so Python's int/float distinction and big ints survive. */
export class JsonNumber {
  readonly lexeme: string
  /** True when Python's json module would parse it as int (no fraction, no exponent). */
  readonly isInteger: boolean

  constructor (lexeme: string) {
    const m = NUMBER_RE.exec(lexeme)
    if (!m) throw new JsonParseError(`invalid number ${JSON.stringify(lexeme.slice(0, 40))}`, 0)
    this.lexeme = lexeme
    this.isInteger = m[1] === undefined && m[2] === undefined
  }

  /** A Python float with value x (e.g. a forced `temperature`). */
  static fromFloat (x: number): JsonNumber {
    return new JsonNumber(pythonFloatRepr(x))
  }

  toNumber (): number { return Number(this.lexeme) }
  valueOf (): number { return this.toNumber() }
  toJSON (): number { return this.toNumber() }
  toString (): string { return this.lexeme }

  /** What Python's json.dumps writes for the value json.loads made of this lexeme. */
  pythonRepr (): string {
    if (this.isInteger) return BigInt(this.lexeme).toString()
    return pythonFloatRepr(this.toNumber())
  }
}

export type JsonValue = null | boolean | string | number | JsonNumber | JsonValue[] | JsonObject
export interface JsonObject { [key: string]: JsonValue }

export function isJsonObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof JsonNumber)
}

/** A plain number from either representation, or undefined. */
export function numberOf (v: unknown): number | undefined {
  if (typeof v === 'number') return v
  if (v instanceof JsonNumber) return v.toNumber()
  return undefined
}

/** JsonNumbers become JS numbers (lossy): for code that only reads values. */
export function toPlainJson (v: unknown): unknown {
  if (v instanceof JsonNumber) return v.toNumber()
  if (Array.isArray(v)) return v.map(toPlainJson)
  if (isJsonObject(v)) {
    const out: Record<string, unknown> = {}
    for (const k of Object.keys(v)) Object.defineProperty(out, k, { value: toPlainJson(v[k]), enumerable: true, writable: true, configurable: true })
    return out
  }
  return v
}

/**
 * Python `repr(float)`: shortest round-trip digits, fixed notation for decimal exponents -4..15,
 * otherwise `d.ddde[+-]XX`; always a `.0` or exponent so it reads back as a float.
 */
export function pythonFloatRepr (x: number): string {
  if (!Number.isFinite(x)) throw new JsonSerializeError(`float ${x} is not representable in JSON`)
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0'
  const sign = x < 0 ? '-' : ''
  // Number#toString yields the shortest digits that round-trip (closest on ties), as Python does.
  let s = String(Math.abs(x))
  let exp10 = 0
  const e = s.indexOf('e')
  if (e >= 0) { exp10 = Number(s.slice(e + 1)); s = s.slice(0, e) }
  const dot = s.indexOf('.')
  const intPart = dot < 0 ? s : s.slice(0, dot)
  let digits = intPart + (dot < 0 ? '' : s.slice(dot + 1))
  let point = intPart.length
  const lead = /^0*/.exec(digits)![0].length
  digits = digits.slice(lead).replace(/0+$/, '')
  point -= lead
  const sci = point - 1 + exp10
  if (sci >= -4 && sci < 16) {
    if (sci >= 0) {
      const whole = digits.length <= sci + 1 ? digits + '0'.repeat(sci + 1 - digits.length) : digits.slice(0, sci + 1)
      const frac = digits.length > sci + 1 ? digits.slice(sci + 1) : '0'
      return `${sign}${whole}.${frac}`
    }
    return `${sign}0.${'0'.repeat(-sci - 1)}${digits}`
  }
  const mant = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits
  const absExp = Math.abs(sci)
  return `${sign}${mant}e${sci < 0 ? '-' : '+'}${absExp < 10 ? '0' : ''}${absExp}`
}

export interface ParseOptions { maxDepth?: number }

/** Strict JSON (RFC 8259) parse; every number becomes a JsonNumber; objects have no prototype. */
export function parseJson (input: string | Uint8Array, opts: ParseOptions = {}): JsonValue {
  let text: string
  if (typeof input === 'string') {
    text = input
  } else {
    try { text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(input) } catch { throw new JsonParseError('invalid UTF-8', 0) }
  }
  return new Parser(text, opts.maxDepth ?? MAX_JSON_DEPTH).parseDocument()
}

const NUMBER_AT = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?/y
const SHORT_ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' }

class Parser {
  private i = 0
  constructor (private readonly s: string, private readonly maxDepth: number) {}

  parseDocument (): JsonValue {
    this.ws()
    const v = this.value(0)
    this.ws()
    if (this.i !== this.s.length) this.fail('unexpected trailing data')
    return v
  }

  private fail (msg: string): never { throw new JsonParseError(msg, this.i) }

  private ws (): void {
    const s = this.s
    while (this.i < s.length) {
      const c = s.charCodeAt(this.i)
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break
      this.i++
    }
  }

  private value (depth: number): JsonValue {
    const c = this.s[this.i]
    if (c === '{' || c === '[') {
      if (depth >= this.maxDepth) this.fail(`nesting deeper than ${this.maxDepth}`)
      return c === '{' ? this.object(depth + 1) : this.array(depth + 1)
    }
    if (c === '"') return this.string()
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.number()
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (this.s.startsWith(word, this.i)) { this.i += word.length; return v }
    }
    return this.fail(c === undefined ? 'unexpected end of input' : 'unexpected character')
  }

  private object (depth: number): JsonObject {
    const out = Object.create(null) as JsonObject
    this.i++
    this.ws()
    if (this.s[this.i] === '}') { this.i++; return out }
    for (;;) {
      if (this.s[this.i] !== '"') this.fail('expected a string key')
      const key = this.string()
      this.ws()
      if (this.s[this.i] !== ':') this.fail('expected ":"')
      this.i++
      this.ws()
      // Like a Python dict, a repeated key keeps the last value.
      out[key] = this.value(depth)
      this.ws()
      const c = this.s[this.i++]
      if (c === '}') return out
      if (c !== ',') { this.i--; this.fail('expected "," or "}"') }
      this.ws()
    }
  }

  private array (depth: number): JsonValue[] {
    const out: JsonValue[] = []
    this.i++
    this.ws()
    if (this.s[this.i] === ']') { this.i++; return out }
    for (;;) {
      out.push(this.value(depth))
      this.ws()
      const c = this.s[this.i++]
      if (c === ']') return out
      if (c !== ',') { this.i--; this.fail('expected "," or "]"') }
      this.ws()
    }
  }

  private number (): JsonNumber {
    NUMBER_AT.lastIndex = this.i
    const m = NUMBER_AT.exec(this.s)
    if (!m) this.fail('invalid number')
    const lexeme = m[0]
    const n = new JsonNumber(lexeme)
    if (n.isInteger && lexeme.replace('-', '').length > MAX_INT_DIGITS) this.fail('integer literal too long')
    this.i += lexeme.length
    return n
  }

  private string (): string {
    const s = this.s
    let i = this.i + 1
    let out = ''
    let start = i
    for (;;) {
      if (i >= s.length) { this.i = i; this.fail('unterminated string') }
      const c = s.charCodeAt(i)
      if (c === 0x22) break
      if (c < 0x20) { this.i = i; this.fail('control character in string') }
      if (c !== 0x5c) { i++; continue }
      out += s.slice(start, i)
      const e = s[i + 1]
      if (e === 'u') {
        const hex = s.slice(i + 2, i + 6)
        if (!/^[0-9a-fA-F]{4}$/.test(hex)) { this.i = i; this.fail('invalid \\u escape') }
        // Surrogate escapes are kept as code units: a pair forms the astral char, a lone one
        // stays lone, which is what Python holds after decoding too.
        out += String.fromCharCode(parseInt(hex, 16))
        i += 6
      } else if (e !== undefined && e in SHORT_ESCAPES) {
        out += SHORT_ESCAPES[e]
        i += 2
      } else {
        this.i = i
        this.fail('invalid escape')
      }
      start = i
    }
    this.i = i + 1
    return out + s.slice(start, i)
  }
}

export interface DumpOptions {
  /** Python's sort_keys (default true). */
  sortKeys?: boolean
  /** Separators "," and ":" instead of Python's default ", " and ": ". */
  compact?: boolean
  maxDepth?: number
}

// Python's ensure_ascii: `"` and `\` and everything outside U+0020..U+007E are escaped; UTF-16
// code units are escaped one by one, which is how Python writes astral chars (surrogate pairs).
const ESCAPE_RE = /[\\"\u0000-\u001f\u007f-\uffff]/g
const ESCAPES: Record<string, string> = { '\\': '\\\\', '"': '\\"', '\b': '\\b', '\f': '\\f', '\n': '\\n', '\r': '\\r', '\t': '\\t' }

export function pythonString (s: string): string {
  return '"' + s.replace(ESCAPE_RE, (ch) => ESCAPES[ch] ?? '\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0')) + '"'
}

/** Python's str ordering: by code point (JS sort compares UTF-16 units, which differs above U+FFFF). */
export function compareCodePoints (a: string, b: string): number {
  let i = 0
  let j = 0
  while (i < a.length && j < b.length) {
    const x = a.codePointAt(i)!
    const y = b.codePointAt(j)!
    if (x !== y) return x - y
    i += x > 0xffff ? 2 : 1
    j += y > 0xffff ? 2 : 1
  }
  return (a.length - i) - (b.length - j)
}

/**
 * `json.dumps(value, sort_keys=True)` with Python's defaults. JS numbers that are integers are
 * written as ints, others as Python float repr; JsonNumbers as Python re-serializes what it parsed.
 */
export function pythonJsonDumps (value: unknown, opts: DumpOptions = {}): string {
  const sortKeys = opts.sortKeys ?? true
  const itemSep = opts.compact ? ',' : ', '
  const keySep = opts.compact ? ':' : ': '
  const maxDepth = opts.maxDepth ?? MAX_JSON_DEPTH
  const out: string[] = []

  const emit = (v: unknown, depth: number): void => {
    if (v === null) { out.push('null'); return }
    switch (typeof v) {
      case 'string': out.push(pythonString(v)); return
      case 'boolean': out.push(v ? 'true' : 'false'); return
      case 'bigint': out.push(v.toString()); return
      case 'number':
        if (!Number.isFinite(v)) throw new JsonSerializeError(`number ${v} is not representable in JSON`)
        out.push(Number.isInteger(v) ? BigInt(v).toString() : pythonFloatRepr(v))
        return
      case 'object': break
      default: throw new JsonSerializeError(`cannot serialize a value of type ${typeof v}`)
    }
    if (v instanceof JsonNumber) { out.push(v.pythonRepr()); return }
    if (depth >= maxDepth) throw new JsonSerializeError(`nesting deeper than ${maxDepth}`)
    if (Array.isArray(v)) {
      out.push('[')
      v.forEach((item, n) => { if (n > 0) out.push(itemSep); emit(item, depth + 1) })
      out.push(']')
      return
    }
    const proto = Object.getPrototypeOf(v)
    if (proto !== null && proto !== Object.prototype) throw new JsonSerializeError('cannot serialize a non-plain object')
    const obj = v as Record<string, unknown>
    const keys = Object.keys(obj)
    if (sortKeys) keys.sort(compareCodePoints)
    out.push('{')
    let first = true
    for (const k of keys) {
      if (obj[k] === undefined) throw new JsonSerializeError(`undefined value at key ${JSON.stringify(k)}`)
      if (!first) out.push(itemSep)
      first = false
      out.push(pythonString(k), keySep)
      emit(obj[k], depth + 1)
    }
    out.push('}')
  }

  emit(value, 0)
  return out.join('')
}
