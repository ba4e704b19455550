//! Closing a round, in three steps, so that acks, assignments of the next round and
//! every other call keep flowing while a new version is computed and written:
//! 1. under the coordinator's lock, [`Coordinator::close_round`] takes the round's
//!    results into a [`CommitJob`] (with the evaluator and the commit's own ledger
//!    connection, which only one commit at a time uses);
//! 2. off the lock, on the committer thread ([`crate::spawn_committer`]),
//!    [`CommitJob::run`] averages them, takes the outer Nesterov step, evaluates the
//!    held-out loss, and writes the version to the store and then the ledger;
//! 3. under the lock again, [`Coordinator::committed`] serves the new version and opens
//!    the next round.
//!
//! While a commit runs, results keep being judged and acknowledged (they count into the
//! next round), and no new unit is handed out: it would start from a version about to be
//! replaced. When writing fails the relay stays at its last good version, says so in
//! status, and a second later writes the same new version again (it is not recomputed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::new_version::{CommitJob, Committed, Draft, NewVersion, Work};
use super::{Contribution, Coordinator, VersionRecord};
use crate::ledger::{VersionRow, now_ms};

/// Versions between trims of the screen's history in the ledger.
const SCREEN_PRUNE_EVERY: u64 = 64;

/// How long after a failed write the commit is tried again.
const COMMIT_RETRY: Duration = Duration::from_secs(1);

/// Coordinator ids, so that a commit finishing after the operator replaced the job is
/// not installed into the new one.
static NEXT_COORDINATOR: AtomicU64 = AtomicU64::new(1);

/// A fresh coordinator id.
pub(super) fn new_owner() -> u64 {
    NEXT_COORDINATOR.fetch_add(1, Ordering::Relaxed)
}

/// Where commits run: on the committer thread, or (for the parts' unit tests) inline.
pub type CommitQueue = std::sync::mpsc::Sender<CommitJob>;

impl From<VersionRow> for VersionRecord {
    fn from(row: VersionRow) -> Self {
        VersionRecord {
            version: row.version,
            val_loss: row.val_loss,
            train_loss: row.train_loss,
            results: row.results,
            at_ms: row.committed_ms,
            committed_by: (!row.committed_by.is_empty()).then_some(row.committed_by),
        }
    }
}

impl Coordinator {
    /// Whether a commit is running off the lock.
    pub(super) fn committing(&self) -> bool {
        self.tools.is_none()
    }

    /// Closes the round: takes its results (or the commit whose write failed) into a
    /// [`CommitJob`] and hands it to the committer. A round too small for the job's rule
    /// to be robust takes only replayed results: with one or two results, nothing would
    /// bound what an unchecked one does. (A job with replay off has given that up.)
    pub(super) fn close_round(&mut self, now: Instant) {
        if self.committing() || !self.commits_here() {
            return;
        }
        let draft = match self.failed_commit.take() {
            Some(draft) => draft,
            None => match self.take_round(now) {
                Some(draft) => draft,
                None => return,
            },
        };
        self.start_commit(Work::Round(draft), now);
    }

    /// Hands `work` to the committer with the commit's tools (none may be out). The
    /// ledger's writes land first: a round's receipts before its checkpoint, which records
    /// their root, is written, and so that the commit's own connection can write.
    pub(super) fn start_commit(&mut self, work: Work, now: Instant) {
        let tools = self.tools.take().expect("no commit runs");
        let job = CommitJob { owner: self.owner, tools, work };
        self.flush_writes();
        match &self.commits {
            Some(queue) => queue.send(job).expect("the committer thread runs as long as the relay"),
            None => {
                let done = job.run();
                self.committed(done, now);
            }
        }
    }

