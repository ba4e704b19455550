//! The SQLite ledger (`ledger.sqlite` in the storage folder): the job, every committed
//! version, rounds, units, contributors and every result with its verdict.
//!
//! A version row is written only after its checkpoint files are durable, so every
//! version the ledger lists can be loaded. WAL journaling with `synchronous = NORMAL`:
//! a killed process loses nothing written; a version's row is written with
//! `synchronous = FULL`, so a power loss cannot roll it back behind its files either.
//! Receipts are append-only, and unit ids never repeat.
//!
//! The coordinator groups its writes ([`Ledger::begin_writes`], [`Ledger::end_writes`]),
//! no connection checkpoints on its own (the committer does, after each version), and a
//! busy connection retries every 200 µs: see `coordinator::Coordinator::flush_writes`.

mod receipts;
mod screen;

pub use receipts::ReceiptRow;
pub use screen::ScreenedDelta;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

use crate::config::JobConfig;

/// Accepted and rejected results of the contributors signing with one key.
const CONTRIBUTOR_COUNTS: &str =
    "SELECT COALESCE(SUM(accepted), 0), COALESCE(SUM(rejected), 0) FROM contributors WHERE public_key = ?1";

/// How long a connection waits for the other to finish writing.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// WAL frames (pages of 4 KiB) above which a checkpoint makes writers wait for it to
/// catch up ([`Ledger::checkpoint`]); SQLite truncates the file back to
/// [`WAL_KEPT_BYTES`] when it starts over.
const WAL_CATCH_UP_FRAMES: i64 = 4096;

/// The size SQLite truncates a WAL that started over to (`journal_size_limit`).
const WAL_KEPT_BYTES: i64 = 16 << 20;

/// How long a connection sleeps before it tries the write lock again.
const BUSY_RETRY: Duration = Duration::from_micros(200);

/// SQLite's busy handler: retries every [`BUSY_RETRY`] for up to [`BUSY_WAIT`].
/// SQLite's own (`busy_timeout`) sleeps 1, 2, 5, … up to 100 ms between tries, so a
/// connection that found the lock taken for 50 µs could sleep for 10 ms, and the
/// coordinator's connection does so under the coordinator's lock.
fn wait_a_little(tries: i32) -> bool {
    std::thread::sleep(BUSY_RETRY);
    BUSY_RETRY * (tries.max(0) as u32 + 1) < BUSY_WAIT
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    weights_hash TEXT NOT NULL,
    momentum_hash TEXT NOT NULL,
    val_loss REAL NOT NULL,
    train_loss REAL,
    results INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL,
    kept INTEGER NOT NULL DEFAULT 1,
    receipts_root TEXT NOT NULL DEFAULT '',
    committed_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'abandoned')),
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER
);
CREATE TABLE IF NOT EXISTS units (
    unit INTEGER PRIMARY KEY,
    round INTEGER NOT NULL REFERENCES rounds(round),
    shard INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'assigned', 'done', 'abandoned')),
    contributor INTEGER REFERENCES contributors(id),
    deadline_ms INTEGER
);
CREATE TABLE IF NOT EXISTS contributors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL DEFAULT '',
    agent TEXT NOT NULL,
    device TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    unit INTEGER NOT NULL,
    contributor INTEGER NOT NULL REFERENCES contributors(id),
    version INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    reason TEXT NOT NULL,
    loss_before REAL,
    loss_after REAL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS contributors_by_key ON contributors (public_key);
