import type { Address, Hex } from 'viem'
import { KNOWN_NETWORKS } from '../config/networks.ts'
import { startLocalChain, deployTestUSD, mintTestUSD, type LocalChain, type DevAccount } from './chain.ts'
import { createPublicKey } from 'node:crypto'
import { startTeeBackend, type TeeBackend } from './tee-backend.ts'
import { makeCert } from './certs.ts'
import { deployTeeRegistry, registerEnclave } from './registry.ts'
import { installUptoContracts } from './permit2.ts'
import { approvePermit2 } from '../src/upstream/payment.ts'

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
  /**
   * Enclaves charge with x402 `upto` (Permit2 sessions) and the gateway env carries an operator
   * wallet that pays them. Unset: enclaves are free, as in the older tests.
   */
  upstreamPayment?: boolean | UpstreamPaymentStackOptions
}

export interface UpstreamPaymentStackOptions {
  /** Cap per permit, atomic units of the 6-decimal test OPG (default 100000 = 0.1 OPG, as OpenGradient). */
  capAtomic?: bigint
  sessionIdleMs?: number
  /** Approve Permit2 for the operator wallet (default true). */
  approve?: boolean
  /** Test OPG minted to the operator wallet (default 1000 OPG). */
  operatorFunds?: bigint
}

export interface UpstreamPaymentStack {
  /** The local stand-in for OPG (TestUSD code: EIP-3009 + ERC-20, 6 decimals). */
  token: Address
  /** The gateway's operator wallet paying the enclaves. */
  operator: DevAccount
  /** Where the enclaves are paid. */
  backendPayTo: DevAccount
  /** Each enclave's settlement (facilitator) account, by enclave index. */
  backendSettlers: DevAccount[]
  capAtomic: bigint
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
  /** Present when the stack runs with `upstreamPayment`. */
  upstreamPayment?: UpstreamPaymentStack
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
    let upstreamPayment: UpstreamPaymentStack | undefined
    if (opts.upstreamPayment) {
      const o = opts.upstreamPayment === true ? {} : opts.upstreamPayment
      if ((opts.enclaves ?? 1) > 4) throw new Error('upstreamPayment supports at most 4 enclaves (one settler account each)')
      await installUptoContracts(chain)
      const opg = await deployTestUSD(chain, { name: 'OpenGradient Test', symbol: 'OPG', version: '1' })
      const operator = chain.accounts[4]
      await mintTestUSD(chain, opg, operator.address, o.operatorFunds ?? 1_000_000_000n)
      if (o.approve !== false) await approvePermit2(chain.rpcUrl, operator.privateKey, opg)
      upstreamPayment = {
        token: opg, operator, backendPayTo: chain.accounts[5],
        backendSettlers: [6, 7, 8, 9].map((i) => chain.accounts[i]),
        capAtomic: o.capAtomic ?? 100_000n,
      }
    }
    const up = upstreamPayment
    const uptoFor = (i: number) => up && {
      rpcUrl: chain.rpcUrl, chainId: chain.chainId, token: up.token, tokenDecimals: 6, payTo: up.backendPayTo.address,
      facilitatorPrivateKey: up.backendSettlers[i].privateKey, capAtomic: up.capAtomic,
      sessionIdleMs: typeof opts.upstreamPayment === 'object' ? opts.upstreamPayment.sessionIdleMs : undefined,
    }
    const registry = await deployTeeRegistry(chain)
    const pcrHash = ('0x' + 'a5'.repeat(32)) as Hex
    for (let i = 0; i < (opts.enclaves ?? 1); i++) {
      const cert = makeCert({ ip: '127.0.0.1' })
      const b = await startTeeBackend({ chunkDelayMs: opts.chunkDelayMs ?? 0, tls: { certPem: cert.certPem, keyPem: cert.keyPem }, payment: uptoFor(i) })
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
      chain, token, settler, payer, payer2, payTo, backend: b, backends, registry, pcrHash, upstreamPayment,
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
        ...(up ? {
          UPSTREAM_PAYER_PRIVATE_KEY: up.operator.privateKey,
          UPSTREAM_PAYMENT_ASSET: up.token,
          UPSTREAM_PAYMENT_RPC_URL: chain.rpcUrl,
          UPSTREAM_PAYMENT_MAX_AMOUNT: String(up.capAtomic * 10n),
          UPSTREAM_SETTLEMENT_TYPE: 'batch',
        } : {}),
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
