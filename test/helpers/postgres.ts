import { execFile, spawn, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { accessSync, chownSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'

// A throwaway PostgreSQL for tests.
//
// With TEST_DATABASE_URL set (e.g. postgres://postgres@localhost:5432/postgres), that server is
// used: every startTestPostgres() and createDatabase() makes a database with a random name and
// stop() drops them. Otherwise a private cluster is started from the PostgreSQL binaries on PATH or
// under /usr/lib/postgresql/<version>/bin (Debian's `postgresql` package, newest version first):
// a copy of a data dir initdb'd once per PostgreSQL build (kept as <tmp>/x402-pg-initdb-<hash>),
// in a temp dir, listening on a free 127.0.0.1 port with its unix socket in that dir, fsync off.
// stop() shuts it down and removes the dir; a watchdog does the same should this process die
// first. As root (CI), initdb and pg_ctl run as the `postgres` system user (created if missing).
// With no binaries the helper returns undefined (callers skip, loudly) unless CI=true, where it
// throws: CI is supposed to install PostgreSQL.

const run = promisify(execFile)

export interface TestPostgres {
  /** A fresh, empty database. */
  url: string
  /** Another fresh database on the same server (dropped by stop()): empty, or a copy of template. */
  createDatabase (template?: string): Promise<string>
  /** How the server was found, for test logs. */
  source: string
  /**
   * Restarts the server under its clients (chaos tests): `pg_ctl stop -m <mode>` (default fast:
   * every session is terminated), `downMs` of downtime, then start on the same port. On a server
   * given by TEST_DATABASE_URL, which is not ours to restart, every session on the databases made
   * here is terminated instead (pg_terminate_backend) and the server is unreachable for no time.
   */
  restart (opts?: { mode?: 'smart' | 'fast' | 'immediate', downMs?: number }): Promise<void>
  stop (): Promise<void>
}

/** Why startTestPostgres() returned undefined (set when it does). */
export let postgresUnavailable = ''

/**
 * The directory holding initdb, pg_ctl and postgres. TEST_POSTGRES_BIN=<dir> picks one explicitly
 * (several versions installed), TEST_POSTGRES_BIN=none pretends there is none (to see the skip).
 */
export function findPostgresBin (): string | undefined {
  const chosen = process.env.TEST_POSTGRES_BIN
  if (chosen === 'none') return undefined
  const dirs = chosen ? [chosen] : (process.env.PATH ?? '').split(delimiter).filter(Boolean)
  const debian = '/usr/lib/postgresql'
  if (!chosen && existsSync(debian)) {
    const versions = readdirSync(debian).filter((v) => /^\d+(\.\d+)?$/.test(v)).sort((a, b) => Number(b) - Number(a))
    dirs.push(...versions.map((v) => join(debian, v, 'bin')))
  }
  return dirs.find((d) => ['initdb', 'pg_ctl', 'postgres'].every((b) => isExecutable(join(d, b))))
}

function isExecutable (path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

export async function startTestPostgres (): Promise<TestPostgres | undefined> {
  const external = process.env.TEST_DATABASE_URL
  if (external) return useServer(external, `TEST_DATABASE_URL (${redact(external)})`, null, null)
  const bin = findPostgresBin()
  if (!bin) {
    postgresUnavailable = process.env.TEST_POSTGRES_BIN
      ? `no initdb, pg_ctl and postgres in TEST_POSTGRES_BIN=${process.env.TEST_POSTGRES_BIN}`
      : 'no PostgreSQL binaries (initdb, pg_ctl, postgres) on PATH or in /usr/lib/postgresql/*/bin; ' +
        'install them (Debian: apt-get install postgresql) or set TEST_DATABASE_URL'
    if (process.env.CI === 'true') throw new Error(`CI=true but ${postgresUnavailable}`)
    return undefined
  }
  return startCluster(bin)
}

function redact (url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@')
}

/** Runs a PostgreSQL binary, as the postgres user when we are root (PostgreSQL refuses to run as root). */
async function pgRun (asPostgres: boolean, file: string, args: string[]): Promise<void> {
  const [cmd, argv] = asPostgres ? asUser(file, args) : [file, args]
  try {
    await run(cmd, argv, { timeout: 60_000 })
  } catch (err) {
    const e = err as { stderr?: string, stdout?: string, message: string }
    throw new Error(`${file} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`)
  }
}

function asUser (file: string, args: string[]): [string, string[]] {
  if (isExecutable('/usr/sbin/runuser') || isExecutable('/sbin/runuser') || spawnSync('sh', ['-c', 'command -v runuser']).status === 0) {
    return ['runuser', ['-u', 'postgres', '--', file, ...args]]
  }
  const quoted = [file, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
  return ['su', ['postgres', '-s', '/bin/sh', '-c', quoted]]
}

function ensurePostgresUser (): void {
  if (spawnSync('id', ['-u', 'postgres']).status === 0) return
  const group = spawnSync('getent', ['group', 'postgres']).status === 0 ? ['-g', 'postgres'] : ['--user-group']
  const made = spawnSync('useradd', ['--system', ...group, '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/bin/sh', 'postgres'], { encoding: 'utf8' })
  if (made.status !== 0) throw new Error(`could not create the postgres user: ${made.stderr}`)
}

function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number }
      srv.close(() => resolve(port))
    })
  })
}

