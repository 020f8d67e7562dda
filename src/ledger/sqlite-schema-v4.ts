// Migration 4: upstream cost. A new transfer kind, 'upstream_cost', moves what the gateway paid an
// enclave for a request from system:revenue to system:upstream_cost, so that system:revenue nets to
// the margin. The schema pins its shape: always system:revenue → system:upstream_cost, positive,
// with the request id as its reference. An index on (kind, created_at) serves the margin report.
// SQLite cannot alter a CHECK, so transfers is rebuilt (the documented 12-step procedure): the
// migration runs with foreign keys off (migrate() does that for this version and runs
// foreign_key_check before committing), and every index and trigger of transfers is recreated.

const KINDS = "('deposit', 'grant', 'clawback', 'pending', 'post', 'void', 'expire', 'refund', 'upstream_cost')"

export const V4_UPSTREAM_COST = `
CREATE TABLE transfers_v4 (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ${KINDS}),
  debit_account TEXT NOT NULL REFERENCES accounts (id),
  credit_account TEXT NOT NULL REFERENCES accounts (id),
  amount INTEGER NOT NULL,
  pending_id TEXT REFERENCES transfers (id),
  state TEXT CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
  timeout_at INTEGER,
  reference TEXT,
  meta TEXT,
  created_at INTEGER NOT NULL,
  CHECK (debit_account <> credit_account),
  CHECK (amount > 0 OR (amount = 0 AND kind = 'post')),
  CHECK ((kind = 'pending') = (state IS NOT NULL AND timeout_at IS NOT NULL)),
  CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL)),
  CONSTRAINT upstream_cost_shape CHECK (kind <> 'upstream_cost' OR (debit_account = 'system:revenue'
    AND credit_account = 'system:upstream_cost' AND reference IS NOT NULL))
) STRICT;

INSERT INTO transfers_v4 (seq, id, kind, debit_account, credit_account, amount, pending_id, state, timeout_at, reference, meta, created_at)
  SELECT seq, id, kind, debit_account, credit_account, amount, pending_id, state, timeout_at, reference, meta, created_at FROM transfers;
DROP TABLE transfers;
ALTER TABLE transfers_v4 RENAME TO transfers;

CREATE UNIQUE INDEX transfers_resolve_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_by_debit ON transfers (debit_account, seq);
CREATE INDEX transfers_by_credit ON transfers (credit_account, seq);
CREATE INDEX transfers_open_pending ON transfers (timeout_at) WHERE state = 'pending';
CREATE INDEX transfers_open_by_debit ON transfers (debit_account, timeout_at) WHERE state = 'pending';
CREATE INDEX transfers_by_kind ON transfers (kind, created_at);
CREATE INDEX transfers_by_reference ON transfers (reference) WHERE reference IS NOT NULL;

CREATE TRIGGER transfers_no_delete BEFORE DELETE ON transfers
BEGIN SELECT RAISE(ABORT, 'ledger: transfers are append-only'); END;

CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers
WHEN NOT (OLD.kind = 'pending' AND OLD.state = 'pending' AND NEW.state IN ('posted', 'voided', 'expired')
  AND NEW.seq IS OLD.seq AND NEW.id IS OLD.id AND NEW.kind IS OLD.kind
  AND NEW.debit_account IS OLD.debit_account AND NEW.credit_account IS OLD.credit_account
  AND NEW.amount IS OLD.amount AND NEW.pending_id IS OLD.pending_id AND NEW.timeout_at IS OLD.timeout_at
  AND NEW.reference IS OLD.reference AND NEW.meta IS OLD.meta AND NEW.created_at IS OLD.created_at)
BEGIN SELECT RAISE(ABORT, 'ledger: transfers are append-only'); END;

CREATE TRIGGER transfers_resolution_valid BEFORE INSERT ON transfers WHEN NEW.pending_id IS NOT NULL
BEGIN
  SELECT RAISE(ABORT, 'ledger: resolution does not match an open pending transfer')
  WHERE NOT EXISTS (
    SELECT 1 FROM transfers p
    WHERE p.id = NEW.pending_id AND p.kind = 'pending' AND p.state = 'pending'
      AND p.debit_account = NEW.debit_account AND p.credit_account = NEW.credit_account
      AND (NEW.amount = p.amount OR (NEW.kind = 'post' AND NEW.amount < p.amount)));
END;

CREATE TRIGGER transfers_upstream_cost_once BEFORE INSERT ON transfers WHEN NEW.kind = 'upstream_cost'
BEGIN
  SELECT RAISE(ABORT, 'ledger: an upstream cost needs its request''s reservation, and is recorded once')
  WHERE NOT EXISTS (SELECT 1 FROM transfers p WHERE p.kind = 'pending' AND p.reference = NEW.reference)
    OR EXISTS (SELECT 1 FROM transfers u WHERE u.kind = 'upstream_cost' AND u.reference = NEW.reference);
END;

CREATE TRIGGER transfers_apply AFTER INSERT ON transfers
BEGIN
  INSERT INTO accounts (id, created_at) VALUES (NEW.debit_account, NEW.created_at), (NEW.credit_account, NEW.created_at)
    ON CONFLICT (id) DO NOTHING;
  UPDATE transfers SET state = CASE NEW.kind WHEN 'post' THEN 'posted' WHEN 'void' THEN 'voided' ELSE 'expired' END
    WHERE NEW.pending_id IS NOT NULL AND id = NEW.pending_id AND state = 'pending';
  UPDATE accounts SET
    debits_posted = debits_posted + (CASE WHEN NEW.kind IN ('pending', 'void', 'expire') THEN 0 ELSE NEW.amount END),
    debits_pending = debits_pending + (CASE
      WHEN NEW.kind = 'pending' THEN NEW.amount
      WHEN NEW.pending_id IS NOT NULL THEN -(SELECT p.amount FROM transfers p WHERE p.id = NEW.pending_id)
      ELSE 0 END)
    WHERE id = NEW.debit_account;
  UPDATE accounts SET
    credits_posted = credits_posted + (CASE WHEN NEW.kind IN ('pending', 'void', 'expire') THEN 0 ELSE NEW.amount END),
    credits_pending = credits_pending + (CASE
      WHEN NEW.kind = 'pending' THEN NEW.amount
      WHEN NEW.pending_id IS NOT NULL THEN -(SELECT p.amount FROM transfers p WHERE p.id = NEW.pending_id)
      ELSE 0 END)
    WHERE id = NEW.credit_account;
END;

CREATE TRIGGER transfers_refuse_blocked BEFORE INSERT ON transfers
WHEN NEW.kind = 'pending' AND EXISTS (SELECT 1 FROM blocked_accounts b WHERE b.account = NEW.debit_account)
BEGIN SELECT RAISE(ABORT, 'ledger: account_blocked'); END;
`
