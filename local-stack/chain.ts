import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import {
  createPublicClient,
  createTestClient,
  createWalletClient,
  defineChain,
  getAddress,
  http,
  parseAbi,
  type Address,
  type Chain,
  type Hash,
  type Hex,
  type HttpTransport,
  type PublicClient,
  type TestClient,
  type WalletClient,
} from 'viem'
import { privateKeyToAccount, type PrivateKeyAccount } from 'viem/accounts'
import type { ContractArtifact } from './contracts/compile.ts'

export interface DevAccount {
  address: Address
  privateKey: Hex
}

export interface LocalChainOptions {
  /** 0 or undefined lets anvil bind a free port (no probe-then-bind race). */
  port?: number
  /** Defaults to 84532 (Base Sepolia) so x402's default `eip155:84532` network ids line up. */
  chainId?: number
  /** Seconds between blocks; undefined mines one block per transaction. */
  blockTime?: number
  /** Number of funded dev accounts (default 10). */
  accounts?: number
  startupTimeoutMs?: number
}

export interface LocalChain {
  rpcUrl: string
  chainId: number
  /** CAIP-2 id as used by x402, e.g. `eip155:84532`. */
  network: `eip155:${number}`
  chain: Chain
  accounts: DevAccount[]
  publicClient: PublicClient<HttpTransport, Chain>
  /** anvil_* / evm_* cheat codes (setCode, increaseTime, ...). */
  testClient: TestClient<'anvil', HttpTransport, Chain>
  walletClient(index?: number): WalletClient<HttpTransport, Chain, PrivateKeyAccount>
  /** Kills anvil and resolves once the process has exited. Idempotent. */
  stop(): Promise<void>
}

export const DEFAULT_CHAIN_ID = 84532
export const DEV_MNEMONIC = 'test test test test test test test test test test test junk'

const require = createRequire(import.meta.url)
const here = dirname(fileURLToPath(import.meta.url))
const TEST_USD_ARTIFACT_PATH = join(here, 'contracts', 'artifacts', 'TestUSD.json')
// Receipt polling at viem's default 4 s would dominate test time on an automining chain.
const POLLING_INTERVAL_MS = 50
const OUTPUT_TAIL_CHARS = 4000

const testUsdAbi = parseAbi([
  'function mint(address to, uint256 amount)',
  'function balanceOf(address account) view returns (uint256)',
])

function resolveAnvilBinary(): string {
  const arch = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch
  const binaryName = process.platform === 'win32' ? 'anvil.exe' : 'anvil'
  try {
    const pkgJson = require.resolve(`@foundry-rs/anvil-${process.platform}-${arch}/package.json`)
    const binary = join(dirname(pkgJson), 'bin', binaryName)
    if (existsSync(binary)) return binary
  } catch {
    // Platform package missing (e.g. optional deps skipped); try the npm wrapper next.
  }
  for (let dir = here; ; dir = dirname(dir)) {
    const wrapper = join(dir, 'node_modules', '.bin', binaryName)
    if (existsSync(wrapper)) return wrapper
    if (dirname(dir) === dir) break
  }
  return binaryName
}

// POSIX watchdog wrapped around anvil: it keeps a copy of our stdin pipe and kills anvil once
// that pipe hits EOF, which happens however this process dies (including SIGKILL from a test
// runner's timeout), so no orphaned anvil keeps a port and a CPU busy.
const WATCHDOG_SCRIPT = [
  'exec 3<&0',
  '"$@" </dev/null &',
  'pid=$!',
  `trap 'kill "$pid" 2>/dev/null' INT TERM HUP`,
  '( cat <&3; kill "$pid" ) >/dev/null 2>&1 &',
  'exec 3<&-',
  'wait "$pid"; status=$?',
  // A trapped signal interrupts the first wait; wait again so our exit implies anvil's exit.
  'wait "$pid" 2>/dev/null',
  'exit $status',
].join('\n')

function spawnAnvil(args: string[]): ChildProcess {
  const binary = resolveAnvilBinary()
  if (process.platform === 'win32') {
    return spawn(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] })
  }
  return spawn('/bin/sh', ['-c', WATCHDOG_SCRIPT, 'anvil-watchdog', binary, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true)
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit)
      resolve(false)
    }, timeoutMs)
    const onExit = () => {
      clearTimeout(timer)
      resolve(true)
    }
    child.once('exit', onExit)
  })
}

