import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'

// A real gateway process (`node --import tsx src/server.ts`), configured only through its
// environment, for tests that need what an in-process app cannot show: several replicas, SIGKILL,
// SIGTERM and the exit code. Its stdout and stderr are kept (the tail) for failure messages; every
// process still running when the test process exits is SIGKILLed.

const ROOT = new URL('../..', import.meta.url).pathname
const KEEP = 64 * 1024

export interface GatewayExit { code: number | null, signal: NodeJS.Signals | null }

export interface GatewayProcess {
  url: string
  port: number
  child: ChildProcess
  /** Resolves when the process has exited. */
  exited: Promise<GatewayExit>
  /** True once the process has exited. */
  readonly gone: boolean
  /** The last 64 KiB of stderr and of stdout (pino logs), for assertion messages. */
  output (): string
  kill (signal?: NodeJS.Signals): void
  /** SIGTERM, then SIGKILL if it has not exited within ms; resolves with the exit. */
  stop (ms?: number): Promise<GatewayExit>
}

export function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
}

const running = new Set<ChildProcess>()
let hooked = false
function killAllOnExit (): void {
  if (hooked) return
  hooked = true
  process.once('exit', () => { for (const c of running) { try { c.kill('SIGKILL') } catch {} } })
}

function tail (s: string): string {
  return s.length > KEEP ? s.slice(-KEEP) : s
}

/** Starts the process; does not wait for it (see waitReady). */
export function spawnGateway (env: Record<string, string>, port: number): GatewayProcess {
  killAllOnExit()
  let err = ''
  let out = ''
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  running.add(child)
  let gone = false
  child.stderr!.on('data', (d) => { err = tail(err + String(d)) })
  child.stdout!.on('data', (d) => { out = tail(out + String(d)) })
  const exited = new Promise<GatewayExit>((resolve) => child.once('exit', (code, signal) => {
    gone = true
    running.delete(child)
    resolve({ code, signal })
  }))
  const url = `http://127.0.0.1:${port}`
  return {
    url,
    port,
    child,
    exited,
    get gone () { return gone },
    output: () => `--- stderr ---\n${err}\n--- stdout ---\n${out}`,
    kill (signal = 'SIGTERM') { if (!gone) child.kill(signal) },
    async stop (ms = 10_000) {
      if (gone) return exited
      child.kill('SIGTERM')
      const timer = setTimeout(() => { if (!gone) child.kill('SIGKILL') }, ms)
      try { return await exited } finally { clearTimeout(timer) }
    },
  }
}

/** Polls /health/ready until it answers 200; fails early (with the process output) if the process exits. */
export async function waitReady (gw: GatewayProcess, timeoutMs = 45_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  let last = 'no answer'
  while (Date.now() < deadline) {
    if (gw.gone) {
      const { code, signal } = await gw.exited
      throw new Error(`gateway on port ${gw.port} exited (code ${code}, signal ${signal}) before it was ready\n${gw.output()}`)
    }
    try {
      const res = await fetch(`${gw.url}/health/ready`, { signal: AbortSignal.timeout(2_000) })
      if (res.ok) return
      last = `${res.status} ${await res.text()}`
    } catch (err) {
      last = (err as Error).message
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`gateway on port ${gw.port} not ready after ${timeoutMs} ms (last: ${last})\n${gw.output()}`)
}

/**
 * Starts a gateway on a free port and waits until it is ready. A port taken between the probe and
 * the bind (another test file) is retried on another port. On `port` (a restart) there is no retry.
 */
export async function startGatewayProcess (env: Record<string, string>, opts: { port?: number, readyTimeoutMs?: number } = {}): Promise<GatewayProcess> {
  for (let attempt = 1; ; attempt++) {
    const gw = spawnGateway(env, opts.port ?? await freePort())
    try {
      await waitReady(gw, opts.readyTimeoutMs)
      return gw
    } catch (err) {
      gw.kill('SIGKILL')
      await gw.exited
      if (opts.port !== undefined || attempt >= 3 || !gw.output().includes('EADDRINUSE')) throw err
    }
  }
}
