import { existsSync } from 'node:fs'
import { formatUnits, maxUint256 } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { loadConfig, ConfigError } from '../config/schema.ts'
import { approvePermit2, UpstreamPayer } from '../src/upstream/payment.ts'

// `npm run approve-permit2 [-- --amount <atomic>]`: the one-time, opt-in approval that lets
// Permit2 move the upstream payment token (UPSTREAM_PAYMENT_ASSET, OPG by default) from the
// operator wallet (UPSTREAM_PAYER_PRIVATE_KEY), on UPSTREAM_PAYMENT_RPC_URL (or RPC_URL). Reads
// the same configuration as the gateway; sends one `approve(Permit2, amount)` transaction
// (unlimited unless --amount is given), then re-runs the start-up check.

if (existsSync('.env')) process.loadEnvFile('.env')
let config
try {
  config = loadConfig(process.env)
} catch (err) {
  if (err instanceof ConfigError) { process.stderr.write(`approve-permit2: ${err.message}\n`); process.exit(78) }
  throw err
}
const up = config.upstream
if (!up.payerPrivateKey) { process.stderr.write('approve-permit2: UPSTREAM_PAYER_PRIVATE_KEY is not set\n'); process.exit(78) }
if (!up.payment.rpcUrl) { process.stderr.write('approve-permit2: set UPSTREAM_PAYMENT_RPC_URL (or RPC_URL) to the chain of UPSTREAM_PAYMENT_ASSET\n'); process.exit(78) }
const i = process.argv.indexOf('--amount')
const amount = i > 0 ? BigInt(process.argv[i + 1] ?? '') : maxUint256
const payer = new UpstreamPayer({ payerPrivateKey: up.payerPrivateKey, settlementType: up.settlementType, ...up.payment })
const before = await payer.checkAllowance()
process.stdout.write(`wallet ${privateKeyToAccount(up.payerPrivateKey).address}, token ${up.payment.asset}, allowance before: ${before.allowance ?? 'unknown'}\n`)
const tx = await approvePermit2(up.payment.rpcUrl, up.payerPrivateKey, up.payment.asset, amount)
const after = await payer.checkAllowance()
process.stdout.write(`approve tx ${tx}; allowance now ${after.allowance === maxUint256 ? 'unlimited' : after.allowance}; balance ${after.balance !== undefined ? formatUnits(after.balance, 0) : 'unknown'} (atomic)\n`)
process.stdout.write(after.ok ? 'upstream payer ready\n' : `still missing: ${after.problem}\n`)
process.exit(after.ok ? 0 : 1)
