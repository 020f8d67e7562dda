import { constants, createPrivateKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { teeMessageHash } from './hash.ts'

// The enclave's half of the proof, for the reference backend and for tests that need to mint
// proofs. Salt length 32 and SHA-256 (message and MGF1) are what tee-gateway's TEEKeyManager uses.

export interface SignTeeProofInput {
  /** Hex, with or without 0x. */
  requestHash: string
  outputHash: string
  timestamp: number | bigint
  /** PKCS#8 PEM or a private KeyObject (RSA). */
  privateKey: KeyObject | string
}

/** Base64 RSA-PSS signature over keccak256(reqHash || outHash || uint256 timestamp). */
export function signTeeProof ({ requestHash, outputHash, timestamp, privateKey }: SignTeeProofInput): string {
  const key = typeof privateKey === 'string' ? createPrivateKey(privateKey) : privateKey
  const msg = teeMessageHash(requestHash, outputHash, timestamp)
  return sign('sha256', msg, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }).toString('base64')
}

export interface TeeKeyPair { privateKeyPem: string, publicKeyPem: string }

/** A fresh RSA key pair in the formats the registry and the backend use (PKCS#8 / SPKI PEM). */
export function generateTeeKeyPair (modulusLength = 2048): TeeKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength,
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  })
  return { privateKeyPem: privateKey, publicKeyPem: publicKey }
}
