//! The ledger's receipts: each signed receipt, keyed by the relay that signed it and its
//! unit, and the version each was averaged into.
//!
//! A relay alone records only its own receipts. In a federated job every relay also
//! mirrors the job's receipts stream (see `federation::mirror`), so that each ledger
//! holds every relay's receipts and `crowdgrad ledger export` says the same on each.
//! Which version averaged a receipt comes from that version's list of receipt hashes
//! (`receipt_versions`), whichever of the two arrives first.

use rusqlite::{Connection, Transaction, params};
use serde::Serialize;

use crowdgrad_runtime::identity::{KEY_BYTES, Receipt, ReceiptFields, hex, parse_hex, parse_hex32};

use super::Ledger;

/// The receipts' tables, as a ledger of this schema ([`SCHEMA_VERSION`]) has them.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS receipts (
    relay_key TEXT NOT NULL,
    unit INTEGER NOT NULL,
    contributor_key TEXT NOT NULL,
    version INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    flops INTEGER NOT NULL,
    signature TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    shared INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (relay_key, unit)
);
CREATE INDEX IF NOT EXISTS receipts_by_contributor ON receipts (contributor_key);
CREATE INDEX IF NOT EXISTS receipts_unshared ON receipts (shared, relay_key, unit);
CREATE TABLE IF NOT EXISTS receipt_versions (
    hash TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS engine_cursors (
    stream TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
";

/// `PRAGMA user_version` of a ledger whose receipts are keyed by relay and unit. Ledgers
/// before it (0) keyed them by unit alone, with the version that averaged each beside
/// it: [`create_or_migrate`] moves them.
const SCHEMA_VERSION: i64 = 1;

/// The columns a [`ReceiptRow`] is read from.
const COLUMNS: &str = "r.unit, r.contributor_key, r.version, r.tokens, r.flops, r.relay_key, r.signature, r.hash,
     v.version FROM receipts r LEFT JOIN receipt_versions v ON v.hash = r.hash";

/// Every receipt, by relay key then unit.
const ALL_RECEIPTS: &str = "ORDER BY r.relay_key, r.unit";

/// One contributor key's receipts, by relay key then unit.
const RECEIPTS_OF_KEY: &str = "WHERE r.contributor_key = ?1 ORDER BY r.relay_key, r.unit";

/// One relay key's receipts that the job's receipts stream has not shown this ledger.
const UNSHARED: &str = "WHERE r.relay_key = ?1 AND r.shared = 0 ORDER BY r.unit";

/// The name of the receipts stream's cursor in `engine_cursors`.
const RECEIPTS_STREAM: &str = "receipts";

/// A stored receipt, as `crowdgrad ledger export` and `/api/contributors/{key}` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceiptRow {
    /// The unit, numbered by the relay that signed the receipt.
    pub unit: u64,
    /// The contributor's public key, hex.
    pub contributor_key: String,
    /// The version the unit started from.
    pub version: u64,
    /// Tokens trained.
    pub tokens: u64,
    /// Training FLOPs.
    pub flops: u64,
    /// The signing relay's public key, hex.
    pub relay_key: String,
    /// The relay's signature, hex.
    pub signature: String,
    /// blake3 of the receipt (its Merkle leaf), hex.
    pub hash: String,
    /// The version its result was averaged into (`None` until its round commits, or
    /// when it never was).
    pub in_version: Option<u64>,
}

impl ReceiptRow {
    /// The signed receipt this row stores; `None` when a field is not valid hex.
    fn receipt(&self) -> Option<Receipt> {
        Some(Receipt {
            relay: parse_hex32(&self.relay_key)?,
            fields: ReceiptFields {
                contributor: parse_hex32(&self.contributor_key)?,
                unit_id: self.unit,
                version: self.version,
                tokens: self.tokens,
                flops: self.flops,
            },
            signature: parse_hex(&self.signature)?,
        })
    }

    /// The row SQLite returns for [`COLUMNS`].
    fn read(r: &rusqlite::Row) -> rusqlite::Result<ReceiptRow> {
        Ok(ReceiptRow {
            unit: r.get::<_, i64>(0)? as u64,
            contributor_key: r.get(1)?,
            version: r.get::<_, i64>(2)? as u64,
            tokens: r.get::<_, i64>(3)? as u64,
            flops: r.get::<_, i64>(4)? as u64,
            relay_key: r.get(5)?,
            signature: r.get(6)?,
            hash: r.get(7)?,
            in_version: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        })
    }
}

/// Creates the receipts' tables, moving a ledger of the schema before
/// [`SCHEMA_VERSION`] to it in one transaction.
pub(super) fn create_or_migrate(db: &mut Connection) -> anyhow::Result<()> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    let tx = db.transaction()?;
    let keyed_by_unit =
        tx.prepare("SELECT 1 FROM pragma_table_info('receipts') WHERE name = 'in_version'")?.exists([])?;
    if keyed_by_unit {
        tx.execute_batch(
            "ALTER TABLE receipts RENAME TO receipts_by_unit;
             DROP INDEX IF EXISTS receipts_by_contributor;",
        )?;
    }
    tx.execute_batch(TABLES)?;
    if keyed_by_unit {
        tx.execute_batch(
            "INSERT INTO receipts (relay_key, unit, contributor_key, version, tokens, flops, signature, hash)
                 SELECT relay_key, unit, contributor_key, version, tokens, flops, signature, hash FROM receipts_by_unit;
             INSERT OR IGNORE INTO receipt_versions (hash, version)
                 SELECT hash, in_version FROM receipts_by_unit WHERE in_version IS NOT NULL;
             DROP TABLE receipts_by_unit;",
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// An error, saying what to do, for a ledger of an older schema opened read-only (which
/// cannot move it).
pub(super) fn ensure_current(db: &Connection, path: &std::path::Path) -> anyhow::Result<()> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    anyhow::ensure!(
        version >= SCHEMA_VERSION,
        "{} was written by an older relay: start the relay on it once, which brings its receipts up to date, then read \
         it again",
        path.display()
    );
    Ok(())
}

/// Records that the receipts hashed `receipts` were averaged into `version`.
pub(super) fn mark_averaged(tx: &Transaction, receipts: &[[u8; 32]], version: u64) -> anyhow::Result<()> {
    let mut mark = tx.prepare_cached("INSERT OR IGNORE INTO receipt_versions (hash, version) VALUES (?1, ?2)")?;
    for receipt in receipts {
        mark.execute(params![hex(receipt), version as i64])?;
    }
    Ok(())
}

/// Inserts `receipt`; `shared` says whether the job's receipts stream has it. A receipt
/// of the same relay and unit already there is kept (and marked shared when `shared`).
fn insert(db: &Connection, receipt: &Receipt, shared: bool) -> rusqlite::Result<usize> {
    let f = &receipt.fields;
    let mut stmt = db.prepare_cached(
        "INSERT INTO receipts (relay_key, unit, contributor_key, version, tokens, flops, signature, hash, shared)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let inserted = stmt.execute(params![
        hex(&receipt.relay),
        f.unit_id as i64,
        hex(&f.contributor),
        f.version as i64,
        f.tokens as i64,
        f.flops as i64,
        hex(&receipt.signature),
        hex(&receipt.hash()),
        shared
    ]);
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _)) if shared && e.code == rusqlite::ErrorCode::ConstraintViolation => db
            .prepare_cached("UPDATE receipts SET shared = 1 WHERE relay_key = ?1 AND unit = ?2")?
            .execute(params![hex(&receipt.relay), f.unit_id as i64]),
        other => other,
    }
}

