import type Database from 'better-sqlite3'
import { V3_ACCESS_AND_OPTIMISTIC } from './sqlite-schema-v3.ts'
import { V4_UPSTREAM_COST } from './sqlite-schema-v4.ts'

// The SQLite schema is where the ledger rules live. JavaScript checks arguments and picks the
// friendly error, but a buggy caller, a second process or a hand-typed SQL statement still cannot:
//   - take a payer below zero (CHECK payer_not_negative on the account row),
//   - store a non-integer or out-of-range amount (STRICT tables, int64),
//   - reuse a transfer id (UNIQUE), resolve a pending twice (unique index on pending_id, plus the
//     BEFORE INSERT trigger requiring an open pending), post more than was reserved,
//   - edit or delete a transfer (append-only triggers; only a pending's state may move, once),
//   - let a payment claim credit twice (deposit_id set once, then the row is frozen).
// Account balances are maintained by the AFTER INSERT trigger on transfers, so the transfers are
// the single source of truth and the balance columns can never drift from them.

export interface Migration {
  version: number
  name: string
  sql: string
  /** Rebuilds a table others reference: run with foreign keys off, then foreign_key_check before commit. */
  rebuildsReferencedTable?: boolean
}

const SYSTEM_IDS = "('system:deposits', 'system:revenue', 'system:grants', 'system:upstream_cost')"

const V1_LEDGER = `
CREATE TABLE accounts (
  id TEXT PRIMARY KEY,
  credits_posted INTEGER NOT NULL DEFAULT 0,
  debits_posted INTEGER NOT NULL DEFAULT 0,
  credits_pending INTEGER NOT NULL DEFAULT 0,
  debits_pending INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  CONSTRAINT system_account_known CHECK (substr(id, 1, 7) <> 'system:' OR id IN ${SYSTEM_IDS}),
  CONSTRAINT columns_non_negative CHECK (credits_posted >= 0 AND debits_posted >= 0 AND credits_pending >= 0 AND debits_pending >= 0),
  CONSTRAINT payer_not_negative CHECK (substr(id, 1, 7) = 'system:' OR credits_posted - debits_posted - debits_pending >= 0)
) STRICT;

INSERT INTO accounts (id, created_at) VALUES
  ('system:deposits', 0), ('system:revenue', 0), ('system:grants', 0), ('system:upstream_cost', 0);

CREATE TABLE transfers (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('deposit', 'grant', 'clawback', 'pending', 'post', 'void', 'expire', 'refund')),
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
  CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL))
) STRICT;

CREATE UNIQUE INDEX transfers_resolve_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_by_debit ON transfers (debit_account, seq);
CREATE INDEX transfers_by_credit ON transfers (credit_account, seq);
CREATE INDEX transfers_open_pending ON transfers (timeout_at) WHERE state = 'pending';

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
`

const V2_PAYMENTS_RECEIPTS = `
CREATE TABLE payment_claims (
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
  PRIMARY KEY (network, asset, payer, nonce),
  CHECK (payer = lower(payer) AND nonce = lower(nonce)),
  CHECK (deposit_id IS NULL OR status = 'settled')
) STRICT;

CREATE TRIGGER payment_claims_no_delete BEFORE DELETE ON payment_claims
BEGIN SELECT RAISE(ABORT, 'ledger: payment claims are permanent'); END;

CREATE TRIGGER payment_claims_final BEFORE UPDATE ON payment_claims
WHEN OLD.deposit_id IS NOT NULL OR (OLD.status = 'settled' AND NEW.status <> 'settled')
  OR NEW.network IS NOT OLD.network OR NEW.asset IS NOT OLD.asset OR NEW.payer IS NOT OLD.payer
  OR NEW.nonce IS NOT OLD.nonce OR NEW.request_id IS NOT OLD.request_id OR NEW.amount IS NOT OLD.amount
  OR (NEW.deposit_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM transfers t WHERE t.id = NEW.deposit_id AND t.kind = 'deposit'))
BEGIN SELECT RAISE(ABORT, 'ledger: a payment claim that credited a deposit is final'); END;

CREATE TABLE receipts (
  id TEXT PRIMARY KEY,
  payer TEXT,
  model TEXT NOT NULL,
  stream INTEGER NOT NULL CHECK (stream IN (0, 1)),
  status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
  prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),
  completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
  reserved_amount INTEGER NOT NULL CHECK (reserved_amount >= 0),
  charged_amount INTEGER NOT NULL CHECK (charged_amount >= 0),
  upstream_cost TEXT,
  verified INTEGER CHECK (verified IN (0, 1)),
  verify_error TEXT,
  proof TEXT,
  payment_tx TEXT,
  error_code TEXT,
  created_at INTEGER NOT NULL,
  completed_at INTEGER
) STRICT;

CREATE INDEX receipts_by_payer ON receipts (payer, created_at);
`

export const MIGRATIONS: readonly Migration[] = [
  { version: 1, name: 'accounts and transfers', sql: V1_LEDGER },
  { version: 2, name: 'payment claims and receipts', sql: V2_PAYMENTS_RECEIPTS },
  { version: 3, name: 'api keys, nonces, idempotency, blocks, provisional deposits', sql: V3_ACCESS_AND_OPTIMISTIC },
  { version: 4, name: 'upstream cost transfers', sql: V4_UPSTREAM_COST, rebuildsReferencedTable: true },
]

/**
 * Applies each pending migration once, in its own IMMEDIATE transaction, re-checking inside the
 * transaction so that two processes opening the same file at once cannot both apply it.
 */
export function migrate (db: Database.Database, now: number): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT')
  const applied = db.prepare('SELECT 1 FROM schema_migrations WHERE version = ?')
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)')
  const newest = db.prepare('SELECT max(version) AS v FROM schema_migrations').get() as { v: bigint | number | null }
  const known = MIGRATIONS[MIGRATIONS.length - 1].version
  if (newest.v !== null && Number(newest.v) > known) {
    throw new Error(`ledger database has schema version ${newest.v}, newer than this build knows (${known})`)
  }
  for (const m of MIGRATIONS) {
    if (applied.get(m.version) !== undefined) continue
    // PRAGMA foreign_keys is a no-op inside a transaction, so it is switched around it; the
    // legacy_alter_table switch keeps the final RENAME from re-parsing other tables' triggers,
    // which name transfers while it briefly does not exist.
    const fkWasOn = m.rebuildsReferencedTable === true && Number(db.pragma('foreign_keys', { simple: true })) === 1
    if (m.rebuildsReferencedTable) {
      db.pragma('foreign_keys = OFF')
      db.pragma('legacy_alter_table = ON')
    }
    try {
      db.transaction(() => {
        if (applied.get(m.version) !== undefined) return
        db.exec(m.sql)
        if (m.rebuildsReferencedTable) {
          const broken = db.pragma('foreign_key_check') as unknown[]
          if (broken.length > 0) throw new Error(`ledger migration ${m.version} would break ${broken.length} foreign keys`)
        }
        record.run(m.version, m.name, BigInt(now))
      }).immediate()
    } finally {
      if (m.rebuildsReferencedTable) {
        db.pragma('legacy_alter_table = OFF')
        if (fkWasOn) db.pragma('foreign_keys = ON')
      }
    }
  }
}
