// Migration 3: API keys, single-use nonces, idempotency records, blocked accounts, and provisional
// (optimistic) deposits on payment claims. The rules again live in the schema:
//   - a blocked payer cannot open a pending transfer (BEFORE INSERT trigger on transfers),
//   - an API key can only be revoked once or have its last use touched (immutable otherwise),
//   - a completed idempotency record cannot be overwritten until it has expired,
//   - a payment claim still credits at most once: its deposit link is set once (settled, or
//     provisional while settling), a reversal needs a matching refund transfer, and a settled or
//     reversed claim is frozen.
// payment_claims is rebuilt (SQLite cannot alter a CHECK): the V2 CHECK required status 'settled'
// whenever deposit_id is set, which a provisional deposit (status 'settling') must relax.

export const V3_ACCESS_AND_OPTIMISTIC = `
CREATE TABLE payment_claims_v3 (
  network TEXT NOT NULL,
  asset TEXT NOT NULL,
  payer TEXT NOT NULL,
  nonce TEXT NOT NULL,
  request_id TEXT NOT NULL,
  amount INTEGER NOT NULL CHECK (amount >= 0),
  status TEXT NOT NULL CHECK (status IN ('claimed', 'settling', 'settled', 'failed', 'unknown')),
  tx_hash TEXT,
  error TEXT,
  deposit_id TEXT UNIQUE REFERENCES transfers (id),
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  valid_before INTEGER CHECK (valid_before >= 0),
  provisional INTEGER NOT NULL DEFAULT 0 CHECK (provisional IN (0, 1)),
  reversal_id TEXT UNIQUE,
  reversed_amount INTEGER,
  shortfall INTEGER,
  reversed_at INTEGER,
  PRIMARY KEY (network, asset, payer, nonce),
  CHECK (payer = lower(payer) AND nonce = lower(nonce)),
  CONSTRAINT provisional_has_deposit CHECK (provisional = 0 OR deposit_id IS NOT NULL),
  CONSTRAINT deposit_state CHECK (deposit_id IS NULL OR status = 'settled'
    OR (provisional = 1 AND status IN ('settling', 'unknown') AND reversal_id IS NULL)
    OR (provisional = 1 AND status = 'failed' AND reversal_id IS NOT NULL)),
  CONSTRAINT reversal_complete CHECK ((reversal_id IS NULL) = (reversed_amount IS NULL)
    AND (reversal_id IS NULL) = (shortfall IS NULL) AND (reversal_id IS NULL) = (reversed_at IS NULL)),
  CONSTRAINT reversal_failed CHECK (reversal_id IS NULL OR (status = 'failed' AND reversed_amount >= 0 AND shortfall >= 0))
) STRICT;

INSERT INTO payment_claims_v3 (network, asset, payer, nonce, request_id, amount, status, tx_hash, error, deposit_id, created_at, updated_at)
  SELECT network, asset, payer, nonce, request_id, amount, status, tx_hash, error, deposit_id, created_at, updated_at FROM payment_claims;
DROP TABLE payment_claims;
ALTER TABLE payment_claims_v3 RENAME TO payment_claims;

CREATE INDEX payment_claims_by_status ON payment_claims (status, updated_at);

CREATE TRIGGER payment_claims_no_delete BEFORE DELETE ON payment_claims
BEGIN SELECT RAISE(ABORT, 'ledger: payment claims are permanent'); END;

CREATE TRIGGER payment_claims_start_clean BEFORE INSERT ON payment_claims
WHEN NEW.deposit_id IS NOT NULL OR NEW.provisional <> 0 OR NEW.reversal_id IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'ledger: a payment claim starts without a deposit'); END;

CREATE TRIGGER payment_claims_final BEFORE UPDATE ON payment_claims
WHEN (OLD.deposit_id IS NOT NULL AND OLD.status IN ('settled', 'failed'))
  OR (OLD.status = 'settled' AND NEW.status <> 'settled')
  OR (OLD.deposit_id IS NOT NULL AND NEW.deposit_id IS NOT OLD.deposit_id)
  OR (NEW.provisional IS NOT OLD.provisional AND NOT (OLD.deposit_id IS NULL AND NEW.provisional = 1))
  OR NEW.network IS NOT OLD.network OR NEW.asset IS NOT OLD.asset OR NEW.payer IS NOT OLD.payer
  OR NEW.nonce IS NOT OLD.nonce OR NEW.request_id IS NOT OLD.request_id OR NEW.amount IS NOT OLD.amount
  OR NEW.created_at IS NOT OLD.created_at OR NEW.valid_before IS NOT OLD.valid_before
  OR (NEW.deposit_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.id = NEW.deposit_id AND t.kind = 'deposit'))
BEGIN SELECT RAISE(ABORT, 'ledger: a payment claim that credited a deposit is final'); END;

CREATE TRIGGER payment_claims_reversal_matches BEFORE UPDATE ON payment_claims
WHEN NEW.reversal_id IS NOT NULL AND OLD.reversal_id IS NULL AND (
  NEW.reversed_amount + NEW.shortfall IS NOT (SELECT d.amount FROM transfers d WHERE d.id = NEW.deposit_id)
  OR (NEW.reversed_amount > 0 AND NOT EXISTS (
    SELECT 1 FROM transfers r JOIN transfers d ON d.id = NEW.deposit_id
    WHERE r.id = NEW.reversal_id AND r.kind = 'refund' AND r.amount = NEW.reversed_amount
      AND r.debit_account = d.credit_account AND r.credit_account = 'system:deposits')))
BEGIN SELECT RAISE(ABORT, 'ledger: a reversal must match its refund transfer and the deposit'); END;

CREATE TABLE blocked_accounts (
  account TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  since INTEGER NOT NULL
) STRICT;

CREATE TRIGGER transfers_refuse_blocked BEFORE INSERT ON transfers
WHEN NEW.kind = 'pending' AND EXISTS (SELECT 1 FROM blocked_accounts b WHERE b.account = NEW.debit_account)
BEGIN SELECT RAISE(ABORT, 'ledger: account_blocked'); END;

CREATE INDEX transfers_open_by_debit ON transfers (debit_account, timeout_at) WHERE state = 'pending';

CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,
  account TEXT NOT NULL,
  name TEXT,
  prefix TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL,
  revoked_at INTEGER,
  last_used_at INTEGER
) STRICT;

CREATE INDEX api_keys_by_account ON api_keys (account, created_at);

CREATE TRIGGER api_keys_immutable BEFORE UPDATE ON api_keys
WHEN NEW.id IS NOT OLD.id OR NEW.account IS NOT OLD.account OR NEW.name IS NOT OLD.name
  OR NEW.prefix IS NOT OLD.prefix OR NEW.hash IS NOT OLD.hash OR NEW.created_at IS NOT OLD.created_at
  OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NOT OLD.revoked_at)
BEGIN SELECT RAISE(ABORT, 'ledger: an API key can only be revoked, once, or touched'); END;

CREATE TABLE used_nonces (
  scope TEXT NOT NULL,
  nonce TEXT NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (scope, nonce)
) STRICT, WITHOUT ROWID;

CREATE INDEX used_nonces_by_expiry ON used_nonces (expires_at);

CREATE TABLE idempotency_records (
  account TEXT NOT NULL,
  key TEXT NOT NULL,
  body_hash TEXT NOT NULL,
  request_id TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('in_flight', 'completed')),
  status INTEGER CHECK (status BETWEEN 100 AND 599),
  headers TEXT,
  body TEXT,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  completed_at INTEGER,
  PRIMARY KEY (account, key),
  CHECK (expires_at > created_at),
  CHECK ((state = 'completed') = (status IS NOT NULL AND headers IS NOT NULL AND body IS NOT NULL AND completed_at IS NOT NULL))
) STRICT;

CREATE INDEX idempotency_by_expiry ON idempotency_records (expires_at);

CREATE TRIGGER idempotency_completed_final BEFORE UPDATE ON idempotency_records
WHEN OLD.state = 'completed' AND NOT (NEW.state = 'in_flight' AND OLD.expires_at <= NEW.created_at)
BEGIN SELECT RAISE(ABORT, 'ledger: a completed idempotency record is final until it expires'); END;

CREATE INDEX receipts_by_created ON receipts (created_at);
`
