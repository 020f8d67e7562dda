import type { PaymentRequired, PaymentRequirements } from '@x402/core/types'
import type { PaymentRequirementsV1 } from '@x402/core/types/v1'
import type { GatewayConfig } from '../../config/schema.ts'

export type X402Config = GatewayConfig['x402']

// The 402 offers exactly one option: the configured asset on the configured network, paid to the
// operator. The paid retry is checked field by field against a rebuild of this same object, so
// the two must come from one function.
export function buildRequirements (cfg: X402Config, amountAtomic: bigint): PaymentRequirements {
  return {
    scheme: 'exact',
    network: cfg.network,
    asset: cfg.asset,
    amount: amountAtomic.toString(),
    payTo: cfg.payTo,
    maxTimeoutSeconds: cfg.maxTimeoutSeconds,
    extra: { name: cfg.assetName, version: cfg.assetVersion },
  }
}

/** v1 clients name networks ("base-sepolia") and carry the resource inline. */
export function toV1Requirements (cfg: X402Config, req: PaymentRequirements, resourceUrl: string, description: string): PaymentRequirementsV1 {
  return {
    scheme: req.scheme,
    network: (cfg.v1Network ?? cfg.network) as PaymentRequirementsV1['network'],
    maxAmountRequired: req.amount,
    resource: resourceUrl,
    description,
    mimeType: 'application/json',
    outputSchema: {},
    payTo: req.payTo,
    maxTimeoutSeconds: req.maxTimeoutSeconds,
    asset: req.asset,
    extra: req.extra,
  }
}

export interface ChallengeInput {
  cfg: X402Config
  amountAtomic: bigint
  resourceUrl: string
  description: string
  error: string
  extensions?: Record<string, unknown>
}

export function buildPaymentRequired (input: ChallengeInput): PaymentRequired {
  const out: PaymentRequired = {
    x402Version: 2,
    error: input.error,
    resource: { url: input.resourceUrl, description: input.description, mimeType: 'application/json' },
    accepts: [buildRequirements(input.cfg, input.amountAtomic)],
  }
  if (input.extensions && Object.keys(input.extensions).length > 0) out.extensions = input.extensions
  return out
}