CREATE TABLE IF NOT EXISTS screen_values (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series INTEGER NOT NULL,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS screen_deltas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    unit INTEGER NOT NULL,
    hash BLOB NOT NULL,
    sketch BLOB NOT NULL
);
";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A committed version as the ledger records it.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionRow {
    /// Model version.
    pub version: u64,
    /// blake3 of the weights file, hex.
    pub weights_hash: String,
    /// blake3 of the momentum file, hex.
    pub momentum_hash: String,
    /// Held-out loss, nats.
    pub val_loss: f32,
    /// Mean last-step training loss of the results that made it, nats.
    pub train_loss: Option<f32>,
    /// Results averaged into it.
    pub results: u32,
    /// When it was committed, ms since the Unix epoch.
    pub committed_ms: i64,
    /// Merkle root (blake3, hex) of the receipts of the results averaged into it.
    pub receipts_root: String,
    /// In a federated job, the public URL of the relay that committed it; empty for a
    /// relay alone.
    pub committed_by: String,
}

/// A unit's ledger state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitRowState {
    /// Created, not held.
    Open,
    /// Held by a contributor until a deadline.
    Assigned,
    /// Its result was accepted.
    Done,
    /// Given up: late and past its deadline, or its round was abandoned.
    Abandoned,
}

impl UnitRowState {
    fn as_str(self) -> &'static str {
        match self {
            UnitRowState::Open => "open",
            UnitRowState::Assigned => "assigned",
            UnitRowState::Done => "done",
            UnitRowState::Abandoned => "abandoned",
        }
    }
}

/// One result's ledger entry.
pub struct ResultRow<'a> {
    /// The unit it answers.
    pub unit: u64,
    /// Who sent it.
    pub contributor: u64,
    /// The version it claims to start from.
    pub version: u64,
    /// The verdict.
    pub accepted: bool,
    /// Rejection code and explanation; empty when accepted.
    pub reason: &'a str,
    /// Loss before and after the unit's steps, nats.
    pub losses: (f32, f32),
}

/// The open ledger.
pub struct Ledger {
    db: Connection,
    /// Set while one of this ledger's connections writes a version
    /// ([`Self::commit_version`]) or lets the WAL catch up ([`Self::checkpoint`]); shared
    /// by all of them (see [`Self::version_waiting`]).
    version_waiting: Arc<AtomicBool>,
}

