import { createHash, timingSafeEqual } from 'node:crypto'

/**
 * Constant-time comparison of a presented bearer token with the configured admin token. Both
 * sides are hashed first so the comparison does not leak the token's length either.
 */
export function adminTokenMatches (presented: string | undefined, configured: string | undefined): boolean {
  if (!configured || !presented) return false
  const a = createHash('sha256').update(presented).digest()
  const b = createHash('sha256').update(configured).digest()
  return timingSafeEqual(a, b)
}

export function bearerOf (authorization: string | undefined): string | undefined {
  if (!authorization || authorization.length > 1024) return undefined
  const m = /^Bearer\s+(\S+)$/i.exec(authorization)
  return m?.[1]
}
