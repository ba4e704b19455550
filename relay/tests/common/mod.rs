//! Helpers for driving a [`Coordinator`] directly: contributors are outboxes and the
//! clock is whatever `Instant` a test passes.

use crowdgrad_relay::config::JobConfig;
use crowdgrad_relay::coordinator::Coordinator;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::{Hello, ServerMsg, Submission, Update, WorkUnit};
use std::time::Instant;
use tokio::sync::mpsc;

/// A coordinator for rounds of 2 units of 2 steps, deadlines 10 s (round) and 5 s
/// (unit), dense updates, its storage in `dir`, with `adjust` applied to the job first.
pub fn open_with(dir: &tempfile::TempDir, adjust: impl FnOnce(&mut JobConfig)) -> Coordinator {
    let mut job = JobConfig::default();
    (job.inner.steps, job.data.eval_batches) = (2, 1);
    (job.round.target, job.round.min, job.round.deadline_secs, job.round.unit_deadline_secs) = (2, 1, 10.0, 5.0);
    job.storage.dir = dir.path().to_path_buf();
    // These tests submit made-up deltas; replay and the loss check have their own tests.
    (job.verify.replay, job.verify.loss_batches) = (false, 0);
    // Their made-up deltas are dense; tests of compressed updates turn it on.
    job.compression.enabled = false;
    adjust(&mut job);
    Coordinator::open(job, Corpus::builtin(), Default::default()).expect("coordinator opens")
}

/// A contributor: its session id, its inbox and its key.
pub struct Client {
    pub id: u64,
    pub inbox: mpsc::Receiver<ServerMsg>,
    pub identity: Identity,
}

impl Client {
    /// Joins with an unknown speed.
    pub fn join(c: &mut Coordinator, now: Instant) -> Client {
        Client::join_calibrated(c, now, 0.0)
    }

    /// Joins with a calibration of `gflops`.
    pub fn join_calibrated(c: &mut Coordinator, now: Instant, gflops: f32) -> Client {
        let (tx, inbox) = mpsc::channel(16);
        let device = DeviceInfo { kind: "cpu".into(), adapter: "test".into(), software: true };
        let identity = Identity::generate();
        let hello = Hello { agent: "test".into(), device, resume: None, gflops, key: identity.public(), p2p: false };
        Client { id: c.join(tx, hello, now), inbox, identity }
    }

    /// The latest assignment in the inbox (a refused result's unit may come back more
    /// than once), skipping other messages.
    pub fn assignment(&mut self) -> Option<WorkUnit> {
        let mut latest = None;
        while let Ok(msg) = self.inbox.try_recv() {
            if let ServerMsg::Assign(unit) = msg {
                latest = Some(unit);
            }
        }
        latest
    }

    /// `sub` signed with this contributor's key.
    pub fn signed(&self, mut sub: Submission) -> Submission {
        sub.signature = self.identity.sign_submission(&sub);
        sub
    }

    /// An honest-looking, signed result for `unit`: the Δ of [`made_up_delta`].
    pub fn result(&self, unit: &WorkUnit, params: usize) -> Submission {
        self.signed(Submission {
            unit_id: unit.unit_id,
            version: unit.version,
            steps: unit.steps,
            loss_before: 5.0,
            loss_after: 4.0,
            update: Update::Dense(made_up_delta(unit.unit_id, params)),
            signature: Vec::new(),
        })
    }
}

/// A made-up Δ for unit `unit_id`: values uniform in 0.5e-3..1.5e-3, drawn from the unit
/// id, so that different units' Δs have similar norms but are not near-copies (cosine
/// about 0.92).
pub fn made_up_delta(unit_id: u64, params: usize) -> Vec<f32> {
    let mut rng = crowdgrad_runtime::rng::Rng::from_parts(&[unit_id]);
    (0..params).map(|_| 1e-3 * (0.5 + rng.uniform())).collect()
}