async function rpcChainId(rpcUrl: string): Promise<number | undefined> {
  try {
    const res = await fetch(rpcUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }),
      signal: AbortSignal.timeout(1000),
    })
    const body = (await res.json()) as { result?: string }
    return body.result ? Number(body.result) : undefined
  } catch {
    return undefined
  }
}

async function readDevAccounts(configPath: string): Promise<DevAccount[] | undefined> {
  try {
    const config = JSON.parse(await readFile(configPath, 'utf8')) as {
      available_accounts: string[]
      private_keys: Hex[]
    }
    return config.available_accounts.map((address, i) => ({
      address: getAddress(address),
      privateKey: config.private_keys[i],
    }))
  } catch {
    return undefined
  }
}

export async function startLocalChain(options: LocalChainOptions = {}): Promise<LocalChain> {
  const chainId = options.chainId ?? DEFAULT_CHAIN_ID
  const accountCount = options.accounts ?? 10
  const deadline = Date.now() + (options.startupTimeoutMs ?? 20_000)
  const workDir = await mkdtemp(join(tmpdir(), 'local-anvil-'))
  // anvil writes the dev accounts' keys here; reading them beats re-deriving 10 HD keys in JS.
  const configPath = join(workDir, 'anvil-config.json')

  const args = [
    '--host', '127.0.0.1',
    '--port', String(options.port ?? 0),
    '--chain-id', String(chainId),
    '--accounts', String(accountCount),
    '--mnemonic', DEV_MNEMONIC,
    '--config-out', configPath,
  ]
  if (options.blockTime !== undefined) args.push('--block-time', String(options.blockTime))

  const child = spawnAnvil(args)
  let output = ''
  let listenPort: number | undefined
  const onOutput = (chunk: Buffer) => {
    // Keep draining: anvil logs every RPC call, and a full pipe would block it.
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_TAIL_CHARS)
    listenPort ??= Number(/Listening on [^\s:]+:(\d+)/.exec(output)?.[1]) || undefined
  }
  child.stdout!.on('data', onOutput)
  child.stderr!.on('data', onOutput)
  // Ignored so a write after anvil died cannot crash the process with EPIPE.
  child.stdin!.on('error', () => {})
  let spawnError: Error | undefined
  child.once('error', (err) => (spawnError = err))
  const killOnExit = () => child.kill('SIGTERM')
  process.once('exit', killOnExit)

  let stopping: Promise<void> | undefined
  const stop = () =>
    (stopping ??= (async () => {
      process.off('exit', killOnExit)
      child.stdin!.end()
      // Without the POSIX watchdog, closing stdin does nothing; go straight to signals.
      const graceMs = process.platform === 'win32' ? 0 : 3000
      if (!(await waitForExit(child, graceMs))) {
        child.kill('SIGTERM')
        if (!(await waitForExit(child, 2000))) {
          child.kill('SIGKILL')
          await waitForExit(child, 2000)
        }
      }
      await rm(workDir, { recursive: true, force: true })
    })())

  const fail = async (reason: string): Promise<never> => {
    await stop()
    throw new Error(`anvil ${reason}\n--- anvil output (tail) ---\n${output.trim() || '(none)'}`)
  }

  let rpcUrl: string | undefined
  let accounts: DevAccount[] | undefined
  while (!accounts) {
    if (spawnError) await fail(`could not be spawned: ${spawnError.message}`)
    if (child.exitCode !== null || child.signalCode !== null) {
      await fail(`exited during startup (code ${child.exitCode ?? child.signalCode})`)
    }
    if (Date.now() > deadline) await fail('did not answer eth_chainId before the startup timeout')
    if (listenPort !== undefined) {
      rpcUrl = `http://127.0.0.1:${listenPort}`
      const answered = await rpcChainId(rpcUrl)
      if (answered !== undefined && answered !== chainId) {
        await fail(`answered chain id ${answered}, expected ${chainId}`)
      }
      if (answered === chainId) accounts = await readDevAccounts(configPath)
    }
    if (!accounts) await new Promise((r) => setTimeout(r, 50))
  }

  // The file holds (well-known) keys only we need; drop it now so a killed process leaves nothing.
  await rm(workDir, { recursive: true, force: true })

  // A forgotten stop() must not keep the event loop (and a test process) alive; the watchdog
  // still takes anvil down when we exit.
  child.unref()
  for (const stream of [child.stdin, child.stdout, child.stderr]) {
    ;(stream as unknown as { unref?: () => void }).unref?.()
  }

  const url = rpcUrl!
  const chain = defineChain({
    id: chainId,
    name: `anvil-${chainId}`,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [url] } },
  })
  const transport = http(url)
  const publicClient = createPublicClient({ chain, transport, pollingInterval: POLLING_INTERVAL_MS })
  const testClient = createTestClient({ mode: 'anvil', chain, transport, pollingInterval: POLLING_INTERVAL_MS })
  const walletClient = (index = 0) => {
    const dev = accounts[index]
    if (!dev) throw new Error(`no dev account ${index}; chain has ${accounts.length}`)
    return createWalletClient({
      account: privateKeyToAccount(dev.privateKey),
      chain,
      transport,
      pollingInterval: POLLING_INTERVAL_MS,
    })
  }

  return {
    rpcUrl: url,
    chainId,
    network: `eip155:${chainId}`,
    chain,
    accounts,
    publicClient,
    testClient,
    walletClient,
    stop,
  }
}

