import type { Address, Hex } from 'viem'
import { KNOWN_NETWORKS } from '../config/networks.ts'
import { startLocalChain, deployTestUSD, mintTestUSD, type LocalChain, type DevAccount } from './chain.ts'
import { createPublicKey } from 'node:crypto'
import { startTeeBackend, type TeeBackend } from './tee-backend.ts'
import { makeCert } from './certs.ts'
import { deployTeeRegistry, registerEnclave } from './registry.ts'

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
  /** How many reference enclaves to run (each HTTPS, own key and certificate, registered on chain). */
  enclaves?: number
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
  /** The first enclave (the only one unless `enclaves` > 1). */
  backend: TeeBackend
  backends: TeeBackend[]
  /** The TEERegistry-compatible contract the gateway discovers enclaves from. */
  registry: Address
  /** The measurement every local enclave registers. */
  pcrHash: Hex
  /** Environment for the gateway (the configuration contract of DESIGN.md) pointing at this stack. */
  gatewayEnv (overrides?: Record<string, string>): Record<string, string>
  stop (): Promise<void>
}

const BASE_SEPOLIA = KNOWN_NETWORKS.find((n) => n.v1Name === 'base-sepolia')!

export async function startLocalStack (opts: LocalStackOptions = {}): Promise<LocalStack> {
  const chain = await startLocalChain({ chainId: BASE_SEPOLIA.chainId })
  const backends: TeeBackend[] = []
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
    // Enclaves as OpenGradient runs them: HTTPS on an IP with a self-signed certificate, listed
    // with their signing key and certificate in the registry, which is all the gateway is told.
    const registry = await deployTeeRegistry(chain)
    const pcrHash = ('0x' + 'a5'.repeat(32)) as Hex
    for (let i = 0; i < (opts.enclaves ?? 1); i++) {
      const cert = makeCert({ ip: '127.0.0.1' })
      const b = await startTeeBackend({ chunkDelayMs: opts.chunkDelayMs ?? 0, tls: { certPem: cert.certPem, keyPem: cert.keyPem } })
      backends.push(b)
      await registerEnclave(chain, registry, {
        endpoint: b.url,
        publicKeyDer: createPublicKey(b.publicKeyPem).export({ format: 'der', type: 'spki' }),
        tlsCertDer: cert.certDer,
        pcrHash,
      })
    }
    const b = backends[0]
    return {
      chain, token, settler, payer, payer2, payTo, backend: b, backends, registry, pcrHash,
      gatewayEnv: (overrides = {}) => ({
        X402_NETWORK: chain.network,
        X402_PAY_TO: payTo.address,
        X402_FACILITATOR: 'local',
        RPC_URL: chain.rpcUrl,
        SETTLER_PRIVATE_KEY: settler.privateKey as Hex,
        OG_REGISTRY_RPC_URL: chain.rpcUrl,
        OG_REGISTRY_ADDRESS: registry,
        DATABASE_URL: 'sqlite::memory:',
        LOG_LEVEL: 'warn',
        ...overrides,
      }),
      async stop () {
        await Promise.all(backends.map((x) => x.close().catch(() => undefined)))
        await chain.stop()
      },
    }
  } catch (err) {
    await Promise.all(backends.map((x) => x.close().catch(() => undefined)))
    await chain.stop()
    throw err
  }
}
