import { readFile } from 'node:fs/promises'
import t from 'tap'
import { x402Client } from '@x402/core/client'
import type { PaymentPayload, PaymentRequired, PaymentRequirements } from '@x402/core/types'
import { toFacilitatorEvmSigner } from '@x402/evm'
import { ExactEvmScheme as ExactEvmClientScheme } from '@x402/evm/exact/client'
import { ExactEvmScheme as ExactEvmFacilitatorScheme } from '@x402/evm/exact/facilitator'
import {
  decodeFunctionData,
  domainSeparator,
  isAddressEqual,
  parseEventLogs,
  publicActions,
  toHex,
  type Address,
  type Hex,
} from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import {
  balanceOf,
  deployTestUSD,
  loadTestUSDArtifact,
  mintTestUSD,
  startLocalChain,
  type LocalChain,
} from '../local-stack/chain.ts'
import { compileTestUSD, TEST_USD_ARTIFACT } from '../local-stack/contracts/compile.ts'

const BASE_SEPOLIA_USDC: Address = '0x036CbD53842c5426634e7929541eC2318f3dCF7e'

const chain = await startLocalChain()
t.teardown(() => chain.stop())
const [facilitatorAcct, payer, payee, stranger] = chain.accounts
const artifact = await loadTestUSDArtifact()

function facilitatorSigner(c: LocalChain, index: number) {
  const wallet = c.walletClient(index).extend(publicActions)
  return toFacilitatorEvmSigner({
    address: wallet.account.address,
    getCode: (args) => wallet.getCode(args),
    readContract: (args) => wallet.readContract({ ...args, args: args.args ?? [] }),
    verifyTypedData: (args) => wallet.verifyTypedData(args as Parameters<typeof wallet.verifyTypedData>[0]),
    writeContract: (args) => wallet.writeContract({ ...args, args: args.args ?? [] }),
    sendTransaction: (args) => wallet.sendTransaction(args),
    waitForTransactionReceipt: (args) => wallet.waitForTransactionReceipt(args),
  })
}

function requirementsFor(asset: Address, extra: { name: string; version: string }): PaymentRequirements {
  return {
    scheme: 'exact',
    network: chain.network,
    asset,
    amount: '10000',
    payTo: payee.address,
    maxTimeoutSeconds: 300,
    extra,
  }
}

function paymentRequiredFor(requirements: PaymentRequirements): PaymentRequired {
  return { x402Version: 2, resource: { url: 'http://local.test/paid' }, accepts: [requirements] }
}

function payerClient(allowedAsset?: Address): x402Client {
  const client = new x402Client()
  client.register(chain.network, new ExactEvmClientScheme(privateKeyToAccount(payer.privateKey)))
  // The x402 client refuses tokens missing from its default-asset table unless allowlisted.
  if (allowedAsset) client.setSpendControls({ allowedAssets: [{ network: chain.network, asset: allowedAsset }] })
  return client
}

async function readToken<T>(token: Address, functionName: string, args: readonly unknown[] = []): Promise<T> {
  return (await chain.publicClient.readContract({ address: token, abi: artifact.abi, functionName, args })) as T
}

/** Simulates a token call from `from` and returns the revert text ('' when it would succeed). */
async function revertReason(token: Address, from: Address, functionName: string, args: readonly unknown[]) {
  try {
    await chain.publicClient.simulateContract({ address: token, abi: artifact.abi, functionName, args, account: from })
    return ''
  } catch (err) {
    return (err as Error).message
  }
}

t.test('committed artifact matches a fresh compile', async (t) => {
  const committed = JSON.parse(await readFile(TEST_USD_ARTIFACT, 'utf8'))
  const fresh = compileTestUSD()
  t.equal(committed.sourceHash, fresh.sourceHash, 'run `npm run build:contracts` after editing TestUSD.sol')
  t.equal(committed.bytecode, fresh.bytecode)
  t.same(committed.abi, fresh.abi)
  t.match(committed.solcVersion, /^0\.8\.37\+/)
})

t.test('dev chain', async (t) => {
  t.equal(chain.chainId, 84532)
  t.equal(chain.network, 'eip155:84532')
  t.equal(await chain.publicClient.getChainId(), 84532)
  t.ok(chain.accounts.length >= 10)
  for (const acct of chain.accounts) {
    t.equal(privateKeyToAccount(acct.privateKey).address, acct.address)
  }
  t.equal(chain.accounts[0].address, '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266')
})

