//! The coordinator in a federated job (see `crate::federation`): the same rounds, with
//! its state partly in the engine.
//! - Every accepted result goes to the results stream ([`Coordinator::share`]), not
//!   into this relay's round.
//! - The relay holding the committer's lease takes the stream's results into its round
//!   ([`Coordinator::take_shared`]) and commits; its commits are published to the engine
//!   before its ledger records them (`new_version`), and fail when another relay
//!   committed that version first.
//! - The others adopt each version from the engine ([`Coordinator::adopt`]) on the
//!   committer thread, as a commit of their own would be written, and serve it.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use super::new_version::Work;
use super::{Contribution, Coordinator, pacing};
use crate::delta::Delta;
use crate::federation::{Accepted, EngineLink, SharedDelta, SharedResult, VersionEntry};
use crowdgrad_runtime::identity::Receipt;

/// This relay's part in a federated job, as its status shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FederationStatus {
    /// This relay's public URL.
    pub relay: String,
    /// Whether this relay commits versions now (it holds the lease and has every
    /// committed version).
    pub committer: bool,
    /// The relay holding the committer's lease, if the engine says.
    pub lease_holder: Option<String>,
    /// The public URLs of the job's live relays, this one included.
    pub relays: Vec<String>,
    /// The public URLs of every relay the job has had, live or not: their pages may
    /// read from this relay (see `crate::cors`).
    pub known_relays: Vec<String>,
    /// Why the engine cannot be used now (no majority of its nodes, no connection):
    /// while set, this relay commits nothing.
    pub engine_error: Option<String>,
    /// Accepted results that could not be shared with the committer.
    pub results_lost: u64,
}

/// What an accepted result's sharing needs besides its [`Contribution`].
pub(super) struct Shared {
    /// Its last step's training loss, nats per token.
    pub train_loss: f32,
    /// Its signed receipt.
    pub receipt: Receipt,
    /// The version its unit trained from.
    pub version: u64,
    /// Its weight before the discount for staleness.
    pub undiscounted: f32,
}

/// What the coordinator of a federated job holds besides its rounds.
pub(super) struct Federated {
    /// Accepted results and their receipts, which the federation's agent publishes.
    outbox: mpsc::Sender<Accepted>,
    /// The stream's sequence number of the last result taken into a round or a
    /// committed version: results up to it are never taken again.
    pub taken_through: u64,
    /// What `/api/status` shows of it.
    pub status: FederationStatus,
    /// [`Coordinator::units_allowed`] at the last tick.
    allowed: usize,
    /// When this relay last committed or adopted a version.
    last_version_at: Option<Instant>,
    /// [`Coordinator::backlogged`] at the last tick.
    backlogged: bool,
}

impl Coordinator {
    /// Makes this a relay of a federated job: accepted results go to `outbox`, and
    /// commits wait for [`Self::set_federation`] to make this relay the committer.
    pub fn federate(&mut self, link: Arc<EngineLink>, outbox: mpsc::Sender<Accepted>) {
        let status = FederationStatus { relay: link.me().to_string(), ..Default::default() };
        self.tools.as_mut().expect("federated before its first commit").engine = Some(link);
        self.federated =
            Some(Federated { outbox, taken_through: 0, status, allowed: 0, last_version_at: None, backlogged: false });
    }

    /// Whether this relay may close rounds: a standalone one, or the federated job's
    /// committer.
    pub(super) fn commits_here(&self) -> bool {
        self.federated.as_ref().is_none_or(|f| f.status.committer)
    }

    /// The federation's part of `/api/status`, for a federated job.
    pub fn federation_status(&self) -> Option<FederationStatus> {
        self.federated.as_ref().map(|f| f.status.clone())
    }

