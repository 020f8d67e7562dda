import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { getAddress, type Address } from 'viem'
import type { LocalChain } from './chain.ts'
import type { ContractArtifact } from './contracts/compile.ts'

// Puts the two contracts x402's `upto` scheme settles through at the addresses @x402/evm 2.27
// hard-codes (PERMIT2_ADDRESS, x402UptoPermit2ProxyAddress in its constants chunk): this project's
// Permit2Lite and UptoProxyLite (contracts/UptoPermit2.sol), deployed once, then their runtime
// code copied to the canonical addresses with anvil_setCode. Neither needs constructor state.

export const PERMIT2_ADDRESS: Address = '0x000000000022D473030F116dDEE9F6B43aC78BA3'
export const UPTO_PROXY_ADDRESS: Address = '0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002'
/** Multicall3's canonical address, which @x402/evm's facilitator calls to diagnose failures. */
export const MULTICALL3_ADDRESS: Address = '0xcA11bde05977b3631167028862bE2a173976CA11'

const here = dirname(fileURLToPath(import.meta.url))

async function loadArtifacts (): Promise<{ permit2: ContractArtifact, proxy: ContractArtifact, multicall: ContractArtifact }> {
  try {
    const [permit2, proxy, multicall] = await Promise.all(['Permit2Lite', 'UptoProxyLite', 'TryAggregateLite'].map(async (n) =>
      JSON.parse(await readFile(join(here, 'contracts', 'artifacts', `${n}.json`), 'utf8')) as ContractArtifact))
    return { permit2, proxy, multicall }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    const { compileUptoContracts } = await import('./contracts/compile-permit2.ts')
    return compileUptoContracts()
  }
}

async function deployAt (chain: LocalChain, artifact: ContractArtifact, at: Address): Promise<void> {
  const hash = await chain.walletClient(0).deployContract({ abi: artifact.abi, bytecode: artifact.bytecode, args: [] })
  const receipt = await chain.publicClient.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success' || !receipt.contractAddress) throw new Error(`${artifact.contractName} deployment failed (tx ${hash})`)
  const code = await chain.publicClient.getCode({ address: receipt.contractAddress })
  if (!code) throw new Error(`no code at freshly deployed ${artifact.contractName}`)
  await chain.testClient.setCode({ address: at, bytecode: code })
}

/** Installs Permit2, the x402 upto proxy (and Multicall3's tryAggregate) at their canonical addresses. */
export async function installUptoContracts (chain: LocalChain): Promise<{ permit2: Address, proxy: Address }> {
  const { permit2, proxy, multicall } = await loadArtifacts()
  await deployAt(chain, permit2, PERMIT2_ADDRESS)
  await deployAt(chain, proxy, UPTO_PROXY_ADDRESS)
  // Only where nothing is installed yet (a forked chain would already have the real one).
  if (!(await chain.publicClient.getCode({ address: MULTICALL3_ADDRESS }))) await deployAt(chain, multicall, MULTICALL3_ADDRESS)
  return { permit2: getAddress(PERMIT2_ADDRESS), proxy: getAddress(UPTO_PROXY_ADDRESS) }
}
