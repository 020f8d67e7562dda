import { randomBytes } from 'node:crypto'
import {
  SIGN_IN_WITH_X,
  createSIWxMessage,
  declareSIWxExtension,
  parseSIWxHeader,
  verifySIWxSignature,
  type EVMMessageVerifier,
  type SIWxExtension,
  type SIWxExtensionInfo,
  type SIWxPayload,
} from '@x402/extensions/sign-in-with-x'

/**
 * Sign-In-With-X (CAIP-122 / EIP-4361) for returning x402 payers.
 *
 * The official client (`x402Client.registerExtension(createSIWxClientExtension(...))` under
 * `wrapFetchWithPayment`) answers a 402 whose `PaymentRequired.extensions` carries a
 * `sign-in-with-x` declaration by retrying once with a `SIGN-IN-WITH-X` header before paying.
 * This module builds that declaration and verifies the header; it keeps no state itself:
 * the challenge is not remembered (any replica can verify any header), and replay protection
 * comes from the caller's `useNonce`, which the gateway backs with its database.
 */

/** Extension key in `PaymentRequired.extensions`, and the request header name (any case). */
export const SIWX_EXTENSION_KEY = SIGN_IN_WITH_X
export const SIWX_HEADER = SIGN_IN_WITH_X

/** A real header is ~1 KiB; the cap bounds base64/JSON work done for a stranger. */
export const SIWX_MAX_HEADER_BYTES = 8 * 1024
/** Tolerated lead of the client's clock when it states `issuedAt`. */
export const SIWX_CLOCK_SKEW_MS = 60_000
export const SIWX_DEFAULT_TTL_SECONDS = 300
export const SIWX_DEFAULT_MAX_AGE_SECONDS = 300
export const SIWX_DEFAULT_STATEMENT = 'Sign in to spend your prepaid x402 credit.'

// EIP-4361 nonces are alphanumeric and at least 8 characters; the upper bound is ours.
const NONCE_RE = /^[A-Za-z0-9]{8,128}$/
const ADDRESS_RE = /^0x[0-9a-fA-F]{40}$/
const HEX_RE = /^0x(?:[0-9a-fA-F]{2})+$/
// At most 15 digits so the numeric chain id survives a JS number exactly.
const EVM_NETWORK_RE = /^eip155:([1-9][0-9]{0,14})$/

/** 128 random bits, hex: fresh per 402 so an old challenge cannot be mistaken for a new one. */
export function newSiwxNonce (): string {
  return randomBytes(16).toString('hex')
}

export interface SiwxDeclarationInput {
  /** Public origin clients reach the gateway at, e.g. `https://api.example.com` (no path). */
  origin: string
  /** The protected resource; an absolute URL or a path, rebased onto `origin`. */
  resourceUrl: string
  /** CAIP-2 network of the credit, e.g. `eip155:84532`. */
  network: string
  statement?: string
  ttlSeconds?: number
  /** Defaults to a fresh random nonce; injectable for tests. */
  nonce?: string
  nowMs?: number
}

/**
 * The `PaymentRequired.extensions` entry announcing SIWX. The static part (version, statement,
 * supportedChains, JSON schema) comes from the package's `declareSIWxExtension`; the per-402
 * part (domain, uri, nonce, issuedAt, expirationTime, resources) is filled in the way the
 * package's own resource-server extension does, so the client sees exactly what it expects.
 * Throws only on bad configuration (origin, network, statement, ttl, nonce), never per request.
 */
