import { z } from 'zod'
import { decodePaymentSignatureHeader } from '@x402/core/http'
import type { PaymentPayload, PaymentRequirements } from '@x402/core/types'
import type { PaymentPayloadV1, PaymentRequirementsV1 } from '@x402/core/types/v1'
import { GatewayError } from '../errors.ts'
import { buildRequirements, toV1Requirements, type X402Config } from './requirements.ts'

// A signed x402 exact payment is ~1 KiB of base64. Anything far larger is refused before decoding.
export const MAX_PAYMENT_HEADER_BYTES = 8192

const hex = (bytes: number) => z.string().regex(new RegExp(`^0x[0-9a-fA-F]{${bytes * 2}}$`))
const uintString = z.string().regex(/^\d{1,78}$/)

const authorizationSchema = z.object({
  from: hex(20),
  to: hex(20),
  value: uintString,
  validAfter: uintString,
  validBefore: uintString,
  nonce: hex(32),
})
const exactPayloadSchema = z.object({
  signature: z.string().regex(/^0x[0-9a-fA-F]{130,20000}$/),
  authorization: authorizationSchema,
})
const requirementsSchema = z.object({
  scheme: z.string().max(64),
  network: z.string().max(64),
  asset: z.string().max(128),
  amount: uintString,
  payTo: z.string().max(128),
  maxTimeoutSeconds: z.number().int(),
  extra: z.record(z.string(), z.unknown()).default({}),
})
const v2Schema = z.object({
  x402Version: z.literal(2),
  accepted: requirementsSchema,
  payload: exactPayloadSchema,
  resource: z.unknown().optional(),
  extensions: z.record(z.string(), z.unknown()).optional(),
})
const v1Schema = z.object({
  x402Version: z.literal(1),
  scheme: z.string().max(64),
  network: z.string().max(64),
  payload: exactPayloadSchema,
})

export type Authorization = z.infer<typeof authorizationSchema>

export interface DecodedPayment {
  version: 1 | 2
  /** What goes to the facilitator, in the shape its version expects. */
  payload: PaymentPayload | PaymentPayloadV1
  requirements: PaymentRequirements | PaymentRequirementsV1
  authorization: Authorization
  amountAtomic: bigint
  payer: `0x${string}`
  /** The durable replay key of PROTOCOLS.md §2: (network, asset, from, nonce). */
  claimKey: { network: string, asset: string, payer: string, nonce: string }
  extensions?: Record<string, unknown>
}

function reject (reason: string, detail?: string): never {
  throw new GatewayError('PAYMENT_INVALID', { reason, ...(detail ? { detail } : {}) }, `The payment was not accepted: ${reason}.`)
}

function decodeRaw (header: string): unknown {
  if (header.length > MAX_PAYMENT_HEADER_BYTES) {
    throw new GatewayError('PAYMENT_HEADER_TOO_LARGE', { limit: MAX_PAYMENT_HEADER_BYTES })
  }
  const trimmed = header.trim()
  // Standard alphabet only (PROTOCOLS.md §1); Buffer.from would silently skip junk characters.
  if (trimmed.length === 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(trimmed)) {
    throw new GatewayError('PAYMENT_HEADER_MALFORMED', { reason: 'invalid_base64' })
  }
  try {
    return decodePaymentSignatureHeader(trimmed)
  } catch {
    throw new GatewayError('PAYMENT_HEADER_MALFORMED', { reason: 'invalid_json' })
  }
}

const sameAddress = (a: string, b: string) => a.toLowerCase() === b.toLowerCase()

export interface DecodeContext {
  cfg: X402Config
  /** The smallest payment that covers this request (its reservation), in atomic units. */
  minAtomic: bigint
  nowSeconds: number
  resourceUrl: string
  description: string
}

/**
 * Decodes a PAYMENT-SIGNATURE (v2) or X-PAYMENT (v1) header and checks it against what this
 * gateway offers. Only then does it reach the facilitator: our own policy (network, asset, payee,
 * amount bounds, time window) must never depend on a third party agreeing.
 */
