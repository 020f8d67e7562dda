import type { Address, Hex } from 'viem'
import { KNOWN_NETWORKS } from '../config/networks.ts'
import { startLocalChain, deployTestUSD, mintTestUSD, type LocalChain, type DevAccount } from './chain.ts'
import { startTeeBackend, type TeeBackend } from './tee-backend.ts'

// The whole local stack the demo and the tests run against: a real anvil chain, the EIP-3009 test
// token installed at Base Sepolia's USDC address (so the gateway's built-in defaults apply and the
// official client recognises the asset), and the reference TEE backend. Only the words are fake.

export interface LocalStackOptions {
  /** Delay between streamed chunks of the reference backend. */
  chunkDelayMs?: number
  /** Atomic units (6 decimals) minted to the payer. */
  payerFunds?: bigint
  tokenName?: string
  tokenVersion?: string
}

export interface LocalStack {
  chain: LocalChain
  token: Address
  /** Pays gas for local settlement. */
  settler: DevAccount
  /** The client wallet, funded with test USDC. */
  payer: DevAccount
  /** A second funded client wallet. */
  payer2: DevAccount
  /** The operator's receiving address. */
  payTo: DevAccount
  backend: TeeBackend
  /** Environment for the gateway (the configuration contract of DESIGN.md) pointing at this stack. */
  gatewayEnv (overrides?: Record<string, string>): Record<string, string>
  stop (): Promise<void>
}

const BASE_SEPOLIA = KNOWN_NETWORKS.find((n) => n.v1Name === 'base-sepolia')!

export async function startLocalStack (opts: LocalStackOptions = {}): Promise<LocalStack> {
  const chain = await startLocalChain({ chainId: BASE_SEPOLIA.chainId })
  let backend: TeeBackend | undefined
  try {
    const [settler, payer, payTo, payer2] = [chain.accounts[0], chain.accounts[1], chain.accounts[2], chain.accounts[3]]
    const token = await deployTestUSD(chain, {
      name: opts.tokenName ?? BASE_SEPOLIA.usdc.name,
      version: opts.tokenVersion ?? BASE_SEPOLIA.usdc.version,
      at: BASE_SEPOLIA.usdc.address as Address,
    })
    const funds = opts.payerFunds ?? 100_000_000n
    await mintTestUSD(chain, token, payer.address, funds)
    await mintTestUSD(chain, token, payer2.address, funds)
    backend = await startTeeBackend({ chunkDelayMs: opts.chunkDelayMs ?? 0 })
    const b = backend
    return {
      chain, token, settler, payer, payer2, payTo, backend: b,
      gatewayEnv: (overrides = {}) => ({
        X402_NETWORK: chain.network,
        X402_PAY_TO: payTo.address,
        X402_FACILITATOR: 'local',
        RPC_URL: chain.rpcUrl,
        SETTLER_PRIVATE_KEY: settler.privateKey as Hex,
        UPSTREAM_URL: b.url,
        UPSTREAM_TEE_PUBLIC_KEY: b.publicKeyPem,
        DATABASE_URL: 'sqlite::memory:',
        LOG_LEVEL: 'warn',
        ...overrides,
      }),
      async stop () {
        await b.close().catch(() => undefined)
        await chain.stop()
      },
    }
  } catch (err) {
    await backend?.close().catch(() => undefined)
    await chain.stop()
    throw err
  }
}
