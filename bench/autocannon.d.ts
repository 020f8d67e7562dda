// Minimal types for autocannon 9 (the package ships none): only what bench/loadgen.ts uses.
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events'
  interface Client { setHeaders (headers: Record<string, string>): void }
  interface Options {
    url: string
    method?: string
    body?: string
    headers?: Record<string, string>
    connections?: number
    pipelining?: number
    duration?: number
    overallRate?: number
    timeout?: number
    setupClient? (client: Client): void
  }
  interface Histogram { average: number, mean: number, p50: number, p90: number, p99: number, max: number }
  interface Result {
    duration: number
    errors: number
    timeouts: number
    non2xx: number
    latency: Histogram
    requests: Histogram & { total: number }
    [k: string]: unknown
  }
  interface Instance extends EventEmitter { stop (): void }
  function autocannon (opts: Options, cb: (err: Error | null, result: Result) => void): Instance
  export default autocannon
}
