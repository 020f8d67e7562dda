import { isJsonObject, JsonNumber, numberOf, pythonFloatRepr, pythonJsonDumps } from './json.ts'
import { pyTruthy } from './canonical.ts'

// The output half of the TEE proof: the exact string the enclave hashed as `tee_output_hash`.
// Plain answers hash the assistant text; when finish_reason is "tool_calls" only
// json.dumps(tool_calls, sort_keys=True) is signed (text streamed before the calls is not).
// Mirrors the SDK's response_content_for_hash and its stream accumulation (tee_ohttp_client.py).

type Obj = Record<string, unknown>

// Python serializes far deeper than our request limit; an output we still cannot serialize gets a
// string no enclave signs, so verification fails at the output hash instead of throwing.
const OUTPUT_DEPTH = 1000
const UNSERIALIZABLE = '\u0000unserializable tool calls'

function toolCallsJson (calls: unknown[]): string {
  try { return pythonJsonDumps(calls, { maxDepth: OUTPUT_DEPTH }) } catch { return UNSERIALIZABLE }
}

function firstChoice (frame: unknown): Obj | undefined {
  if (!isJsonObject(frame)) return undefined
  const choices = frame.choices
  return Array.isArray(choices) && isJsonObject(choices[0]) ? choices[0] : undefined
}

// Python str() of a non-dict content part. Strings are what providers send; the rest only needs
// to be deterministic, since a hostile shape fails verification either way.
function pyStr (v: unknown): string {
  if (typeof v === 'string') return v
  if (v === null || v === undefined) return 'None'
  if (typeof v === 'boolean') return v ? 'True' : 'False'
  if (v instanceof JsonNumber) return v.pythonRepr()
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : pythonFloatRepr(v)
  try { return pythonJsonDumps(v, { sortKeys: false, maxDepth: OUTPUT_DEPTH }) } catch { return UNSERIALIZABLE }
}

/** Assistant text: a string as is, a list of parts joined by their `text`. */
export function contentText (content: unknown): string {
  if (typeof content === 'string') return content
  if (!Array.isArray(content)) return ''
  return content.map((p) => {
    if (!isJsonObject(p)) return pyStr(p)
    return typeof p.text === 'string' ? p.text : ''
  }).join('')
}

/** The signed output string of a non-streaming response body. */
export function canonicalOutputOf (body: unknown): string {
  const choice = firstChoice(body)
  const message = choice?.message
  if (!choice || !isJsonObject(message)) return ''
  if (choice.finish_reason === 'tool_calls' && Array.isArray(message.tool_calls)) {
    return toolCallsJson(message.tool_calls)
  }
  return contentText(message.content)
}

export interface StreamedToolCall {
  id: unknown
  type: unknown
  function: { name: unknown, arguments: string }
}

/**
 * Folds parsed SSE `data:` objects into the signed output. Feed every frame in arrival order;
 * fields it does not know (such as the gateway's own `x402_gateway`) are ignored.
 */
export class StreamAccumulator {
  private textParts: string[] = []
  private textChars = 0
  private readonly calls = new Map<number, StreamedToolCall>()
  private lastFinish: unknown = null
  private proofFrame: Obj | undefined
  private usageBlock: unknown
  private ogBlock: unknown
  private errorValue: unknown
  private frameCount = 0

  feed (frame: unknown): void {
    if (!isJsonObject(frame)) return
    this.frameCount++
    if (frame.error !== undefined && frame.error !== null) this.errorValue = frame.error
    if (isJsonObject(frame.usage)) this.usageBlock = frame.usage
    if (isJsonObject(frame.opengradient)) this.ogBlock = frame.opengradient
    // The SDK takes the last frame carrying a string signature or output hash as the proof.
    if (typeof frame.tee_signature === 'string' || typeof frame.tee_output_hash === 'string') this.proofFrame = frame
    const choice = firstChoice(frame)
    if (!choice) return
    if (choice.finish_reason !== undefined && choice.finish_reason !== null) this.lastFinish = choice.finish_reason
    const delta = choice.delta
    if (!isJsonObject(delta)) return
    const text = contentText(delta.content)
    if (text) { this.textParts.push(text); this.textChars += text.length }
    if (Array.isArray(delta.tool_calls)) for (const frag of delta.tool_calls) this.mergeToolCall(frag)
  }

  // Merge by index from {"id": "", "type": "function", ...}: id/type/name are set when truthy,
  // argument fragments appended in arrival order.
  private mergeToolCall (frag: unknown): void {
    if (!isJsonObject(frag)) return
    const index = frag.index === undefined ? 0 : numberOf(frag.index)
    // The SDK would key a dict by any value; an index that is not a small integer is dropped.
    if (index === undefined || !Number.isSafeInteger(index) || index < 0) return
    let slot = this.calls.get(index)
    if (!slot) {
      slot = { id: '', type: 'function', function: { name: '', arguments: '' } }
      this.calls.set(index, slot)
    }
    if (pyTruthy(frag.id)) slot.id = frag.id
    if (pyTruthy(frag.type)) slot.type = frag.type
    const fn = frag.function
    if (!isJsonObject(fn)) return
    if (pyTruthy(fn.name)) slot.function.name = fn.name
    if (typeof fn.arguments === 'string') slot.function.arguments += fn.arguments
  }

  /** The merged text so far (the whole `delta.content` stream). */
  get text (): string { return this.textParts.join('') }
  /** Merged tool calls ordered by index. */
  get toolCalls (): StreamedToolCall[] { return [...this.calls.keys()].sort((a, b) => a - b).map((k) => this.calls.get(k)!) }
  /** The last non-null finish_reason seen. */
  get finishReason (): unknown { return this.lastFinish }
  /** The frame carrying the proof, once it arrived. */
  get finalFrame (): Obj | undefined { return this.proofFrame }
  get usage (): unknown { return this.usageBlock }
  get opengradient (): unknown { return this.ogBlock }
  /** An in-band `{"error": ...}` frame's error, if one came. */
  get error (): unknown { return this.errorValue }
  get frames (): number { return this.frameCount }
  /** Characters of output received so far (text and tool-call arguments), for estimates. */
  get outputChars (): number {
    let n = this.textChars
    for (const c of this.calls.values()) n += c.function.arguments.length
    return n
  }

  /** The string whose keccak256 must equal the proof's tee_output_hash. */
  canonicalOutput (): string {
    // Like the SDK, the proof frame's own finish_reason decides; before it arrives, the last seen.
    const finish = this.proofFrame ? firstChoice(this.proofFrame)?.finish_reason : this.lastFinish
    if (finish === 'tool_calls' && this.calls.size > 0) return toolCallsJson(this.toolCalls)
    return this.text
  }
}
