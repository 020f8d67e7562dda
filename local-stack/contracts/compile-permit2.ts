import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Abi } from 'viem'
import { writeArtifact, type ContractArtifact } from './compile.ts'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)

export const UPTO_PERMIT2_SOURCE = join(here, 'UptoPermit2.sol')
export const PERMIT2_ARTIFACT = join(here, 'artifacts', 'Permit2Lite.json')
export const UPTO_PROXY_ARTIFACT = join(here, 'artifacts', 'UptoProxyLite.json')
export const MULTICALL_ARTIFACT = join(here, 'artifacts', 'TryAggregateLite.json')

// Same target and optimizer as the other local contracts.
const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
}

interface SolcOutput {
  errors?: { severity: string; formattedMessage: string }[]
  contracts?: Record<string, Record<string, { abi: Abi; evm: { bytecode: { object: string } } }>>
}

/** The contracts live in one import-free source file; one solc run builds them all. */
export function compileUptoContracts(): { permit2: ContractArtifact; proxy: ContractArtifact; multicall: ContractArtifact } {
  const solc = require('solc') as { version(): string; compile(input: string): string }
  const sourceName = 'UptoPermit2.sol'
  const source = readFileSync(UPTO_PERMIT2_SOURCE, 'utf8')
  const output = JSON.parse(
    solc.compile(JSON.stringify({ language: 'Solidity', sources: { [sourceName]: { content: source } }, settings: SETTINGS })),
  ) as SolcOutput
  const errors = (output.errors ?? []).filter((e) => e.severity === 'error')
  if (errors.length > 0) throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join('\n')}`)
  const sourceHash = createHash('sha256').update(`${sourceName}\0${source}\0`).update(JSON.stringify(SETTINGS)).digest('hex')
  const artifact = (name: string): ContractArtifact => {
    const c = output.contracts?.[sourceName]?.[name]
    if (!c) throw new Error(`solc produced no ${name} contract`)
    return { contractName: name, abi: c.abi, bytecode: `0x${c.evm.bytecode.object}`, solcVersion: solc.version(), sourceHash }
  }
  return { permit2: artifact('Permit2Lite'), proxy: artifact('UptoProxyLite'), multicall: artifact('TryAggregateLite') }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { permit2, proxy, multicall } = compileUptoContracts()
  writeArtifact(permit2, PERMIT2_ARTIFACT)
  writeArtifact(proxy, UPTO_PROXY_ARTIFACT)
  writeArtifact(multicall, MULTICALL_ARTIFACT)
  console.log(`wrote ${PERMIT2_ARTIFACT}, ${UPTO_PROXY_ARTIFACT}, ${MULTICALL_ARTIFACT} (solc ${permit2.solcVersion})`)
}