t.test('token metadata and EIP-712 domain', async (t) => {
  const token = await deployTestUSD(chain, { name: 'USD Coin', version: '2', symbol: 'USDC' })
  t.equal(await readToken(token, 'name'), 'USD Coin')
  t.equal(await readToken(token, 'symbol'), 'USDC')
  t.equal(await readToken(token, 'version'), '2')
  t.equal(await readToken(token, 'decimals'), 6)
  t.equal(await readToken(token, 'owner'), facilitatorAcct.address)
  const domain = { name: 'USD Coin', version: '2', chainId: chain.chainId, verifyingContract: token } as const
  t.equal(await readToken(token, 'DOMAIN_SEPARATOR'), domainSeparator({ domain }))
  const [, name, version, chainId, verifyingContract] = await readToken<unknown[]>(token, 'eip712Domain')
  t.same([name, version, chainId, verifyingContract], ['USD Coin', '2', 84532n, token])

  t.match(
    await revertReason(token, stranger.address, 'mint', [stranger.address, 1n]),
    /caller is not the owner/,
  )
})

t.test('x402 exact: official client signs, official facilitator verifies and settles', async (t) => {
  const token = await deployTestUSD(chain, { name: 'USDC', version: '2' })
  await mintTestUSD(chain, token, payer.address, 1_000_000n)
  const requirements = requirementsFor(token, { name: 'USDC', version: '2' })

  const payload: PaymentPayload = await payerClient(token).createPaymentPayload(paymentRequiredFor(requirements))
  t.equal(payload.x402Version, 2)
  t.same(payload.accepted, requirements)
  const auth = (payload.payload as { authorization: { from: string; to: string; value: string; nonce: Hex } })
    .authorization
  t.equal(auth.from, payer.address)
  t.equal(auth.value, '10000')

  const facilitator = new ExactEvmFacilitatorScheme(facilitatorSigner(chain, 0))
  const verified = await facilitator.verify(payload, requirements)
  t.same(verified, { isValid: true, invalidReason: undefined, payer: payer.address })

  const settled = await facilitator.settle(payload, requirements)
  t.equal(settled.success, true, 'settles', { settled })
  t.match(settled.transaction, /^0x[0-9a-f]{64}$/)
  t.equal(settled.network, chain.network)

  const hash = settled.transaction as Hex
  const [receipt, tx] = await Promise.all([
    chain.publicClient.getTransactionReceipt({ hash }),
    chain.publicClient.getTransaction({ hash }),
  ])
  t.equal(receipt.status, 'success')
  t.ok(isAddressEqual(tx.from, facilitatorAcct.address), 'facilitator pays gas')
  const call = decodeFunctionData({ abi: artifact.abi, data: tx.input })
  t.equal(call.functionName, 'transferWithAuthorization')
  t.equal(call.args?.length, 9, 'EOA signatures go through the (v, r, s) overload')

  const events = parseEventLogs({ abi: artifact.abi, logs: receipt.logs }) as unknown as {
    eventName: string
    address: Address
    args: Record<string, unknown>
  }[]
  const transfer = events.find((e) => e.eventName === 'Transfer')
  t.ok(transfer && isAddressEqual(transfer.address, token), 'Transfer comes from the token')
  t.same(transfer?.args, { from: payer.address, to: payee.address, value: 10000n })
  t.same(events.find((e) => e.eventName === 'AuthorizationUsed')?.args, {
    authorizer: payer.address,
    nonce: auth.nonce,
  })

  t.equal(await balanceOf(chain, token, payer.address), 990_000n)
  t.equal(await balanceOf(chain, token, payee.address), 10_000n)
  t.equal(await readToken(token, 'authorizationState', [payer.address, auth.nonce]), true)

  const replay = await facilitator.settle(payload, requirements)
  t.equal(replay.success, false, 'same authorization cannot settle twice')
  t.equal(replay.errorReason, 'invalid_exact_evm_nonce_already_used')
  const reverify = await facilitator.verify(payload, requirements)
  t.equal(reverify.isValid, false, 'verify simulates on-chain and sees the used nonce')
  t.match(reverify.invalidMessage, /authorization is used or canceled/)
  t.equal(await balanceOf(chain, token, payee.address), 10_000n)

  // Signed for 'USDC' but checked against another domain name: off-chain signature check fails.
  const mismatched = await facilitator.verify(payload, { ...requirements, extra: { name: 'USD Coin', version: '2' } })
  t.equal(mismatched.isValid, false)
  t.equal(mismatched.invalidReason, 'invalid_exact_evm_signature')

  // Consistently wrong domain: passes the off-chain check, rejected by the token's own domain.
  const wrongRequirements = requirementsFor(token, { name: 'USD Coin', version: '2' })
  const wrongPayload = await payerClient(token).createPaymentPayload(paymentRequiredFor(wrongRequirements))
  const wrongVerify = await facilitator.verify(wrongPayload, wrongRequirements)
  t.equal(wrongVerify.isValid, false)
  t.match(wrongVerify.invalidMessage, /invalid signature/)
  const wrongSettle = await facilitator.settle(wrongPayload, wrongRequirements)
  t.equal(wrongSettle.success, false)
  t.equal(wrongSettle.errorReason, 'invalid_exact_evm_signature')
  t.equal(await balanceOf(chain, token, payer.address), 990_000n)
})

