// PostgreSQL migration 2: payment claims, receipts, API keys, single-use nonces and idempotency
// records, with the rules of the SQLite schema (sqlite-schema.ts, sqlite-schema-v3.ts):
//   - a payment claim starts without a deposit, links one deposit once (settled, or provisional
//     while settling), a reversal must match its refund transfer and the deposit, and a settled or
//     reversed claim is frozen; claims are never deleted,
//   - an API key can only be revoked, once, or have its last use touched,
//   - a completed idempotency record cannot be overwritten until it has expired.
// PostgreSQL refuses subqueries in a trigger's WHEN, so the claim rules that look at transfers are
// in the trigger function's body.

export const PG_V2_RECORDS = `
CREATE TABLE payment_claims (
  network TEXT COLLATE "C" NOT NULL,
  asset TEXT COLLATE "C" NOT NULL,
  payer TEXT COLLATE "C" NOT NULL,
  nonce TEXT COLLATE "C" NOT NULL,
  request_id TEXT NOT NULL,
  amount BIGINT NOT NULL CHECK (amount >= 0),
  status TEXT NOT NULL CHECK (status IN ('claimed', 'settling', 'settled', 'failed', 'unknown')),
  tx_hash TEXT,
  error TEXT,
  deposit_id TEXT COLLATE "C" UNIQUE REFERENCES transfers (id),
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  valid_before BIGINT CHECK (valid_before >= 0),
  provisional BOOLEAN NOT NULL DEFAULT false,
  reversal_id TEXT COLLATE "C" UNIQUE,
  reversed_amount BIGINT,
  shortfall BIGINT,
  reversed_at BIGINT,
  PRIMARY KEY (network, asset, payer, nonce),
  CONSTRAINT key_lowercase CHECK (payer = lower(payer) AND nonce = lower(nonce)),
  CONSTRAINT provisional_has_deposit CHECK (NOT provisional OR deposit_id IS NOT NULL),
  CONSTRAINT deposit_state CHECK (deposit_id IS NULL OR status = 'settled'
    OR (provisional AND status IN ('settling', 'unknown') AND reversal_id IS NULL)
    OR (provisional AND status = 'failed' AND reversal_id IS NOT NULL)),
  CONSTRAINT reversal_complete CHECK ((reversal_id IS NULL) = (reversed_amount IS NULL)
    AND (reversal_id IS NULL) = (shortfall IS NULL) AND (reversal_id IS NULL) = (reversed_at IS NULL)),
  CONSTRAINT reversal_failed CHECK (reversal_id IS NULL OR (status = 'failed' AND reversed_amount >= 0 AND shortfall >= 0))
);

CREATE INDEX payment_claims_by_status ON payment_claims (status, updated_at);

CREATE TRIGGER payment_claims_no_delete BEFORE DELETE ON payment_claims
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse('ledger: payment claims are permanent');
CREATE TRIGGER payment_claims_no_truncate BEFORE TRUNCATE ON payment_claims
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse('ledger: payment claims are permanent');

CREATE TRIGGER payment_claims_start_clean BEFORE INSERT ON payment_claims FOR EACH ROW
  WHEN (NEW.deposit_id IS NOT NULL OR NEW.provisional OR NEW.reversal_id IS NOT NULL)
  EXECUTE FUNCTION ledger_refuse('ledger: a payment claim starts without a deposit');

CREATE FUNCTION payment_claims_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (OLD.deposit_id IS NOT NULL AND OLD.status IN ('settled', 'failed'))
    OR (OLD.status = 'settled' AND NEW.status <> 'settled')
    OR (OLD.deposit_id IS NOT NULL AND NEW.deposit_id IS DISTINCT FROM OLD.deposit_id)
    OR (NEW.provisional IS DISTINCT FROM OLD.provisional AND NOT (OLD.deposit_id IS NULL AND NEW.provisional))
    OR (NEW.network, NEW.asset, NEW.payer, NEW.nonce, NEW.request_id, NEW.amount, NEW.created_at, NEW.valid_before)
      IS DISTINCT FROM (OLD.network, OLD.asset, OLD.payer, OLD.nonce, OLD.request_id, OLD.amount, OLD.created_at, OLD.valid_before)
    OR (NEW.deposit_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.id = NEW.deposit_id AND t.kind = 'deposit'))
  THEN
    RAISE EXCEPTION 'ledger: a payment claim that credited a deposit is final';
  END IF;
  IF NEW.reversal_id IS NOT NULL AND OLD.reversal_id IS NULL AND (
    NEW.reversed_amount + NEW.shortfall IS DISTINCT FROM (SELECT d.amount FROM transfers d WHERE d.id = NEW.deposit_id)
    OR (NEW.reversed_amount > 0 AND NOT EXISTS (
      SELECT 1 FROM transfers r JOIN transfers d ON d.id = NEW.deposit_id
      WHERE r.id = NEW.reversal_id AND r.kind = 'refund' AND r.amount = NEW.reversed_amount
        AND r.debit_account = d.credit_account AND r.credit_account = 'system:deposits')))
  THEN
    RAISE EXCEPTION 'ledger: a reversal must match its refund transfer and the deposit';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER payment_claims_guard BEFORE UPDATE ON payment_claims FOR EACH ROW EXECUTE FUNCTION payment_claims_guard();

CREATE TABLE receipts (
  id TEXT COLLATE "C" PRIMARY KEY,
  seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
  payer TEXT COLLATE "C",
  model TEXT NOT NULL,
  stream BOOLEAN NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
  prompt_tokens BIGINT NOT NULL CHECK (prompt_tokens >= 0),
  completion_tokens BIGINT NOT NULL CHECK (completion_tokens >= 0),
  reserved_amount BIGINT NOT NULL CHECK (reserved_amount >= 0),
  charged_amount BIGINT NOT NULL CHECK (charged_amount >= 0),
  upstream_cost TEXT,
  verified BOOLEAN,
  verify_error TEXT,
  proof TEXT,
  payment_tx TEXT,
  error_code TEXT,
  created_at BIGINT NOT NULL,
  completed_at BIGINT
);

CREATE INDEX receipts_by_payer ON receipts (payer, created_at);
CREATE INDEX receipts_by_created ON receipts (created_at);

CREATE TABLE api_keys (
  id TEXT COLLATE "C" PRIMARY KEY,
  seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
  account TEXT COLLATE "C" NOT NULL,
  name TEXT,
  prefix TEXT NOT NULL,
  hash TEXT COLLATE "C" NOT NULL CONSTRAINT api_keys_hash_unique UNIQUE,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT,
  last_used_at BIGINT
);

CREATE INDEX api_keys_by_account ON api_keys (account, created_at);

CREATE TRIGGER api_keys_immutable BEFORE UPDATE ON api_keys FOR EACH ROW
  WHEN ((NEW.id, NEW.seq, NEW.account, NEW.name, NEW.prefix, NEW.hash, NEW.created_at)
      IS DISTINCT FROM (OLD.id, OLD.seq, OLD.account, OLD.name, OLD.prefix, OLD.hash, OLD.created_at)
    OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at))
  EXECUTE FUNCTION ledger_refuse('ledger: an API key can only be revoked, once, or touched');

CREATE TABLE used_nonces (
  scope TEXT COLLATE "C" NOT NULL,
  nonce TEXT COLLATE "C" NOT NULL,
  expires_at BIGINT NOT NULL,
  PRIMARY KEY (scope, nonce)
);

CREATE INDEX used_nonces_by_expiry ON used_nonces (expires_at);

CREATE TABLE idempotency_records (
  account TEXT COLLATE "C" NOT NULL,
  key TEXT COLLATE "C" NOT NULL,
  body_hash TEXT NOT NULL,
  request_id TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
  status INTEGER CHECK (status BETWEEN 100 AND 599),
  headers TEXT,
  body TEXT,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL,
  completed_at BIGINT,
  PRIMARY KEY (account, key),
  CHECK (expires_at > created_at),
  CONSTRAINT completed_has_response CHECK ((state = 'completed')
    = (status IS NOT NULL AND headers IS NOT NULL AND body IS NOT NULL AND completed_at IS NOT NULL))
);

CREATE INDEX idempotency_by_expiry ON idempotency_records (expires_at);

CREATE TRIGGER idempotency_completed_final BEFORE UPDATE ON idempotency_records FOR EACH ROW
  WHEN (OLD.state = 'completed' AND NOT (NEW.state = 'in_flight' AND OLD.expires_at <= NEW.created_at))
  EXECUTE FUNCTION ledger_refuse('ledger: a completed idempotency record is final until it expires');
`
