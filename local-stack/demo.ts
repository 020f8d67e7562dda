import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { privateKeyToAccount } from 'viem/accounts'
import { x402Client } from '@x402/core/client'
import { wrapFetchWithPayment } from '@x402/fetch'
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { createSIWxClientExtension } from '@x402/extensions/sign-in-with-x'
import { decodePaymentRequiredHeader, decodePaymentResponseHeader } from '@x402/core/http'
import { loadConfig } from '../config/schema.ts'
import { buildApp } from '../src/app.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { formatDecimal, formatLedger } from '../src/money.ts'
import { startLocalStack } from './stack.ts'
import { balanceOf } from './chain.ts'

// `npm run demo`: the whole local stack and one client walked through pay → verified answer →
// stream → balance, printed as a transcript. `--once` exits after it (0 only if every step passed).

const once = process.argv.includes('--once')
const out = (s = '') => process.stdout.write(s + '\n')
const step = (n: number, title: string) => out(`\n── ${n}. ${title}`)
const show = (k: string, v: unknown) => out(`   ${k.padEnd(24)} ${v}`)
let failures = 0
const check = (ok: boolean, what: string) => { if (!ok) { failures++; out(`   ✗ ${what}`) } else out(`   ✓ ${what}`) }

out('x402 verified-inference gateway: local demo')
out('starting anvil, deploying the test USDC, starting the reference TEE backend ...')
// The enclaves charge with x402 `upto` (Permit2 sessions); the gateway's operator wallet pays them.
const stack = await startLocalStack({ chunkDelayMs: 40, upstreamPayment: true })
const dataDir = mkdtempSync(join(tmpdir(), 'x402-gateway-demo-'))
const adminToken = randomBytes(24).toString('hex')
const config = loadConfig(stack.gatewayEnv({
  DATABASE_URL: `sqlite:${join(dataDir, 'gateway.db')}`,
  ADMIN_TOKEN: adminToken,
  PORT: once ? '0' : (process.env.PORT ?? '8402'),
  HOST: '127.0.0.1',
  LOG_LEVEL: 'warn',
}))
const app = await buildApp({ config, logger: { level: 'error' } })
await app.listen({ port: config.port, host: config.host })
const addr = app.server.address()
const base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : config.port}`
config.publicUrl = base // sign-ins are bound to the origin clients use

let shuttingDown = false
async function shutdown (code: number) {
  if (shuttingDown) return
  shuttingDown = true
  await app.close().catch(() => undefined)
  await stack.stop().catch(() => undefined)
  rmSync(dataDir, { recursive: true, force: true })
  process.exit(code)
}
process.on('SIGINT', () => { out('\nstopping ...'); void shutdown(0) })
process.on('SIGTERM', () => void shutdown(0))

try {
  show('chain', `${stack.chain.rpcUrl} (${stack.chain.network})`)
  show('token (test USDC)', stack.token)
  show('payer wallet', stack.payer.address)
  show('operator payTo', stack.payTo.address)
  show('TEE registry', `${stack.registry} (enclaves are discovered from it)`)
  show('TEE enclave', `${stack.backend.url} tee_id ${stack.backend.teeId.slice(0, 18)}… (pinned self-signed TLS)`)
  show('discovered', [...app.enclaves.teeIds()].map((id) => id.slice(0, 18) + '…').join(', '))
  show('gateway', base)
  show('operator wallet', `${stack.upstreamPayment!.operator.address} pays the enclave in test OPG ${stack.upstreamPayment!.token.slice(0, 10)}… (Permit2 ${app.upstreamPayerCheck?.ok ? 'approved' : 'NOT approved'})`)

  const body = { model: 'gpt-4.1', messages: [{ role: 'user', content: 'In one sentence: why verify inference?' }], max_tokens: 48 }
  const post = (f: typeof fetch, b: unknown) => f(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(b) })

  step(1, 'unpaid request')
  const unpaid = await post(fetch, body)
  show('status', unpaid.status)
  const challenge = decodePaymentRequiredHeader(unpaid.headers.get('payment-required') ?? '')
  const offer = challenge.accepts[0]
  show('PAYMENT-REQUIRED', `${offer.scheme} ${formatDecimal(BigInt(offer.amount), 6)} USDC on ${offer.network} to ${offer.payTo.slice(0, 10)}…`)
  show('cache-control', unpaid.headers.get('cache-control'))
  check(unpaid.status === 402 && offer !== undefined, '402 with an x402 v2 challenge')

  step(2, 'paid request (official @x402/fetch client signs the EIP-3009 authorization)')
  const account = privateKeyToAccount(stack.payer.privateKey)
  // The official client with the SIWX extension: it pays the first time and signs in afterwards.
  const client = new x402Client().register('eip155:*', new ExactEvmScheme(account)).registerExtension(createSIWxClientExtension({ signers: [account] }))
  const pay = wrapFetchWithPayment(fetch, client)
  const walletBefore = await balanceOf(stack.chain, stack.token, stack.payer.address)
  const paid = await post(pay, body)
  const answer = await paid.json()
  const settle = paid.headers.get('payment-response') ? decodePaymentResponseHeader(paid.headers.get('payment-response')!) : undefined
  show('status', paid.status)
  show('X-Request-Id', paid.headers.get('x-request-id'))
  show('settlement tx', settle?.transaction)
  show('X-OpenGradient-Verified', paid.headers.get('x-opengradient-verified'))
  show('X-OpenGradient-TEE-Id', paid.headers.get('x-opengradient-tee-id'))
  show('X-TEE-Request-Hash', paid.headers.get('x-tee-request-hash'))
  show('X-Credits-Charged', paid.headers.get('x-credits-charged'))
  show('X-Credits-Balance', paid.headers.get('x-credits-balance'))
  show('answer', JSON.stringify(answer.choices?.[0]?.message?.content ?? answer).slice(0, 100))
  const receipt = settle ? await stack.chain.publicClient.getTransactionReceipt({ hash: settle.transaction as `0x${string}` }) : undefined
  show('tx on chain', receipt ? `block ${receipt.blockNumber}, status ${receipt.status}` : 'missing')
  const walletAfter = await balanceOf(stack.chain, stack.token, stack.payer.address)
  show('payer wallet', `${formatDecimal(walletBefore, 6)} → ${formatDecimal(walletAfter, 6)} USDC`)
  check(paid.status === 200 && paid.headers.get('x-opengradient-verified') === 'true', 'verified, paid answer')
  check(receipt?.status === 'success', 'payment settled on the local chain')

  step(3, 'streamed answer, spending credit by SIGN-IN-WITH-X (no second payment; SSE passes through)')
  const started = performance.now()
  const streamed = await post(pay, { ...body, stream: true, max_tokens: 32 })
  show('status', `${streamed.status} ${streamed.headers.get('content-type')}`)
  const reader = streamed.body!.getReader()
  const decoder = new TextDecoder()
  let text = ''
  let chunks = 0
  let firstAt = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    if (chunks++ === 0) firstAt = performance.now() - started
    text += decoder.decode(value, { stream: true })
  }
  const frames = text.split('\n\n').filter((f) => f.startsWith('data: ')).map((f) => f.slice(6))
  const final = frames.length >= 2 ? JSON.parse(frames[frames.length - 2]) : {}
  show('network reads', `${chunks} (first after ${firstAt.toFixed(0)} ms, all after ${(performance.now() - started).toFixed(0)} ms)`)
  show('x402_gateway', JSON.stringify(final.x402_gateway))
  show('payment on this request', streamed.headers.get('payment-response') ? 'yes' : 'none (signed in, spent credit)')
  check(final.x402_gateway?.verified === true && frames[frames.length - 1] === '[DONE]', 'stream verified, charge in the final frame')
  check(!streamed.headers.get('payment-response'), 'no second payment: the credit paid for it')

  step(4, 'the gateway paid the TEE backend (x402 upto over Permit2, one session for both calls)')
  const up = stack.upstreamPayment!
  const upto = stack.backend.upto!
  const opgBefore = await balanceOf(stack.chain, up.token, up.operator.address)
  const [session] = await upto.settleAll()
  const opgAfter = await balanceOf(stack.chain, up.token, up.operator.address)
  show('upstream payment', `${app.upstreamPayer!.stats.payments} permit (cap ${formatDecimal(session?.cap ?? 0n, 6)} OPG), session ${session?.id.slice(0, 14)}… used for ${session?.calls} calls, settled ${formatDecimal(session?.spent ?? 0n, 6)} OPG in tx ${session?.settlementTx?.slice(0, 12)}…`)
  show('operator OPG', `${formatDecimal(opgBefore, 6)} → ${formatDecimal(opgAfter, 6)} (X-SETTLEMENT-TYPE ${stack.backend.lastSettlementType})`)
  check(app.upstreamPayer!.stats.payments === 1 && session?.calls === 2 && session.state === 'settled' && opgBefore - opgAfter === session.spent, 'one upto payment for two upstream calls, settled on chain once')

  step(5, 'ledger')
  const bal = await app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))
  const totals = await app.ledger.totals()
  show('payer credit', `${formatLedger(bal.available)} USDC (deposited ${formatLedger(bal.creditsPosted)}, spent ${formatLedger(bal.debitsPosted)})`)
  show('payer wallet now', `${formatDecimal(await balanceOf(stack.chain, stack.token, stack.payer.address), 6)} USDC (one payment in all)`)
  show('open reservations', formatLedger(bal.debitsPending))
  show('sum of all accounts', `${totals.sumOfAllAccounts} (double entry: must be 0)`)
  check(totals.sumOfAllAccounts === 0n && bal.debitsPending === 0n, 'ledger balanced, nothing left reserved')

  out(`\n${failures === 0 ? 'all steps passed' : `${failures} step(s) failed`}`)
  if (once) await shutdown(failures === 0 ? 0 : 1)
  out(`\nThe gateway keeps serving at ${base} (Ctrl-C to stop). Try:`)
  out(`  curl -i ${base}/v1/chat/completions -H 'content-type: application/json' -d '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}'`)
  out(`  curl -s ${base}/v1/receipts/${paid.headers.get('x-request-id')} -H 'authorization: Bearer ${adminToken}'`)
} catch (err) {
  out(`\ndemo failed: ${(err as Error).stack ?? err}`)
  await shutdown(1)
}