export function decodePayment (header: string, headerName: 'payment-signature' | 'x-payment', ctx: DecodeContext): DecodedPayment {
  const raw = decodeRaw(header)
  if (typeof raw !== 'object' || raw === null) throw new GatewayError('PAYMENT_HEADER_MALFORMED', { reason: 'not_an_object' })
  const version = (raw as { x402Version?: unknown }).x402Version
  const { cfg } = ctx
  let authorization: Authorization
  let amountAtomic: bigint
  let out: Pick<DecodedPayment, 'version' | 'payload' | 'requirements' | 'extensions'>

  if (version === 2) {
    if (headerName !== 'payment-signature') reject('unsupported_version', 'x402 v2 payments go in the PAYMENT-SIGNATURE header')
    const parsed = v2Schema.safeParse(raw)
    if (!parsed.success) throw new GatewayError('PAYMENT_HEADER_MALFORMED', { reason: 'invalid_payload_shape', path: parsed.error.issues[0]?.path.join('.') })
    const p = parsed.data
    const a = p.accepted
    if (a.scheme !== 'exact') reject('unsupported_scheme')
    if (a.network !== cfg.network) reject('invalid_network')
    if (!sameAddress(a.asset, cfg.asset)) reject('invalid_asset')
    if (!sameAddress(a.payTo, cfg.payTo)) reject('invalid_exact_evm_recipient_mismatch')
    if (a.extra.name !== cfg.assetName || a.extra.version !== cfg.assetVersion) reject('invalid_exact_evm_domain')
    if (a.maxTimeoutSeconds !== cfg.maxTimeoutSeconds) reject('invalid_max_timeout')
    amountAtomic = BigInt(a.amount)
    authorization = p.payload.authorization
    const requirements = buildRequirements(cfg, amountAtomic)
    out = {
      version: 2,
      payload: { x402Version: 2, accepted: requirements, payload: p.payload, ...(p.resource ? { resource: p.resource as PaymentPayload['resource'] } : {}), ...(p.extensions ? { extensions: p.extensions } : {}) },
      requirements,
      extensions: p.extensions,
    }
  } else if (version === 1) {
    if (headerName !== 'x-payment') reject('unsupported_version', 'x402 v1 payments go in the X-PAYMENT header')
    const parsed = v1Schema.safeParse(raw)
    if (!parsed.success) throw new GatewayError('PAYMENT_HEADER_MALFORMED', { reason: 'invalid_payload_shape', path: parsed.error.issues[0]?.path.join('.') })
    const p = parsed.data
    if (p.scheme !== 'exact') reject('unsupported_scheme')
    if (p.network !== cfg.v1Network && p.network !== cfg.network) reject('invalid_network')
    authorization = p.payload.authorization
    amountAtomic = BigInt(authorization.value)
    const requirements = toV1Requirements(cfg, buildRequirements(cfg, amountAtomic), ctx.resourceUrl, ctx.description)
    out = { version: 1, payload: { x402Version: 1, scheme: 'exact', network: requirements.network, payload: p.payload }, requirements }
  } else {
    reject('unsupported_version', 'x402Version must be 1 or 2')
  }

  if (!sameAddress(authorization.to, cfg.payTo)) reject('invalid_exact_evm_recipient_mismatch')
  if (BigInt(authorization.value) !== amountAtomic) reject('invalid_exact_evm_authorization_value')
  if (amountAtomic < ctx.minAtomic) reject('insufficient_amount', `this request needs at least ${ctx.minAtomic} atomic units`)
  if (amountAtomic > cfg.topupMaxAtomic) reject('amount_above_maximum', `at most ${cfg.topupMaxAtomic} atomic units per payment`)
  const now = BigInt(ctx.nowSeconds)
  // Same margin as the SDK's verifier: a payment about to expire may not settle in time.
  if (BigInt(authorization.validBefore) < now + 6n) reject('invalid_exact_evm_authorization_valid_before')
  if (BigInt(authorization.validAfter) > now) reject('invalid_exact_evm_authorization_valid_after')

  return {
    ...out,
    authorization,
    amountAtomic,
    payer: authorization.from.toLowerCase() as `0x${string}`,
    claimKey: {
      network: cfg.network,
      asset: cfg.asset.toLowerCase(),
      payer: authorization.from.toLowerCase(),
      nonce: authorization.nonce.toLowerCase(),
    },
  }
}