function postgresUid (): { uid: number, gid: number } {
  const id = (flag: string): number => Number(spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' }).stdout.trim())
  return { uid: id('-u'), gid: id('-g') }
}

/**
 * A pristine initdb'd data directory, made once per PostgreSQL build and user and then copied for
 * every cluster (a copy takes a fraction of initdb's time, and every test file starts a cluster).
 * It is made in a work dir and renamed into place, so a half-made one is never used.
 */
async function initdbOnce (bin: string, root: boolean, base: string): Promise<string> {
  const args = ['-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync']
  const version = spawnSync(join(bin, 'postgres'), ['--version'], { encoding: 'utf8' }).stdout?.trim() ?? ''
  const key = createHash('sha256').update([bin, version, process.getuid?.(), ...args].join('\n')).digest('hex').slice(0, 16)
  const cache = join(base, `x402-pg-initdb-${key}`)
  if (existsSync(join(cache, 'global', 'pg_control'))) return cache
  const work = mkdtempSync(join(base, 'x402-pg-initdb-work-'))
  try {
    if (root) {
      const { uid, gid } = postgresUid()
      chownSync(work, uid, gid)
    }
    await pgRun(root, join(bin, 'initdb'), ['-D', join(work, 'data'), ...args])
    try {
      renameSync(join(work, 'data'), cache)
    } catch (err) {
      if (!existsSync(join(cache, 'global', 'pg_control'))) throw err // not just another process winning the race
    }
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
  return cache
}

async function startCluster (bin: string): Promise<TestPostgres> {
  const root = process.getuid?.() === 0
  if (root) ensurePostgresUser()
  // As root, a dir under /tmp: the postgres user must be able to reach it.
  const base = root ? '/tmp' : tmpdir()
  const dir = mkdtempSync(join(base, 'x402-pg-'))
  const data = join(dir, 'data')
  const log = join(dir, 'server.log')
  if (root) {
    const { uid, gid } = postgresUid()
    chownSync(dir, uid, gid)
  }
  const pgCtl = join(bin, 'pg_ctl')
  const stopArgs = ['-D', data, '-m', 'immediate', '-w', 'stop']
  // Should this process die without stop(), the watchdog shuts the cluster down and removes it.
  const [stopCmd, stopArgv] = root ? asUser(pgCtl, stopArgs) : [pgCtl, stopArgs]
  const quote = (s: string): string => `'${s.replace(/'/g, "'\\''")}'`
  const watchdog = spawn('sh', ['-c', `while kill -0 ${process.pid} 2>/dev/null; do sleep 1; done; ` +
    `${[stopCmd, ...stopArgv].map(quote).join(' ')} >/dev/null 2>&1; rm -rf ${quote(dir)}`], { detached: true, stdio: 'ignore' })
  watchdog.unref()
  let started = false
  const stopCluster = async (): Promise<void> => {
    try { process.kill(watchdog.pid!) } catch {}
    if (started) await pgRun(root, pgCtl, stopArgs).catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    await pgRun(false, 'cp', ['-a', await initdbOnce(bin, root, base), data])
    let port = 0
    let startOpts = ''
    for (let attempt = 1; !started; attempt++) {
      port = await freePort()
      const opts = [`-p ${port}`, `-k ${dir}`, '-c listen_addresses=127.0.0.1', '-c fsync=off', '-c synchronous_commit=off',
        '-c full_page_writes=off', '-c max_connections=200', '-c shared_buffers=32MB']
      try {
        await pgRun(root, pgCtl, ['-D', data, '-l', log, '-w', '-t', '60', '-o', opts.join(' '), 'start'])
        started = true
        startOpts = opts.join(' ')
      } catch (err) {
        // Another process may have taken the port between our probe and the server's bind.
        if (attempt >= 3) throw new Error(`${(err as Error).message}\n${existsSync(log) ? readFileSync(log, 'utf8') : ''}`)
      }
    }
    const admin = `postgres://postgres@127.0.0.1:${port}/postgres`
    const restartCluster = async (o: { mode?: 'smart' | 'fast' | 'immediate', downMs?: number } = {}): Promise<void> => {
      await pgRun(root, pgCtl, ['-D', data, '-m', o.mode ?? 'fast', '-w', '-t', '60', 'stop'])
      if (o.downMs) await new Promise((resolve) => setTimeout(resolve, o.downMs))
      await pgRun(root, pgCtl, ['-D', data, '-l', log, '-w', '-t', '60', '-o', startOpts, 'start'])
    }
    return await useServer(admin, `${bin} (cluster in ${dir}, port ${port})`, stopCluster, restartCluster)
  } catch (err) {
    await stopCluster()
    throw err
  }
}

/**
 * Databases are made through a maintenance connection to the server's own database. stop() stops
 * our own cluster (its databases go with it) or, on a server we were given (stopServer null),
 * drops every database it made.
 */
async function useServer (adminUrl: string, source: string, stopServer: (() => Promise<void>) | null,
  restartServer: TestPostgres['restart'] | null): Promise<TestPostgres> {
  const made: string[] = []
  const inflight = new Set<Promise<unknown>>()
  const withAdmin = async <T>(fn: (c: pg.Client) => Promise<T>): Promise<T> => {
    const c = new pg.Client({ connectionString: adminUrl })
    c.on('error', () => {})
    await c.connect()
    try { return await fn(c) } finally { await c.end() }
  }
  let fileCopy: boolean | undefined
  const createDatabase = async (template?: string): Promise<string> => {
    const name = `x402_test_${randomBytes(6).toString('hex')}`
    made.push(name)
    const creating = withAdmin(async (c) => {
      if (template === undefined) return c.query(`CREATE DATABASE ${name}`)
      // Copying the files of a small template is the quickest way to a migrated database (PostgreSQL 15+).
      fileCopy ??= Number((await c.query('SHOW server_version_num')).rows[0].server_version_num) >= 150000
      return c.query(`CREATE DATABASE ${name} TEMPLATE ${c.escapeIdentifier(template)}${fileCopy ? ' STRATEGY FILE_COPY' : ''}`)
    })
    inflight.add(creating)
    try {
      await creating
    } finally {
      inflight.delete(creating)
    }
    return urlFor(name)
  }
  const urlFor = (name: string): string => {
    const url = new URL(adminUrl)
    url.pathname = `/${name}`
    return url.toString()
  }
  let url: string
  try {
    url = await createDatabase()
  } catch (err) {
    await stopServer?.()
    throw err
  }
  let stopped = false
  return {
    url,
    source,
    createDatabase,
    async restart (opts) {
      if (restartServer) return restartServer(opts)
      await withAdmin(async (c) => {
        await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()', [made])
      })
    },
    async stop () {
      if (stopped) return
      stopped = true
      try {
        // A database still being made (see ledger-stores' prefetch) is dropped too, once it exists.
        await Promise.allSettled([...inflight])
        if (!stopServer) {
          await withAdmin(async (c) => {
            for (const name of made.reverse()) {
              await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
                .catch(() => c.query(`DROP DATABASE IF EXISTS ${name}`))
            }
          })
        }
      } finally {
        await stopServer?.()
      }
    },
  }
}
