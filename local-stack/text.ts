import { isJsonObject, JsonNumber, numberOf, type JsonObject } from '../src/proof/json.ts'
import { contentText } from '../src/proof/output.ts'

// The only simulated part of the reference TEE backend: what the model says. Answers are
// deterministic in the request hash so tests and demos are repeatable, one word per "token".

const WORDS = [
  'verified', 'inference', 'enclave', 'signature', 'ledger', 'credit', 'token', 'stream', 'proof',
  'attested', 'gateway', 'answer', 'quietly', 'bright', 'river', 'mountain', 'signal', 'harbor',
  'lantern', 'orbit', 'meadow', 'crystal', 'echo', 'summit', 'compass', 'ember', 'willow', 'cobalt',
  'amber', 'garden', 'falcon', 'horizon', 'velvet', 'granite', 'thunder', 'maple', 'saffron', 'tide',
  'the', 'a', 'of', 'and', 'with', 'under', 'over', 'beyond', 'through', 'every', 'small', 'steady',
]
const CITIES = ['Paris', 'Tokyo', 'Lisbon', 'Nairobi', 'Lima', 'Oslo', 'Seoul', 'Quito']

export interface ToolCall { id: string, type: 'function', function: { name: string, arguments: string } }

export type SimulatedAnswer =
  | { kind: 'text', chunks: string[] }
  | { kind: 'tool_calls', calls: ToolCall[], argumentFragments: string[] }

function rng (hashHex: string): () => number {
  let s = parseInt(hashHex.slice(0, 8), 16) >>> 0
  return () => {
    // mulberry32: tiny, and plenty for picking words.
    s = (s + 0x6d2b79f5) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296
  }
}

function lastUserText (canonical: JsonObject): string {
  const messages = canonical.messages as JsonObject[]
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i].role === 'user') return contentText(messages[i].content)
  }
  return ''
}

function toolArguments (tool: JsonObject | undefined, pick: () => number): Record<string, unknown> {
  const params = isJsonObject(tool?.parameters) ? tool!.parameters as JsonObject : {}
  const props = isJsonObject(params.properties) ? params.properties as JsonObject : {}
  const required = Array.isArray(params.required) ? params.required.filter((k): k is string => typeof k === 'string' && k in props) : []
  const names = required.length > 0 ? required : Object.keys(props).slice(0, 1)
  const args: Record<string, unknown> = {}
  for (const name of names) {
    const type = isJsonObject(props[name]) ? (props[name] as JsonObject).type : undefined
    if (type === 'number' || type === 'integer') args[name] = 3
    else if (type === 'boolean') args[name] = true
    else if (type === 'object') args[name] = { city: CITIES[Math.floor(pick() * CITIES.length)] }
    else if (type === 'array') args[name] = []
    else args[name] = CITIES[Math.floor(pick() * CITIES.length)]
  }
  return args
}

// A tool call happens when tools are offered and the last user message asks about the weather.
function maybeToolCall (canonical: JsonObject, hashHex: string, pick: () => number): SimulatedAnswer | undefined {
  const tools = Array.isArray(canonical.tools) ? canonical.tools.filter(isJsonObject) as JsonObject[] : []
  if (tools.length === 0 || !/\bweather\b/i.test(lastUserText(canonical))) return undefined
  const fns = tools.map((t) => (isJsonObject(t.function) ? t.function as JsonObject : {}))
  const fn = fns.find((f) => typeof f.name === 'string' && /weather/i.test(f.name)) ?? fns[0]
  const name = typeof fn.name === 'string' ? fn.name : 'tool'
  const args = JSON.stringify(toolArguments(fn, pick))
  const cps = Array.from(args)
  const third = Math.max(1, Math.ceil(cps.length / 3))
  const argumentFragments: string[] = []
  for (let i = 0; i < cps.length; i += third) argumentFragments.push(cps.slice(i, i + third).join(''))
  return {
    kind: 'tool_calls',
    calls: [{ id: `call_${hashHex.slice(0, 24)}`, type: 'function', function: { name, arguments: args } }],
    argumentFragments,
  }
}

/** The answer for a canonical request: a sentence of 12..40 words (capped by max_tokens) or a tool call. */
export function simulateAnswer (canonical: JsonObject, requestHashHex: string): SimulatedAnswer {
  const pick = rng(requestHashHex)
  const tool = maybeToolCall(canonical, requestHashHex, pick)
  if (tool) return tool
  let n = 12 + Math.floor(pick() * 29)
  const maxTokens = numberOf(canonical.max_tokens)
  if (maxTokens !== undefined && Number.isFinite(maxTokens)) n = Math.max(0, Math.min(n, Math.floor(maxTokens)))
  const chunks: string[] = []
  for (let i = 0; i < n; i++) {
    let w = WORDS[Math.floor(pick() * WORDS.length)]
    if (i === 0) w = w[0].toUpperCase() + w.slice(1)
    chunks.push((i > 0 ? ' ' : '') + w + (i === n - 1 ? '.' : ''))
  }
  return { kind: 'text', chunks }
}

export function completionTokens (answer: SimulatedAnswer): number {
  if (answer.kind === 'text') return answer.chunks.length
  return answer.calls.reduce((n, c) => n + 1 + Math.ceil(c.function.arguments.length / 4), 0)
}

/** A rough prompt size in tokens: a quarter of the characters of the hashed messages. */
export function promptTokens (canonicalJson: string): number {
  return Math.max(1, Math.ceil(canonicalJson.length / 4))
}

export interface ModelPrice { input: number, output: number }

/** USD per million tokens (PROTOCOLS.md §7 snapshot); unknown models get the fallback. */
export const DEFAULT_PRICES: Record<string, ModelPrice> = {
  'gpt-5': { input: 1.25, output: 10 },
  'gpt-5-mini': { input: 0.25, output: 2 },
  'claude-sonnet-4-6': { input: 3, output: 15 },
  'claude-haiku-4-5': { input: 1, output: 5 },
  'gemini-2.5-flash': { input: 0.3, output: 2.5 },
  'grok-4': { input: 3, output: 15 },
}
const FALLBACK_PRICE: ModelPrice = { input: 1, output: 5 }
const E18 = 10n ** 18n

/** The `opengradient` block: cost in OPG base units (18 decimals, string), in USD, and the OPG price. */
export function costBlock (model: string, prompt: number, completion: number, prices: Record<string, ModelPrice>, opgPriceUsd: number): JsonObject {
  const p = prices[model] ?? FALLBACK_PRICE
  // attoUSD per token = USD per 1M tokens × 1e12; integer math from there on.
  const atto = BigInt(prompt) * BigInt(Math.round(p.input * 1e12)) + BigInt(completion) * BigInt(Math.round(p.output * 1e12))
  const opgAtto = BigInt(Math.round(opgPriceUsd * 1e18))
  return {
    cost_opg: (atto * E18 / opgAtto).toString(),
    // Python floats on the wire, as the real gateway writes them.
    cost_usd: JsonNumber.fromFloat(Number(atto) / 1e18),
    opg_price_usd: JsonNumber.fromFloat(opgPriceUsd),
  }
}
