//! Closing a round: the outer Nesterov step on the mean delta, then the new version
//! written to the store and the ledger before it is served. When writing fails the
//! relay stays at its last good version, says so in status, and tries again.

use std::time::{Duration, Instant};

use axum::body::Bytes;

use super::aggregate::{Weighted, aggregate, outer_step};
use super::{Coordinator, HISTORY_LEN, VersionRecord};
use crate::config::JobConfig;
use crate::ledger::{Ledger, VersionRow, now_ms};
use crate::store::{Meta, Store};
use crowdgrad_runtime::identity::{hex, merkle_root};

/// Versions between trims of the screen's history in the ledger.
const SCREEN_PRUNE_EVERY: u64 = 64;

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
    /// The round it closes (0 for version 0).
    pub round: u64,
    /// Every unit id issued so far, or issued before the next version, is below this.
    pub units_below: u64,
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
    let meta = Meta {
        version: version.version,
        job: &job.name,
        receipts_root: &receipts_root,
        round: version.round,
        units_below: version.units_below,
    };
    let written = store.write(&job.model, params, momentum, &meta)?;
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
        // Each Δ counts by its share of H, discounted when late, under the job's rule. A
        // round too small for the rule to be robust takes only replayed results: with
        // one or two results, nothing would bound what an unchecked one does. (A job
        // with replay off has given that up.)
        let a = &self.job.aggregation;
        let short = self.job.verify.replay && self.results.len() < a.rule.robust_min(a.trim);
        let used: Vec<&super::Contribution> = self.results.iter().filter(|c| c.replayed || !short).collect();
        if used.is_empty() {
            let wait = self.arrivals.deadline(self.job.round_deadline());
            tracing::info!(results = self.results.len(), "round too small for its rule and none replayed; waiting");
            self.round_deadline = Some(now + wait);
            return;
        }
        let n = used.len();
        let left_out = self.results.len() - n;
        if left_out > 0 {
            tracing::info!(left_out, used = n, "round too small for its rule: averaging only replayed results");
            self.counters.unreplayed_left_out += left_out as u64;
        }
        let units: std::collections::HashSet<u64> = used.iter().map(|c| c.unit).collect();
        let results: Vec<Weighted> =
            used.iter().map(|c| Weighted { delta: &c.delta, share: c.share, weight: c.weight }).collect();
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
            Written {
                version,
                val_loss,
                train_loss,
                results: n as u32,
                round: self.round,
                // The next round creates at most `round.target` units.
                units_below: self.next_unit + self.job.round.target as u64,
            },
            &params,
            &momentum,
            Some(self.round),
            &self.round_receipts.iter().filter(|(unit, _)| units.contains(unit)).copied().collect::<Vec<_>>(),
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
    /// a multiple of `keep_every`, and the screen's history it no longer reads.
    fn prune(&mut self) {
        // The screen's rows are few and small: trimming them now and then is enough.
        if self.version.is_multiple_of(SCREEN_PRUNE_EVERY) {
            let pruned = super::screen::Screen::prune(&self.ledger);
            self.note_storage("pruning the screen's history", pruned);
        }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::Contribution;

    fn result(unit: u64, replayed: bool, value: f32, n: usize) -> Contribution {
        Contribution { unit, replayed, delta: vec![value; n], share: 1.0, weight: 1.0 }
    }

    #[test]
    fn a_round_too_small_for_its_rule_averages_only_replayed_results() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = super::super::for_test(dir.path());
        let (lr, mu) = (c.job.outer.lr, c.job.outer.momentum);
        let n = c.param_count();
        let start = c.params.to_vec();
        // Centered clipping needs 3; of these two, only the replayed one counts.
        c.results.push(result(1, true, 1e-4, n));
        c.results.push(result(2, false, 10.0, n));
        c.commit(Instant::now());
        assert_eq!(c.version, 1);
        let moved = start[0] - c.params[0];
        let expected = lr * (1.0 + mu) * 1e-4; // Nesterov's first step on g alone
        assert!((moved - expected).abs() < 1e-7, "moved {moved}, the replayed Δ alone moves {expected}");
        assert_eq!(c.counters.unreplayed_left_out, 1);
        // Nothing replayed: the round waits for more.
        c.results.push(result(3, false, 1e-4, n));
        c.commit(Instant::now());
        assert_eq!(c.version, 1, "a lone unreplayed result commits nothing");
        // Three results are enough for the rule: all count.
        c.results.push(result(4, false, 1e-4, n));
        c.results.push(result(5, false, 1e-4, n));
        c.commit(Instant::now());
        assert_eq!((c.version, c.counters.unreplayed_left_out), (2, 1));
    }
}