export function siwxDeclaration (input: SiwxDeclarationInput): Record<string, unknown> {
  const origin = configuredOrigin(input.origin)
  evmChainIdOf(input.network)
  const statement = input.statement ?? SIWX_DEFAULT_STATEMENT
  // The EIP-4361 grammar puts the statement on one line; a newline would make every message
  // unparseable and the client would silently fall back to paying.
  if (/[\r\n]/.test(statement)) throw new Error('SIWX statement must be a single line')
  const ttlSeconds = input.ttlSeconds ?? SIWX_DEFAULT_TTL_SECONDS
  if (!Number.isInteger(ttlSeconds) || ttlSeconds <= 0) throw new Error(`SIWX ttlSeconds must be a positive integer, got ${ttlSeconds}`)
  const nonce = input.nonce ?? newSiwxNonce()
  if (!NONCE_RE.test(nonce)) throw new Error('SIWX nonce must be 8-128 alphanumeric characters')
  const nowMs = input.nowMs ?? Date.now()

  const declared = declareSIWxExtension({ network: input.network, statement, expirationSeconds: ttlSeconds })[SIGN_IN_WITH_X]
  // `_options` is the package's private hand-off to its own enrichment step; it is not wire format.
  const { _options: _unused, ...wire } = declared
  const uri = rebaseOnto(input.resourceUrl, origin)
  const info: SIWxExtensionInfo = {
    ...wire.info,
    domain: origin.host,
    uri,
    nonce,
    issuedAt: new Date(nowMs).toISOString(),
    expirationTime: new Date(nowMs + ttlSeconds * 1000).toISOString(),
    resources: [uri],
  }
  const extension: SIWxExtension = { ...wire, info }
  return { [SIGN_IN_WITH_X]: extension }
}

export type SiwxFailureCode =
  | 'siwx_malformed'
  | 'siwx_domain_mismatch'
  | 'siwx_expired'
  | 'siwx_not_yet_valid'
  | 'siwx_issued_at_out_of_window'
  | 'siwx_bad_signature'
  | 'siwx_replayed'
  | 'siwx_wrong_chain'

export type SiwxResult =
  | {
    ok: true
    /** Lowercase 0x address that signed. */
    address: `0x${string}`
    /** Numeric EVM chain id (84532), as the ledger's account ids use it. */
    chainId: number
    /** CAIP-2 form of the same chain. */
    network: string
    nonce: string
    /** Last instant this message would have been accepted (for a session that should not outlive it). */
    expiresAtMs: number
  }
  | { ok: false, code: SiwxFailureCode, reason: string }

export interface SiwxVerifyContext {
  /** The configured public origin; never derive it from the request's Host header. */
  origin: string
  /** When set, the signed `uri` must name exactly this resource, not just the origin. */
  resourceUrl?: string
  network: string
  nowMs: number
  maxAgeSeconds?: number
  /**
   * Atomically record `key` as used; resolve true on first use, false if it was already used.
   * `key` is `<network>:<lowercase address>:<nonce>`: the nonce is chosen by whoever signs (the
   * server does not remember the nonces it issued), so scoping it by signer stops one wallet
   * from burning a nonce another wallet is about to use. Keep the key at least until
   * `retainUntilMs`, which already covers the accepted clock skew; a rejection (thrown error)
   * propagates, so a failing store fails closed.
   */
  useNonce: (key: string, retainUntilMs: number) => Promise<boolean>
  /**
   * Optional viem PublicClient (or anything with its `verifyMessage`) for smart-wallet
   * signatures (EIP-1271 deployed, EIP-6492 counterfactual). Plain EOA signatures are always
   * checked offline first, so the chain is consulted only when that fails.
   */
  publicClient?: { verifyMessage: EVMMessageVerifier }
}

function fail (code: SiwxFailureCode, reason: string): SiwxResult {
  return { ok: false, code, reason }
}

/**
 * Verify a `SIGN-IN-WITH-X` header. Cheap checks come first and the nonce is consumed last, so
 * neither a malformed nor a forged header can burn a legitimate signer's nonce. Hostile input
 * yields `{ ok: false }`; the promise rejects only when `useNonce` fails or the context itself is
 * misconfigured (origin not a bare http(s) origin, network not eip155).
 */
