import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { LedgerStore } from './ledger/types.ts'
import { LEDGER_DECIMALS } from './money.ts'

// Bounded labels only: route patterns, status classes, configured model ids, result codes.
// Never a payer, a request id or free text (a label per value would be unbounded cardinality).

export type ProofResult = 'verified' | 'malformed' | 'tee_id' | 'request_hash' | 'output_hash' | 'signature'
export type PaymentResult = 'verified' | 'invalid' | 'replayed' | 'settled' | 'failed' | 'unknown' | 'provisional'

export class GatewayMetrics {
  readonly registry = new Registry()
  readonly requests = new Counter({ name: 'gateway_requests_total', help: 'HTTP requests by route and status class', labelNames: ['route', 'status_class'], registers: [this.registry] })
  readonly paymentRequired = new Counter({ name: 'gateway_payment_required_total', help: '402 challenges issued', labelNames: ['route'], registers: [this.registry] })
  readonly payments = new Counter({ name: 'gateway_payments_total', help: 'x402 payments by outcome', labelNames: ['result'], registers: [this.registry] })
  readonly deposits = new Counter({ name: 'gateway_deposits_asset_total', help: 'Credit deposited, in asset units', registers: [this.registry] })
  readonly debits = new Counter({ name: 'gateway_debits_asset_total', help: 'Credit charged for requests, in asset units', registers: [this.registry] })
  readonly reservationsOpen = new Gauge({ name: 'gateway_reservations_open', help: 'Reservations currently held by this replica', registers: [this.registry] })
  readonly upstreamLatency = new Histogram({ name: 'gateway_upstream_latency_seconds', help: 'Upstream time to response headers', labelNames: ['model'], buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers: [this.registry] })
  readonly ttft = new Histogram({ name: 'gateway_time_to_first_token_seconds', help: 'Streams: time from request to the first content frame sent', labelNames: ['model'], buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [this.registry] })
  readonly overhead = new Histogram({ name: 'gateway_overhead_seconds', help: 'Non-streaming requests: total time minus upstream time', buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers: [this.registry] })
  readonly tokens = new Counter({ name: 'gateway_tokens_total', help: 'Tokens by direction', labelNames: ['model', 'direction'], registers: [this.registry] })
  readonly proofs = new Counter({ name: 'gateway_proof_verifications_total', help: 'TEE proof verifications by result', labelNames: ['result'], registers: [this.registry] })
  readonly ledgerOps = new Histogram({ name: 'gateway_ledger_operation_seconds', help: 'Ledger store operation latency', labelNames: ['op'], buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1], registers: [this.registry] })
  readonly streamsInFlight = new Gauge({ name: 'gateway_streams_in_flight', help: 'Streams currently open', registers: [this.registry] })

  constructor (opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'gateway_' })
  }
}

export const toAsset = (ledgerUnits: bigint): number => Number(ledgerUnits) / 10 ** LEDGER_DECIMALS

/** Wraps a store so every operation's latency is observed, without the store knowing. */
export function instrumentLedger (store: LedgerStore, metrics: GatewayMetrics): LedgerStore {
  return new Proxy(store, {
    get (target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver)
      if (typeof value !== 'function' || typeof prop !== 'string') return value
      return (...args: unknown[]) => {
        const end = metrics.ledgerOps.startTimer({ op: prop })
        const out = value.apply(target, args)
        if (out instanceof Promise) return out.finally(end)
        end()
        return out
      }
    },
  })
}
