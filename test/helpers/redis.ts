import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'

export interface TestRedis { url: string, port: number, stop (): Promise<void> }

function findRedis (): string | undefined {
  for (const p of ['redis-server', '/usr/bin/redis-server', '/usr/local/bin/redis-server']) {
    try { execFileSync(p, ['--version'], { stdio: 'ignore' }); return p } catch {}
  }
  return undefined
}

async function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const port = (s.address() as { port: number }).port; s.close(() => resolve(port)) })
  })
}

/** A throwaway redis-server (Debian's package in CI). Undefined when none is installed, outside CI. */
export async function startTestRedis (): Promise<TestRedis | undefined> {
  const bin = findRedis()
  if (!bin) {
    if (process.env.CI === 'true') throw new Error('redis-server is not installed; .ci/run must install the redis-server package')
    return undefined
  }
  const port = await freePort()
  const child: ChildProcess = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const { Redis } = await import('ioredis')
  for (let i = 0; i < 400; i++) {
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    try { await probe.connect(); await probe.ping(); probe.disconnect(); break } catch { probe.disconnect(); await new Promise((r) => setTimeout(r, 50)) }
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: async () => { if (child.exitCode === null) { child.kill('SIGKILL'); await exited } },
  }
}
