import { createHash, randomBytes, randomUUID } from 'node:crypto'

// API keys for ordinary OpenAI SDKs. The secret is shown once at creation; the store keeps only
// its SHA-256 (a 256-bit random secret needs no slow hash: there is nothing to brute-force).

export const API_KEY_PREFIX = 'sk-x402-'
const KEY_RE = /^sk-x402-[A-Za-z0-9_-]{43}$/

export interface NewApiKey { id: string, secret: string, prefix: string, hash: string }

export function generateApiKey (): NewApiKey {
  const secret = API_KEY_PREFIX + randomBytes(32).toString('base64url')
  return { id: `key_${randomUUID().replace(/-/g, '')}`, secret, prefix: secret.slice(0, 14), hash: hashApiKey(secret) }
}

export function hashApiKey (secret: string): string {
  return createHash('sha256').update(secret).digest('hex')
}

/** Shape check before any lookup, so junk never reaches the store. */
export function looksLikeApiKey (token: string): boolean {
  return KEY_RE.test(token)
}