export async function verifySiwxHeader (header: unknown, ctx: SiwxVerifyContext): Promise<SiwxResult> {
  const origin = configuredOrigin(ctx.origin)
  const expectedChainId = evmChainIdOf(ctx.network)
  const maxAgeMs = (ctx.maxAgeSeconds ?? SIWX_DEFAULT_MAX_AGE_SECONDS) * 1000

  const parsed = parseHeader(header)
  if (!parsed.ok) return fail('siwx_malformed', parsed.reason)
  const { payload } = parsed

  if (payload.domain !== origin.host) {
    return fail('siwx_domain_mismatch', `signed for domain "${payload.domain}", expected "${origin.host}"`)
  }
  const uri = safeUrl(payload.uri)
  if (!uri || uri.origin !== origin.origin) {
    return fail('siwx_domain_mismatch', `signed uri "${payload.uri}" is not on origin ${origin.origin}`)
  }
  if (ctx.resourceUrl !== undefined && uri.href !== rebaseOnto(ctx.resourceUrl, origin)) {
    return fail('siwx_domain_mismatch', `signed uri "${payload.uri}" is not this resource`)
  }

  if (payload.chainId !== ctx.network) {
    return fail('siwx_wrong_chain', `signed for chain ${payload.chainId}, credit lives on ${ctx.network}`)
  }

  const times = checkTimes(payload, ctx.nowMs, maxAgeMs)
  if (!times.ok) return times

  const sig = await checkSignature(payload, ctx.publicClient)
  if (!sig.ok) return sig

  const address = payload.address.toLowerCase() as `0x${string}`
  const key = `${ctx.network}:${address}:${payload.nonce}`
  if (!(await ctx.useNonce(key, times.expiresAtMs + SIWX_CLOCK_SKEW_MS))) {
    return fail('siwx_replayed', 'this sign-in message was already used; sign a fresh challenge')
  }
  return { ok: true, address, chainId: expectedChainId, network: ctx.network, nonce: payload.nonce, expiresAtMs: times.expiresAtMs }
}

type Parsed = { ok: true, payload: SIWxPayload } | { ok: false, reason: string }

function parseHeader (header: unknown): Parsed {
  if (typeof header !== 'string' || header.length === 0) return { ok: false, reason: 'header is missing or not a string' }
  // Length in UTF-16 units bounds the byte length from below; anything non-ASCII fails the
  // base64 check right after, so this is the size check that matters.
  if (header.length > SIWX_MAX_HEADER_BYTES) return { ok: false, reason: `header exceeds ${SIWX_MAX_HEADER_BYTES} bytes` }
  let payload: SIWxPayload
  try {
    payload = parseSIWxHeader(header.trim())
  } catch (err) {
    return { ok: false, reason: errorText(err, 'header is not base64 JSON of a SIWX payload') }
  }
  if (payload.type !== 'eip191') return { ok: false, reason: `signature type ${payload.type} is not accepted here` }
  if (payload.version !== '1') return { ok: false, reason: `message version ${payload.version} is not supported` }
  if (!ADDRESS_RE.test(payload.address)) return { ok: false, reason: 'address is not a 20-byte hex address' }
  if (!HEX_RE.test(payload.signature)) return { ok: false, reason: 'signature is not 0x-prefixed hex' }
  if (!NONCE_RE.test(payload.nonce)) return { ok: false, reason: 'nonce must be 8-128 alphanumeric characters' }
  if (!EVM_NETWORK_RE.test(payload.chainId)) return { ok: false, reason: `chainId ${JSON.stringify(payload.chainId)} is not an eip155 CAIP-2 id` }
  // Rendering the EIP-4361 text runs the siwe grammar over every field (domain, uri, dates,
  // resources...). The package's verifier renders it outside its try block, so a field the
  // grammar rejects must be caught here rather than thrown from verification.
  try {
    createSIWxMessage({ ...payload }, payload.address)
  } catch (err) {
    return { ok: false, reason: errorText(err, 'fields do not form a valid EIP-4361 message') }
  }
  return { ok: true, payload }
}

type TimesResult = { ok: true, expiresAtMs: number } | { ok: false, code: SiwxFailureCode, reason: string }

