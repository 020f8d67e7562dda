import t from 'tap'
import { SYSTEM_ACCOUNTS } from '../src/ledger/accounts.ts'
import { upstreamCostUnits } from '../src/chat/charge.ts'
import { formatLedger, parseDecimal } from '../src/money.ts'
import { withStack, startGateway, chatBody, buyApiKey, postChat, ADMIN_TOKEN } from './helpers/gateway.ts'

// Upstream spend in the ledger, end to end: the reference enclave reports opengradient.cost_usd on
// every answer; each request books it (rounded up to a ledger unit) from system:revenue to
// system:upstream_cost, verified or not. Receipts show charged, upstream cost and margin; the admin
// margin report adds up to the receipts and to the ledger's accounts.

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` }
const units = (s: string) => (s.startsWith('-') ? -parseDecimal(s.slice(1), 9) : parseDecimal(s, 9))

t.test('every request books its upstream cost; receipts and the admin margin report agree with the ledger', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}` }
  const ledger = gw.app.ledger
  const costBefore = await ledger.balance(SYSTEM_ACCOUNTS.upstreamCost)
  t.equal(costBefore.creditsPosted, 0n, 'nothing booked before the first request')

  const ids: { id: string, verified: boolean }[] = []
  for (let i = 0; i < 3; i++) {
    const res = await postChat(gw, chatBody(`Question number ${i} about margins`), auth)
    t.equal(res.status, 200)
    ids.push({ id: res.headers.get('x-request-id')!, verified: true })
    await res.arrayBuffer()
  }
  const streamed = await postChat(gw, chatBody('Stream a margin', { stream: true }), auth)
  t.equal(streamed.status, 200)
  t.match(await streamed.text(), /"verified":\s*true/)
  ids.push({ id: streamed.headers.get('x-request-id')!, verified: true })

  // An answer whose proof fails: not charged, but the enclave billed it, so the cost is booked.
  stack.backend.setFault({ kind: 'bad_signature', count: 1 })
  const bad = await postChat(gw, chatBody('This proof will not verify'), auth)
  t.equal(bad.status, 502)
  t.equal((await bad.json()).error.code, 'proof_unverified')
  ids.push({ id: bad.headers.get('x-request-id')!, verified: false })
  stack.backend.setFault({ kind: 'bad_signature', count: 1 })
  const badStream = await postChat(gw, chatBody('Nor will this one', { stream: true }), auth)
  t.match(await badStream.text(), /"verified":\s*false/)
  ids.push({ id: badStream.headers.get('x-request-id')!, verified: false })

  let charged = 0n
  let cost = 0n
  for (const { id, verified } of ids) {
    const res = await fetch(`${gw.url}/v1/receipts/${id}`, { headers: admin })
    t.equal(res.status, 200)
    const rec = await res.json()
    const transfer = await ledger.getTransfer(`upstream:${id}`)
    t.ok(transfer, `${id}: an upstream cost transfer`)
    t.match(transfer, { kind: 'upstream_cost', debitAccount: SYSTEM_ACCOUNTS.revenue, creditAccount: SYSTEM_ACCOUNTS.upstreamCost, reference: id })
    const reported = String(transfer!.meta?.cost_usd)
    t.ok(transfer!.amount > 0n)
    t.equal(transfer!.amount, upstreamCostUnits(reported), `${id}: the reported cost_usd, rounded up to ledger units`)
    if (rec.upstream_cost_usd !== null) t.equal(rec.upstream_cost_usd, reported, 'the receipt shows the same report')
    t.equal(rec.upstream_cost, formatLedger(transfer!.amount), 'the receipt shows the booked cost')
    t.equal(units(rec.margin), units(rec.charged) - transfer!.amount, 'margin = charged − upstream cost')
    if (verified) t.ok(units(rec.charged) > 0n, 'a verified answer is charged')
    else {
      t.equal(rec.charged, '0', 'an unverified answer is free for the payer')
      t.ok(units(rec.margin) < 0n, 'and shows as a loss')
    }
    charged += units(rec.charged)
    cost += transfer!.amount
  }

  const costAccount = await ledger.balance(SYSTEM_ACCOUNTS.upstreamCost)
  t.equal(costAccount.creditsPosted - costAccount.debitsPosted, cost, 'system:upstream_cost = the sum of the receipts\' upstream costs')
  const revenue = await ledger.balance(SYSTEM_ACCOUNTS.revenue)
  t.equal(revenue.creditsPosted, charged, 'revenue credited = the sum of the charges')
  t.equal(revenue.creditsPosted - revenue.debitsPosted, charged - cost, 'system:revenue nets to the margin')
  await ledger.checkInvariants()

  const report = await (await fetch(`${gw.url}/admin/margin`, { headers: admin })).json()
  t.same(report.total, { requests: ids.length, revenue: formatLedger(charged), upstream_cost: formatLedger(cost), margin: formatLedger(charged - cost) })
  t.same(report.models, [{ model: 'gpt-4.1', requests: ids.length, revenue: formatLedger(charged), upstream_cost: formatLedger(cost), margin: formatLedger(charged - cost) }])
  const csv = await (await fetch(`${gw.url}/admin/margin?format=csv`, { headers: admin })).text()
  t.equal(csv, `model,requests,revenue,upstream_cost,margin\ngpt-4.1,${ids.length},${formatLedger(charged)},${formatLedger(cost)},${formatLedger(charged - cost)}\n`)
  const empty = await (await fetch(`${gw.url}/admin/margin?from=2020-01-01&to=2020-01-31`, { headers: admin })).json()
  t.same(empty.models, [])
  t.same(empty.total, { requests: 0, revenue: '0', upstream_cost: '0', margin: '0' })

  t.equal((await fetch(`${gw.url}/admin/margin`)).status, 401, 'admin only')
  t.equal((await fetch(`${gw.url}/admin/margin`, { headers: auth })).status, 401, 'a payer\'s key is not the admin token')
  const mine = await (await fetch(`${gw.url}/v1/receipts?limit=50`, { headers: auth })).json()
  t.equal(mine.data.length, ids.length)
  t.ok(mine.data.every((r: { upstream_cost: string | null, margin: string }) => r.upstream_cost !== null && typeof r.margin === 'string'), 'the list shows them too')
})
