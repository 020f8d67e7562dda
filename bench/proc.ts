import { fork, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'

// Child processes for the bench: the gateway (or the bare proxy) and the load generator each get
// their own process, so the load generator, the reference backend (in the driver process) and the
// server under test do not share one event loop. Parent and child talk over the fork IPC channel
// with a tiny request/response protocol.

const here = dirname(fileURLToPath(import.meta.url))

interface RpcRequest { id: number, cmd: string, args: unknown }
interface RpcReply { id: number, ok: boolean, result?: unknown, error?: string }
export interface ChildEvent { event: string, data: unknown }

export class Child {
  private nextId = 1
  private readonly pending = new Map<number, { resolve (v: unknown): void, reject (e: Error): void }>()
  private readonly listeners = new Set<(e: ChildEvent) => void>()
  readonly ready: Promise<Record<string, unknown>>
  private exited = false

  constructor (readonly name: string, readonly proc: ChildProcess) {
    let onReady: (v: Record<string, unknown>) => void
    let onFail: (e: Error) => void
    this.ready = new Promise((resolve, reject) => { onReady = resolve; onFail = reject })
    proc.on('message', (m: unknown) => {
      const msg = m as Partial<RpcReply & ChildEvent & { ready: Record<string, unknown>, fatal: string }>
      if (msg.ready) return onReady(msg.ready)
      if (msg.fatal) return onFail(new Error(`${name}: ${msg.fatal}`))
      if (typeof msg.event === 'string') { for (const l of this.listeners) l(msg as ChildEvent); return }
      if (typeof msg.id === 'number') {
        const p = this.pending.get(msg.id)
        if (!p) return
        this.pending.delete(msg.id)
        if (msg.ok) p.resolve(msg.result)
        else p.reject(new Error(`${name} ${msg.error}`))
      }
    })
    proc.on('exit', (code, signal) => {
      this.exited = true
      const err = new Error(`${name} exited (${code ?? signal})`)
      onFail(err)
      for (const p of this.pending.values()) p.reject(err)
      this.pending.clear()
    })
  }

  get pid (): number { return this.proc.pid! }

  call<T = unknown> (cmd: string, args: unknown = {}): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} is not running`))
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.proc.send({ id, cmd, args } satisfies RpcRequest)
    })
  }

  onEvent (fn: (e: ChildEvent) => void): () => void {
    this.listeners.add(fn)
    return () => this.listeners.delete(fn)
  }

  /** Resident set size in bytes, read from /proc (no work in the child). */
  rss (): number { return procRss(this.pid) }

  async stop (): Promise<void> {
    if (this.exited) return
    const gone = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()))
    try { await Promise.race([this.call('close'), new Promise((resolve) => setTimeout(resolve, 5000))]) } catch { /* exiting */ }
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000)
    await gone
    clearTimeout(timer)
  }
}

export function procRss (pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : Number.NaN
  } catch { return Number.NaN }
}

/** Forks bench/<file> under tsx with an IPC channel; extra node flags (e.g. --cpu-prof) go first. */
export function forkChild (name: string, file: string, env: Record<string, string>, nodeFlags: string[] = []): Child {
  const proc = fork(join(here, file), [], {
    execArgv: [...nodeFlags, '--import', 'tsx'],
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    serialization: 'advanced',
  })
  return new Child(name, proc)
}

/** Child side: answer the parent's calls; exit when the parent goes away. */
export function serveRpc (handlers: Record<string, (args: never) => unknown>): void {
  process.on('disconnect', () => process.exit(0))
  process.on('message', async (m: unknown) => {
    const { id, cmd, args } = m as RpcRequest
    const h = handlers[cmd]
    try {
      if (!h) throw new Error(`unknown command ${cmd}`)
      const result = await h(args as never)
      process.send!({ id, ok: true, result } satisfies RpcReply)
    } catch (err) {
      process.send!({ id, ok: false, error: (err as Error).stack ?? String(err) } satisfies RpcReply)
    }
  })
}

export function sendEvent (event: string, data: unknown): void {
  process.send?.({ event, data })
}