    /// The round's results as a [`Draft`], or `None` (and a later deadline) when none may
    /// be averaged yet.
    fn take_round(&mut self, now: Instant) -> Option<Draft> {
        let a = &self.job.aggregation;
        let short = self.job.verify.replay && self.results.len() < a.rule.robust_min(a.trim);
        if short && !self.results.iter().any(|c| c.replayed) {
            let wait = self.arrivals.deadline(self.job.round_deadline());
            tracing::info!(results = self.results.len(), "round too small for its rule and none replayed; waiting");
            self.round_deadline = Some(now + wait);
            return None;
        }
        let (results, left_out): (Vec<Contribution>, Vec<Contribution>) =
            std::mem::take(&mut self.results).into_iter().partition(|c| c.replayed || !short);
        if !left_out.is_empty() {
            tracing::info!(
                left_out = left_out.len(),
                used = results.len(),
                "round too small for its rule: averaging only replayed results"
            );
            self.counters.unreplayed_left_out += left_out.len() as u64;
        }
        let losses = std::mem::take(&mut self.train_losses);
        let results_through = results.iter().map(|c| c.seq).max().unwrap_or(0);
        Some(Draft {
            results_through,
            version: self.version + 1,
            round: self.round,
            // The next round creates at most `round.target` units.
            units_below: self.units.next_id() + self.job.round.target as u64,
            receipts: results.iter().map(|c| c.receipt).collect(),
            results,
            train_loss: (!losses.is_empty()).then(|| losses.iter().sum::<f32>() / losses.len() as f32),
            start: self.params.clone(),
        })
    }

    /// Takes a commit that ran: on success, serves its version and opens the next round;
    /// on a failed write, keeps it to write again. A replaced job's commit is ignored.
    pub fn committed(&mut self, done: Committed, now: Instant) {
        self.in_one_write(|c| c.serve_committed(done, now));
    }

