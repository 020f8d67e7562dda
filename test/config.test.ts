import t from 'tap'
import { spawnSync } from 'node:child_process'
import { loadConfig, ConfigError } from '../config/schema.ts'

const KEY = '-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n'
const base = {
  X402_PAY_TO: '0x' + 'ab'.repeat(20),
  UPSTREAM_URL: 'http://127.0.0.1:1',
  UPSTREAM_TEE_PUBLIC_KEY: KEY,
}

function issuesOf (env: Record<string, string>) {
  try {
    loadConfig(env)
    return []
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    return err.issues
  }
}

t.test('defaults follow the configuration contract', async (t) => {
  const c = loadConfig(base)
  t.equal(c.port, 8402)
  t.equal(c.host, '0.0.0.0')
  t.same(c.database, { kind: 'sqlite', path: './data/gateway.db' })
  t.equal(c.x402.network, 'eip155:84532')
  t.equal(c.x402.asset, '0x036CbD53842c5426634e7929541eC2318f3dCF7e')
  t.equal(c.x402.assetName, 'USDC')
  t.equal(c.x402.assetVersion, '2')
  t.same(c.x402.facilitator, { kind: 'remote', url: 'https://x402.org/facilitator' })
  t.equal(c.x402.settlementMode, 'strict')
  t.equal(c.x402.topupAtomic, 1_000_000n)
  t.equal(c.upstream.settlementType, 'batch')
  t.equal(c.trustProxy, false)
  t.equal(c.adminToken, undefined)
})

t.test('without UPSTREAM_URL the registry is used: OpenGradient\'s public values by default', async (t) => {
  const c = loadConfig({ X402_PAY_TO: base.X402_PAY_TO })
  t.equal(c.upstream.url, undefined)
  t.equal(c.upstream.registryAddress, '0x703cB174AEadB35D611858369B4b1111dC9Abda6')
  t.equal(c.upstream.registryRpcUrl, 'https://ogevmdevnet.opengradient.ai')
  t.equal(c.upstream.registryRefreshMs, 300_000)
})

t.test('Base mainnet picks the USD Coin domain', async (t) => {
  const c = loadConfig({ ...base, X402_NETWORK: 'eip155:8453' })
  t.equal(c.x402.assetName, 'USD Coin')
  t.equal(c.x402.v1Network, 'base')
})

t.test('every bad or missing variable is named', async (t) => {
  const cases: [Record<string, string>, string][] = [
    [{ ...base, X402_PAY_TO: '' }, 'X402_PAY_TO'],
    [{ ...base, X402_PAY_TO: 'not-an-address' }, 'X402_PAY_TO'],
    [{ ...base, PORT: 'eighty' }, 'PORT'],
    [{ ...base, PORT: '70000' }, 'PORT'],
    [{ ...base, X402_FACILITATOR: 'local' }, 'RPC_URL'],
    [{ ...base, X402_FACILITATOR: 'local', RPC_URL: 'http://x' }, 'SETTLER_PRIVATE_KEY'],
    [{ ...base, X402_FACILITATOR: 'ftp://nope' }, 'X402_FACILITATOR'],
    [{ ...base, SETTLEMENT_MODE: 'yolo' }, 'SETTLEMENT_MODE'],
    [{ ...base, TOPUP_AMOUNT: '1.2.3' }, 'TOPUP_AMOUNT'],
    [{ ...base, TOPUP_AMOUNT: '0.0000001' }, 'TOPUP_AMOUNT'],
    [{ ...base, TOPUP_AMOUNT: '0' }, 'TOPUP_AMOUNT'],
    [{ ...base, ADMIN_TOKEN: 'short' }, 'ADMIN_TOKEN'],
    [{ ...base, X402_NETWORK: 'eip155:999', X402_PAY_TO: base.X402_PAY_TO }, 'X402_ASSET'],
    [{ ...base, X402_ASSET: '0x' + '11'.repeat(20) }, 'X402_ASSET_NAME'],
    [{ ...base, UPSTREAM_TEE_PUBLIC_KEY: '' }, 'UPSTREAM_TEE_PUBLIC_KEY'],
    [{ ...base, UPSTREAM_TEE_PUBLIC_KEY: 'not a key' }, 'UPSTREAM_TEE_PUBLIC_KEY'],
    [{ ...base, DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
    [{ ...base, DATABASE_URL: 'sqlite:' }, 'DATABASE_URL'],
    [{ ...base, LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ ...base, PRICING_FILE: '/nonexistent/prices.json' }, 'PRICING_FILE'],
  ]
  for (const [env, variable] of cases) {
    const issues = issuesOf(env)
    t.ok(issues.some((i) => i.variable === variable), `${variable} named (${JSON.stringify(issues)})`)
  }
})

t.test('npm start with a missing required variable stops with a message naming it', async (t) => {
  const env: Record<string, string | undefined> = { ...process.env, UPSTREAM_URL: "", PORT: "0" }
  delete env.X402_PAY_TO
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/server.ts'], { env, encoding: 'utf8', timeout: 60_000, cwd: new URL('..', import.meta.url).pathname })
  t.equal(r.status, 78)
  t.match(r.stderr, /X402_PAY_TO: is required/)
})
