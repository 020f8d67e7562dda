import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { bytesToHex, getAddress, type Address, type Hash, type Hex } from 'viem'
import type { LocalChain } from './chain.ts'
import type { ContractArtifact } from './contracts/compile.ts'

const here = dirname(fileURLToPath(import.meta.url))
const ARTIFACT_PATH = join(here, 'contracts', 'artifacts', 'TEERegistry.json')

export interface RegisterEnclaveInput {
  /** As OpenGradient registers it: a bare IP, host:port or URL. */
  endpoint: string
  /** DER SubjectPublicKeyInfo of the enclave's RSA signing key. */
  publicKeyDer: Uint8Array
  tlsCertDer: Uint8Array
  pcrHash: Hex
  teeType?: number
  /** Defaults to the registering account. */
  paymentAddress?: Address
}

export interface RegistryTxOptions {
  /** Dev account sending the transaction; 0 deployed the registry and is its admin. */
  accountIndex?: number
}

let artifactPromise: Promise<ContractArtifact> | undefined

/** Committed artifact, or a fresh compile when it has not been generated yet. */
export function loadTeeRegistryArtifact(): Promise<ContractArtifact> {
  artifactPromise ??= readFile(ARTIFACT_PATH, 'utf8').then(
    (text) => JSON.parse(text) as ContractArtifact,
    async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err
      const { compileTeeRegistry } = await import('./contracts/compile-registry.ts')
      return compileTeeRegistry()
    },
  )
  return artifactPromise
}

export async function deployTeeRegistry(chain: LocalChain, { accountIndex = 0 }: RegistryTxOptions = {}): Promise<Address> {
  const artifact = await loadTeeRegistryArtifact()
  const hash = await chain.walletClient(accountIndex).deployContract({ abi: artifact.abi, bytecode: artifact.bytecode })
  const receipt = await chain.publicClient.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success' || !receipt.contractAddress) {
    throw new Error(`TEERegistry deployment failed (tx ${hash})`)
  }
  return getAddress(receipt.contractAddress)
}

/** Registers an enclave and returns its teeId (keccak256 of the DER public key, as the contract computes it). */
export async function registerEnclave(
  chain: LocalChain,
  registry: Address,
  input: RegisterEnclaveInput,
  { accountIndex = 0 }: RegistryTxOptions = {},
): Promise<Hex> {
  const wallet = chain.walletClient(accountIndex)
  const args = [
    bytesToHex(input.publicKeyDer),
    bytesToHex(input.tlsCertDer),
    input.paymentAddress ?? wallet.account.address,
    input.endpoint,
    input.teeType ?? 0,
    input.pcrHash,
  ] as const
  const { abi } = await loadTeeRegistryArtifact()
  // Simulating first surfaces the contract's revert reason and yields the returned teeId.
  const { result, request } = await chain.publicClient.simulateContract({
    account: wallet.account,
    address: registry,
    abi,
    functionName: 'registerTEE',
    args,
  })
  await send(chain, await wallet.writeContract(request), 'registerTEE')
  return result as Hex
}

export async function disableEnclave(chain: LocalChain, registry: Address, teeId: Hex, opts: RegistryTxOptions = {}): Promise<void> {
  await write(chain, registry, 'disableTEE', [teeId], opts)
}

export async function enableEnclave(chain: LocalChain, registry: Address, teeId: Hex, opts: RegistryTxOptions = {}): Promise<void> {
  await write(chain, registry, 'enableTEE', [teeId], opts)
}

export async function heartbeatEnclave(chain: LocalChain, registry: Address, teeId: Hex, opts: RegistryTxOptions = {}): Promise<void> {
  await write(chain, registry, 'heartbeat', [teeId], opts)
}

async function write(
  chain: LocalChain,
  registry: Address,
  functionName: string,
  args: readonly unknown[],
  { accountIndex = 0 }: RegistryTxOptions,
): Promise<void> {
  const wallet = chain.walletClient(accountIndex)
  const { abi } = await loadTeeRegistryArtifact()
  const { request } = await chain.publicClient.simulateContract({ account: wallet.account, address: registry, abi, functionName, args })
  await send(chain, await wallet.writeContract(request), functionName)
}

async function send(chain: LocalChain, hash: Hash, what: string): Promise<void> {
  const receipt = await chain.publicClient.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success') throw new Error(`TEERegistry.${what} reverted (tx ${hash})`)
}