    /// Updates what the engine says: who commits, who is live, what fails. A relay that
    /// stops being the committer keeps its round's results out of any version.
    pub fn set_federation(&mut self, status: FederationStatus) {
        let Some(f) = self.federated.as_mut() else { return };
        let lost = f.status.results_lost;
        if f.status.committer != status.committer {
            tracing::info!(relay = %status.relay, committer = status.committer, "federation role");
        }
        f.status = FederationStatus { results_lost: lost, ..status };
        if !f.status.committer {
            self.results.clear();
            self.train_losses.clear();
            self.failed_commit = None;
            self.retry_commit_at = None;
        }
    }

    /// Units this relay's round may create: `round.target`, and in a federated job
    /// another `round.target` for each round deadline that the next version is late (its
    /// commit waits for the engine, or for a new committer): contributors keep training
    /// meanwhile, on the version that is still current. Without more units, results lost
    /// while the engine was away would leave every round short of results for good.
    pub(super) fn units_allowed(&self, now: Instant) -> usize {
        let target = self.job.round.target;
        let (Some(_), Some(started)) = (&self.federated, self.round_started) else { return target };
        let late = now.saturating_duration_since(started).as_secs_f64() / self.job.round_deadline().as_secs_f64();
        target * (1 + late as usize)
    }

    /// Offers units to waiting sessions when [`Self::units_allowed`] grew, or when the
    /// outbox drained (each tick).
    pub(super) fn offer_when_due(&mut self, now: Instant) {
        let (allowed, backlogged) = (self.units_allowed(now), self.backlogged());
        let Some(f) = self.federated.as_mut() else { return };
        let due = allowed > f.allowed || (f.backlogged && !backlogged);
        (f.allowed, f.backlogged) = (allowed, backlogged);
        if due {
            self.offer_all(now);
        }
    }

    /// Why a federated relay cannot take work now (the engine does not answer), if so.
    pub(super) fn federation_unready(&self) -> Option<String> {
        self.federated.as_ref().and_then(|f| f.status.engine_error.clone())
    }

    /// Whether this relay's accepted results wait for the engine in numbers: its outbox
    /// at least half full. It then hands out no unit until they drain, so that the
    /// results of the units already out still find room.
    pub(super) fn backlogged(&self) -> bool {
        self.federated.as_ref().is_some_and(|f| 2 * f.outbox.capacity() < f.outbox.max_capacity())
    }

    /// Whether the outbox has no room left: a result accepted now could not be shared,
    /// so it is refused as `busy` instead.
    pub(super) fn outbox_full(&self) -> bool {
        self.federated.as_ref().is_some_and(|f| f.outbox.capacity() == 0)
    }

    /// Shows `status` without acting on it (while a commit is being written).
    pub fn show_federation(&mut self, status: FederationStatus) {
        if let Some(f) = self.federated.as_mut() {
            f.status = FederationStatus { results_lost: f.status.results_lost, ..status };
        }
    }

    /// Whether a commit or an adoption is being written now.
    pub fn committing_now(&self) -> bool {
        self.committing()
    }

    /// Counts an accepted result that could not be shared with the committer.
    pub fn result_lost(&mut self) {
        if let Some(f) = self.federated.as_mut() {
            f.status.results_lost += 1;
        }
    }

    /// The checkpoint folder.
    pub fn store(&self) -> &crate::store::Store {
        &self.store
    }

    /// Version 0's entry for the engine's version index, while this relay is at
    /// version 0 (which every relay of the job makes alike from its seed).
    pub fn first_version_entry(&mut self, me: &str) -> anyhow::Result<Option<VersionEntry>> {
        if self.version != 0 {
            return Ok(None);
        }
        let Some(row) = self.ledger.last_version()? else { return Ok(None) };
        Ok(Some(VersionEntry {
            version: 0,
            weights: row.weights_hash,
            momentum: row.momentum_hash,
            step: None,
            residual: None,
            committed_by: me.to_string(),
            val_loss: row.val_loss,
            train_loss: None,
            results: 0,
            results_through: 0,
            committed_ms: row.committed_ms,
            receipts_root: row.receipts_root,
            receipts: Vec::new(),
        }))
    }

