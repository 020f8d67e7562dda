import t from 'tap'
import { payerAccount } from '../src/ledger/accounts.ts'
import { parseDecimal } from '../src/money.ts'
import { withStack, startGateway, buyApiKey, postChat, chatBody, ADMIN_TOKEN } from './helpers/gateway.ts'

t.test('one payer\'s credential never reads another payer\'s data', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const keyA = await buyApiKey(gw, stack.payer.privateKey, 'A')
  const keyB = await buyApiKey(gw, stack.payer2.privateKey, 'B')
  const asA = { authorization: `Bearer ${keyA}` }
  const asB = { authorization: `Bearer ${keyB}` }
  const resB = await postChat(gw, chatBody('B private question'), asB)
  t.equal(resB.status, 200)
  const receiptB = resB.headers.get('x-request-id')!

  const get = (path: string, headers: Record<string, string>) => fetch(`${gw.url}${path}`, { headers })
  t.equal((await get(`/v1/receipts/${receiptB}`, asB)).status, 200, 'B reads its own receipt')
  const aReadsB = await get(`/v1/receipts/${receiptB}`, asA)
  t.equal(aReadsB.status, 404, 'A gets 404 for B\'s receipt')
  t.equal((await aReadsB.json()).error.code, 'not_found')
  t.equal((await get('/v1/receipts/req_doesnotexist', asA)).status, 404, 'indistinguishable from a missing one')

  const usageA = await (await get('/v1/usage', asA)).json()
  t.equal(usageA.account, payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(usageA.data.reduce((n: number, d: { requests: number }) => n + d.requests, 0), 0, 'A\'s usage does not include B\'s request')
  const usageB = await (await get('/v1/usage', asB)).json()
  t.equal(usageB.data[0].requests, 1)
  t.equal(usageB.data[0].verified_requests, 1)
  const csv = await (await get('/v1/usage?format=csv', asB)).text()
  t.match(csv, /^day,requests,verified_requests,share_verified,prompt_tokens,completion_tokens,credit_spent\n\d{4}-\d{2}-\d{2},1,1,1,/)

  const credA = await (await get('/v1/credits', asA)).json()
  t.equal(credA.account, payerAccount(stack.chain.chainId, stack.payer.address))
  t.equal(credA.balance, '1')
  t.notOk(JSON.stringify(credA).includes(receiptB), 'A\'s transfers do not mention B\'s request')

  const keysA = await (await get('/v1/keys', asA)).json()
  const keysB = await (await get('/v1/keys', asB)).json()
  t.equal(keysA.data.length, 1)
  t.not(keysA.data[0].id, keysB.data[0].id)
  t.notOk(JSON.stringify(keysA).includes(keyA), 'the secret is never listed (only its prefix)')
  t.equal(keysA.data[0].prefix, keyA.slice(0, 14))
  const revokeOther = await fetch(`${gw.url}/v1/keys/${keysB.data[0].id}`, { method: 'DELETE', headers: asA })
  t.equal(revokeOther.status, 404, 'A cannot revoke B\'s key')
  t.equal((await postChat(gw, chatBody('still works'), asB)).status, 200, 'B\'s key still works')
  const revokeOwn = await fetch(`${gw.url}/v1/keys/${keysA.data[0].id}`, { method: 'DELETE', headers: asA })
  t.equal(revokeOwn.status, 200)
  t.equal((await postChat(gw, chatBody('after revoke'), asA)).status, 401, 'a revoked key stops working')
  t.equal((await get('/v1/credits', {})).status, 401, 'no credential, no data')
})

t.test('admin: audited grants and clawbacks, any account, usage export; nothing without the token', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack)
  t.teardown(() => gw.close())
  const account = payerAccount(stack.chain.chainId, stack.payer.address)
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }
  const post = (path: string, body: unknown, headers = admin) => fetch(`${gw.url}/admin${path}`, { method: 'POST', headers, body: JSON.stringify(body) })

  t.equal((await post(`/accounts/${account}/grant`, { amount: '2.5', reason: 'welcome' }, { 'content-type': 'application/json' } as typeof admin)).status, 401)
  t.equal((await post(`/accounts/${account}/grant`, { amount: '2.5', reason: 'welcome' }, { authorization: `Bearer ${ADMIN_TOKEN}x`, 'content-type': 'application/json' })).status, 401)

  const g = await post(`/accounts/${account}/grant`, { amount: '2.5', reason: 'welcome credit', id: 'grant-welcome-1' })
  t.equal(g.status, 201)
  const again = await post(`/accounts/${account}/grant`, { amount: '2.5', reason: 'welcome credit', id: 'grant-welcome-1' })
  t.equal(again.status, 200, 'a retried grant with the same id is not granted twice')
  t.equal((await again.json()).duplicate, true)
  t.equal((await gw.app.ledger.balance(account)).available, parseDecimal('2.5', 9))

  const over = await post(`/accounts/${account}/clawback`, { amount: '3', reason: 'too much' })
  t.equal(over.status, 402)
  const c = await post(`/accounts/${account}/clawback`, { amount: '0.5', reason: 'correction' })
  t.equal(c.status, 201)
  t.equal((await c.json()).balance, '2')

  const view = await (await fetch(`${gw.url}/admin/accounts/${account}`, { headers: admin })).json()
  t.equal(view.balance, '2')
  t.same(view.transfers.map((x: { kind: string }) => x.kind).sort(), ['clawback', 'grant'])
  t.ok(view.transfers.every((x: { meta: unknown }) => x.meta !== undefined), 'transfers carry their audit metadata')

  const key = await buyApiKey(gw, stack.payer.privateKey)
  t.equal((await postChat(gw, chatBody('spend granted credit'), { authorization: `Bearer ${key}` })).status, 200)
  const csv = await (await fetch(`${gw.url}/admin/usage?format=csv`, { headers: admin })).text()
  t.match(csv, new RegExp(`^day,payer,requests.*\\n\\d{4}-\\d{2}-\\d{2},${account},1,1,`))
  t.equal((await fetch(`${gw.url}/admin/accounts`, { headers: { authorization: `Bearer ${key}` } })).status, 401, 'a payer key is not an admin token')
})

t.test('without ADMIN_TOKEN the admin API does not exist', async (t) => {
  const stack = await withStack(t)
  const gw = await startGateway(stack, { ADMIN_TOKEN: '' })
  t.teardown(() => gw.close())
  t.equal((await fetch(`${gw.url}/admin/accounts`)).status, 404)
})
