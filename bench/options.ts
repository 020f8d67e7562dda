// Everything the bench can be told, from the environment and argv (documented in BENCHMARKS.md).

function int (name: string, def: number, min = 1): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return def
  const n = Number(raw)
  if (!Number.isFinite(n) || n < min) throw new Error(`${name} must be a number >= ${min} (got ${JSON.stringify(raw)})`)
  return n
}

export interface BenchOptions {
  quick: boolean
  profile: boolean
  runs: number
  seconds: number
  warmupSeconds: number
  connections: number
  payers: number
  streamConnections: number
  rate: number
  /** A second open-loop rate, below the reference backend's capacity on small machines. */
  rateLow: number
  maxBackgroundCores: number
  quietWaitSeconds: number
  retries: number
  /** Seconds the whole run may spend waiting for a quiet machine and repeating disturbed scenarios. */
  retryBudgetSeconds: number
  paidConcurrency: number[]
  soak: 'off' | 'on' | 'only'
  soakSeconds: number
  soakStreams: number
  soakChunkMs: number
  /** Enclaves behind the soak gateway (0: enough for every stream at 60 per enclave). */
  soakEnclaves: number
  soakSampleSeconds: number
  db: 'memory' | 'file'
  json?: string
  profileDir: string
  /** Run the gateway child under node --cpu-prof for its whole life (profile written at exit). */
  cpuProf: boolean
}

export function readOptions (argv = process.argv.slice(2)): BenchOptions {
  const quick = argv.includes('--quick') || ['1', 'true', 'on'].includes((process.env.BENCH_QUICK ?? '').toLowerCase())
  const profile = argv.includes('--profile')
  const soakEnv = (process.env.BENCH_SOAK ?? '').toLowerCase()
  const soak = soakEnv === 'only' ? 'only' : (soakEnv === '1' || soakEnv === 'true' || soakEnv === 'on' ? 'on' : 'off')
  return {
    quick,
    profile,
    runs: quick ? 1 : int('BENCH_RUNS', 3),
    seconds: quick ? 2 : int('BENCH_SECONDS', 5),
    warmupSeconds: quick ? 1 : int('BENCH_WARMUP_SECONDS', 5, 0),
    connections: int('BENCH_CONNECTIONS', 32),
    payers: int('BENCH_PAYERS', 8),
    streamConnections: int('BENCH_STREAM_CONNECTIONS', 16),
    rate: int('BENCH_RATE', 500),
    rateLow: int('BENCH_RATE_LOW', 200, 0),
    maxBackgroundCores: Number(process.env.BENCH_MAX_BACKGROUND ?? 0.5),
    quietWaitSeconds: quick ? 0 : int('BENCH_QUIET_WAIT_SECONDS', 3, 0),
    retries: quick ? 0 : int('BENCH_RETRIES', 1, 0),
    retryBudgetSeconds: quick ? 5 : int('BENCH_RETRY_BUDGET_SECONDS', 75, 0),
    paidConcurrency: (process.env.BENCH_PAID_CONCURRENCY ?? (quick ? '4' : '1,4')).split(',').map((s) => Number(s.trim())).filter((n) => Number.isInteger(n) && n > 0),
    soak,
    soakSeconds: int('BENCH_SOAK_SECONDS', 300),
    soakStreams: int('BENCH_SOAK_STREAMS', 1000),
    soakChunkMs: int('BENCH_SOAK_CHUNK_MS', 5000, 0),
    soakEnclaves: int('BENCH_SOAK_ENCLAVES', 0, 0),
    soakSampleSeconds: int('BENCH_SOAK_SAMPLE_SECONDS', 10),
    db: process.env.BENCH_DB === 'file' ? 'file' : 'memory',
    json: process.env.BENCH_JSON || undefined,
    profileDir: process.env.BENCH_PROFILE_DIR || '',
    cpuProf: process.env.BENCH_CPU_PROF === '1',
  }
}
