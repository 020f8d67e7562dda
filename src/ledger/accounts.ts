import { LedgerAccountInvalid } from './errors.ts'

// Account ids are strings so that they read well in SQL and logs. Payers are CAIP-10 with the
// address lowercased: EVM addresses are case-insensitive and checksummed spellings must not open a
// second account for the same wallet.

export const SYSTEM_ACCOUNTS = {
  deposits: 'system:deposits',
  revenue: 'system:revenue',
  grants: 'system:grants',
  upstreamCost: 'system:upstream_cost',
} as const

export type SystemAccount = typeof SYSTEM_ACCOUNTS[keyof typeof SYSTEM_ACCOUNTS]

const SYSTEM_IDS: ReadonlySet<string> = new Set(Object.values(SYSTEM_ACCOUNTS))
const PAYER_RE = /^eip155:([1-9][0-9]{0,17}):(0x[0-9a-f]{40})$/

export function payerAccount (chainId: number | bigint | string, address: string): string {
  const chain = String(chainId)
  if (!/^[1-9][0-9]{0,17}$/.test(chain)) throw new LedgerAccountInvalid(`eip155:${chain}`, 'has an invalid chain id')
  if (!/^0x[0-9a-fA-F]{40}$/.test(address)) throw new LedgerAccountInvalid(address, 'is not a 20-byte hex address')
  return `eip155:${chain}:${address.toLowerCase()}`
}

export function isSystemAccount (id: string): id is SystemAccount {
  return SYSTEM_IDS.has(id)
}

export function isPayerAccount (id: string): boolean {
  return PAYER_RE.test(id)
}

export function parsePayerAccount (id: string): { chainId: number, address: `0x${string}` } | null {
  const m = PAYER_RE.exec(id)
  return m ? { chainId: Number(m[1]), address: m[2] as `0x${string}` } : null
}

/** Payer-side operations take only payer accounts: moving money between system accounts is not a payer op. */
export function assertPayerAccount (id: unknown): string {
  if (typeof id !== 'string' || !isPayerAccount(id)) {
    throw new LedgerAccountInvalid(String(id), 'is not a payer account (eip155:<chainId>:<lowercase 0x address>)')
  }
  return id
}
