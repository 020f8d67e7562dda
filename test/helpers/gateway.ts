import type { FastifyInstance } from 'fastify'
import { privateKeyToAccount } from 'viem/accounts'
import { x402Client } from '@x402/core/client'
import { createSIWxClientExtension } from '@x402/extensions/sign-in-with-x'
import { wrapFetchWithPayment } from '@x402/fetch'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { encodePaymentSignatureHeader, decodePaymentRequiredHeader } from '@x402/core/http'
import type { PaymentRequired } from '@x402/core/types'
import { loadConfig, type GatewayConfig } from '../../config/schema.ts'
import { buildApp, type AppOptions } from '../../src/app.ts'
import { startLocalStack, type LocalStack, type LocalStackOptions } from '../../local-stack/stack.ts'

export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef0123456789'

export interface TestGateway {
  app: FastifyInstance
  url: string
  config: GatewayConfig
  close (): Promise<void>
}

/** Builds the real app on the stack's configuration and listens on a loopback port. */
export async function startGateway (stack: LocalStack, env: Record<string, string> = {}, opts: Partial<AppOptions> = {}): Promise<TestGateway> {
  // Load shedding is off in tests: parallel test files on 2 cores lag the loop by design.
  const config = loadConfig(stack.gatewayEnv({ ADMIN_TOKEN, LOAD_SHED_EVENT_LOOP_DELAY_MS: '0', ...env }))
  const app = await buildApp({ config, logger: false, ...opts })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const addr = app.server.address()
  const port = typeof addr === 'object' && addr ? addr.port : 0
  const url = `http://127.0.0.1:${port}`
  // The port is known only now; SIWX binds sign-ins to this origin (config is read per request).
  if (!env.PUBLIC_URL) config.publicUrl = url
  return { app, url, config, close: () => app.close() }
}

/** The official x402 client: @x402/fetch around fetch, signing with the exact EVM scheme. */
export function x402ClientFor (privateKey: `0x${string}`): x402Client {
  return new x402Client().register('eip155:*', new ExactEvmScheme(privateKeyToAccount(privateKey)))
}

export function payingFetch (privateKey: `0x${string}`): typeof fetch {
  return wrapFetchWithPayment(fetch, x402ClientFor(privateKey)) as typeof fetch
}

/** The official client with the SIWX extension registered: signs in when it can, pays when it must. */
export function siwxPayingFetch (privateKey: `0x${string}`): typeof fetch {
  const account = privateKeyToAccount(privateKey)
  const client = x402ClientFor(privateKey).registerExtension(createSIWxClientExtension({ signers: [account] }))
  return wrapFetchWithPayment(fetch, client) as typeof fetch
}

/** Gets the 402 for `body` and signs one payment for it with the official client, without sending it. */
export async function signPaymentFor (gw: TestGateway, privateKey: `0x${string}`, body: unknown): Promise<{ header: string, required: PaymentRequired }> {
  const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (res.status !== 402) throw new Error(`expected 402, got ${res.status}`)
  const required = decodePaymentRequiredHeader(res.headers.get('payment-required')!)
  const payload = await x402ClientFor(privateKey).createPaymentPayload(required)
  return { header: encodePaymentSignatureHeader(payload), required }
}

export function chatBody (text = 'Say hello', extra: Record<string, unknown> = {}) {
  return { model: 'gpt-4.1', messages: [{ role: 'user', content: text }], max_tokens: 64, ...extra }
}

export async function withStack (t: { teardown (fn: () => unknown): void }, opts: LocalStackOptions = {}): Promise<LocalStack> {
  const stack = await startLocalStack(opts)
  t.teardown(() => stack.stop())
  return stack
}

/** Buys an API key with x402 (the route answers 402, the official client pays, the key comes back). */
export async function buyApiKey (gw: TestGateway, privateKey: `0x${string}`, name = 'test'): Promise<string> {
  const res = await payingFetch(privateKey)(`${gw.url}/v1/keys`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) })
  if (res.status !== 201) throw new Error(`buying a key failed: ${res.status} ${await res.text()}`)
  return (await res.json()).key
}

export function postChat (gw: TestGateway, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
}