    /// At least `through`: results up to this sequence number are in a version already.
    pub fn mark_taken_through(&mut self, through: u64) {
        if let Some(f) = self.federated.as_mut() {
            f.taken_through = f.taken_through.max(through);
        }
    }

    /// The results stream's sequence number after which this relay takes results.
    pub fn taken_through(&self) -> u64 {
        self.federated.as_ref().map_or(0, |f| f.taken_through)
    }

    /// Counts `result` (accepted here) into the job's round: into this relay's own
    /// round when it is standalone, onto the results stream when it is federated.
    pub(super) fn share(&mut self, result: Contribution, about: Shared) {
        let Some(f) = self.federated.as_mut() else {
            self.results.push(result);
            self.train_losses.push(about.train_loss);
            return;
        };
        let delta = match result.delta {
            Delta::Dense(values) => SharedDelta::Dense(bytemuck::cast_slice(&values).to_vec()),
            Delta::Encoded { bytes, len } => SharedDelta::Encoded { bytes: bytes.to_vec(), len },
        };
        let shared = SharedResult {
            relay: f.status.relay.clone(),
            unit: result.unit,
            version: about.version,
            replayed: result.replayed,
            share: result.share,
            weight: about.undiscounted,
            train_loss: about.train_loss,
            receipt: result.receipt,
            delta,
        };
        if f.outbox.try_send(Accepted { receipt: about.receipt, result: shared }).is_err() {
            f.status.results_lost += 1;
            tracing::warn!("the results stream is behind; an accepted result is left out of the job's rounds");
        }
    }

    /// Takes the results stream's result `seq` into the round, when this relay commits
    /// and has not taken it: discounted for staleness against this relay's version,
    /// left out when too stale. Closes the round at its target.
    pub fn take_shared(&mut self, seq: u64, result: SharedResult, now: Instant) {
        let Some(f) = self.federated.as_mut() else { return };
        if !f.status.committer || seq <= f.taken_through {
            return;
        }
        f.taken_through = seq;
        let behind = (self.version + u64::from(self.committing())).saturating_sub(result.version);
        if behind > self.job.round.max_staleness as u64 || result.delta_len() != self.params.len() {
            self.counters.shared_left_out += 1;
            return;
        }
        let delta = match result.delta {
            SharedDelta::Dense(bytes) => Delta::Dense(bytemuck::pod_collect_to_vec(&bytes)),
            SharedDelta::Encoded { bytes, len } => match Delta::encoded(bytes.into(), len) {
                Ok(delta) => delta,
                Err(e) => {
                    tracing::warn!(seq, "a shared result does not decode: {e}");
                    return;
                }
            },
        };
        let weight = result.weight * pacing::staleness_weight(behind);
        self.results.push(Contribution {
            unit: result.unit,
            replayed: result.replayed,
            delta,
            share: result.share,
            weight,
            seq,
            receipt: result.receipt,
        });
        self.train_losses.push(result.train_loss);
        if self.round_deadline.is_none() {
            self.round_started.get_or_insert(now);
            self.round_deadline = Some(now + self.arrivals.deadline(self.job.round_deadline()));
        }
        if self.results.len() >= self.job.round.target && self.retry_commit_at.is_none() && self.may_close_early(now) {
            self.close_round(now);
        }
    }

    /// Whether a round that may close (at its target, or at its deadline) may close now:
    /// always for a relay alone; in a federated job, at least `federation.min_version_secs`
    /// after the last version, so that the other relays adopt each version before the
    /// next (otherwise its deadline moves to that time).
    pub(super) fn may_close_early(&mut self, now: Instant) -> bool {
        let Some(last) = self.federated.as_ref().and_then(|f| f.last_version_at) else { return true };
        let least = self.job.federation.as_ref().map_or(0.0, |f| f.min_version_secs);
        let due = last + std::time::Duration::from_secs_f64(least);
        if now >= due {
            return true;
        }
        self.round_deadline = Some(due);
        false
    }