    /// [`Self::committed`], inside its ledger transaction.
    fn serve_committed(&mut self, done: Committed, now: Instant) {
        let Committed { job, written } = done;
        if job.owner != self.owner {
            return;
        }
        let CommitJob { tools, work, .. } = job;
        let NewVersion { params, val_loss, file, published } = match written {
            Ok(written) => written,
            Err(failure) => {
                self.tools = Some(tools);
                self.not_committed(work, failure, now);
                return;
            }
        };
        let (version, n, train_loss) = (work.version(), work.results(), work.train_loss());
        let committed_by = match &work {
            Work::Adopt(entry) => Some(entry.committed_by.clone()),
            Work::Round(_) => self.federated.as_ref().map(|f| f.status.relay.clone()),
        };
        if let Work::Adopt(entry) = &work {
            // What the adopted version took of the results stream is in it.
            self.results.retain(|c| c.seq > entry.results_through);
        }
        self.mark_taken_through(work.results_through());
        drop(work);
        if self.storage_error.take().is_some() {
            tracing::info!(version, "storage works again");
        }
        self.retry_commit_at = None;
        self.params = params;
        self.starts.insert(version, self.params.clone());
        self.tools = Some(tools);
        self.version = version;
        self.current = file;
        if let Some(delta) = &published.delta {
            self.recent_deltas.push((version, delta.clone()));
            let keep = self.recent_deltas.len().saturating_sub(super::STEPS_SERVED);
            for (old, _) in self.recent_deltas.drain(..keep).collect::<Vec<_>>() {
                if let Err(e) = self.store.remove_step(old) {
                    tracing::warn!(version = old, "could not delete an old step: {e}");
                }
            }
        }
        self.published = published;
        tracing::info!(version, val_loss, results = n, "committed version");
        self.metrics.version.set(version as i64);
        self.metrics.val_loss.set(val_loss as f64);
        self.metrics.train_loss.set(train_loss.unwrap_or(f32::NAN) as f64);
        if let Some(started) = self.round_started.take() {
            self.metrics.round_seconds.observe(now.duration_since(started).as_secs_f64());
        }
        self.timeline.record_version(VersionRecord {
            version,
            val_loss,
            train_loss,
            results: n as u32,
            at_ms: now_ms(),
            committed_by,
        });
        self.prune();
        self.round += 1;
        let opened = self.ledger.open_round(self.round, version);
        self.note_storage("opening a round", opened);
        self.round_deadline = None;
        // Units still out become late units while their version is recent enough.
        let oldest = version.saturating_sub(self.job.round.max_staleness as u64);
        self.starts.retain(|&v, _| v >= oldest);
        self.units.close_round(oldest);
        // A session still working on a late unit gets its next one when it hands that
        // in, on the version then current: a unit queued behind a busy one would start
        // a version late and often end too stale to count.
        let freed: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(id, s)| !s.unit.is_some_and(|unit| self.holds(**id, unit)))
            .map(|(id, _)| *id)
            .collect();
        for id in freed {
            self.sessions.get_mut(&id).expect("listed above").unit = None;
        }
        self.announce_version(version);
        self.offer_all(now);
        self.versioned_at(now);
        // Results accepted while this commit ran may fill the next round already.
        if self.results.len() >= self.job.round.target && self.may_close_early(now) {
            self.close_round(now);
        }
    }

    /// Takes a commit that wrote nothing: a round whose write failed is kept, to write
    /// again in a second; one that another relay's version superseded is given up (that
    /// version is adopted instead); an adoption that failed is tried again by the
    /// federation's agent.
    fn not_committed(&mut self, work: Work, failure: super::new_version::Failure, now: Instant) {
        let version = work.version();
        match work {
            Work::Round(_) if failure.superseded => {
                tracing::warn!(version, "{}; its round is given up", failure.message);
                self.retry_commit_at = None;
            }
            Work::Round(draft) => {
                let message = format!(
                    "version {version} could not be saved ({}); serving version {}",
                    failure.message, self.version
                );
                tracing::error!("{message}; retrying in {COMMIT_RETRY:?}");
                self.storage_error = Some(message);
                self.retry_commit_at = Some(now + COMMIT_RETRY);
                self.failed_commit = Some(draft);
            }
            Work::Adopt(_) => {
                let message = format!("version {version} could not be adopted ({})", failure.message);
                tracing::error!("{message}");
                self.storage_error = Some(message);
            }
        }
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
            // The ledger forgets first, and the files go once that has landed: a crash
            // in between leaves an orphan file, never a listed version without its file.
            let forgot = self.ledger.forget_version(version);
            if self.note_storage("forgetting a version", forgot).is_some() && !self.group_commit.hold_removal(version) {
                self.remove_files(version);
            }
        }
    }

    /// Deletes `version`'s files, which the ledger no longer lists.
    pub(super) fn remove_files(&self, version: u64) {
        if let Err(e) = self.store.remove(version) {
            tracing::warn!(version, "could not delete an old version: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crowdgrad_runtime::backend::DeviceInfo;
    use crowdgrad_runtime::protocol::{Hello, ServerMsg};

    use super::super::Contribution;
    use crate::delta::Delta;

    fn result(unit: u64, replayed: bool, value: f32, n: usize) -> Contribution {
        Contribution {
            unit,
            replayed,
            delta: Delta::Dense(vec![value; n]),
            share: 1.0,
            weight: 1.0,
            seq: 0,
            receipt: [0; 32],
        }
    }

    /// A coordinator whose versions are the outer step's exact results (no published
    /// steps), for the tests of that step.
    fn exact(dir: &std::path::Path) -> super::super::Coordinator {
        super::super::for_test_with(dir, |job| job.deltas.enabled = false)
    }

    #[test]
    fn a_round_too_small_for_its_rule_averages_only_replayed_results() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = exact(dir.path());
        let (lr, mu) = (c.job.outer.lr, c.job.outer.momentum);
        let n = c.param_count();
        let start = c.params.to_vec();
        // Centered clipping needs 3; of these two, only the replayed one counts.
        c.results.push(result(1, true, 1e-4, n));
        c.results.push(result(2, false, 10.0, n));
        c.close_round(Instant::now());
        assert_eq!(c.version, 1);
        let moved = start[0] - c.params[0];
        let expected = lr * (1.0 + mu) * 1e-4; // Nesterov's first step on g alone
        assert!((moved - expected).abs() < 1e-7, "moved {moved}, the replayed Δ alone moves {expected}");
        assert_eq!(c.counters.unreplayed_left_out, 1);
        // Nothing replayed: the round waits for more.
        c.results.push(result(3, false, 1e-4, n));
        c.close_round(Instant::now());
        assert_eq!(c.version, 1, "a lone unreplayed result commits nothing");
        // Three results are enough for the rule: all count.
        c.results.push(result(4, false, 1e-4, n));
        c.results.push(result(5, false, 1e-4, n));
        c.close_round(Instant::now());
        assert_eq!((c.version, c.counters.unreplayed_left_out), (2, 1));
    }

    #[test]
    fn the_outer_momentum_carries_from_its_file_to_the_next_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = exact(dir.path());
        let (lr, mu) = (c.job.outer.lr, c.job.outer.momentum);
        let n = c.param_count();
        let start = c.params[0];
        for unit in 1..=2 {
            c.results.push(result(unit, true, 1e-4, n));
            c.close_round(Instant::now());
        }
        assert_eq!(c.version, 2);
        // m₁ = g, θ₁ = θ₀ − lr·(g + μ·m₁); m₂ = μ·m₁ + g, θ₂ = θ₁ − lr·(g + μ·m₂).
        let g = 1e-4f32;
        let (m1, m2) = (g, mu * g + g);
        let expected = start - lr * (g + mu * m1) - lr * (g + mu * m2);
        assert!((c.params[0] - expected).abs() < 1e-7, "{} against {expected}", c.params[0]);
    }

    #[test]
    fn a_version_is_the_one_before_minus_its_published_step_bit_for_bit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = super::super::for_test(dir.path());
        let n = c.param_count();
        let mut rng = crowdgrad_runtime::rng::Rng::new(4);
        for unit in 1..=5 {
            let values: Vec<f32> = (0..n).map(|_| rng.normal() * 1e-3).collect();
            c.results.push(Contribution {
                unit,
                replayed: true,
                delta: Delta::Dense(values),
                share: 1.0,
                weight: 1.0,
                seq: 0,
                receipt: [unit as u8; 32],
            });
            c.close_round(Instant::now());
        }
        assert_eq!(c.version, 5);
        let file = |v: u64| std::fs::read(c.store.weights_path(v)).expect("a weights file");
        let weights = |v: u64| crowdgrad_runtime::checkpoint::decode(&c.job.model, &file(v)).expect("weights");
        for v in 2..=5 {
            let step = std::fs::read(c.store.delta_path(v)).expect("a published step");
            let mut made = weights(v - 1);
            crowdgrad_runtime::held::apply_step(&mut made, &step).expect("the step applies");
            assert!(made == weights(v), "version {v} from {} and its step", v - 1);
            assert!(step.len() * 8 < file(v).len(), "a step of {} bytes for a file of {}", step.len(), file(v).len());
        }
        let hash = crowdgrad_runtime::checkpoint::hash_hex(bytemuck::cast_slice(&weights(5)));
        assert_eq!(c.published.params_hash, hash);
        let delta = c.published.delta.clone().expect("version 5 was published as a step");
        assert_eq!((delta.from, c.delta_file(5).map(|(_, h)| h)), (4, Some(delta.hash)));
        let served = |c: &super::super::Coordinator| (0..=6).filter(|&v| c.delta_file(v).is_some()).collect::<Vec<_>>();
        assert_eq!(served(&c), vec![2, 3, 4, 5], "the last four versions' steps are served");
        assert!(!c.store.delta_path(1).exists(), "an older step is deleted");
        drop(c);
        let reopened = super::super::for_test(dir.path());
        assert_eq!(served(&reopened), vec![2, 3, 4, 5], "a restarted relay serves them too");
    }

    /// Joins a CPU session to `c`; its inbox.
    fn join(c: &mut super::super::Coordinator) -> tokio::sync::mpsc::Receiver<ServerMsg> {
        let (outbox, inbox) = tokio::sync::mpsc::channel(16);
        let device = DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
        let key = crowdgrad_runtime::identity::Identity::generate().public();
        let hello = Hello { agent: "test".into(), device, resume: None, gflops: 0.0, key, p2p: false };
        c.join(outbox, hello, Instant::now());
        inbox
    }

    /// The versions of the units assigned in `inbox` so far.
    fn assigned(inbox: &mut tokio::sync::mpsc::Receiver<ServerMsg>) -> Vec<u64> {
        std::iter::from_fn(|| inbox.try_recv().ok())
            .filter_map(|m| if let ServerMsg::Assign(u) = m { Some(u.version) } else { None })
            .collect()
    }

    #[test]
    fn a_session_busy_with_a_late_unit_gets_its_next_one_when_it_hands_that_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = super::super::for_test(dir.path());
        let mut busy = join(&mut c);
        assert_eq!(assigned(&mut busy), [0]);
        let n = c.param_count();
        c.results.push(result(1, true, 1e-4, n));
        c.close_round(Instant::now());
        assert_eq!(c.version, 1);
        assert_eq!(assigned(&mut busy), [] as [u64; 0], "no unit queued behind the late one");
        let mut idle = join(&mut c);
        assert_eq!(assigned(&mut idle), [1], "an idle session works on the new version");
    }
}
