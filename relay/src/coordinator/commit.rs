//! Closing a round: the outer Nesterov step on the mean delta, then the new version
//! written to the store and the ledger before it is served. When writing fails the
//! relay stays at its last good version, says so in status, and tries again.

use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::aggregate::{Weighted, aggregate, outer_step};
use super::{Coordinator, HISTORY_LEN, VersionRecord};
use crate::config::JobConfig;
use crate::ledger::{Ledger, VersionRow, now_ms};
use crate::store::Store;
use crowdgrad_runtime::identity::{hex, merkle_root};

/// How long after a failed write the commit is tried again.
const COMMIT_RETRY: Duration = Duration::from_secs(1);

impl From<VersionRow> for VersionRecord {
    fn from(row: VersionRow) -> Self {
        VersionRecord {
            version: row.version,
            val_loss: row.val_loss,
            train_loss: row.train_loss,
            results: row.results,
            at_ms: row.committed_ms,
        }
    }
}

/// What a commit records about a version besides its tensors.
pub(super) struct Written {
    /// The version.
    pub version: u64,
    /// Its held-out loss, nats.
    pub val_loss: f32,
    /// Mean last-step training loss of its results, nats.
    pub train_loss: Option<f32>,
    /// Results averaged into it.
    pub results: u32,
}

/// Writes a version's files durably (the Merkle root of `receipts`, `(unit, receipt
/// hash)`, in their metadata), then its ledger row, closing `round`'s row when given;
/// returns the weights file and its hash.
#[allow(clippy::too_many_arguments)]
pub(super) fn persist(
    store: &Store,
    ledger: &mut Ledger,
    job: &JobConfig,
    version: Written,
    params: &[f32],
    momentum: &[f32],
    round: Option<u64>,
    receipts: &[(u64, [u8; 32])],
) -> anyhow::Result<(Bytes, String)> {
    let mut receipts = receipts.to_vec();
    receipts.sort_unstable();
    let leaves: Vec<[u8; 32]> = receipts.iter().map(|(_, hash)| *hash).collect();
    let receipts_root = hex(&merkle_root(&leaves));
    let written = store.write(&job.model, version.version, params, momentum, &job.name, &receipts_root)?;
    let row = VersionRow {
        version: version.version,
        weights_hash: written.weights_hash.clone(),
        momentum_hash: written.momentum_hash,
        val_loss: version.val_loss,
        train_loss: version.train_loss,
        results: version.results,
        committed_ms: now_ms(),
        receipts_root,
    };
    let units: Vec<u64> = receipts.iter().map(|(unit, _)| *unit).collect();
    ledger.commit_version(&row, round, &units)?;
    Ok((Bytes::from(written.weights), written.weights_hash))
}

impl Coordinator {
    /// Averages the round's results and takes the outer Nesterov step; once the new
    /// version is written, serves it and opens the next round.
    pub(super) fn commit(&mut self, now: Instant) {
        // Each Δ counts by its share of H, discounted when late, under the job's rule.
        let n = self.results.len();
        let results: Vec<Weighted> =
            self.results.iter().map(|c| Weighted { delta: &c.delta, share: c.share, weight: c.weight }).collect();
        let a = &self.job.aggregation;
        let g = aggregate(a.rule, &results, a.trim, a.clip);
        let (mut params, mut momentum) = (self.params.to_vec(), self.momentum.clone());
        outer_step(&mut params, &mut momentum, &g, self.job.outer.lr, self.job.outer.momentum);
        let version = self.version + 1;
        let val_loss = self.evaluator.loss(&params);
        let train_loss = (!self.train_losses.is_empty())
            .then(|| self.train_losses.iter().sum::<f32>() / self.train_losses.len() as f32);
        let written = persist(
            &self.store,
            &mut self.ledger,
            &self.job,
            Written { version, val_loss, train_loss, results: n as u32 },
            &params,
            &momentum,
            Some(self.round),
            &self.round_receipts,
        );
        let current = match written {
            Ok(current) => current,
            Err(e) => {
                let message = format!("version {version} could not be saved ({e:#}); serving version {}", self.version);
                tracing::error!("{message}; retrying in {COMMIT_RETRY:?}");
                self.storage_error = Some(message);
                self.retry_commit_at = Some(now + COMMIT_RETRY);
                return;
            }
        };
        if self.storage_error.take().is_some() {
            tracing::info!(version, "storage works again");
        }
        self.retry_commit_at = None;
        self.round_receipts.clear();
        self.params = std::sync::Arc::new(params);
        self.starts.insert(version, self.params.clone());
        self.momentum = momentum;
        self.version = version;
        self.current = current;
        tracing::info!(version, val_loss, results = n, "committed version");
        self.metrics.version.set(version as i64);
        self.metrics.val_loss.set(val_loss as f64);
        self.metrics.train_loss.set(train_loss.unwrap_or(f32::NAN) as f64);
        if let Some(started) = self.round_started.take() {
            self.metrics.round_seconds.observe(now.duration_since(started).as_secs_f64());
        }
        self.history.push_back(VersionRecord { version, val_loss, train_loss, results: n as u32, at_ms: now_ms() });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
        self.prune();
        self.round += 1;
        let opened = self.ledger.open_round(self.round, version);
        self.note_storage("opening a round", opened);
        self.round_deadline = None;
        // Units still out become late units while their version is recent enough.
        let oldest = version.saturating_sub(self.job.round.max_staleness as u64);
        self.starts.retain(|&v, _| v >= oldest);
        // A unit whose result is being checked stays until its verdict, however late.
        self.units.retain(|_, u| match u.state {
            super::UnitState::Assigned { .. } => u.version >= oldest,
            super::UnitState::Checking => true,
            _ => false,
        });
        self.results.clear();
        self.train_losses.clear();
        for s in self.sessions.values_mut() {
            s.unit = None;
        }
        self.offer_all(now);
    }

    /// Deletes the files of versions that are neither among the newest `keep_last` nor
    /// a multiple of `keep_every`.
    fn prune(&mut self) {
        let kept = self.ledger.kept_versions();
        let Some(kept) = self.note_storage("listing kept versions", kept) else { return };
        let (last, every) = (self.job.storage.keep_last as u64, self.job.storage.keep_every);
        for version in kept {
            if version + last > self.version || (every != 0 && version.is_multiple_of(every)) {
                continue;
            }
            // The ledger forgets first: a crash in between leaves an orphan file, never a
            // listed version without its file.
            let forgot = self.ledger.forget_version(version);
            if self.note_storage("forgetting a version", forgot).is_some()
                && let Err(e) = self.store.remove(version)
            {
                tracing::warn!(version, "could not delete an old version: {e}");
            }
        }
    }
}