    /// Notes that a version was committed or adopted at `now`.
    pub(super) fn versioned_at(&mut self, now: Instant) {
        if let Some(f) = self.federated.as_mut() {
            f.last_version_at = Some(now);
        }
    }

    /// Starts adopting `entry`, a version another relay committed, on the committer
    /// thread; `false` (try again later) while a commit or an adoption runs, or when it
    /// is not the next version.
    pub fn adopt(&mut self, entry: VersionEntry, now: Instant) -> bool {
        if self.committing() || entry.version != self.version + 1 {
            return false;
        }
        self.failed_commit = None;
        self.retry_commit_at = None;
        self.start_commit(Work::Adopt(entry), now);
        true
    }
}

impl SharedResult {
    /// Values its Δ has.
    fn delta_len(&self) -> usize {
        match &self.delta {
            SharedDelta::Dense(bytes) => bytes.len() / 4,
            SharedDelta::Encoded { len, .. } => *len,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crowdgrad_runtime::backend::DeviceInfo;
    use crowdgrad_runtime::identity::{Identity, ReceiptFields};
    use crowdgrad_runtime::protocol::{Hello, ServerMsg};
    use tokio::sync::mpsc;

    use super::*;

    /// What a session's inbox holds so far: the units assigned, and whether it was told
    /// to wait.
    fn received(inbox: &mut mpsc::Receiver<ServerMsg>) -> (usize, bool) {
        let messages: Vec<ServerMsg> = std::iter::from_fn(|| inbox.try_recv().ok()).collect();
        let units = messages.iter().filter(|m| matches!(m, ServerMsg::Assign(_))).count();
        (units, messages.iter().any(|m| matches!(m, ServerMsg::Wait { .. })))
    }

    fn accepted() -> Accepted {
        let fields = ReceiptFields { contributor: [1; 32], unit_id: 1, version: 0, tokens: 1, flops: 6 };
        let result = SharedResult {
            relay: "http://127.0.0.1:1".into(),
            unit: 1,
            version: 0,
            replayed: false,
            share: 1.0,
            weight: 1.0,
            train_loss: 1.0,
            receipt: [0; 32],
            delta: SharedDelta::Dense(Vec::new()),
        };
        Accepted { receipt: Identity::generate().sign_receipt(fields), result }
    }

    #[test]
    fn a_relay_whose_results_wait_for_the_engine_hands_out_no_units_until_they_drain() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = super::super::for_test(dir.path());
        let (outbox, mut engine) = mpsc::channel(4);
        let status = FederationStatus::default();
        c.federated = Some(Federated {
            outbox: outbox.clone(),
            taken_through: 0,
            status,
            allowed: 0,
            last_version_at: None,
            backlogged: false,
        });
        let join = |c: &mut Coordinator| {
            let (to_session, inbox) = mpsc::channel(16);
            let device = DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
            let key = Identity::generate().public();
            let hello = Hello { agent: "test".into(), device, resume: None, gflops: 0.0, key, p2p: false };
            c.join(to_session, hello, Instant::now());
            inbox
        };
        let mut first = join(&mut c);
        assert_eq!(received(&mut first), (1, false), "an outbox with room: a unit");
        for _ in 0..3 {
            outbox.try_send(accepted()).expect("room");
        }
        assert!(c.backlogged() && !c.outbox_full());
        let mut second = join(&mut c);
        assert_eq!(received(&mut second), (0, true), "three of four waiting: no unit, and told why");
        outbox.try_send(accepted()).expect("room");
        assert!(c.outbox_full(), "a result accepted now would be refused as busy");
        while engine.try_recv().is_ok() {}
        c.tick(Instant::now());
        assert_eq!(received(&mut second), (1, false), "drained: the waiting session gets a unit at the next tick");
    }
}