impl Ledger {
    /// Stores the receipt of a unit accepted here. Receipts are never replaced: a second
    /// one for the same relay and unit is an error.
    pub fn record_receipt(&self, receipt: &Receipt) -> anyhow::Result<()> {
        insert(&self.db, receipt, false)?;
        Ok(())
    }

    /// Receipts, by signing relay then unit: all of them, or those of one contributor
    /// key (hex).
    pub fn receipts(&self, contributor_key: Option<&str>) -> anyhow::Result<Vec<ReceiptRow>> {
        // Two statements: one with `?1 IS NULL OR …` would scan every receipt instead of
        // using the index on the contributor's key.
        let filter = if contributor_key.is_some() { RECEIPTS_OF_KEY } else { ALL_RECEIPTS };
        let mut stmt = self.db.prepare_cached(&format!("SELECT {COLUMNS} {filter}"))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(contributor_key), ReceiptRow::read)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The receipts stream's sequence number up to which this ledger mirrors it (0:
    /// none yet).
    pub fn receipts_mirrored_through(&self) -> anyhow::Result<u64> {
        let seq: Option<i64> = rusqlite::OptionalExtension::optional(self.db.query_row(
            "SELECT seq FROM engine_cursors WHERE stream = ?1",
            [RECEIPTS_STREAM],
            |r| r.get(0),
        ))?;
        Ok(seq.unwrap_or(0) as u64)
    }

