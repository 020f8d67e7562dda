import type { FastifyInstance } from 'fastify'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { request } from 'undici'

async function timed<T> (p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error('timeout')), ms) })])
  } finally { clearTimeout(timer) }
}

// live: the process answers. ready: it can do its job (ledger, chain RPC, upstream) and is not
// draining; a load balancer stops sending traffic on 503.
export default async function healthRoutes (app: FastifyInstance) {
  let draining = false
  // Keep-alive sockets between requests would hold close() until keepAliveTimeout (Node does not
  // always count them as idle), so we track which sockets are serving a request: on close the
  // others are destroyed at once, and busy ones (open streams) when their response ends.
  const busy = new Map<Socket, number>()
  const sockets = new Set<Socket>()
  app.server.on('connection', (s: Socket) => { sockets.add(s); s.once('close', () => { sockets.delete(s); busy.delete(s) }) })
  app.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const s = req.socket
    busy.set(s, (busy.get(s) ?? 0) + 1)
    res.once('close', () => {
      const n = (busy.get(s) ?? 1) - 1
      if (n > 0) busy.set(s, n)
      else { busy.delete(s); if (draining) s.destroy() }
    })
  })
  app.addHook('preClose', async () => {
    draining = true
    for (const s of sockets) if (!busy.has(s)) s.destroy()
  })

  app.get('/health/live', { logLevel: 'warn' }, async () => ({ status: 'ok' }))

  app.get('/health/ready', { logLevel: 'warn' }, async (req, reply) => {
    if (draining) return reply.code(503).send({ status: 'draining' })
    const checks: Record<string, 'ok' | 'failed' | 'skipped'> = {}
    const run = async (name: string, fn: () => Promise<unknown>) => {
      try { await timed(fn(), 2000); checks[name] = 'ok' } catch (err) {
        checks[name] = 'failed'
        req.log.warn({ check: name, err: (err as Error).message }, 'readiness check failed')
      }
    }
    const rpcUrl = app.config.x402.facilitator.kind === 'local' ? app.config.x402.facilitator.rpcUrl : app.config.x402.rpcUrl
    await Promise.all([
      run('ledger', () => app.ledger.balance('system:deposits')),
      rpcUrl
        ? run('chain_rpc', async () => {
          const res = await request(rpcUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }) })
          const body = await res.body.json() as { result?: string }
          if (Number(body.result) !== app.config.x402.chainId) throw new Error('wrong chain id')
        })
        : Promise.resolve(void (checks.chain_rpc = 'skipped')),
      run('upstream', () => app.enclaves.pick().health()),
    ])
    const ok = Object.values(checks).every((v) => v !== 'failed')
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ready' : 'not_ready', checks })
  })
}
