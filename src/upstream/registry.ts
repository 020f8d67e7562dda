import { X509Certificate, createPublicKey, type KeyObject } from 'node:crypto'
import { createPublicClient, getAddress, http, keccak256, type Address, type Hex } from 'viem'
import { TEE_REGISTRY_DISCOVERY_ABI } from './registry-abi.ts'
import type { UpstreamTarget } from './client.ts'

export interface EnclaveInfo {
  /** `0x` + keccak256 of the registered DER public key: the `tee_id` its proofs must carry. */
  teeId: Hex
  /** Normalised https URL (origin plus optional base path, no trailing slash). */
  endpoint: string
  publicKeyPem: string
  tlsCertPem: string
  pcrHash: Hex
  paymentAddress: Address
}

/** Raw registry entry, as decoded from `getActiveTEEs`. */
export interface RegistryEntry {
  owner: Address
  paymentAddress: Address
  endpoint: string
  publicKey: Hex
  tlsCertificate: Hex
  pcrHash: Hex
  teeType: number
  enabled: boolean
  registeredAt: bigint
  lastHeartbeatAt: bigint
}

export interface RegistryLogger {
  warn (obj: object, msg: string): void
  info? (obj: object, msg: string): void
}

export interface Clock {
  now (): number
  setTimeout (fn: () => void, ms: number): unknown
  clearTimeout (handle: unknown): void
}

export interface RegistryDiscoveryOptions {
  rpcUrl: string
  registryAddress: Address
  teeType?: number
  /** Keep only enclaves running this exact image measurement. */
  pinPcrHash?: Hex
  /** Keep only this one enclave. */
  pinTeeId?: Hex
  refreshMs?: number
  rpcTimeoutMs?: number
  clock?: Clock
  logger?: RegistryLogger
  /** Called after a successful refresh whose list differs from the previous one. */
  onChange?: (enclaves: EnclaveInfo[]) => void
}

export interface RegistryDiscovery {
  /** Reads the registry now; rejects on RPC or decoding failure, keeping the last good list. */
  refresh (): Promise<EnclaveInfo[]>
  current (): EnclaveInfo[]
  /** First refresh (failure logged, not thrown), then one every `refreshMs`. */
  start (): Promise<void>
  stop (): void
}

const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
}

const silent: RegistryLogger = { warn () {} }

// Below this an RSA key no longer gives the ~112-bit security the signed proofs are relied on for.
const MIN_RSA_BITS = 2048

export function createRegistryDiscovery (opts: RegistryDiscoveryOptions): RegistryDiscovery {
  const teeType = opts.teeType ?? 0
  const refreshMs = opts.refreshMs ?? 300_000
  const clock = opts.clock ?? realClock
  const log = opts.logger ?? silent
  const client = createPublicClient({ transport: http(opts.rpcUrl, { timeout: opts.rpcTimeoutMs ?? 10_000, retryCount: 1 }) })

  let list: EnclaveInfo[] = []
  let inflight: Promise<EnclaveInfo[]> | undefined
  let timer: unknown
  let running = false

  async function read (): Promise<EnclaveInfo[]> {
    const raw = await client.readContract({
      address: opts.registryAddress,
      abi: TEE_REGISTRY_DISCOVERY_ABI,
      functionName: 'getActiveTEEs',
      args: [teeType],
    })
    const next = selectEnclaves(raw, { teeType, pinPcrHash: opts.pinPcrHash, pinTeeId: opts.pinTeeId, now: clock.now(), log })
    const changed = fingerprint(next) !== fingerprint(list)
    list = next
    if (changed) opts.onChange?.(next)
    return next
  }

  function refresh (): Promise<EnclaveInfo[]> {
    inflight ??= read().finally(() => { inflight = undefined })
    return inflight
  }

  async function tick (): Promise<void> {
    try {
      await refresh()
    } catch (err) {
      log.warn({ err: describe(err), kept: list.length }, 'TEE registry refresh failed; keeping the last good enclave list')
    }
    if (running) timer = clock.setTimeout(() => { void tick() }, refreshMs)
  }

  return {
    refresh,
    current: () => list.slice(),
    async start () {
      if (running) return
      running = true
      await tick()
    },
    stop () {
      running = false
      if (timer !== undefined) clock.clearTimeout(timer)
      timer = undefined
    },
  }
}

interface SelectOptions { teeType: number, pinPcrHash?: Hex, pinTeeId?: Hex, now: number, log: RegistryLogger }

/**
 * Turns registry entries into usable enclaves. The contract already filters to active ones; the
 * checks are repeated here because an entry we cannot pin or verify must never reach the pool.
 */