    /// Records `read`, receipts from the job's receipts stream, each once (marking this
    /// relay's own as shared), and that the stream is mirrored through `through`; one
    /// transaction.
    pub fn mirror_receipts(&mut self, read: &[Receipt], through: u64) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        for receipt in read {
            insert(&tx, receipt, true)?;
        }
        tx.execute(
            "INSERT INTO engine_cursors (stream, seq) VALUES (?1, ?2)
             ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq",
            params![RECEIPTS_STREAM, through as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The receipts signed by `relay_key` that the receipts stream has not shown this
    /// ledger: those a relay killed before sharing them must share again.
    pub fn unshared_receipts(&self, relay_key: &[u8; KEY_BYTES]) -> anyhow::Result<Vec<Receipt>> {
        let mut stmt = self.db.prepare_cached(&format!("SELECT {COLUMNS} {UNSHARED}"))?;
        let rows: Vec<ReceiptRow> = stmt.query_map([hex(relay_key)], ReceiptRow::read)?.collect::<Result<_, _>>()?;
        Ok(rows.iter().filter_map(ReceiptRow::receipt).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JobConfig;
    use crowdgrad_runtime::identity::Identity;

    fn signed(by: &Identity, unit: u64) -> Receipt {
        by.sign_receipt(ReceiptFields { contributor: [7; KEY_BYTES], unit_id: unit, version: 1, tokens: 10, flops: 60 })
    }

    #[test]
    fn a_contributors_receipts_are_found_by_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(dir.path(), &JobConfig::default()).expect("the ledger opens");
        let plan = super::super::tests::plan(&ledger, &format!("SELECT {COLUMNS} {RECEIPTS_OF_KEY}"));
        assert!(plan.contains("USING INDEX receipts_by_contributor"), "{plan}");
        let plan = super::super::tests::plan(&ledger, &format!("SELECT {COLUMNS} {UNSHARED}"));
        assert!(plan.contains("USING INDEX receipts_unshared"), "{plan}");
    }

    #[test]
    fn mirrored_receipts_of_other_relays_sit_beside_ours_and_ours_become_shared() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ledger = Ledger::open(dir.path(), &JobConfig::default()).expect("the ledger opens");
        let (me, other) = (Identity::generate(), Identity::generate());
        let (mine, theirs) = (signed(&me, 5), signed(&other, 5));
        ledger.record_receipt(&mine).expect("recorded");
        assert!(ledger.record_receipt(&mine).is_err(), "a receipt is never replaced");
        assert_eq!(ledger.unshared_receipts(&me.public()).expect("read"), vec![mine.clone()]);
        ledger.mirror_receipts(&[theirs.clone(), mine.clone(), theirs.clone()], 3).expect("mirrored");
        assert_eq!(ledger.receipts_mirrored_through().expect("cursor"), 3);
        assert!(ledger.unshared_receipts(&me.public()).expect("read").is_empty());
        let rows = ledger.receipts(None).expect("read");
        assert_eq!(rows.len(), 2, "the same unit of two relays is two receipts: {rows:?}");
        assert!(rows.iter().all(|r| r.receipt().is_some_and(|receipt| receipt.verify())));
    }

    #[test]
    fn a_version_marks_its_receipts_whether_they_arrive_before_or_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ledger = Ledger::open(dir.path(), &JobConfig::default()).expect("the ledger opens");
        let relay = Identity::generate();
        let (early, late) = (signed(&relay, 1), signed(&relay, 2));
        ledger.record_receipt(&early).expect("recorded");
        let tx = ledger.db.transaction().expect("tx");
        mark_averaged(&tx, &[early.hash(), late.hash()], 4).expect("marked");
        tx.commit().expect("commit");
        ledger.mirror_receipts(&[late], 1).expect("mirrored");
        let rows = ledger.receipts(None).expect("read");
        assert_eq!(rows.iter().map(|r| r.in_version).collect::<Vec<_>>(), vec![Some(4), Some(4)]);
    }

    #[test]
    fn a_ledger_keyed_by_unit_moves_to_the_current_schema_keeping_every_receipt() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ledger.sqlite");
        let relay = Identity::generate();
        let old = signed(&relay, 9);
        {
            let db = Connection::open(&path).expect("open");
            db.execute_batch(
                "CREATE TABLE receipts (unit INTEGER PRIMARY KEY, contributor_key TEXT NOT NULL,
                     version INTEGER NOT NULL, tokens INTEGER NOT NULL, flops INTEGER NOT NULL,
                     relay_key TEXT NOT NULL, signature TEXT NOT NULL, hash TEXT NOT NULL, in_version INTEGER);
                 CREATE INDEX receipts_by_contributor ON receipts (contributor_key);",
            )
            .expect("the old schema");
            let f = &old.fields;
            db.execute(
                "INSERT INTO receipts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 3)",
                params![
                    f.unit_id as i64,
                    hex(&f.contributor),
                    f.version as i64,
                    f.tokens as i64,
                    f.flops as i64,
                    hex(&old.relay),
                    hex(&old.signature),
                    hex(&old.hash())
                ],
            )
            .expect("an old receipt");
        }
        let ledger = Ledger::open(dir.path(), &JobConfig::default()).expect("the old ledger opens");
        let rows = ledger.receipts(None).expect("read");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].in_version, Some(3));
        assert_eq!(rows[0].receipt(), Some(old));
        drop(ledger);
        Ledger::open(dir.path(), &JobConfig::default()).expect("opens again, already moved");
    }
}
