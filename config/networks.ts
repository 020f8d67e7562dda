// Known x402 networks: CAIP-2 id, the v1 name x402 clients still send, and the USDC deployment
// whose EIP-712 domain the exact scheme signs against. A wrong domain name silently breaks every
// signature (PROTOCOLS.md §2), so the defaults live here, next to the addresses they belong to.
export interface KnownNetwork {
  caip2: `eip155:${number}`
  v1Name: string
  chainId: number
  usdc: { address: `0x${string}`, name: string, version: string, decimals: number }
}

export const KNOWN_NETWORKS: readonly KnownNetwork[] = [
  {
    caip2: 'eip155:8453',
    v1Name: 'base',
    chainId: 8453,
    usdc: { address: '0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913', name: 'USD Coin', version: '2', decimals: 6 },
  },
  {
    caip2: 'eip155:84532',
    v1Name: 'base-sepolia',
    chainId: 84532,
    usdc: { address: '0x036CbD53842c5426634e7929541eC2318f3dCF7e', name: 'USDC', version: '2', decimals: 6 },
  },
]

export const DEFAULT_NETWORK = 'eip155:84532'

export function findNetwork (id: string): KnownNetwork | undefined {
  return KNOWN_NETWORKS.find((n) => n.caip2 === id || n.v1Name === id)
}

export function chainIdOf (caip2: string): number | undefined {
  const m = /^eip155:(\d{1,12})$/.exec(caip2)
  return m ? Number(m[1]) : undefined
}
