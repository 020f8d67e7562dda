import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { parseDecimal } from '../src/money.ts'
import { withStack, startGateway, chatBody, payingFetch } from './helpers/gateway.ts'

async function readSse (res: Response) {
  const arrivals: { at: number, text: string }[] = []
  const decoder = new TextDecoder()
  const reader = res.body!.getReader()
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    arrivals.push({ at: performance.now(), text: decoder.decode(value, { stream: true }) })
  }
  const all = arrivals.map((a) => a.text).join('')
  const frames = all.split('\n\n').filter((f) => f.startsWith('data: ')).map((f) => f.slice(6))
  return { arrivals, frames }
}

t.test('a streamed answer arrives chunk by chunk while the upstream is still generating, with proof and charge in the final frame', async (t) => {
  const delay = 60
  const stack = await withStack(t, { chunkDelayMs: delay })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const pay = payingFetch(stack.payer.privateKey)
  const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody('stream please', { stream: true, max_tokens: 24 })) })
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/event-stream/)
  t.ok(res.headers.get('payment-response'))
  const { arrivals, frames } = await readSse(res)

  t.equal(frames.at(-1), '[DONE]')
  const final = JSON.parse(frames.at(-2)!)
  t.type(final.tee_signature, 'string', 'the proof frame is passed on')
  t.equal(final.x402_gateway.verified, true)
  t.equal(final.x402_gateway.tee_id, stack.backend.teeId)
  t.ok(parseDecimal(final.x402_gateway.charged, 9) > 0n)
  t.ok(final.usage?.completion_tokens > 0, 'usage was forced on upstream')

  const contentFrames = frames.slice(0, -2).map((f) => JSON.parse(f)).filter((f) => f.choices?.[0]?.delta?.content)
  t.ok(contentFrames.length >= 10, `${contentFrames.length} content frames`)
  // Not a speed assertion: if the gateway buffered, every byte would arrive in one burst after the
  // upstream finished. Arrivals spread over most of the upstream's own pacing prove pass-through.
  const contentArrivals = arrivals.filter((a) => a.text.includes('"content"'))
  t.ok(contentArrivals.length >= 5, `${contentArrivals.length} separate reads carried content`)
  const span = contentArrivals.at(-1)!.at - contentArrivals[0].at
  const upstreamPacing = (contentFrames.length - 1) * delay
  t.ok(span >= upstreamPacing * 0.5, `content spread over ${span.toFixed(0)} ms of the upstream's ${upstreamPacing} ms`)

  const bal = await gw.app.ledger.balance(payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(bal.available, 1_000_000_000n - parseDecimal(final.x402_gateway.charged, 9), 'the charge in the final frame is what was posted')
  t.equal(parseDecimal(final.x402_gateway.balance, 9), bal.available)
  t.equal(bal.debitsPending, 0n)
})

t.test('a stream cut by the upstream, or with a bad proof, is reported unverified and not charged', async (t) => {
  const stack = await withStack(t, { chunkDelayMs: 5 })
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const pay = payingFetch(stack.payer.privateKey)
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  let deposits = 0n
  for (const kind of ['abort_mid_stream', 'bad_signature', 'tampered_output', 'in_band_error']) {
    stack.backend.setFault({ kind } as never)
    const res = await pay(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(chatBody(`stream ${kind}`, { stream: true })) })
    deposits += 1_000_000_000n
    t.equal(res.status, 200, `${kind}: the stream had started`)
    const { frames } = await readSse(res)
    stack.backend.setFault(null)
    t.equal(frames.at(-1), '[DONE]', `${kind}: the client still gets a clean end`)
    const last = JSON.parse(frames.at(-2)!)
    t.equal(last.x402_gateway.verified, false, `${kind}: unverified`)
    t.equal(last.x402_gateway.charged, '0', `${kind}: not charged`)
    const bal = await gw.app.ledger.balance(account)
    t.equal(bal.available, deposits, `${kind}: balance untouched`)
    t.equal(bal.debitsPending, 0n)
  }
  t.equal((await gw.app.ledger.totals()).sumOfAllAccounts, 0n)
})