/** Committed artifact, or a fresh compile when it has not been generated yet. */
export async function loadTestUSDArtifact(): Promise<ContractArtifact> {
  try {
    return JSON.parse(await readFile(TEST_USD_ARTIFACT_PATH, 'utf8')) as ContractArtifact
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    const { compileTestUSD } = await import('./contracts/compile.ts')
    return compileTestUSD()
  }
}

export interface DeployTestUSDOptions {
  /** ERC-20 name and EIP-712 domain name, e.g. 'USDC' (Base Sepolia) or 'USD Coin' (Base mainnet). */
  name: string
  /** EIP-712 domain version, '2' for USDC. */
  version: string
  symbol?: string
  /** Dev account that deploys and therefore owns `mint`. */
  deployerIndex?: number
  /**
   * Also install the token's runtime code at this address and return it instead, e.g. the
   * canonical USDC address so x402's default-asset tables (and client spend controls) pick the
   * token up without extra configuration.
   */
  at?: Address
}

export async function deployTestUSD(chain: LocalChain, options: DeployTestUSDOptions): Promise<Address> {
  const artifact = await loadTestUSDArtifact()
  const hash = await chain.walletClient(options.deployerIndex ?? 0).deployContract({
    abi: artifact.abi,
    bytecode: artifact.bytecode,
    args: [options.name, options.symbol ?? 'USDC', options.version],
  })
  const receipt = await chain.publicClient.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success' || !receipt.contractAddress) {
    throw new Error(`TestUSD deployment failed (tx ${hash})`)
  }
  if (!options.at) return getAddress(receipt.contractAddress)

  // Safe because the token keeps all its configuration in immutables (see TestUSD.sol).
  const code = await chain.publicClient.getCode({ address: receipt.contractAddress })
  if (!code) throw new Error(`no code at freshly deployed TestUSD ${receipt.contractAddress}`)
  await chain.testClient.setCode({ address: options.at, bytecode: code })
  return getAddress(options.at)
}

export async function mintTestUSD(
  chain: LocalChain,
  token: Address,
  to: Address,
  amountAtomic: bigint,
  { minterIndex = 0 }: { minterIndex?: number } = {},
): Promise<Hash> {
  const hash = await chain.walletClient(minterIndex).writeContract({
    address: token,
    abi: testUsdAbi,
    functionName: 'mint',
    args: [to, amountAtomic],
  })
  const receipt = await chain.publicClient.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success') throw new Error(`TestUSD mint reverted (tx ${hash})`)
  return hash
}

export async function balanceOf(chain: LocalChain, token: Address, owner: Address): Promise<bigint> {
  return chain.publicClient.readContract({
    address: token,
    abi: testUsdAbi,
    functionName: 'balanceOf',
    args: [owner],
  })
}
