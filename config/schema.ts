import { readFileSync, existsSync } from 'node:fs'
import { z } from 'zod'
import { DEFAULT_NETWORK, chainIdOf, findNetwork } from './networks.ts'
import { parseDecimal } from '../src/money.ts'

// The environment is parsed once, here, into a typed object; nothing else reads process.env.
// A bad value stops start-up with a message that names the variable (ConfigError.issues).

const hexKey = z.string().regex(/^0x[0-9a-fA-F]{64}$/, 'expected a 0x-prefixed 32-byte hex private key')
const address = z.string().regex(/^0x[0-9a-fA-F]{40}$/, 'expected a 0x-prefixed 20-byte address')
const decimalAmount = z.string().regex(/^\d{1,12}(\.\d{1,18})?$/, 'expected a decimal amount such as "1.00"')
const intFromEnv = (def: number, min: number, max: number) =>
  z.coerce.number().int().min(min).max(max).default(def)
const boolFromEnv = (def: boolean) =>
  z.enum(['true', 'false', '1', '0']).default(def ? 'true' : 'false').transform((v) => v === 'true' || v === '1')

const envSchema = z.object({
  PORT: intFromEnv(8402, 0, 65535),
  HOST: z.string().min(1).default('0.0.0.0'),
  DATABASE_URL: z.string().default('sqlite:./data/gateway.db')
    .refine((v) => v.startsWith('sqlite:') || /^postgres(ql)?:\/\//.test(v), 'expected sqlite:<path> or postgres://...'),
  REDIS_URL: z.string().url().optional(),
  X402_NETWORK: z.string().regex(/^eip155:\d{1,12}$/, 'expected a CAIP-2 EVM network id such as eip155:84532').default(DEFAULT_NETWORK),
  X402_ASSET: address.optional(),
  X402_ASSET_NAME: z.string().min(1).max(64).optional(),
  X402_ASSET_VERSION: z.string().min(1).max(16).optional(),
  X402_ASSET_DECIMALS: intFromEnv(6, 0, 9),
  X402_PAY_TO: address,
  X402_FACILITATOR: z.string().default('https://x402.org/facilitator')
    .refine((v) => v === 'local' || /^https?:\/\//.test(v), 'expected "local" or an http(s) facilitator URL'),
  X402_MAX_TIMEOUT_SECONDS: intFromEnv(300, 30, 3600),
  RPC_URL: z.string().url().optional(),
  SETTLER_PRIVATE_KEY: hexKey.optional(),
  SETTLEMENT_MODE: z.enum(['strict', 'optimistic']).default('strict'),
  TOPUP_AMOUNT: decimalAmount.default('1.00'),
  TOPUP_MAX_AMOUNT: decimalAmount.default('100.00'),
  OPTIMISTIC_MAX_AMOUNT: decimalAmount.default('5.00'),
  UPSTREAM_URL: z.string().url().optional(),
  UPSTREAM_TEE_PUBLIC_KEY: z.string().optional(),
  UPSTREAM_TLS_CERT: z.string().optional(),
  UPSTREAM_CONNECT_TIMEOUT_MS: intFromEnv(5_000, 100, 120_000),
  UPSTREAM_HEADERS_TIMEOUT_MS: intFromEnv(120_000, 100, 900_000),
  UPSTREAM_BODY_TIMEOUT_MS: intFromEnv(120_000, 100, 900_000),
  OG_REGISTRY_RPC_URL: z.string().url().default('https://ogevmdevnet.opengradient.ai'),
  OG_REGISTRY_ADDRESS: address.default('0x703cB174AEadB35D611858369B4b1111dC9Abda6'),
  OG_REGISTRY_REFRESH_SECONDS: intFromEnv(300, 5, 86_400),
  OG_TEE_PCR_HASH: z.string().regex(/^(0x)?[0-9a-fA-F]{64}$/, 'expected a 32-byte hex pcrHash').optional(),
  OG_TEE_ID: z.string().regex(/^(0x)?[0-9a-fA-F]{64}$/, 'expected a 32-byte hex TEE id').optional(),
  UPSTREAM_PAYER_PRIVATE_KEY: hexKey.optional(),
  UPSTREAM_SETTLEMENT_TYPE: z.enum(['private', 'batch', 'individual']).default('batch'),
  // The token the operator wallet pays the backend with (OPG on Base, PROTOCOLS.md §7), where to
  // read its Permit2 allowance, and the largest permit cap the wallet signs (atomic units; 0.1 OPG).
  UPSTREAM_PAYMENT_ASSET: address.default('0xFbC2051AE2265686a469421b2C5A2D5462FbF5eB'),
  UPSTREAM_PAYMENT_RPC_URL: z.string().url().optional(),
  UPSTREAM_PAYMENT_MAX_AMOUNT: z.string().regex(/^\d{1,40}$/, 'expected an integer amount in the token\'s atomic units').default('100000000000000000'),
  PRICING_FILE: z.string().optional(),
  ADMIN_TOKEN: z.string().min(32, 'must be at least 32 characters').max(512).optional(),
  TRUST_PROXY: z.string().default('false'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  BODY_LIMIT_BYTES: intFromEnv(1_048_576, 1024, 16_777_216),
  MAX_OUTPUT_TOKENS: intFromEnv(4096, 1, 1_000_000),
  MAX_RESERVATION: decimalAmount.default('5.00'),
  RESERVATION_TIMEOUT_SECONDS: intFromEnv(900, 10, 86_400),
  LOG_PRETTY: boolFromEnv(false),
  PUBLIC_URL: z.string().url().regex(/^https?:\/\/[^/?#]+\/?$/, 'expected an origin such as https://gateway.example.com').optional(),
  METRICS_PORT: z.coerce.number().int().min(1).max(65535).optional(),
  SHUTDOWN_GRACE_MS: intFromEnv(25_000, 0, 600_000),
  VERIFY_BEFORE_EMIT: boolFromEnv(false),
  RATE_LIMIT_PER_MINUTE: intFromEnv(0, 0, 1_000_000),
  PAYER_RATE_LIMIT_PER_MINUTE: intFromEnv(0, 0, 1_000_000),
  LOAD_SHED_EVENT_LOOP_DELAY_MS: intFromEnv(1000, 0, 60_000),
})

export type Env = z.infer<typeof envSchema>

export class ConfigError extends Error {
  constructor (readonly issues: { variable: string, message: string }[]) {
    super('invalid configuration:\n' + issues.map((i) => `  ${i.variable}: ${i.message}`).join('\n'))
    this.name = 'ConfigError'
  }
}

export interface GatewayConfig {
  port: number
  host: string
  database: { kind: 'sqlite', path: string } | { kind: 'postgres', url: string }
  redisUrl?: string
  x402: {
    network: `eip155:${number}`
    v1Network?: string
    chainId: number
    asset: `0x${string}`
    assetName: string
    assetVersion: string
    assetDecimals: number
    payTo: `0x${string}`
    facilitator: { kind: 'local', rpcUrl: string, settlerPrivateKey: `0x${string}` } | { kind: 'remote', url: string }
    rpcUrl?: string
    maxTimeoutSeconds: number
    settlementMode: 'strict' | 'optimistic'
    topupAtomic: bigint
    topupMaxAtomic: bigint
    /** Optimistic mode serves before settlement only for payments up to this; larger ones settle first. */
    optimisticMaxAtomic: bigint
  }
  upstream: {
    url?: string
    teePublicKeyPem?: string
    tlsCertPem?: string
    connectTimeoutMs: number
    headersTimeoutMs: number
    bodyTimeoutMs: number
    registryRpcUrl: string
    registryAddress: `0x${string}`
    registryRefreshMs: number
    pinPcrHash?: string
    pinTeeId?: string
    payerPrivateKey?: `0x${string}`
    settlementType: 'private' | 'batch' | 'individual'
    /** Paying the backend (x402 `upto` over Permit2); used only with payerPrivateKey. */
    payment: { asset: `0x${string}`, rpcUrl?: string, maxAtomic: bigint }
  }
  pricingFile?: string
  adminToken?: string
  trustProxy: boolean | number | string
  logLevel: Env['LOG_LEVEL']
  logPretty: boolean
  metricsPort?: number
  /** The origin clients use. SIWX sign-ins are bound to it; without it SIWX is off (the Host header is attacker-chosen). */
  publicUrl?: string
  shutdownGraceMs: number
  /** under-pressure: answer 503 when the event loop lags more than this (0 turns shedding off). */
  loadShedEventLoopDelayMs: number
  /** Requests per minute per client IP (before authentication); 0 = off. */
  rateLimitPerMinute: number
  /** Paid requests per minute per payer (after identification); 0 = off. */
  payerRateLimitPerMinute: number
  limits: { bodyBytes: number, maxOutputTokens: number, maxReservation: bigint, reservationTimeoutMs: number, verifyBeforeEmit: boolean }
}

/** Accepts PEM text, base64 DER (SPKI / certificate) or a path to a PEM file. */
function readPem (value: string, label: 'PUBLIC KEY' | 'CERTIFICATE'): string {
  const v = value.trim()
  if (v.startsWith('-----BEGIN')) return v.replace(/\\n/g, '\n')
  if (/^[A-Za-z0-9+/=\s]{64,}$/.test(v)) {
    const b64 = v.replace(/\s+/g, '').match(/.{1,64}/g)!.join('\n')
    return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`
  }
  if (existsSync(v)) return readFileSync(v, 'utf8')
  throw new Error(`expected PEM text, base64 DER or a path to a PEM file`)
}

function parseTrustProxy (v: string): boolean | number | string {
  if (v === 'true') return true
  if (v === 'false' || v === '') return false
  if (/^\d+$/.test(v)) return Number(v)
  return v
}

export function loadConfig (env: NodeJS.ProcessEnv | Record<string, string | undefined>): GatewayConfig {
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''))
  const parsed = envSchema.safeParse(cleaned)
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => ({
      variable: String(i.path[0] ?? '?'),
      message: i.code === 'invalid_type' && cleaned[String(i.path[0])] === undefined ? 'is required' : i.message,
    })))
  }
  const e = parsed.data
  const issues: { variable: string, message: string }[] = []
  const problem = (variable: string, message: string) => { issues.push({ variable, message }) }

  const known = findNetwork(e.X402_NETWORK)
  const chainId = chainIdOf(e.X402_NETWORK)!
  const asset = (e.X402_ASSET ?? known?.usdc.address) as `0x${string}` | undefined
  if (!asset) problem('X402_ASSET', `is required for ${e.X402_NETWORK} (no built-in USDC address for it)`)
  const assetName = e.X402_ASSET_NAME ?? (e.X402_ASSET ? undefined : known?.usdc.name)
  const assetVersion = e.X402_ASSET_VERSION ?? (e.X402_ASSET ? undefined : known?.usdc.version)
  if (!assetName) problem('X402_ASSET_NAME', 'is required with a custom X402_ASSET (the token\'s EIP-712 domain name)')
  if (!assetVersion) problem('X402_ASSET_VERSION', 'is required with a custom X402_ASSET (the token\'s EIP-712 domain version)')

  let facilitator: GatewayConfig['x402']['facilitator'] | undefined
  if (e.X402_FACILITATOR === 'local') {
    if (!e.RPC_URL) problem('RPC_URL', 'is required when X402_FACILITATOR=local')
    if (!e.SETTLER_PRIVATE_KEY) problem('SETTLER_PRIVATE_KEY', 'is required when X402_FACILITATOR=local')
    if (e.RPC_URL && e.SETTLER_PRIVATE_KEY) {
      facilitator = { kind: 'local', rpcUrl: e.RPC_URL, settlerPrivateKey: e.SETTLER_PRIVATE_KEY as `0x${string}` }
    }
  } else {
    facilitator = { kind: 'remote', url: e.X402_FACILITATOR }
  }

  const decimals = e.X402_ASSET_DECIMALS
  const amount = (variable: string, v: string, scale: number): bigint => {
    try { return parseDecimal(v, scale) } catch (err) { problem(variable, (err as Error).message); return 0n }
  }
  const topupAtomic = amount('TOPUP_AMOUNT', e.TOPUP_AMOUNT, decimals)
  const topupMaxAtomic = amount('TOPUP_MAX_AMOUNT', e.TOPUP_MAX_AMOUNT, decimals)
  if (topupAtomic <= 0n) problem('TOPUP_AMOUNT', 'must be greater than zero')
  if (topupMaxAtomic < topupAtomic) problem('TOPUP_MAX_AMOUNT', 'must be at least TOPUP_AMOUNT')
  const optimisticMaxAtomic = amount('OPTIMISTIC_MAX_AMOUNT', e.OPTIMISTIC_MAX_AMOUNT, decimals)
  const maxReservation = amount('MAX_RESERVATION', e.MAX_RESERVATION, 9)

  let teePublicKeyPem: string | undefined
  let tlsCertPem: string | undefined
  if (e.UPSTREAM_TEE_PUBLIC_KEY) {
    try { teePublicKeyPem = readPem(e.UPSTREAM_TEE_PUBLIC_KEY, 'PUBLIC KEY') } catch (err) { problem('UPSTREAM_TEE_PUBLIC_KEY', (err as Error).message) }
  }
  if (e.UPSTREAM_TLS_CERT) {
    try { tlsCertPem = readPem(e.UPSTREAM_TLS_CERT, 'CERTIFICATE') } catch (err) { problem('UPSTREAM_TLS_CERT', (err as Error).message) }
  }
  if (e.UPSTREAM_URL && !teePublicKeyPem && !issues.some((i) => i.variable === 'UPSTREAM_TEE_PUBLIC_KEY')) {
    problem('UPSTREAM_TEE_PUBLIC_KEY', 'is required with UPSTREAM_URL: without the enclave key no proof can be verified')
  }
  if (e.PRICING_FILE && !existsSync(e.PRICING_FILE)) problem('PRICING_FILE', `file not found: ${e.PRICING_FILE}`)

  const database: GatewayConfig['database'] = e.DATABASE_URL.startsWith('sqlite:')
    ? { kind: 'sqlite', path: e.DATABASE_URL.slice('sqlite:'.length) }
    : { kind: 'postgres', url: e.DATABASE_URL }
  if (database.kind === 'sqlite' && database.path === '') problem('DATABASE_URL', 'sqlite: needs a file path (or :memory:)')

  if (issues.length > 0) throw new ConfigError(issues)

  return {
    port: e.PORT,
    host: e.HOST,
    database,
    redisUrl: e.REDIS_URL,
    x402: {
      network: e.X402_NETWORK as `eip155:${number}`,
      v1Network: known?.v1Name,
      chainId,
      asset: asset!,
      assetName: assetName!,
      assetVersion: assetVersion!,
      assetDecimals: decimals,
      payTo: e.X402_PAY_TO as `0x${string}`,
      facilitator: facilitator!,
      rpcUrl: e.RPC_URL,
      maxTimeoutSeconds: e.X402_MAX_TIMEOUT_SECONDS,
      settlementMode: e.SETTLEMENT_MODE,
      topupAtomic,
      topupMaxAtomic,
      optimisticMaxAtomic,
    },
    upstream: {
      url: e.UPSTREAM_URL,
      teePublicKeyPem,
      tlsCertPem,
      connectTimeoutMs: e.UPSTREAM_CONNECT_TIMEOUT_MS,
      headersTimeoutMs: e.UPSTREAM_HEADERS_TIMEOUT_MS,
      bodyTimeoutMs: e.UPSTREAM_BODY_TIMEOUT_MS,
      registryRpcUrl: e.OG_REGISTRY_RPC_URL,
      registryAddress: e.OG_REGISTRY_ADDRESS as `0x${string}`,
      registryRefreshMs: e.OG_REGISTRY_REFRESH_SECONDS * 1000,
      pinPcrHash: e.OG_TEE_PCR_HASH,
      pinTeeId: e.OG_TEE_ID,
      payerPrivateKey: e.UPSTREAM_PAYER_PRIVATE_KEY as `0x${string}` | undefined,
      settlementType: e.UPSTREAM_SETTLEMENT_TYPE,
      payment: {
        asset: e.UPSTREAM_PAYMENT_ASSET as `0x${string}`,
        rpcUrl: e.UPSTREAM_PAYMENT_RPC_URL ?? e.RPC_URL,
        maxAtomic: BigInt(e.UPSTREAM_PAYMENT_MAX_AMOUNT),
      },
    },
    pricingFile: e.PRICING_FILE,
    adminToken: e.ADMIN_TOKEN,
    trustProxy: parseTrustProxy(e.TRUST_PROXY),
    logLevel: e.LOG_LEVEL,
    logPretty: e.LOG_PRETTY,
    metricsPort: e.METRICS_PORT,
    publicUrl: e.PUBLIC_URL?.replace(/\/$/, ''),
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    loadShedEventLoopDelayMs: e.LOAD_SHED_EVENT_LOOP_DELAY_MS,
    rateLimitPerMinute: e.RATE_LIMIT_PER_MINUTE,
    payerRateLimitPerMinute: e.PAYER_RATE_LIMIT_PER_MINUTE,
    limits: {
      bodyBytes: e.BODY_LIMIT_BYTES,
      maxOutputTokens: e.MAX_OUTPUT_TOKENS,
      maxReservation,
      reservationTimeoutMs: e.RESERVATION_TIMEOUT_SECONDS * 1000,
      verifyBeforeEmit: e.VERIFY_BEFORE_EMIT,
    },
  }
}
