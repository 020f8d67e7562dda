import { z } from 'zod'
import { GatewayError } from '../errors.ts'
import { reservationFor, type ModelPrice, type PriceTable } from '../pricing.ts'
import { buildWireRequest, serializeWireBody, requestHash } from '../proof/canonical.ts'

// Only what the gateway itself relies on is validated here; the rest of an OpenAI body is
// normalised into the wire form the enclave hashes (PROTOCOLS.md §7, "hash what you send").
const messageSchema = z.object({ role: z.string().min(1).max(32) }).passthrough()
const bodySchema = z.object({
  model: z.string().min(1).max(128),
  messages: z.array(messageSchema).min(1).max(2048),
  stream: z.boolean().optional(),
  max_tokens: z.number().int().min(0).nullable().optional(),
  max_completion_tokens: z.number().int().min(0).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
}).passthrough()

export interface PreparedChat {
  model: string
  price: ModelPrice
  stream: boolean
  /** The exact bytes sent upstream. */
  wireBody: string
  /** keccak256 of the canonical form of what we send, hex without 0x. */
  requestHash: string
  promptBytes: number
  maxOutputTokens: number
  reservation: bigint
  /** Streams: buffer the whole answer and send it only once its proof verified. */
  verifyBeforeEmit: boolean
}

export interface PrepareLimits { maxOutputTokens: number, maxReservation: bigint, verifyBeforeEmit?: boolean }

export function prepareChat (body: unknown, prices: PriceTable, limits: PrepareLimits): PreparedChat {
  const parsed = bodySchema.safeParse(body)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new GatewayError('BAD_REQUEST_BODY', { reason: 'invalid_field', path: issue?.path.join('.'), detail: issue?.message })
  }
  const b = parsed.data
  const price = prices.models.get(b.model)
  if (!price) throw new GatewayError('UNKNOWN_MODEL', { model: b.model.slice(0, 128) })

  // The reservation must be a true upper bound, so output length is always bounded: a missing
  // max_tokens becomes the configured maximum and is sent (and therefore hashed) explicitly.
  const requested = b.max_tokens ?? b.max_completion_tokens ?? undefined
  if (requested !== undefined && requested > limits.maxOutputTokens) {
    throw new GatewayError('MAX_TOKENS_TOO_LARGE', { limit: limits.maxOutputTokens })
  }
  const maxOutputTokens = requested ?? limits.maxOutputTokens
  const stream = b.stream === true

  let wire: Record<string, unknown>
  try {
    wire = buildWireRequest({ ...b, max_tokens: maxOutputTokens, max_completion_tokens: undefined }) as Record<string, unknown>
  } catch (err) {
    throw new GatewayError('BAD_REQUEST_BODY', { reason: 'unsupported_message', detail: (err as Error).message.slice(0, 200) })
  }
  if (stream) {
    wire.stream = true
    // Usage arrives only in the final frame, and only when asked for; the charge depends on it.
    wire.stream_options = { include_usage: true }
  } else {
    delete wire.stream
    delete wire.stream_options
  }
  let wireBody: string
  let hash: string
  try {
    wireBody = serializeWireBody(wire)
    hash = requestHash(wire)
  } catch (err) {
    // Non-finite numbers (1e309 parses as Infinity) or nesting past the canonical JSON depth
    // limit cannot be hashed as the enclave would: bad input, not our fault.
    throw new GatewayError('BAD_REQUEST_BODY', { reason: 'unhashable_value', detail: (err as Error).message.slice(0, 200) })
  }
  const promptBytes = Buffer.byteLength(wireBody)
  return {
    model: b.model,
    price,
    stream,
    wireBody,
    requestHash: hash,
    promptBytes,
    maxOutputTokens,
    reservation: reservationFor(price, promptBytes, b.messages.length, maxOutputTokens, limits.maxReservation),
    verifyBeforeEmit: limits.verifyBeforeEmit === true,
  }
}
