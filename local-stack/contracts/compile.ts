import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Abi, Hex } from 'viem'

export interface ContractArtifact {
  contractName: string
  abi: Abi
  bytecode: Hex
  solcVersion: string
  /** sha256 over every source unit that went into the build plus the compiler settings. */
  sourceHash: string
}

const here = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)

export const TEST_USD_SOURCE = join(here, 'TestUSD.sol')
export const TEST_USD_ARTIFACT = join(here, 'artifacts', 'TestUSD.json')

// cancun: every opcode OpenZeppelin 5.x may emit (mcopy, transient storage) and well below the
// hardfork anvil runs by default, so the same bytecode also deploys on current public testnets.
const SETTINGS = {
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
}

interface SolcOutput {
  errors?: { severity: string; formattedMessage: string }[]
  contracts?: Record<string, Record<string, { abi: Abi; evm: { bytecode: { object: string } } }>>
  sources?: Record<string, unknown>
}

interface Solc {
  version(): string
  compile(input: string, callbacks: { import(path: string): { contents: string } | { error: string } }): string
}

/**
 * Resolves bare package imports (e.g. "@openzeppelin/contracts/...") through Node's resolution so
 * whichever copy npm installed is used, without remappings or a hard-coded node_modules path.
 */
function readImport(importPath: string): { contents: string } | { error: string } {
  try {
    const [scope, pkg, ...rest] = importPath.split('/')
    const pkgJson = require.resolve(`${scope}/${pkg}/package.json`)
    return { contents: readFileSync(join(dirname(pkgJson), ...rest), 'utf8') }
  } catch (err) {
    return { error: `cannot resolve import ${importPath}: ${(err as Error).message}` }
  }
}

function hashSources(sources: Map<string, string>): string {
  const hash = createHash('sha256')
  for (const key of [...sources.keys()].sort()) {
    hash.update(`${key}\0${sources.get(key)}\0`)
  }
  hash.update(JSON.stringify(SETTINGS))
  return hash.digest('hex')
}

export function compileTestUSD(): ContractArtifact {
  const solc = require('solc') as Solc
  const sourceName = 'TestUSD.sol'
  const seen = new Map<string, string>([[sourceName, readFileSync(TEST_USD_SOURCE, 'utf8')]])

  const input = {
    language: 'Solidity',
    sources: { [sourceName]: { content: seen.get(sourceName) } },
    settings: SETTINGS,
  }
  const output = JSON.parse(
    solc.compile(JSON.stringify(input), {
      import(path) {
        const result = readImport(path)
        if ('contents' in result) seen.set(path, result.contents)
        return result
      },
    }),
  ) as SolcOutput

  const errors = (output.errors ?? []).filter((e) => e.severity === 'error')
  if (errors.length > 0) {
    throw new Error(`solc failed:\n${errors.map((e) => e.formattedMessage).join('\n')}`)
  }
  const compiled = output.contracts?.[sourceName]?.TestUSD
  if (!compiled) throw new Error('solc produced no TestUSD contract')

  return {
    contractName: 'TestUSD',
    abi: compiled.abi,
    bytecode: `0x${compiled.evm.bytecode.object}`,
    solcVersion: solc.version(),
    sourceHash: hashSources(seen),
  }
}

export function writeArtifact(artifact: ContractArtifact, path = TEST_USD_ARTIFACT): void {
  mkdirSync(dirname(path), { recursive: true })
  writeFileSync(path, `${JSON.stringify(artifact, null, 2)}\n`)
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const started = Date.now()
  const artifact = compileTestUSD()
  writeArtifact(artifact)
  console.log(
    `wrote ${TEST_USD_ARTIFACT} (solc ${artifact.solcVersion}, ${(artifact.bytecode.length - 2) / 2} bytes, ${Date.now() - started} ms)`,
  )
}
