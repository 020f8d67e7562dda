import t from 'tap'
import { readFileSync } from 'node:fs'
import { parseJson, pythonJsonDumps, type JsonObject } from '../src/proof/json.ts'
import { buildWireRequest, canonicalRequestJson, requestHash, serializeWireBody } from '../src/proof/canonical.ts'
import { canonicalOutputOf, StreamAccumulator } from '../src/proof/output.ts'
import { keccakHex, teeMessageHash } from '../src/proof/hash.ts'
import { teeIdForPublicKey, verifyTeeProof, type VerifyStep } from '../src/proof/verify.ts'

// OpenGradient's own reference code produced these (fixtures README): every canonical string,
// hash and verdict must come out identical. The file is read with the lexeme-keeping parser,
// because `number_formatting_in_tools` holds numbers JSON.parse cannot keep (1.0, 2^64-ish ints).

const file = parseJson(readFileSync(new URL('./fixtures/opengradient-tee-vectors.json', import.meta.url))) as JsonObject
const keys = file.keys as Record<string, Record<string, string>>
const vectors = file.vectors as JsonObject[]

// The SDK's error messages start with these; map them to our failing steps.
const STEP_OF: Array<[string, VerifyStep]> = [
  ['tee_id mismatch', 'tee_id'],
  ['request hash mismatch', 'request_hash'],
  ['output hash mismatch', 'output_hash'],
  ['RSA-PSS signature verification failed', 'signature'],
]

function streamFrames (chunks: string[]): unknown[] {
  const frames: unknown[] = []
  for (const chunk of chunks) {
    for (const line of chunk.split(/\r?\n/)) {
      const l = line.trim()
      if (!l.startsWith('data:')) continue
      const payload = l.slice(5).trim()
      if (payload === '' || payload === '[DONE]') continue
      frames.push(parseJson(payload))
    }
  }
  return frames
}

t.test('the fixture file is the one described', async (t) => {
  t.equal(vectors.length, 52)
  t.equal(vectors.filter((v) => v.expect_valid === true).length, 41)
  t.equal(teeIdForPublicKey(keys.primary.public_key_pem), keys.primary.tee_id)
  t.equal(teeIdForPublicKey(Buffer.from(keys.primary.public_key_der_hex, 'hex')), keys.primary.tee_id)
  t.equal(teeIdForPublicKey(keys.other.private_key_pem), keys.other.tee_id, 'a private key yields its public id')
})

for (const v of vectors) {
  t.test(String(v.name), async (t) => {
    const request = v.request as JsonObject
    const canonical = canonicalRequestJson(request)
    t.equal(canonical, v.canonical_request_json, 'canonical request')
    t.equal(requestHash(request), v.computed_request_hash, 'request hash')

    const wire = buildWireRequest(request)
    t.equal(pythonJsonDumps(wire), pythonJsonDumps(v.wire_request), 'wire request')
    t.equal(canonicalRequestJson(wire), canonical, 'the wire body hashes like the request')
    t.equal(canonicalRequestJson(wire, { enclave: true }), canonical, 'the enclave hashes the wire body the same way')
    t.equal(canonicalRequestJson(parseJson(serializeWireBody(wire)), { enclave: true }), canonical, 'and so it does after the bytes travel')

    let output: string
    let proof: Record<string, unknown>
    if (v.mode === 'stream') {
      const acc = new StreamAccumulator()
      for (const f of streamFrames(v.stream_chunks as string[])) acc.feed(f)
      t.ok(acc.finalFrame, 'stream has a proof frame')
      t.same(pythonJsonDumps(acc.finalFrame), pythonJsonDumps(v.response_body), 'proof frame is the last signed frame')
      output = acc.canonicalOutput()
      proof = acc.finalFrame!
    } else {
      output = canonicalOutputOf(v.response_body)
      proof = v.response_body as JsonObject
    }
    t.equal(output, v.canonical_output, 'canonical output')
    t.equal(keccakHex(output), v.computed_output_hash, 'output hash')
    t.equal(Buffer.from(teeMessageHash(String(v.computed_request_hash), String(v.computed_output_hash), Number(String(v.tee_timestamp)))).toString('hex'),
      v.verifier_msg_hash, 'signed message hash')

    const verdict = verifyTeeProof({
      requestHash: requestHash(request),
      outputCanonical: output,
      proof,
      trustedKey: keys[String(v.verify_with)].public_key_pem,
    })
    t.equal(verdict.verified, v.expect_valid, 'verdict')
    if (!verdict.verified) {
      t.equal(verdict.reason, v.expect_error, 'same reason as the SDK')
      const step = STEP_OF.find(([prefix]) => String(v.expect_error).startsWith(prefix))?.[1]
      t.equal(verdict.step, step, 'failing step')
    } else {
      t.equal(verdict.teeId, keys.primary.tee_id)
    }
  })
}