impl Ledger {
    /// Opens (or creates) `dir/ledger.sqlite` for `job`. A ledger of another model shape
    /// is refused: its checkpoints would not load.
    ///
    /// A ledger file that SQLite cannot read whole (truncated or corrupt) is refused with
    /// what to do: move it aside, and the relay rebuilds the ledger from the checkpoints
    /// (see `recovery`).
    pub fn open(dir: &Path, job: &JobConfig) -> anyhow::Result<Ledger> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("ledger.sqlite");
        let db = Self::open_whole(&path).with_context(|| {
            format!(
                "{0} is damaged. Move it aside (for example `mv {0} {0}.damaged`, with its -wal and -shm files) and \
                 start again: the relay then adopts the checkpoints in {1} and resumes from the newest; contributors \
                 register anew and earlier receipts stay in the old file",
                path.display(),
                dir.join("versions").display()
            )
        })?;
        let config = serde_json::to_string(job)?;
        let stored: Option<String> =
            db.query_row("SELECT config FROM jobs WHERE id = 1", [], |r| r.get(0)).optional()?;
        match stored {
            None => {
                db.execute(
                    "INSERT INTO jobs (id, name, config, created_ms) VALUES (1, ?1, ?2, ?3)",
                    params![job.name, config, now_ms()],
                )?;
            }
            Some(stored) => {
                let stored: JobConfig = serde_json::from_str(&stored).context("the ledger's job config")?;
                anyhow::ensure!(
                    stored.trained().lora == job.trained().lora,
                    "{} holds a job that trains {:?}, not {:?}; use another storage.dir",
                    path.display(),
                    stored.trained().lora,
                    job.trained().lora
                );
                anyhow::ensure!(
                    stored.model == job.model,
                    "{} holds a job with model {:?}, not {:?}; use another storage.dir",
                    path.display(),
                    stored.model,
                    job.model
                );
                db.execute("UPDATE jobs SET name = ?1, config = ?2 WHERE id = 1", params![job.name, config])?;
            }
        }
        Ok(Ledger { db, version_waiting: Arc::default() })
    }

    /// Another connection to this ledger, for the commits that run off the coordinator's
    /// lock. SQLite lets one connection write at a time; each waits up to
    /// [`BUSY_WAIT`] for the other.
    pub fn second_connection(&self) -> anyhow::Result<Ledger> {
        let path = self.db.path().context("the ledger is a file")?;
        Ok(Ledger { db: Self::connect(Path::new(path))?, version_waiting: self.version_waiting.clone() })
    }

    /// A connection to `path` in WAL mode.
    fn connect(path: &Path) -> anyhow::Result<Connection> {
        let mut db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.pragma_update(None, "wal_autocheckpoint", 0)?;
        db.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
        db.busy_handler(Some(wait_a_little))?;
        Ok(db)
    }

    /// Starts a transaction holding the write lock, so that the writes until
    /// [`Self::end_writes`] land as one WAL commit rather than one each. Returns
    /// whether one was started (`false` inside one already).
    pub fn begin_writes(&self) -> anyhow::Result<bool> {
        if !self.db.is_autocommit() {
            return Ok(false);
        }
        self.db.execute_batch("BEGIN IMMEDIATE")?;
        Ok(true)
    }

    /// Commits the transaction [`Self::begin_writes`] started; on failure rolls it back,
    /// so that the next writes do not join it. An error too when SQLite rolled it back
    /// already (after an I/O error, or a full disk).
    pub fn end_writes(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.db.is_autocommit(), "SQLite rolled the transaction back");
        let committed = self.db.execute_batch("COMMIT");
        if committed.is_err() && !self.db.is_autocommit() {
            let _ = self.db.execute_batch("ROLLBACK");
        }
        Ok(committed?)
    }

    /// Opens `path`, checks that SQLite can read it whole, and creates missing tables.
    fn open_whole(path: &Path) -> anyhow::Result<Connection> {
        let mut db = Self::connect(path)?;
        let check: String = db.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "SQLite's quick_check says: {check}");
        db.execute_batch(SCHEMA)?;
        let recorded_committer =
            db.prepare("SELECT 1 FROM pragma_table_info('versions') WHERE name = 'committed_by'")?.exists([])?;
        if !recorded_committer {
            // A ledger from before versions recorded their committer.
            db.execute_batch("ALTER TABLE versions ADD COLUMN committed_by TEXT NOT NULL DEFAULT ''")?;
        }
        receipts::create_or_migrate(&mut db)?;
        Ok(db)
    }

    /// Opens an existing ledger in `dir` for reading only (`crowdgrad ledger export`).
    pub fn open_read_only(dir: &Path) -> anyhow::Result<Ledger> {
        let path = dir.join("ledger.sqlite");
        let db = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        receipts::ensure_current(&db, &path)?;
        Ok(Ledger { db, version_waiting: Arc::default() })
    }

    /// Whether another connection of this ledger wants the write lock for a version
    /// ([`Self::commit_version`]) or the WAL's catch-up: a connection that holds its
    /// transactions open should end them and start no other until this is `false` again.
    pub fn version_waiting(&self) -> bool {
        self.version_waiting.load(Ordering::Acquire)
    }

    /// The newest committed version, if any.
    pub fn last_version(&self) -> anyhow::Result<Option<VersionRow>> {
        Ok(self.versions_from_newest(1)?.pop())
    }

    /// Up to `limit` committed versions, oldest first, ending at the newest.
    pub fn recent_versions(&self, limit: usize) -> anyhow::Result<Vec<VersionRow>> {
        let mut rows = self.versions_from_newest(limit)?;
        rows.reverse();
        Ok(rows)
    }

    fn versions_from_newest(&self, limit: usize) -> anyhow::Result<Vec<VersionRow>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT version, weights_hash, momentum_hash, val_loss, train_loss, results, committed_ms, receipts_root,
                 committed_by
             FROM versions ORDER BY version DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(VersionRow {
                version: r.get::<_, i64>(0)? as u64,
                weights_hash: r.get(1)?,
                momentum_hash: r.get(2)?,
                val_loss: r.get::<_, f64>(3)? as f32,
                train_loss: r.get::<_, Option<f64>>(4)?.map(|l| l as f32),
                results: r.get(5)?,
                committed_ms: r.get(6)?,
                receipts_root: r.get(7)?,
                committed_by: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The hash of `version`'s weights file if it is committed and still kept.
    pub fn kept_version(&self, version: u64) -> anyhow::Result<Option<String>> {
        let mut stmt = self.db.prepare_cached("SELECT weights_hash FROM versions WHERE version = ?1 AND kept = 1")?;
        Ok(stmt.query_row([version as i64], |r| r.get(0)).optional()?)
    }

    /// Records a committed version, marks `receipts` (blake3 hashes) as averaged into it,
    /// and closes `round`'s row as committed, in one transaction.
    /// The transaction is fsynced before this returns (`synchronous = FULL` for it).
    /// Then the WAL is copied into the database as far as no reader needs it (a passive
    /// checkpoint): connections never checkpoint on their own, so that the coordinator's
    /// writes, under its lock, never wait for a copy and its fsyncs.
    pub fn commit_version(
        &mut self,
        row: &VersionRow,
        round: Option<u64>,
        receipts: &[[u8; 32]],
    ) -> anyhow::Result<()> {
        self.version_waiting.store(true, Ordering::Release);
        let written = self.write_version_durably(row, round, receipts);
        self.version_waiting.store(false, Ordering::Release);
        written?;
        // The version is written; a checkpoint that fails is tried again at the next.
        if let Err(e) = self.checkpoint() {
            tracing::warn!("ledger: checkpointing the WAL failed: {e}");
        }
        Ok(())
    }

    /// Copies the WAL into the database as far as it can without stopping the other
    /// connections' writes. Writes that go on meanwhile keep SQLite from starting the
    /// WAL over, so once it holds more than [`WAL_CATCH_UP_FRAMES`] the other
    /// connections are asked to wait ([`Self::version_waiting`]) while a second pass
    /// copies the rest; their next write then starts the WAL from its beginning.
    fn checkpoint(&self) -> anyhow::Result<()> {
        let passive = || self.db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        if passive()? > WAL_CATCH_UP_FRAMES {
            self.version_waiting.store(true, Ordering::Release);
            let caught_up = passive();
            self.version_waiting.store(false, Ordering::Release);
            caught_up?;
        }
        Ok(())
    }

    fn write_version_durably(
        &mut self,
        row: &VersionRow,
        round: Option<u64>,
        receipts: &[[u8; 32]],
    ) -> anyhow::Result<()> {
        self.db.pragma_update(None, "synchronous", "FULL")?;
        let written = self.write_version(row, round, receipts);
        self.db.pragma_update(None, "synchronous", "NORMAL")?;
        written
    }

    fn write_version(&mut self, row: &VersionRow, round: Option<u64>, receipts: &[[u8; 32]]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        tx.execute(
            "INSERT INTO versions (version, weights_hash, momentum_hash, val_loss, train_loss, results, committed_ms,
                 receipts_root, committed_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                row.version as i64,
                row.weights_hash,
                row.momentum_hash,
                row.val_loss as f64,
                row.train_loss.map(|l| l as f64),
                row.results,
                row.committed_ms,
                row.receipts_root,
                row.committed_by
            ],
        )?;
        receipts::mark_averaged(&tx, receipts, row.version)?;
        if let Some(round) = round {
            tx.execute(
                "UPDATE rounds SET state = 'committed', closed_ms = ?2 WHERE round = ?1",
                params![round as i64, row.committed_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks `version`'s files as deleted.
    pub fn forget_version(&self, version: u64) -> anyhow::Result<()> {
        self.db.execute("UPDATE versions SET kept = 0 WHERE version = ?1", [version as i64])?;
        Ok(())
    }

    /// Every version the ledger has a row for, with whether its files are kept.
    pub fn version_states(&self) -> anyhow::Result<std::collections::BTreeMap<u64, bool>> {
        let mut stmt = self.db.prepare_cached("SELECT version, kept FROM versions")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, bool>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Versions whose files are still kept, oldest first.
    pub fn kept_versions(&self) -> anyhow::Result<Vec<u64>> {
        let mut stmt = self.db.prepare_cached("SELECT version FROM versions WHERE kept = 1 ORDER BY version")?;
        let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
        Ok(rows.map(|v| v.map(|v| v as u64)).collect::<Result<_, _>>()?)
    }

    /// Closes rounds a previous run left open, with their units; returns the next
    /// round number and the next unit id, so that ids never repeat: above every unit and
    /// receipt the ledger has seen, and at least `floor` (round, unit), what adopted
    /// checkpoints say was issued.
    pub fn abandon_open_rounds(&mut self, floor: (u64, u64)) -> anyhow::Result<(u64, u64)> {
        let tx = self.db.transaction()?;
        tx.execute(
            "UPDATE units SET state = 'abandoned', contributor = NULL, deadline_ms = NULL
             WHERE state IN ('open', 'assigned')",
            [],
        )?;
        tx.execute("UPDATE rounds SET state = 'abandoned', closed_ms = ?1 WHERE state = 'open'", [now_ms()])?;
        let round: i64 = tx.query_row("SELECT COALESCE(MAX(round), 0) + 1 FROM rounds", [], |r| r.get(0))?;
        let unit: i64 = tx.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(unit) FROM units), 0), COALESCE((SELECT MAX(unit) FROM receipts), 0)) + 1",
            [],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(((round as u64).max(floor.0), (unit as u64).max(floor.1)))
    }

    /// Records that `round` opened on `version`.
    pub fn open_round(&self, round: u64, version: u64) -> anyhow::Result<()> {
        self.db.execute(
            "INSERT INTO rounds (round, version, state, opened_ms) VALUES (?1, ?2, 'open', ?3)",
            params![round as i64, version as i64, now_ms()],
        )?;
        Ok(())
    }

    /// Creates or updates a unit: its state, holder and deadline.
    #[allow(clippy::too_many_arguments)]
    pub fn put_unit(
        &self,
        unit: u64,
        round: u64,
        shard: u32,
        seed: u64,
        state: UnitRowState,
        contributor: Option<u64>,
        deadline_ms: Option<i64>,
    ) -> anyhow::Result<()> {
        let mut stmt = self.db.prepare_cached(
            "INSERT INTO units (unit, round, shard, seed, state, contributor, deadline_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (unit) DO UPDATE SET state = excluded.state, contributor = excluded.contributor,
                 deadline_ms = excluded.deadline_ms",
        )?;
        // Seeds are full 64-bit; SQLite integers are signed, so store the bit pattern.
        stmt.execute(params![
            unit as i64,
            round as i64,
            shard,
            seed as i64,
            state.as_str(),
            contributor.map(|c| c as i64),
            deadline_ms
        ])?;
        Ok(())
    }

    /// The contributor holding `token` (hashed in the ledger), after updating its last
    /// visit, or `None` for an unknown token.
    pub fn resume_contributor(&self, token: &str) -> anyhow::Result<Option<u64>> {
        let mut stmt =
            self.db.prepare_cached("UPDATE contributors SET last_seen_ms = ?2 WHERE token_hash = ?1 RETURNING id")?;
        let id: Option<i64> = stmt.query_row(params![token_hash(token), now_ms()], |r| r.get(0)).optional()?;
        Ok(id.map(|id| id as u64))
    }

    /// Registers contributor `id`, reachable through `token`, signing as `public_key`
    /// (hex).
    pub fn register_contributor(
        &self,
        id: u64,
        token: &str,
        public_key: &str,
        agent: &str,
        device: &str,
    ) -> anyhow::Result<()> {
        let mut stmt = self.db.prepare_cached(
            "INSERT INTO contributors (id, token_hash, public_key, agent, device, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )?;
        stmt.execute(params![id as i64, token_hash(token), public_key, agent, device, now_ms()])?;
        Ok(())
    }

    /// One past the highest contributor id ever registered (1 for a new ledger): ids
    /// from there on are free.
    pub fn next_contributor_id(&self) -> anyhow::Result<u64> {
        let highest: i64 = self.db.query_row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'contributors'), 0),
                        COALESCE((SELECT MAX(id) FROM contributors), 0))",
            [],
            |r| r.get(0),
        )?;
        Ok(highest as u64 + 1)
    }

    /// Accepted and rejected results of the contributors signing as `key` (hex).
    pub fn contributor_counts(&self, key: &str) -> anyhow::Result<(u64, u64)> {
        let mut stmt = self.db.prepare_cached(CONTRIBUTOR_COUNTS)?;
        Ok(stmt.query_row([key], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))?)
    }

    /// Records a verdict and counts it for its contributor.
    pub fn record_result(&self, row: &ResultRow) -> anyhow::Result<()> {
        let mut insert = self.db.prepare_cached(
            "INSERT INTO results (unit, contributor, version, accepted, reason, loss_before, loss_after, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let finite = |l: f32| l.is_finite().then_some(l as f64);
        insert.execute(params![
            row.unit as i64,
            row.contributor as i64,
            row.version as i64,
            row.accepted,
            row.reason,
            finite(row.losses.0),
            finite(row.losses.1),
            now_ms()
        ])?;
        let mut count = self.db.prepare_cached(if row.accepted {
            "UPDATE contributors SET accepted = accepted + 1 WHERE id = ?1"
        } else {
            "UPDATE contributors SET rejected = rejected + 1 WHERE id = ?1"
        })?;
        count.execute([row.contributor as i64])?;
        Ok(())
    }
}

