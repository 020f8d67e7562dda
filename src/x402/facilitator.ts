import { createPublicClient, createWalletClient, http, publicActions, parseEventLogs, erc20Abi, defineChain, type Hex } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { HTTPFacilitatorClient } from '@x402/core/http'
import { x402Facilitator } from '@x402/core/facilitator'
import type { PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse } from '@x402/core/types'
import { ExactEvmScheme } from '@x402/evm/exact/facilitator'
import { ExactEvmSchemeV1 } from '@x402/evm/exact/v1/facilitator'
import { toFacilitatorEvmSigner } from '@x402/evm'
import type { X402Config } from './requirements.ts'

/** What the payment flow needs from a facilitator; both implementations below provide it. */
export interface Facilitator {
  readonly kind: 'local' | 'remote'
  verify (payload: PaymentPayload, requirements: PaymentRequirements): Promise<VerifyResponse>
  settle (payload: PaymentPayload, requirements: PaymentRequirements): Promise<SettleResponse>
  /** Confirms on our own chain connection that `tx` moved `value` from `from` to payTo. */
  confirmTransfer? (tx: Hex, from: string, value: bigint): Promise<boolean>
  close? (): Promise<void>
}

/** A settle whose outcome cannot be known yet (timeout after broadcast): reconcile, never re-credit. */
export class SettlementOutcomeUnknown extends Error {
  constructor (readonly cause: unknown) { super('settlement outcome unknown') }
}

export class FacilitatorUnreachable extends Error {
  constructor (readonly cause: unknown) { super('facilitator unreachable') }
}

function chainFor (cfg: X402Config, rpcUrl: string) {
  return defineChain({
    id: cfg.chainId,
    name: cfg.network,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  })
}

/**
 * Settles on the configured chain with the operator's key, through @x402/evm's own facilitator
 * scheme. Settlements are serialised: one settler account sending transactions concurrently
 * would race on its nonce.
 */
type WalletWithReads = ReturnType<typeof createWalletClient> & ReturnType<typeof publicActions>

/** @x402/evm's facilitator signer over a viem wallet client extended with public actions. */
export function walletFacilitatorSigner (client: WalletWithReads, confirmationTimeoutMs: number) {
  return toFacilitatorEvmSigner({
    address: client.account!.address,
    readContract: (args) => client.readContract(args as never),
    verifyTypedData: (args) => client.verifyTypedData(args as never),
    writeContract: (args) => client.writeContract(args as never),
    sendTransaction: (args) => client.sendTransaction(args as never),
    waitForTransactionReceipt: (args) => client.waitForTransactionReceipt(args),
    getCode: (args) => client.getCode(args),
  }, { confirmationTimeoutMs })
}

export function createLocalFacilitator (cfg: X402Config, rpcUrl: string, settlerKey: Hex): Facilitator {
  const account = privateKeyToAccount(settlerKey)
  // viem's default 4 s polling would hold every queued settlement behind one slow receipt; L2
  // blocks come every 1-2 s, so a quarter second costs little RPC and no waiting.
  const client = createWalletClient({ account, chain: chainFor(cfg, rpcUrl), transport: http(rpcUrl, { timeout: 30_000 }), pollingInterval: 250 })
    .extend(publicActions)
  const signer = walletFacilitatorSigner(client, 60_000)
  const facilitator = new x402Facilitator().register(cfg.network, new ExactEvmScheme(signer))
  if (cfg.v1Network) facilitator.registerV1(cfg.v1Network as never, new ExactEvmSchemeV1(signer))

  let queue: Promise<unknown> = Promise.resolve()
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const next = queue.then(fn, fn)
    queue = next.catch(() => undefined)
    return next
  }

  return {
    kind: 'local',
    verify: (p, r) => facilitator.verify(p, r),
    settle: (p, r) => serial(async () => {
      try {
        return await facilitator.settle(p, r)
      } catch (err) {
        // A throw here may come after the transaction was broadcast: the outcome is unknown.
        throw new SettlementOutcomeUnknown(err)
      }
    }),
    confirmTransfer: transferConfirmer(cfg, rpcUrl),
  }
}

/** Reads the settlement receipt itself: a consumed nonce alone is not proof of payment (PROTOCOLS.md §2). */
export function transferConfirmer (cfg: X402Config, rpcUrl: string): NonNullable<Facilitator['confirmTransfer']> {
  const client = createPublicClient({ chain: chainFor(cfg, rpcUrl), transport: http(rpcUrl, { timeout: 30_000 }) })
  return async (tx, from, value) => {
    const receipt = await client.getTransactionReceipt({ hash: tx })
    if (receipt.status !== 'success') return false
    const logs = parseEventLogs({ abi: erc20Abi, logs: receipt.logs, eventName: 'Transfer' })
    return logs.some((l) => l.address.toLowerCase() === cfg.asset.toLowerCase() &&
      l.args.from.toLowerCase() === from.toLowerCase() &&
      l.args.to.toLowerCase() === cfg.payTo.toLowerCase() &&
      l.args.value === value)
  }
}

export function createRemoteFacilitator (url: string, timeoutMs = 30_000): Facilitator {
  const client = new HTTPFacilitatorClient({ url, timeoutMs })
  return {
    kind: 'remote',
    verify: async (p, r) => {
      try { return await client.verify(p, r) } catch (err) { throw new FacilitatorUnreachable(err) }
    },
    settle: async (p, r) => {
      // Whether the request reached the facilitator is unknowable from here, so any failure,
      // a FacilitatorTimeoutError included, leaves the outcome unknown rather than failed.
      try { return await client.settle(p, r) } catch (err) { throw new SettlementOutcomeUnknown(err) }
    },
  }
}

export function createFacilitator (cfg: X402Config): Facilitator {
  const f = cfg.facilitator
  const base = f.kind === 'local'
    ? createLocalFacilitator(cfg, f.rpcUrl, f.settlerPrivateKey)
    : createRemoteFacilitator(f.url)
  if (f.kind === 'remote' && cfg.rpcUrl) {
    // With our own RPC we need not take a remote facilitator's word that the transfer happened.
    return { ...base, confirmTransfer: transferConfirmer(cfg, cfg.rpcUrl) }
  }
  return base
}
