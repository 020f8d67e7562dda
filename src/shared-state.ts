import { Redis } from 'ioredis'

// What replicas share besides the ledger: per-payer request counts and a fast "this payment was
// already claimed" cache in front of the durable claim. With REDIS_URL it lives in Redis; without,
// in this process (one replica). When Redis is configured but down, callers fail closed.

export class SharedStateUnavailable extends Error {
  constructor (cause: unknown) { super(`shared state unavailable: ${(cause as Error)?.message ?? cause}`) }
}

export interface SharedState {
  readonly redis?: Redis
  /** Counts a hit in a fixed one-minute window; returns the count so far in that window. */
  hit (key: string, windowMs: number): Promise<number>
  markClaimed (key: string, ttlMs: number): Promise<void>
  isClaimed (key: string): Promise<boolean>
  close (): Promise<void>
}

export function createRedisClient (url: string): Redis {
  // Fail fast rather than queue: a paid request must not wait on a Redis that is down.
  return new Redis(url, { lazyConnect: false, enableOfflineQueue: false, maxRetriesPerRequest: 1, connectTimeout: 2000, commandTimeout: 1000 })
}

export function redisSharedState (redis: Redis): SharedState {
  const guard = async <T>(fn: () => Promise<T>): Promise<T> => {
    try { return await fn() } catch (err) { throw new SharedStateUnavailable(err) }
  }
  return {
    redis,
    hit: (key, windowMs) => guard(async () => {
      const k = `gw:rl:${key}:${Math.floor(Date.now() / windowMs)}`
      const [[, n]] = await redis.multi().incr(k).pexpire(k, windowMs).exec() as [[unknown, number], unknown]
      return n
    }),
    markClaimed: (key, ttlMs) => guard(async () => { await redis.set(`gw:claimed:${key}`, '1', 'PX', ttlMs) }),
    isClaimed: (key) => guard(async () => (await redis.exists(`gw:claimed:${key}`)) === 1),
    close: async () => { redis.disconnect() },
  }
}

export function memorySharedState (): SharedState {
  const counts = new Map<string, { window: number, n: number }>()
  const claimed = new Map<string, number>()
  return {
    hit: async (key, windowMs) => {
      const window = Math.floor(Date.now() / windowMs)
      const c = counts.get(key)
      const n = c && c.window === window ? c.n + 1 : 1
      counts.set(key, { window, n })
      if (counts.size > 100_000) counts.clear()
      return n
    },
    markClaimed: async (key, ttlMs) => {
      claimed.set(key, Date.now() + ttlMs)
      if (claimed.size > 100_000) for (const [k, exp] of claimed) if (exp < Date.now()) claimed.delete(k)
    },
    isClaimed: async (key) => (claimed.get(key) ?? 0) > Date.now(),
    close: async () => undefined,
  }
}
