import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Abi } from 'viem'
import { writeArtifact, type ContractArtifact } from './compile.ts'

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)

export const TEE_REGISTRY_SOURCE = join(here, 'TEERegistry.sol')
export const TEE_REGISTRY_ARTIFACT = join(here, 'artifacts', 'TEERegistry.json')

// Same target and optimizer as TestUSD so both artifacts deploy on the same chains.
const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
}

interface SolcOutput {
  errors?: { severity: string; formattedMessage: string }[]
  contracts?: Record<string, Record<string, { abi: Abi; evm: { bytecode: { object: string } } }>>
}

interface Solc {
  version(): string
  compile(input: string): string
}

/** The registry has no imports, so the source file and the settings are the whole build input. */
export function compileTeeRegistry(): ContractArtifact {
  const solc = require('solc') as Solc
  const sourceName = 'TEERegistry.sol'
  const source = readFileSync(TEE_REGISTRY_SOURCE, 'utf8')
  const output = JSON.parse(
    solc.compile(
      JSON.stringify({ language: 'Solidity', sources: { [sourceName]: { content: source } }, settings: SETTINGS }),
    ),
  ) as SolcOutput

  const errors = (output.errors ?? []).filter((e) => e.severity === 'error')
  if (errors.length > 0) {
    throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join('\n')}`)
  }
  const compiled = output.contracts?.[sourceName]?.TEERegistry
  if (!compiled) throw new Error('solc produced no TEERegistry contract')

  const sourceHash = createHash('sha256')
    .update(`${sourceName}\0${source}\0`)
    .update(JSON.stringify(SETTINGS))
    .digest('hex')
  return {
    contractName: 'TEERegistry',
    abi: compiled.abi,
    bytecode: `0x${compiled.evm.bytecode.object}`,
    solcVersion: solc.version(),
    sourceHash,
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const started = Date.now()
  const artifact = compileTeeRegistry()
  writeArtifact(artifact, TEE_REGISTRY_ARTIFACT)
  console.log(
    `wrote ${TEE_REGISTRY_ARTIFACT} (solc ${artifact.solcVersion}, ${(artifact.bytecode.length - 2) / 2} bytes, ${Date.now() - started} ms)`,
  )
}
