import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { startTeeBackend } from '../local-stack/tee-backend.ts'
import { EXAMPLE_PRICING } from '../src/app.ts'
import { prepareChat } from '../src/chat/prepare.ts'
import { generateApiKey, hashApiKey } from '../src/auth/keys.ts'
import { payerAccount } from '../src/ledger/accounts.ts'
import { openSqliteLedger } from '../src/ledger/sqlite.ts'
import type { LedgerStore } from '../src/ledger/types.ts'
import { GatewayMetrics, instrumentLedger } from '../src/metrics.ts'
import { formatLedger } from '../src/money.ts'
import { loadPriceTable } from '../src/pricing.ts'
import { keccakHex } from '../src/proof/hash.ts'
import { canonicalOutputOf } from '../src/proof/output.ts'
import { verifyTeeProof, type TeeProof } from '../src/proof/verify.ts'
import { median } from './stats.ts'

// The gateway's per-request work, piece by piece, in one process with the project's own code:
// what a non-streaming API-key request costs outside the network stack. Complements the CPU
// profile (npm run bench -- --profile) with numbers that do not depend on load.
//   npx tsx bench/micro.ts        (BENCH_MICRO_ITERATIONS, default 3000; 5 rounds, median reported)

const N = Number(process.env.BENCH_MICRO_ITERATIONS ?? 3000)
const ROUNDS = 5

function time (fn: (i: number) => unknown, n = N): number {
  const samples: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now()
    for (let i = 0; i < n; i++) fn(i)
    samples.push(((performance.now() - t0) * 1000) / n)
  }
  return median(samples)
}

async function timeAsync (fn: (i: number) => Promise<unknown>, n = N): Promise<number> {
  const samples: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now()
    for (let i = 0; i < n; i++) await fn(i)
    samples.push(((performance.now() - t0) * 1000) / n)
  }
  return median(samples)
}

const rows: [string, number][] = []
const row = (name: string, us: number) => { rows.push([name, us]); process.stderr.write(`  ${us.toFixed(1).padStart(8)} µs  ${name}\n`) }

const prices = loadPriceTable(EXAMPLE_PRICING)
const limits = { maxOutputTokens: 4096, maxReservation: 5_000_000_000n }
const body = { model: 'gpt-4.1', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 64 }
const rawBody = JSON.stringify(body)

// A real answer from the reference backend for the exact wire body the gateway would send.
const backend = await startTeeBackend()
const prepared = prepareChat(body, prices, limits)
const res = await fetch(`${backend.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: prepared.wireBody })
const answer = await res.text()
await backend.close()
const parsedAnswer = JSON.parse(answer) as Record<string, unknown>
const proof = { tee_id: parsedAnswer.tee_id, tee_request_hash: parsedAnswer.tee_request_hash, tee_output_hash: parsedAnswer.tee_output_hash, tee_timestamp: parsedAnswer.tee_timestamp, tee_signature: parsedAnswer.tee_signature } as TeeProof
const outputCanonical = canonicalOutputOf(parsedAnswer)
process.stderr.write(`wire body ${prepared.wireBody.length} B, answer ${answer.length} B, canonical output ${outputCanonical.length} chars\n`)

row('JSON.parse of the client body (Fastify does this)', time(() => JSON.parse(rawBody)))
row('prepareChat (zod, wire body, canonical JSON, keccak request hash, reservation)', time(() => prepareChat(JSON.parse(rawBody), prices, limits)))
row('  of which keccakHex(wire-sized string) [@noble/hashes, pure JS]', time(() => keccakHex(prepared.wireBody)))
row('JSON.parse of the backend answer', time(() => JSON.parse(answer)))
row('canonicalOutputOf(answer)', time(() => canonicalOutputOf(parsedAnswer)))
row('verifyTeeProof (tee_id, hashes, RSA-PSS verify)', time(() => verifyTeeProof({ requestHash: prepared.requestHash, outputCanonical, proof, trustedKey: backend.publicKeyPem, expectedTeeId: backend.teeId }), 1000))
row('  of which keccakHex(canonical output)', time(() => keccakHex(outputCanonical)))
row('hashApiKey (sha256) + randomUUID request id', time(() => { hashApiKey('sk-x402-' + 'a'.repeat(43)); randomUUID() }))
row('formatLedger ×2 (charged, balance headers)', time(() => { formatLedger(123456789n); formatLedger(99999999999999n) }))

async function ledgerRound (ledger: LedgerStore, label: string): Promise<void> {
  const accounts: { account: string, key: string }[] = []
  for (let i = 0; i < 8; i++) {
    const account = payerAccount(84532, `0x${randomBytes(20).toString('hex')}`)
    await ledger.grant({ id: `g:${account}`, account, amount: 10n ** 18n, reason: 'micro' })
    const k = generateApiKey()
    await ledger.createApiKey({ id: k.id, account, name: null, prefix: k.prefix, hash: k.hash, createdAt: Date.now(), maxPerAccount: 20 })
    accounts.push({ account, key: k.secret })
  }
  const ops: Record<string, number> = {}
  const add = (op: string, t0: number) => { ops[op] = (ops[op] ?? 0) + performance.now() - t0 }
  const one = async (i: number) => {
    const { account, key } = accounts[i % accounts.length]
    const id = `req_${randomUUID().replace(/-/g, '')}`
    let t = performance.now()
    await ledger.findApiKeyByHash(createHash('sha256').update(key).digest('hex')); add('findApiKeyByHash', t)
    t = performance.now()
    await ledger.reserve({ id: `reserve:${id}`, account, amount: prepared.reservation, timeoutAt: Date.now() + 900_000, reference: id, maxOpen: 16 }); add('reserve', t)
    t = performance.now()
    await ledger.putReceipt({ id, payer: account, model: 'gpt-4.1', stream: false, status: 'pending', promptTokens: 0, completionTokens: 0, reservedAmount: prepared.reservation, chargedAmount: 0n, upstreamCost: null, verified: null, verifyError: null, proof: null, paymentTx: null, errorCode: null, createdAt: Date.now(), completedAt: null }); add('putReceipt', t)
    t = performance.now()
    await ledger.post({ pendingId: `reserve:${id}`, id: `post:${id}`, amount: 1000n }); add('post', t)
    t = performance.now()
    await ledger.balance(account); add('balance', t)
    t = performance.now()
    await ledger.updateReceipt(id, { status: 'completed', promptTokens: 10, completionTokens: 20, chargedAmount: 1000n, upstreamCost: '0.00001', verified: true, proof: proof as never, completedAt: Date.now() }); add('updateReceipt', t)
  }
  const warm = Math.min(2000, N)
  for (let i = 0; i < warm; i++) await one(i)
  for (const k of Object.keys(ops)) delete ops[k]
  const total = await timeAsync(one)
  const n = N * ROUNDS
  for (const [op, ms] of Object.entries(ops)) row(`  ${label}: ${op}`, (ms * 1000) / n)
  row(`${label}: the six ledger calls of one request`, total)
}

await ledgerRound(await openSqliteLedger(':memory:'), 'ledger (:memory:)')
await ledgerRound(instrumentLedger(await openSqliteLedger(':memory:'), new GatewayMetrics()), 'ledger (:memory:) through instrumentLedger')

const m = new GatewayMetrics()
row('prom-client: 1 histogram observe with a label', time(() => m.upstreamLatency.observe({ model: 'gpt-4.1' }, 0.003)))

console.log('\n| µs per call | what |\n|---:|---|')
for (const [name, us] of rows) console.log(`| ${us.toFixed(1)} | ${name.trim()} |`)
