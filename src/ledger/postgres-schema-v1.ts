// PostgreSQL migration 1: accounts, transfers and blocked accounts. The same rules as the SQLite
// schema (sqlite-schema.ts), enforced by PostgreSQL itself, so that a buggy caller, a second
// replica or a hand-typed statement still cannot:
//   - take a payer below zero (CHECK payer_not_negative on the account row; every balance change is
//     an UPDATE of that row, which PostgreSQL re-checks against the newest committed version),
//   - store a fractional or out-of-range amount (BIGINT),
//   - reuse a transfer id (UNIQUE), resolve a pending twice (unique index on pending_id, plus the
//     trigger's conditional UPDATE of the pending row), post more than was reserved,
//   - edit, delete or truncate a transfer (append-only triggers; only a pending's state may move, once),
//   - open a pending transfer for a blocked payer.
// Balances are maintained by an AFTER INSERT trigger on transfers (a BEFORE trigger creates missing
// accounts rows first, for the foreign keys), which updates the two accounts in id order: payer
// rows ('eip155:…') always lock before system rows, so two transfers never lock them in opposite orders.
// Ids are COLLATE "C": byte order and ASCII-only case rules whatever the database's locale, as in SQLite.

const SYSTEM_IDS = "('system:deposits', 'system:revenue', 'system:grants', 'system:upstream_cost')"

