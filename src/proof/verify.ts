import { constants, verify as rsaVerify, type KeyObject } from 'node:crypto'
import { JsonNumber } from './json.ts'
import { keccakHex, strip0x, teeIdForPublicKey, teeMessageHash, toPublicKey, type PublicKeyInput } from './hash.ts'

export { teeIdForPublicKey } from './hash.ts'

// Verification of a TEE proof in the SDK's order (tee_verify.py `verify_response`): required
// fields, tee_id, request hash, output hash, signature. The first failure decides the verdict.
// Proof fields come from the network: nothing here throws on them.

export interface TeeProof {
  tee_id: string
  tee_request_hash: string
  tee_output_hash: string
  tee_timestamp: number | string
  tee_signature: string
}

export type VerifyStep = 'malformed' | 'tee_id' | 'request_hash' | 'output_hash' | 'signature'

export type TeeVerdict =
  | { verified: true, teeId: string, requestHash: string, outputHash: string, timestamp: number }
  | { verified: false, step: VerifyStep, reason: string }

export interface VerifyTeeProofInput {
  /** keccak256 of the canonical form of the request we sent (hex, 0x optional). */
  requestHash: string
  /** The output string as canonicalized from what we received (see output.ts). */
  outputCanonical: string
  /** The proof fields, straight from the response body or final frame. */
  proof: { [K in keyof TeeProof]?: unknown }
  /** The registry key of the enclave: a KeyObject, PEM, or DER SPKI bytes. */
  trustedKey: PublicKeyInput
  /** The tee_id of the enclave we called, when known separately from the key. */
  expectedTeeId?: string
}

const HEX64 = /^[0-9a-f]{64}$/
const DECIMAL = /^\s*\+?\d+(?:_\d+)*\s*$/
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

interface TrustedKey { key: KeyObject, teeId: string }
const keyCache = new Map<string, TrustedKey>()

// A configuration error (an unusable trusted key) throws; only the proof is untrusted input.
function trusted (input: PublicKeyInput): TrustedKey {
  const cacheKey = typeof input === 'string' ? input : undefined
  const hit = cacheKey !== undefined ? keyCache.get(cacheKey) : undefined
  if (hit) return hit
  const key = toPublicKey(input)
  if (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'rsa-pss') throw new TypeError('the trusted TEE key is not an RSA key')
  const entry = { key, teeId: teeIdForPublicKey(key) }
  if (cacheKey !== undefined) {
    if (keyCache.size >= 32) keyCache.delete(keyCache.keys().next().value!)
    keyCache.set(cacheKey, entry)
  }
  return entry
}

// Python int() of an int or a decimal string; booleans and floats are refused like the SDK does.
// Beyond 2^53 is refused too (the SDK would take up to 2^256): no real timestamp is that large.
function parseTimestamp (v: unknown): number | string {
  let n: number
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return `'tee_timestamp' is not an integer: ${v}`
    n = v
  } else if (v instanceof JsonNumber) {
    if (!v.isInteger) return `'tee_timestamp' is not an integer: ${v.lexeme.slice(0, 40)}`
    n = v.toNumber()
  } else if (typeof v === 'string') {
    if (!DECIMAL.test(v)) return `'tee_timestamp' is not an integer: ${JSON.stringify(v.slice(0, 40))}`
    n = Number(v.trim().replace(/_/g, ''))
  } else {
    return "response is missing an integer 'tee_timestamp' — cannot verify"
  }
  if (!Number.isSafeInteger(n) || n < 0) return "'tee_timestamp' is out of range"
  return n
}

// Reported values are echoed in reasons (as the SDK does), but a hostile one is not echoed whole.
function shown (v: string): string {
  return v.length > 130 ? `${v.slice(0, 130)}…` : v
}

function fail (step: VerifyStep, reason: string): TeeVerdict {
  return { verified: false, step, reason }
}

export function verifyTeeProof (input: VerifyTeeProofInput): TeeVerdict {
  const computedRequest = strip0x(input.requestHash).toLowerCase()
  if (!HEX64.test(computedRequest)) throw new TypeError('requestHash must be 32 bytes of hex')
  const { key, teeId: keyTeeId } = trusted(input.trustedKey)
  const p = (input.proof ?? {}) as Record<string, unknown>

  for (const field of ['tee_signature', 'tee_request_hash', 'tee_output_hash'] as const) {
    if (typeof p[field] !== 'string') return fail('malformed', `response is missing a string '${field}' — cannot verify`)
  }
  const timestamp = parseTimestamp(p.tee_timestamp)
  if (typeof timestamp === 'string') return fail('malformed', timestamp)
  if (typeof p.tee_id !== 'string') return fail('malformed', "response is missing a string 'tee_id' — cannot verify")
  const signature = p.tee_signature as string
  const reportedRequest = p.tee_request_hash as string
  const reportedOutput = p.tee_output_hash as string
  const reportedTeeId = p.tee_id

  // 1. The key must be the one behind the claimed tee_id, so enclave A's signature cannot pass as B's.
  const sameId = (a: string, b: string) => strip0x(a).toLowerCase() === strip0x(b).toLowerCase()
  if (!sameId(reportedTeeId, keyTeeId)) {
    return fail('tee_id', `tee_id mismatch: response says ${shown(reportedTeeId)}, signing key is ${keyTeeId}`)
  }
  if (input.expectedTeeId && !sameId(reportedTeeId, input.expectedTeeId)) {
    return fail('tee_id', `tee_id mismatch: response says ${shown(reportedTeeId)}, expected ${input.expectedTeeId}`)
  }

  // 2 and 3. Hash comparisons are case-sensitive after stripping 0x, as in the SDK.
  if (computedRequest !== strip0x(reportedRequest)) {
    return fail('request_hash', `request hash mismatch: the gateway signed a different request than we sent (computed ${computedRequest}, signed ${shown(reportedRequest)})`)
  }
  const computedOutput = keccakHex(input.outputCanonical)
  if (computedOutput !== strip0x(reportedOutput)) {
    return fail('output_hash', `output hash mismatch: the response content does not match the signed output (computed ${computedOutput}, signed ${shown(reportedOutput)})`)
  }

  // 4. RSA-PSS over keccak256(requestHash || outputHash || uint256 timestamp), from our own hashes.
  const compact = signature.replace(/\s+/g, '')
  if (!BASE64.test(compact) || compact.length % 4 !== 0 || compact.length === 0) {
    return fail('signature', 'tee_signature is not valid base64')
  }
  let ok = false
  try {
    ok = rsaVerify('sha256', teeMessageHash(computedRequest, computedOutput, timestamp), {
      key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32,
    }, Buffer.from(compact, 'base64'))
  } catch {
    ok = false
  }
  if (!ok) return fail('signature', 'RSA-PSS signature verification failed')
  // teeId is the trusted key's id in canonical form (lower case), whatever casing the proof used.
  return { verified: true, teeId: keyTeeId, requestHash: computedRequest, outputHash: computedOutput, timestamp }
}
