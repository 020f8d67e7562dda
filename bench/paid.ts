import { decodePaymentRequiredHeader, encodePaymentSignatureHeader } from '@x402/core/http'
import { x402ClientFor } from '../test/helpers/gateway.ts'

// Payments for (e): one 402 per payment (as a wallet would get it), each answered by the official
// client's createPaymentPayload (fresh EIP-3009 nonce), signed before the clock starts.

export async function presignPayments (gatewayUrl: string, privateKey: `0x${string}`, body: string, count: number, concurrency = 4): Promise<string[]> {
  const client = x402ClientFor(privateKey)
  const out: string[] = []
  let left = count
  const worker = async () => {
    while (left > 0) {
      left--
      const res = await fetch(`${gatewayUrl}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      await res.arrayBuffer()
      if (res.status !== 402) throw new Error(`expected 402, got ${res.status}`)
      const required = decodePaymentRequiredHeader(res.headers.get('payment-required')!)
      out.push(encodePaymentSignatureHeader(await client.createPaymentPayload(required)))
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return out
}
