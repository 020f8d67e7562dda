// PostgreSQL migration 3: upstream cost, as SQLite migration 4 (sqlite-schema-v4.ts). A new transfer
// kind, 'upstream_cost', always system:revenue → system:upstream_cost with the request id as its
// reference; at most one per request (a unique partial index) and only for a request that has a
// reservation (the trigger below). An index on (kind, created_at) serves the margin report.

const KINDS = "('deposit', 'grant', 'clawback', 'pending', 'post', 'void', 'expire', 'refund', 'upstream_cost')"

export const PG_V3_UPSTREAM_COST = `
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check CHECK (kind IN ${KINDS});
ALTER TABLE transfers ADD CONSTRAINT upstream_cost_shape CHECK (kind <> 'upstream_cost' OR (debit_account = 'system:revenue'
  AND credit_account = 'system:upstream_cost' AND reference IS NOT NULL));

CREATE INDEX transfers_by_kind ON transfers (kind, created_at);
CREATE UNIQUE INDEX transfers_upstream_cost_once ON transfers (reference) WHERE kind = 'upstream_cost';
CREATE INDEX transfers_pending_by_reference ON transfers (reference) WHERE kind = 'pending';

CREATE FUNCTION transfers_upstream_cost_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM transfers p WHERE p.kind = 'pending' AND p.reference = NEW.reference) THEN
    RAISE EXCEPTION 'ledger: an upstream cost needs its request''s reservation, and is recorded once';
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER transfers_upstream_cost_check BEFORE INSERT ON transfers FOR EACH ROW
  WHEN (NEW.kind = 'upstream_cost') EXECUTE FUNCTION transfers_upstream_cost_check();
`
