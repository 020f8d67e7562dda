import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { PrivateKeyAccount } from 'viem/accounts'
import { x402Client } from '@x402/core/client'
import { encodePaymentRequiredHeader } from '@x402/core/http'
import type { PaymentRequired } from '@x402/core/types'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { wrapFetchWithPayment } from '@x402/fetch'
import { createSIWxClientExtension } from '@x402/extensions/sign-in-with-x'
import { siwxDeclaration } from '../../src/auth/siwx.ts'

// A stand-in resource server: just enough x402 to see what the official client sends when a
// 402 declares sign-in-with-x. No chain is involved; payment headers are recorded, not settled.

export const TEST_NETWORK = 'eip155:84532'
const BASE_SEPOLIA_USDC = '0x036CbD53842c5426634e7929541eC2318f3dCF7e'

export type SiwxReply = 'ok' | 'payment_required' | 'unauthorized'

export interface StubOptions {
  /** Origin written into the declaration; defaults to the stub's own URL. */
  declaredOrigin?: (ownOrigin: string) => string
  network?: string
  ttlSeconds?: number
  /** How to answer a request that carries SIGN-IN-WITH-X. */
  onSiwx?: SiwxReply
  /** Amount offered by a 402 that answers a SIWX attempt (e.g. "insufficient credit"). */
  secondOfferAmount?: string
}

export interface Recorded { headers: IncomingHttpHeaders, status: number }

export interface SiwxStub {
  origin: string
  url: string
  requests: Recorded[]
  /** Every PaymentRequired this stub sent, in order. */
  challenges: PaymentRequired[]
  close: () => Promise<void>
}

export async function startSiwxStub (opts: StubOptions = {}): Promise<SiwxStub> {
  const requests: Recorded[] = []
  const challenges: PaymentRequired[] = []
  const network = opts.network ?? TEST_NETWORK
  let origin = ''
  const challenge = (amount: string, error: string): PaymentRequired => {
    const resourceUrl = `${origin}/v1/chat/completions`
    const pr: PaymentRequired = {
      x402Version: 2,
      error,
      resource: { url: resourceUrl, description: 'test', mimeType: 'application/json' },
      accepts: [{
        scheme: 'exact',
        network: network as `${string}:${string}`,
        asset: BASE_SEPOLIA_USDC,
        amount,
        payTo: '0x000000000000000000000000000000000000dEaD',
        maxTimeoutSeconds: 300,
        extra: { name: 'USDC', version: '2' },
      }],
      extensions: siwxDeclaration({
        origin: opts.declaredOrigin ? opts.declaredOrigin(origin) : origin,
        resourceUrl,
        network,
        ttlSeconds: opts.ttlSeconds,
      }),
    }
    challenges.push(pr)
    return pr
  }
  const send402 = (res: ServerResponse, pr: PaymentRequired): void => {
    res.writeHead(402, { 'payment-required': encodePaymentRequiredHeader(pr), 'content-type': 'application/json' })
    res.end(JSON.stringify(pr))
  }
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const rec: Recorded = { headers: req.headers, status: 0 }
      requests.push(rec)
      if (req.headers['payment-signature'] || req.headers['x-payment']) {
        rec.status = 200
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"paid":true}')
      } else if (req.headers['sign-in-with-x']) {
        const reply = opts.onSiwx ?? 'ok'
        if (reply === 'ok') {
          rec.status = 200
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"signedIn":true}')
        } else if (reply === 'unauthorized') {
          rec.status = 401
          res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"siwx_refused"}')
        } else {
          rec.status = 402
          send402(res, challenge(opts.secondOfferAmount ?? '2000', 'insufficient_credit'))
        }
      } else {
        rec.status = 402
        send402(res, challenge('1000', 'payment_required'))
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  return {
    origin,
    url: `${origin}/v1/chat/completions`,
    requests,
    challenges,
    close: () => new Promise<void>((resolve, reject) => server.close((e) => (e ? reject(e) : resolve()))),
  }
}

/**
 * The user's side, exactly as documented for x402 clients: register the SIWX extension (and
 * optionally the exact scheme so the client can pay), wrap fetch, call the resource.
 */
export function officialFetch (account: PrivateKeyAccount, opts: { canPay?: boolean } = {}): typeof fetch {
  const client = new x402Client().registerExtension(createSIWxClientExtension({ signers: [account] }))
  if (opts.canPay) client.register('eip155:*', new ExactEvmScheme(account))
  return wrapFetchWithPayment(fetch, client) as typeof fetch
}

/** Run the official client against a stub and return the SIGN-IN-WITH-X header it produced. */
export async function captureSiwxHeader (account: PrivateKeyAccount, opts: StubOptions = {}): Promise<{ header: string, stub: SiwxStub }> {
  const stub = await startSiwxStub(opts)
  try {
    const res = await officialFetch(account)(stub.url, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })
    await res.arrayBuffer()
    const header = stub.requests.map((r) => r.headers['sign-in-with-x']).find((h) => typeof h === 'string')
    if (typeof header !== 'string') throw new Error('the official client sent no SIGN-IN-WITH-X header')
    return { header, stub }
  } finally {
    await stub.close()
  }
}

/** In-memory stand-in for the gateway's database-backed nonce table. */
export function nonceStore (): { useNonce: (key: string, retainUntilMs: number) => Promise<boolean>, calls: Array<{ key: string, retainUntilMs: number }>, used: Map<string, number> } {
  const used = new Map<string, number>()
  const calls: Array<{ key: string, retainUntilMs: number }> = []
  return {
    used,
    calls,
    useNonce: async (key, retainUntilMs) => {
      calls.push({ key, retainUntilMs })
      if (used.has(key)) return false
      used.set(key, retainUntilMs)
      return true
    },
  }
}

export function decodeHeaderJson (header: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(header, 'base64').toString('utf8')) as Record<string, unknown>
}

export function encodeHeaderJson (payload: unknown): string {
  return Buffer.from(JSON.stringify(payload), 'utf8').toString('base64')
}
