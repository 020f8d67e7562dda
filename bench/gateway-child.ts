import { randomBytes } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { Session } from 'node:inspector/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import replyFrom from '@fastify/reply-from'
import { loadConfig } from '../config/schema.ts'
import { buildApp } from '../src/app.ts'
import { generateApiKey, hashApiKey } from '../src/auth/keys.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { serveRpc } from './proc.ts'

// The server under test, in its own process so its RSS and CPU are its own.
//   BENCH_CHILD_MODE=gateway  BENCH_GATEWAY_ENV=<JSON env for loadConfig>  -> the real app (buildApp)
//   BENCH_CHILD_MODE=proxy    BENCH_UPSTREAM_URL=<backend origin>          -> bare Fastify + @fastify/reply-from
// It prints nothing; it reports { url } over IPC once listening and then answers the driver's calls.

const mode = process.env.BENCH_CHILD_MODE ?? 'gateway'

async function startGateway (): Promise<FastifyInstance> {
  const config = loadConfig(JSON.parse(process.env.BENCH_GATEWAY_ENV ?? '{}'))
  const app = await buildApp({ config, logger: false })
  await app.listen({ port: 0, host: '127.0.0.1' })
  // As test/helpers/gateway.ts does: the origin is known only now (it is PUBLIC_URL in production).
  const addr = app.server.address()
  if (!config.publicUrl && addr && typeof addr === 'object') config.publicUrl = `http://127.0.0.1:${addr.port}`
  return app
}

async function startProxy (): Promise<FastifyInstance> {
  const upstream = process.env.BENCH_UPSTREAM_URL
  if (!upstream) throw new Error('BENCH_UPSTREAM_URL is required in proxy mode')
  const app = Fastify({ logger: false })
  // Same pool shape as the gateway's UpstreamClient (64 keep-alive connections, no pipelining).
  await app.register(replyFrom, { base: upstream, undici: { connections: 64, pipelining: 1, keepAliveTimeout: 30_000 } })
  app.post('/v1/chat/completions', (_req, reply) => reply.from('/v1/chat/completions'))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return app
}

let profiler: Session | undefined

async function main (): Promise<void> {
  const app = mode === 'proxy' ? await startProxy() : await startGateway()
  const addr = app.server.address()
  const url = addr && typeof addr === 'object' ? `http://127.0.0.1:${addr.port}` : ''

  serveRpc({
    /** Funded payer accounts with one API key each: spreads load under the per-payer reservation cap. */
    async setupPayers ({ count, grantUnits }: { count: number, grantUnits: string }) {
      const out: { account: string, key: string }[] = []
      for (let i = 0; i < count; i++) {
        const account = payerAccount(app.config.x402.chainId, `0x${randomBytes(20).toString('hex')}`)
        await app.ledger.grant({ id: `bench-grant:${account}`, account, amount: BigInt(grantUnits), reason: 'bench' })
        const k = generateApiKey()
        await app.ledger.createApiKey({ id: k.id, account, name: 'bench', prefix: k.prefix, hash: k.hash, createdAt: Date.now(), maxPerAccount: 20 })
        out.push({ account, key: k.secret })
      }
      return out
    },
    /** Grants credit to the account behind an API key (e.g. one bought with x402). */
    async grantKey ({ key, grantUnits }: { key: string, grantUnits: string }) {
      const rec = await app.ledger.findApiKeyByHash(hashApiKey(key))
      if (!rec) throw new Error('unknown key')
      await app.ledger.grant({ id: `bench-grant:${rec.account}:${randomBytes(4).toString('hex')}`, account: rec.account, amount: BigInt(grantUnits), reason: 'bench' })
      return rec.account
    },
    usage () {
      const m = process.memoryUsage()
      return { cpu: process.cpuUsage(), rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }
    },
    /** CPU profile of a window (after warm-up), the same data --cpu-prof writes for the whole life. */
    async profileStart ({ intervalUs = 200 }: { intervalUs?: number }) {
      profiler ??= new Session()
      profiler.connect()
      await profiler.post('Profiler.enable')
      await profiler.post('Profiler.setSamplingInterval', { interval: intervalUs })
      await profiler.post('Profiler.start')
      return true
    },
    async profileStop ({ file }: { file: string }) {
      if (!profiler) throw new Error('not profiling')
      const { profile } = await profiler.post('Profiler.stop')
      writeFileSync(file, JSON.stringify(profile))
      profiler.disconnect()
      profiler = undefined
      return file
    },
    gc () { (globalThis as { gc?: () => void }).gc?.(); return true },
    async close () {
      setImmediate(async () => {
        await Promise.race([app.close(), new Promise((resolve) => setTimeout(resolve, 3000))]).catch(() => undefined)
        process.exit(0)
      })
      return true
    },
  })
  process.send!({ ready: { url, pid: process.pid, mode } })
}

main().catch((err) => {
  process.send?.({ fatal: (err as Error).stack ?? String(err) })
  setTimeout(() => process.exit(1), 100)
})
