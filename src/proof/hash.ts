import { createPublicKey, KeyObject } from 'node:crypto'
import { keccak256 } from 'viem'

// The hashing primitives of OpenGradient's TEE proof (PROTOCOLS.md §7), shared by the verifier
// and the signing side so both build the signed message the same way.

const HASH_RE = /^[0-9a-f]{64}$/

/** keccak256 as lower-case hex without 0x; strings are hashed as UTF-8. */
export function keccakHex (data: string | Uint8Array): string {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
  return keccak256(bytes).slice(2)
}

/** keccak256(reqHash32 || outHash32 || uint256_be(timestamp)): the 32 bytes RSA-PSS signs. */
export function teeMessageHash (requestHashHex: string, outputHashHex: string, timestamp: number | bigint): Uint8Array {
  const req = strip0x(requestHashHex).toLowerCase()
  const out = strip0x(outputHashHex).toLowerCase()
  if (!HASH_RE.test(req) || !HASH_RE.test(out)) throw new TypeError('hashes must be 32 bytes of hex')
  const ts = BigInt(timestamp)
  if (ts < 0n || ts >= 1n << 256n) throw new RangeError('timestamp must fit in uint256')
  const msg = Buffer.alloc(96)
  Buffer.from(req, 'hex').copy(msg, 0)
  Buffer.from(out, 'hex').copy(msg, 32)
  Buffer.from(ts.toString(16).padStart(64, '0'), 'hex').copy(msg, 64)
  return keccak256(msg, 'bytes')
}

export type PublicKeyInput = KeyObject | string | Uint8Array

/** PEM (SPKI, or a certificate's key), DER SPKI bytes, or a KeyObject, as a public KeyObject. */
export function toPublicKey (key: PublicKeyInput): KeyObject {
  if (key instanceof KeyObject) return key.type === 'private' ? createPublicKey(key) : key
  if (typeof key === 'string') return createPublicKey(key)
  return createPublicKey({ key: Buffer.from(key), format: 'der', type: 'spki' })
}

/** "0x" + keccak256(DER SubjectPublicKeyInfo): the enclave's identity (tee_id). */
export function teeIdForPublicKey (key: PublicKeyInput): `0x${string}` {
  const der = toPublicKey(key).export({ type: 'spki', format: 'der' })
  return `0x${keccakHex(der)}`
}

export function strip0x (s: string): string {
  return s.startsWith('0x') ? s.slice(2) : s
}