t.test('EIP-3009 surface beyond what the facilitator calls', async (t) => {
  const token = await deployTestUSD(chain, { name: 'USDC', version: '2' })
  await mintTestUSD(chain, token, payer.address, 1_000n)
  const signer = privateKeyToAccount(payer.privateKey)
  const domain = { name: 'USDC', version: '2', chainId: chain.chainId, verifyingContract: token } as const
  const now = BigInt(Math.floor(Date.now() / 1000))
  let nonceCounter = 0
  const authorize = async (
    primaryType: 'TransferWithAuthorization' | 'ReceiveWithAuthorization',
    overrides: Partial<{ value: bigint; validAfter: bigint; validBefore: bigint }> = {},
  ) => {
    const message = {
      from: payer.address,
      to: payee.address,
      value: 100n,
      validAfter: now - 60n,
      validBefore: now + 600n,
      nonce: toHex(++nonceCounter, { size: 32 }),
      ...overrides,
    }
    const fields = [
      { name: 'from', type: 'address' },
      { name: 'to', type: 'address' },
      { name: 'value', type: 'uint256' },
      { name: 'validAfter', type: 'uint256' },
      { name: 'validBefore', type: 'uint256' },
      { name: 'nonce', type: 'bytes32' },
    ]
    const signature = await signer.signTypedData({ domain, types: { [primaryType]: fields }, primaryType, message })
    const args = [message.from, message.to, message.value, message.validAfter, message.validBefore, message.nonce]
    return { message, signature, args: [...args, signature] as const }
  }
  const send = async (from: number, functionName: string, args: readonly unknown[]) => {
    const hash = await chain.walletClient(from).writeContract({ address: token, abi: artifact.abi, functionName, args })
    return chain.publicClient.waitForTransactionReceipt({ hash })
  }

  const viaBytes = await authorize('TransferWithAuthorization')
  t.equal((await send(3, 'transferWithAuthorization', viaBytes.args)).status, 'success', 'bytes overload')
  t.equal(await balanceOf(chain, token, payee.address), 100n)

  const expired = await authorize('TransferWithAuthorization', { validBefore: now - 1n })
  t.match(await revertReason(token, stranger.address, 'transferWithAuthorization', expired.args), /authorization is expired/)
  const early = await authorize('TransferWithAuthorization', { validAfter: now + 600n, validBefore: now + 1200n })
  t.match(await revertReason(token, stranger.address, 'transferWithAuthorization', early.args), /not yet valid/)
  const tooMuch = await authorize('TransferWithAuthorization', { value: 10_000n })
  t.match(await revertReason(token, stranger.address, 'transferWithAuthorization', tooMuch.args), /exceeds balance/)
  const tampered = [...viaBytes.args] as unknown[]
  tampered[5] = toHex(999, { size: 32 })
  t.match(await revertReason(token, stranger.address, 'transferWithAuthorization', tampered), /invalid signature/)

  const receive = await authorize('ReceiveWithAuthorization')
  t.match(await revertReason(token, stranger.address, 'receiveWithAuthorization', receive.args), /caller must be the payee/)
  t.equal((await send(2, 'receiveWithAuthorization', receive.args)).status, 'success')
  t.equal(await balanceOf(chain, token, payee.address), 200n)

  const toCancel = await authorize('TransferWithAuthorization')
  const cancelSig = await signer.signTypedData({
    domain,
    types: { CancelAuthorization: [{ name: 'authorizer', type: 'address' }, { name: 'nonce', type: 'bytes32' }] },
    primaryType: 'CancelAuthorization',
    message: { authorizer: payer.address, nonce: toCancel.message.nonce },
  })
  const cancelReceipt = await send(3, 'cancelAuthorization', [payer.address, toCancel.message.nonce, cancelSig])
  const cancelEvents = parseEventLogs({ abi: artifact.abi, logs: cancelReceipt.logs }) as unknown as {
    eventName: string
  }[]
  t.same(cancelEvents.map((e) => e.eventName), ['AuthorizationCanceled'])
  t.match(
    await revertReason(token, stranger.address, 'transferWithAuthorization', toCancel.args),
    /authorization is used or canceled/,
  )
})

t.test('token installed at the canonical Base Sepolia USDC address', async (t) => {
  const token = await deployTestUSD(chain, { name: 'USDC', version: '2', at: BASE_SEPOLIA_USDC })
  t.equal(token, BASE_SEPOLIA_USDC)
  t.equal(await readToken(token, 'name'), 'USDC')
  await mintTestUSD(chain, token, payer.address, 50_000n)

  const requirements = requirementsFor(token, { name: 'USDC', version: '2' })
  // No allowlist: the address is in @x402/evm's default-asset table, so default spend controls pass.
  const payload = await payerClient().createPaymentPayload(paymentRequiredFor(requirements))
  const facilitator = new ExactEvmFacilitatorScheme(facilitatorSigner(chain, 0))
  const settled = await facilitator.settle(payload, requirements)
  t.equal(settled.success, true, 'settles', { settled })
  t.equal(await balanceOf(chain, token, payer.address), 40_000n)
})