function checkTimes (payload: SIWxPayload, nowMs: number, maxAgeMs: number): TimesResult {
  const issuedAtMs = Date.parse(payload.issuedAt)
  if (Number.isNaN(issuedAtMs)) return { ok: false, code: 'siwx_malformed', reason: 'issuedAt is not a timestamp' }
  // The server does not remember what it issued, so the client's own expirationTime is only
  // ever allowed to shorten the window that issuedAt + maxAge already imposes.
  let expiresAtMs = issuedAtMs + maxAgeMs
  if (payload.expirationTime !== undefined) {
    const exp = Date.parse(payload.expirationTime)
    if (Number.isNaN(exp)) return { ok: false, code: 'siwx_malformed', reason: 'expirationTime is not a timestamp' }
    // Expiry is checked before the age window so an expired message is reported as expired.
    if (exp <= nowMs) return { ok: false, code: 'siwx_expired', reason: `message expired at ${payload.expirationTime}` }
    expiresAtMs = Math.min(expiresAtMs, exp)
  }
  if (payload.notBefore !== undefined) {
    const nbf = Date.parse(payload.notBefore)
    if (Number.isNaN(nbf)) return { ok: false, code: 'siwx_malformed', reason: 'notBefore is not a timestamp' }
    if (nbf > nowMs) return { ok: false, code: 'siwx_not_yet_valid', reason: `message is not valid before ${payload.notBefore}` }
  }
  if (issuedAtMs > nowMs + SIWX_CLOCK_SKEW_MS) {
    return { ok: false, code: 'siwx_issued_at_out_of_window', reason: `issuedAt ${payload.issuedAt} is in the future` }
  }
  if (nowMs - issuedAtMs > maxAgeMs) {
    return { ok: false, code: 'siwx_issued_at_out_of_window', reason: `issuedAt ${payload.issuedAt} is older than ${maxAgeMs / 1000} s` }
  }
  return { ok: true, expiresAtMs }
}

type SignatureResult = { ok: true } | { ok: false, code: SiwxFailureCode, reason: string }

async function checkSignature (payload: SIWxPayload, client: SiwxVerifyContext['publicClient']): Promise<SignatureResult> {
  try {
    // Offline ECDSA recovery first: it settles every EOA without touching an RPC endpoint.
    const eoa = await verifySIWxSignature(payload)
    if (eoa.isValid) return { ok: true }
    if (client) {
      const verifier: EVMMessageVerifier = (args) => client.verifyMessage(args)
      const sc = await verifySIWxSignature(payload, { evmVerifier: verifier })
      if (sc.isValid) return { ok: true }
      // A verifier error (RPC down, undecodable 6492 wrapper) is reported as a bad signature
      // with its own reason: no nonce is consumed, so the client can simply try again.
      return { ok: false, code: 'siwx_bad_signature', reason: `${sc.invalidReason}: ${sc.invalidMessage}` }
    }
    return { ok: false, code: 'siwx_bad_signature', reason: `${eoa.invalidReason}: ${eoa.invalidMessage}` }
  } catch (err) {
    return { ok: false, code: 'siwx_bad_signature', reason: errorText(err, 'signature could not be verified') }
  }
}

function configuredOrigin (value: string): URL {
  const url = safeUrl(value)
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.username || url.password ||
    url.pathname !== '/' || url.search || url.hash) {
    throw new Error(`SIWX origin must be a bare http(s) origin, got "${value}"`)
  }
  return url
}

// Keep path and query, take scheme/host/port from the configured origin: behind a proxy the
// request's own URL names the listener, not the address the client signed for.
function rebaseOnto (resource: string, origin: URL): string {
  const src = new URL(resource, origin)
  const out = new URL(origin.origin)
  out.pathname = src.pathname
  out.search = src.search
  return out.href
}

function evmChainIdOf (network: string): number {
  const m = EVM_NETWORK_RE.exec(network)
  if (!m) throw new Error(`SIWX network must be an eip155 CAIP-2 id, got "${network}"`)
  return Number(m[1])
}

function safeUrl (value: string): URL | undefined {
  try {
    return new URL(value)
  } catch {
    return undefined
  }
}

function errorText (err: unknown, fallback: string): string {
  const text = err instanceof Error ? err.message : ''
  return (text || fallback).slice(0, 300)
}
