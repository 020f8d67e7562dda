// OpenGradient TEERegistry read ABI. Field order and types follow OpenGradient's contract
// (OpenGradient/og-evm contracts/solidity/TEERegistry.sol, struct TEEInfo; the same ten fields in
// OpenGradient/typescript-sdk src/abi/teeRegistry.ts). OpenGradient's OHTTP clients decode one more
// trailing field, `ohttpConfig` (OpenGradient/ghost privacy/ohttp_client.py), included here.

const OHTTP_CONFIG = {
  name: 'ohttpConfig',
  type: 'tuple',
  internalType: 'struct TEERegistry.OHTTPConfig',
  components: [
    { name: 'keyId', type: 'uint8', internalType: 'uint8' },
    { name: 'kemId', type: 'uint16', internalType: 'uint16' },
    { name: 'kdfId', type: 'uint16', internalType: 'uint16' },
    { name: 'aeadId', type: 'uint16', internalType: 'uint16' },
    { name: 'publicKey', type: 'bytes', internalType: 'bytes' },
    { name: 'keyConfig', type: 'bytes', internalType: 'bytes' },
    { name: 'registeredAt', type: 'uint256', internalType: 'uint256' },
  ],
} as const

const TEE_INFO_CORE = [
  { name: 'owner', type: 'address', internalType: 'address' },
  { name: 'paymentAddress', type: 'address', internalType: 'address' },
  { name: 'endpoint', type: 'string', internalType: 'string' },
  { name: 'publicKey', type: 'bytes', internalType: 'bytes' },
  { name: 'tlsCertificate', type: 'bytes', internalType: 'bytes' },
  { name: 'pcrHash', type: 'bytes32', internalType: 'bytes32' },
  { name: 'teeType', type: 'uint8', internalType: 'uint8' },
  { name: 'enabled', type: 'bool', internalType: 'bool' },
  { name: 'registeredAt', type: 'uint256', internalType: 'uint256' },
  { name: 'lastHeartbeatAt', type: 'uint256', internalType: 'uint256' },
] as const

const getActiveTEEs = <const C extends readonly unknown[]>(components: C) => ({
  type: 'function',
  name: 'getActiveTEEs',
  stateMutability: 'view',
  inputs: [{ name: 'teeType', type: 'uint8', internalType: 'uint8' }],
  outputs: [{ name: '', type: 'tuple[]', internalType: 'struct TEERegistry.TEEInfo[]', components }],
} as const)

/** The full shape, ohttpConfig included. */
export const TEE_REGISTRY_ABI = [getActiveTEEs([...TEE_INFO_CORE, OHTTP_CONFIG])] as const

/**
 * What discovery decodes with: the ten leading fields only. A struct's head is positional, so a
 * leading prefix decodes exactly whether or not the deployed registry appends `ohttpConfig`, and
 * whatever that tuple's shape (OpenGradient's sources disagree on it). Decoding the full shape against
 * a registry without the field fails outright, which would take every enclave out of rotation.
 */
export const TEE_REGISTRY_DISCOVERY_ABI = [getActiveTEEs(TEE_INFO_CORE)] as const
