import t from 'tap'
import { withStack, startGateway, chatBody, payingFetch, buyApiKey, postChat } from './helpers/gateway.ts'

function parse (text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const i = line.lastIndexOf(' ')
    out.set(line.slice(0, i), Number(line.slice(i + 1)))
  }
  return out
}

t.test('a scripted workload moves exactly the counters it should, with bounded labels', async (t) => {
  const stack = await withStack(t, { chunkDelayMs: 1 })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const scrape = async () => parse(await (await fetch(`${gw.url}/metrics`)).text())
  const before = await scrape()
  const delta = (after: Map<string, number>, key: string) => (after.get(key) ?? 0) - (before.get(key) ?? 0)

  // Workload: one unpaid request (402), one paid (402 then 200), one key purchase (402 then 201),
  // two key-paid answers (one streamed), one unverifiable answer.
  t.equal((await postChat(gw, chatBody('unpaid'))).status, 402)
  t.equal((await payingFetch(stack.payer.privateKey)(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody('paid')) })).status, 200)
  const key = await buyApiKey(gw, stack.payer.privateKey)
  const auth = { authorization: `Bearer ${key}` }
  const ok = await postChat(gw, chatBody('by key'), auth)
  t.equal(ok.status, 200)
  const streamed = await postChat(gw, chatBody('streamed', { stream: true }), auth)
  await streamed.text()
  stack.backend.setFault({ kind: 'bad_signature', count: 1 })
  t.equal((await postChat(gw, chatBody('unverifiable'), auth)).status, 502)

  const after = await scrape()
  t.equal(delta(after, 'gateway_payment_required_total{route="/v1/chat/completions"}'), 2, '402s on the chat route')
  t.equal(delta(after, 'gateway_payment_required_total{route="/v1/keys"}'), 1)
  t.equal(delta(after, 'gateway_payments_total{result="settled"}'), 2, 'two payments settled')
  t.equal(delta(after, 'gateway_payments_total{result="verified"}'), 2)
  t.equal(delta(after, 'gateway_deposits_asset_total'), 2, 'two deposits of 1.00')
  t.equal(delta(after, 'gateway_proof_verifications_total{result="verified"}'), 3)
  t.equal(delta(after, 'gateway_proof_verifications_total{result="signature"}'), 1)
  t.equal(delta(after, 'gateway_requests_total{route="/v1/chat/completions",status_class="2xx"}'), 3)
  t.equal(delta(after, 'gateway_requests_total{route="/v1/chat/completions",status_class="5xx"}'), 1)
  t.ok(delta(after, 'gateway_tokens_total{model="gpt-4.1",direction="out"}') > 0)
  t.ok(delta(after, 'gateway_debits_asset_total') > 0)
  t.equal(after.get('gateway_reservations_open'), 0)
  t.equal(after.get('gateway_streams_in_flight'), 0)
  t.ok((after.get('gateway_upstream_latency_seconds_count{model="gpt-4.1"}') ?? 0) >= 4)
  t.ok((after.get('gateway_time_to_first_token_seconds_count{model="gpt-4.1"}') ?? 0) >= 1)
  t.equal(delta(after, 'gateway_overhead_seconds_count'), 2, 'overhead observed for each verified non-streaming answer')
  t.ok([...after.keys()].some((k) => k.startsWith('gateway_ledger_operation_seconds_count{op="reserve"}')))

  const text = await (await fetch(`${gw.url}/metrics`)).text()
  t.notMatch(text, /0x[0-9a-fA-F]{40}/, 'no payer address in any label')
  t.notMatch(text, /req_[0-9a-f]{32}/, 'no request id in any label')
})
