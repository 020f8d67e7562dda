// One place for every error a client can see: a stable code, an HTTP status, and a sentence that
// tells the caller what to do next. Tests assert codes, never messages.

export interface ErrorSpec { status: number, message: string, remedy: string, type?: string }

export const ERRORS = {
  BAD_REQUEST_BODY: { status: 400, message: 'The request body is not a valid chat completion request.', remedy: 'Send a JSON object with "model" and a non-empty "messages" array.', type: 'invalid_request_error' },
  BODY_TOO_LARGE: { status: 413, message: 'The request body is too large.', remedy: 'Shorten the prompt or split the work into several requests.', type: 'invalid_request_error' },
  UNKNOWN_MODEL: { status: 400, message: 'This model is not offered here.', remedy: 'GET /v1/models lists the models and their prices.', type: 'invalid_request_error' },
  MAX_TOKENS_TOO_LARGE: { status: 400, message: 'max_tokens exceeds what this gateway allows per request.', remedy: 'Lower max_tokens to the limit given in metadata.limit.', type: 'invalid_request_error' },
  PAYMENT_HEADER_MALFORMED: { status: 400, message: 'The payment header could not be decoded.', remedy: 'Send base64 (standard alphabet) JSON of an x402 PaymentPayload, as produced by an x402 client.', type: 'invalid_request_error' },
  PAYMENT_HEADER_TOO_LARGE: { status: 431, message: 'The payment header is too large.', remedy: 'An x402 exact payment is well under 4 KiB; send the header your x402 client produced.', type: 'invalid_request_error' },
  PAYMENT_REQUIRED: { status: 402, message: 'Payment required.', remedy: 'Pay with one of the options in the PAYMENT-REQUIRED header (an x402 client does this for you).', type: 'payment_required' },
  PAYMENT_INVALID: { status: 402, message: 'The payment was not accepted.', remedy: 'Sign a new payment for one of the options in the PAYMENT-REQUIRED header.', type: 'payment_required' },
  PAYMENT_ALREADY_USED: { status: 402, message: 'This payment authorization has already been presented.', remedy: 'Each x402 payment can be used once; sign a new payment (its credit, if it settled, is already in your balance).', type: 'payment_required' },
  PAYMENT_SETTLEMENT_FAILED: { status: 402, message: 'The payment could not be settled on chain.', remedy: 'Check the payer\'s token balance and sign a new payment.', type: 'payment_required' },
  PAYMENT_SETTLEMENT_UNKNOWN: { status: 502, message: 'The payment settlement outcome is not known yet.', remedy: 'Do not pay again: the settlement is being reconciled and will be credited once if it landed. Retry in a minute.', type: 'api_error' },
  FACILITATOR_UNAVAILABLE: { status: 502, message: 'The payment facilitator could not be reached.', remedy: 'Retry shortly; your payment was not charged.', type: 'api_error' },
  INSUFFICIENT_CREDIT: { status: 402, message: 'Not enough credit for this request.', remedy: 'Top up with the payment offered in the PAYMENT-REQUIRED header.', type: 'payment_required' },
  IDEMPOTENCY_CONFLICT: { status: 422, message: 'This Idempotency-Key was used with a different request body.', remedy: 'Use a new key for a different request, or resend the original body.', type: 'invalid_request_error' },
  IDEMPOTENCY_IN_FLIGHT: { status: 409, message: 'A request with this Idempotency-Key is still running.', remedy: 'Wait for it to finish, then retry to receive its stored result.', type: 'invalid_request_error' },
  TOO_MANY_RESERVATIONS: { status: 429, message: 'Too many requests of this payer are in flight.', remedy: 'Wait for running requests to finish, then retry.', type: 'rate_limit_error' },
  ACCOUNT_BLOCKED: { status: 403, message: 'This account is blocked because a payment failed to settle after its credit was used.', remedy: 'Contact the operator to resolve the failed settlement.', type: 'permission_error' },
  TOO_MANY_KEYS: { status: 409, message: 'This account has as many API keys as it may have.', remedy: 'Revoke an unused key (DELETE /v1/keys/:id) first.', type: 'invalid_request_error' },
  TOPUP_AMOUNT_INVALID: { status: 400, message: 'The top-up amount is not valid.', remedy: 'Pass ?amount= as a decimal within the bounds in metadata (e.g. amount=5.00).', type: 'invalid_request_error' },
  FORBIDDEN: { status: 403, message: 'Not allowed.', remedy: 'Use the admin token for admin routes.', type: 'permission_error' },
  UNAUTHORIZED: { status: 401, message: 'Missing or invalid credentials.', remedy: 'Send Authorization: Bearer <token>.', type: 'authentication_error' },
  BAD_PATH: { status: 400, message: 'The request path is not valid.', remedy: 'Percent-encode the path as UTF-8 (every % followed by two hex digits).', type: 'invalid_request_error' },
  PATH_TOO_LONG: { status: 414, message: 'A path segment is too long.', remedy: 'Ids in paths are at most 200 characters; check the id you sent.', type: 'invalid_request_error' },
  BAD_HTTP_REQUEST: { status: 400, message: 'The HTTP request could not be parsed.', remedy: 'Send a well-formed HTTP/1.1 request (valid request line, header bytes and framing).', type: 'invalid_request_error' },
  HEADERS_TOO_LARGE: { status: 431, message: 'The request line and headers are too large.', remedy: 'Keep the request line and all headers together under 16 KiB.', type: 'invalid_request_error' },
  REQUEST_TIMEOUT: { status: 408, message: 'The request was not received in time.', remedy: 'Send the whole request within 30 seconds; nothing was charged.', type: 'invalid_request_error' },
  NOT_FOUND: { status: 404, message: 'Not found.', remedy: 'Check the id; receipts are visible only to their payer.', type: 'invalid_request_error' },
  UPSTREAM_UNAVAILABLE: { status: 502, message: 'The verified inference backend could not be reached.', remedy: 'Retry shortly; you were not charged.', type: 'api_error' },
  UPSTREAM_TIMEOUT: { status: 504, message: 'The verified inference backend did not answer in time.', remedy: 'Retry, perhaps with a smaller max_tokens; you were not charged.', type: 'api_error' },
  UPSTREAM_ERROR: { status: 502, message: 'The verified inference backend returned an error.', remedy: 'Retry shortly; you were not charged.', type: 'api_error' },
  UPSTREAM_BAD_REQUEST: { status: 400, message: 'The verified inference backend refused the request.', remedy: 'Check the model name and parameters; you were not charged.', type: 'invalid_request_error' },
  UPSTREAM_BAD_RESPONSE: { status: 502, message: 'The verified inference backend sent a response that could not be read.', remedy: 'Retry; you were not charged.', type: 'api_error' },
  PROOF_UNVERIFIED: { status: 502, message: 'The answer\'s TEE proof did not verify, so it is withheld and not charged.', remedy: 'Retry; metadata.reason says which check failed.', type: 'api_error' },
  LEDGER_UNAVAILABLE: { status: 503, message: 'The credit ledger is unavailable.', remedy: 'Retry shortly; nothing was charged.', type: 'api_error' },
  RATE_LIMITED: { status: 429, message: 'Too many requests.', remedy: 'Slow down; retry after the number of seconds in Retry-After.', type: 'rate_limit_error' },
  SHARED_STATE_UNAVAILABLE: { status: 503, message: 'The shared replay and rate-limit store is unavailable, so paid requests are refused.', remedy: 'Retry shortly; nothing was charged.', type: 'api_error' },
  OVERLOADED: { status: 503, message: 'The gateway is overloaded.', remedy: 'Retry after the number of seconds in Retry-After; nothing was charged.', type: 'api_error' },
  INTERNAL: { status: 500, message: 'Internal error.', remedy: 'Retry; if it persists, report the X-Request-Id to the operator.', type: 'api_error' },
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof ERRORS

export class GatewayError extends Error {
  readonly status: number
  readonly remedy: string
  constructor (readonly code: ErrorCode, readonly metadata: Record<string, unknown> = {}, message?: string) {
    super(message ?? ERRORS[code].message)
    this.name = 'GatewayError'
    this.status = ERRORS[code].status
    this.remedy = ERRORS[code].remedy
  }

  /** OpenAI's error envelope (so OpenAI SDKs surface it), with OpenRouter-style metadata. */
  toBody (): { error: { code: string, message: string, type: string, param: null, metadata: Record<string, unknown> } } {
    return {
      error: {
        code: this.code.toLowerCase(),
        message: this.message,
        type: ERRORS[this.code].type ?? 'api_error',
        param: null,
        metadata: { ...this.metadata, remedy: this.remedy },
      },
    }
  }
}