export function selectEnclaves (entries: readonly RegistryEntry[], opts: SelectOptions): EnclaveInfo[] {
  const out: EnclaveInfo[] = []
  const seen = new Set<string>()
  for (const entry of entries) {
    const teeId = keccak256(entry.publicKey)
    const skip = (reason: string, extra: object = {}) => opts.log.warn({ teeId, endpoint: entry.endpoint, reason, ...extra }, 'skipping registered enclave')
    if (!entry.enabled) { skip('disabled'); continue }
    if (entry.teeType !== opts.teeType) { skip('wrong_tee_type', { teeType: entry.teeType }); continue }
    if (opts.pinTeeId && teeId !== opts.pinTeeId.toLowerCase()) continue
    if (opts.pinPcrHash && entry.pcrHash.toLowerCase() !== opts.pinPcrHash.toLowerCase()) continue
    if (seen.has(teeId)) continue

    let publicKeyPem: string, tlsCertPem: string, endpoint: string
    try { publicKeyPem = rsaSpkiToPem(entry.publicKey) } catch (err) { skip('bad_public_key', { detail: (err as Error).message }); continue }
    try { tlsCertPem = certToPem(entry.tlsCertificate, opts.now) } catch (err) { skip('bad_tls_certificate', { detail: (err as Error).message }); continue }
    try { endpoint = normaliseEndpoint(entry.endpoint) } catch (err) { skip('bad_endpoint', { detail: (err as Error).message }); continue }

    seen.add(teeId)
    out.push({ teeId, endpoint, publicKeyPem, tlsCertPem, pcrHash: entry.pcrHash, paymentAddress: getAddress(entry.paymentAddress) })
  }
  return out
}

/** The shape UpstreamClient and EnclavePool take. */
export function enclaveTarget (e: EnclaveInfo): UpstreamTarget {
  return { url: e.endpoint, teeId: e.teeId, publicKeyPem: e.publicKeyPem, tlsCertPem: e.tlsCertPem }
}

function rsaSpkiToPem (der: Hex): string {
  let key: KeyObject
  try {
    key = createPublicKey({ key: hexBytes(der), format: 'der', type: 'spki' })
  } catch (err) {
    throw new Error(`not a DER SubjectPublicKeyInfo: ${(err as Error).message}`)
  }
  if (key.asymmetricKeyType !== 'rsa' && key.asymmetricKeyType !== 'rsa-pss') throw new Error(`not an RSA key (${key.asymmetricKeyType})`)
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
  if (bits < MIN_RSA_BITS) throw new Error(`RSA modulus of ${bits} bits is below ${MIN_RSA_BITS}`)
  return key.export({ format: 'pem', type: 'spki' }).toString()
}

function certToPem (der: Hex, now: number): string {
  let cert: X509Certificate
  try {
    cert = new X509Certificate(hexBytes(der))
  } catch (err) {
    throw new Error(`not a DER X.509 certificate: ${(err as Error).message}`)
  }
  // TLS verification would refuse it anyway; dropping it here keeps it from costing a failover per request.
  if (now < Date.parse(cert.validFrom) || now > Date.parse(cert.validTo)) {
    throw new Error(`outside its validity (${cert.validFrom} to ${cert.validTo})`)
  }
  return cert.toString()
}

/**
 * Registry endpoints are whatever the operator typed: a bare IP, host:port, or a URL. No scheme means
 * https. Anything but https is refused: the pinned certificate is what authenticates the enclave.
 */
export function normaliseEndpoint (raw: string): string {
  let s = raw.trim()
  if (!s) throw new Error('empty endpoint')
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) {
    // A bare IPv6 address needs brackets before it can carry a scheme.
    if (/^[0-9a-f:]+$/i.test(s) && s.split(':').length > 2) s = `[${s}]`
    s = `https://${s}`
  }
  let url: URL
  try {
    url = new URL(s)
  } catch {
    throw new Error(`unparseable endpoint ${JSON.stringify(raw)}`)
  }
  if (url.protocol !== 'https:') throw new Error(`scheme ${url.protocol} is not https`)
  if (url.username || url.password) throw new Error('credentials in endpoint')
  if (url.search || url.hash) throw new Error('query or fragment in endpoint')
  return url.origin + url.pathname.replace(/\/+$/, '')
}

function hexBytes (hex: Hex): Buffer {
  return Buffer.from(hex.slice(2), 'hex')
}

function fingerprint (list: EnclaveInfo[]): string {
  return list.map((e) => `${e.teeId}|${e.endpoint}|${e.tlsCertPem}`).join('\n')
}

function describe (err: unknown): string {
  const e = err as { shortMessage?: string, message?: string }
  return e?.shortMessage ?? e?.message ?? String(err)
}