export const PG_V1_LEDGER = `
CREATE FUNCTION ledger_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '%', TG_ARGV[0];
END $$;

CREATE TABLE accounts (
  id TEXT COLLATE "C" PRIMARY KEY,
  credits_posted BIGINT NOT NULL DEFAULT 0,
  debits_posted BIGINT NOT NULL DEFAULT 0,
  credits_pending BIGINT NOT NULL DEFAULT 0,
  debits_pending BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  CONSTRAINT system_account_known CHECK (substr(id, 1, 7) <> 'system:' OR id IN ${SYSTEM_IDS}),
  CONSTRAINT columns_non_negative CHECK (credits_posted >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND debits_pending >= 0),
  CONSTRAINT payer_not_negative CHECK (substr(id, 1, 7) = 'system:' OR credits_posted - debits_posted - debits_pending >= 0)
);

INSERT INTO accounts (id, created_at) VALUES
  ('system:deposits', 0), ('system:revenue', 0), ('system:grants', 0), ('system:upstream_cost', 0);

CREATE TABLE blocked_accounts (
  account TEXT COLLATE "C" PRIMARY KEY,
  reason TEXT NOT NULL,
  since BIGINT NOT NULL
);

CREATE TABLE transfers (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT COLLATE "C" NOT NULL CONSTRAINT transfers_id_unique UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('deposit', 'grant', 'clawback', 'pending', 'post', 'void', 'expire', 'refund')),
  debit_account TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
  credit_account TEXT COLLATE "C" NOT NULL REFERENCES accounts (id),
  amount BIGINT NOT NULL,
  pending_id TEXT COLLATE "C" REFERENCES transfers (id),
  state TEXT CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
  timeout_at BIGINT,
  reference TEXT,
  meta TEXT,
  created_at BIGINT NOT NULL,
  CHECK (debit_account <> credit_account),
  CHECK (amount > 0 OR (amount = 0 AND kind = 'post')),
  CHECK ((kind = 'pending') = (state IS NOT NULL AND timeout_at IS NOT NULL)),
  CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL))
);

CREATE UNIQUE INDEX transfers_resolve_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_by_debit ON transfers (debit_account, seq);
CREATE INDEX transfers_by_credit ON transfers (credit_account, seq);
CREATE INDEX transfers_open_pending ON transfers (timeout_at) WHERE state = 'pending';
CREATE INDEX transfers_open_by_debit ON transfers (debit_account, timeout_at) WHERE state = 'pending';

CREATE TRIGGER transfers_no_delete BEFORE DELETE ON transfers
  FOR EACH ROW EXECUTE FUNCTION ledger_refuse('ledger: transfers are append-only');
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
  FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse('ledger: transfers are append-only');

-- Only a pending's state may change, once, from pending to a resolution; every other column is fixed.
CREATE TRIGGER transfers_no_update BEFORE UPDATE ON transfers FOR EACH ROW
  WHEN (NOT (OLD.kind = 'pending' AND OLD.state = 'pending' AND NEW.state IS NOT NULL
    AND NEW.state IN ('posted', 'voided', 'expired')
    AND (NEW.seq, NEW.id, NEW.kind, NEW.debit_account, NEW.credit_account, NEW.amount, NEW.pending_id,
      NEW.timeout_at, NEW.reference, NEW.meta, NEW.created_at)
      IS NOT DISTINCT FROM (OLD.seq, OLD.id, OLD.kind, OLD.debit_account, OLD.credit_account, OLD.amount,
      OLD.pending_id, OLD.timeout_at, OLD.reference, OLD.meta, OLD.created_at)))
  EXECUTE FUNCTION ledger_refuse('ledger: transfers are append-only');

-- BEFORE: refusals and defaults that need no locks, and the accounts rows (which must exist when
-- the foreign keys are checked). Nothing here moves money: an INSERT that then conflicts (ON
-- CONFLICT DO NOTHING on a reused id) leaves the balances untouched.
CREATE FUNCTION transfers_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.kind = 'pending' THEN
    IF EXISTS (SELECT 1 FROM blocked_accounts b WHERE b.account = NEW.debit_account) THEN
      RAISE EXCEPTION 'ledger: account_blocked';
    END IF;
    NEW.state := 'pending';
  END IF;
  INSERT INTO accounts (id, created_at) VALUES (NEW.debit_account, NEW.created_at), (NEW.credit_account, NEW.created_at)
    ON CONFLICT (id) DO NOTHING;
  RETURN NEW;
END $$;

CREATE TRIGGER transfers_check BEFORE INSERT ON transfers FOR EACH ROW EXECUTE FUNCTION transfers_check();

-- AFTER: the row is in. Resolve the pending and apply the transfer to both accounts.
CREATE FUNCTION transfers_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  posted BIGINT := CASE WHEN NEW.kind IN ('pending', 'void', 'expire') THEN 0 ELSE NEW.amount END;
  pend BIGINT := CASE WHEN NEW.kind = 'pending' THEN NEW.amount ELSE 0 END;
  released BIGINT;
  acct TEXT;
BEGIN
  IF NEW.pending_id IS NOT NULL THEN
    -- One conditional UPDATE both validates and resolves the pending: after waiting for a concurrent
    -- resolution's lock, PostgreSQL re-reads the row and finds it no longer open.
    UPDATE transfers SET state = CASE NEW.kind WHEN 'post' THEN 'posted' WHEN 'void' THEN 'voided' ELSE 'expired' END
      WHERE id = NEW.pending_id AND kind = 'pending' AND state = 'pending'
        AND debit_account = NEW.debit_account AND credit_account = NEW.credit_account
        AND NEW.kind IN ('post', 'void', 'expire')
        AND (NEW.amount = amount OR (NEW.kind = 'post' AND NEW.amount < amount))
      RETURNING amount INTO released;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'ledger: resolution does not match an open pending transfer';
    END IF;
    pend := -released;
  END IF;
  FOREACH acct IN ARRAY CASE WHEN NEW.debit_account < NEW.credit_account
    THEN ARRAY[NEW.debit_account, NEW.credit_account] ELSE ARRAY[NEW.credit_account, NEW.debit_account] END
  LOOP
    IF acct = NEW.debit_account THEN
      UPDATE accounts SET debits_posted = debits_posted + posted, debits_pending = debits_pending + pend WHERE id = acct;
    ELSE
      UPDATE accounts SET credits_posted = credits_posted + posted, credits_pending = credits_pending + pend WHERE id = acct;
    END IF;
  END LOOP;
  RETURN NULL;
END $$;

CREATE TRIGGER transfers_apply AFTER INSERT ON transfers FOR EACH ROW EXECUTE FUNCTION transfers_apply();
`