/// The ledger keeps tokens only as blake3 hashes, so reading it does not let anyone
/// resume someone else's session.
fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` with one text parameter, one step per line.
    pub(super) fn plan(ledger: &Ledger, sql: &str) -> String {
        let mut stmt = ledger.db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("a valid statement");
        let steps = stmt.query_map(["key"], |r| r.get::<_, String>(3)).expect("a plan");
        steps.collect::<Result<Vec<_>, _>>().expect("plan rows").join("\n")
    }

    #[test]
    fn a_ledger_from_before_versions_recorded_their_committer_gains_the_column() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = Connection::open(dir.path().join("ledger.sqlite")).expect("open");
        old.execute_batch(
            "CREATE TABLE versions (version INTEGER PRIMARY KEY, weights_hash TEXT NOT NULL,
                 momentum_hash TEXT NOT NULL, val_loss REAL NOT NULL, train_loss REAL, results INTEGER NOT NULL,
                 committed_ms INTEGER NOT NULL, kept INTEGER NOT NULL DEFAULT 1,
                 receipts_root TEXT NOT NULL DEFAULT '');
             INSERT INTO versions (version, weights_hash, momentum_hash, val_loss, results, committed_ms)
                 VALUES (0, 'w', 'm', 5.5, 0, 1);",
        )
        .expect("a ledger of the old schema");
        drop(old);
        let ledger = Ledger::open(dir.path(), &JobConfig::default()).expect("the old ledger opens");
        let rows = ledger.recent_versions(10).expect("versions");
        assert_eq!((rows.len(), rows[0].committed_by.as_str()), (1, ""));
    }

    #[test]
    fn a_contributors_counts_are_found_by_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(dir.path(), &JobConfig::default()).expect("the ledger opens");
        let counts = plan(&ledger, CONTRIBUTOR_COUNTS);
        assert!(counts.contains("USING INDEX contributors_by_key"), "{counts}");
    }
}
