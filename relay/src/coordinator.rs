//! DiLoCo rounds: hands out units, judges results, averages them into new versions.
//!
//! The coordinator is plain state behind a mutex, driven by three kinds of calls:
//! session events ([`Coordinator::join`], [`Coordinator::submit`],
//! [`Coordinator::leave`]) and the clock ([`Coordinator::tick`]). It sends messages to
//! sessions through their bounded outboxes and never blocks on them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint::{self, hash_hex};
use crowdgrad_runtime::data::Corpus;
use crowdgrad_runtime::protocol::{Ack, ServerMsg, Submission, Welcome, WorkUnit};
use crowdgrad_runtime::rng::Rng;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::JobConfig;
use crate::eval::Evaluator;

/// A session's outbox; when it is full the session is too slow and is dropped.
pub type Outbox = mpsc::Sender<ServerMsg>;

/// Why a result was refused. The code is what `/api/status` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No such unit, in this round or any kept.
    UnknownUnit,
    /// The unit belongs to a round that has closed.
    Stale,
    /// The unit is held by another session, or was reassigned.
    NotAssigned,
    /// The submission names another version than its unit.
    WrongVersion,
    /// Another number of inner steps than assigned.
    WrongSteps,
    /// Δ has another length than the model.
    WrongSize,
    /// Δ or a loss is NaN or infinite.
    NonFinite,
}

impl Rejection {
    /// Short stable code, e.g. `non_finite`.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::UnknownUnit => "unknown_unit",
            Rejection::Stale => "stale",
            Rejection::NotAssigned => "not_assigned",
            Rejection::WrongVersion => "wrong_version",
            Rejection::WrongSteps => "wrong_steps",
            Rejection::WrongSize => "wrong_size",
            Rejection::NonFinite => "non_finite",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitState {
    Open,
    Assigned { session: u64, deadline: Instant },
    Done,
}

struct Unit {
    shard: u32,
    seed: u64,
    state: UnitState,
}

struct Session {
    outbox: Outbox,
    device: DeviceInfo,
    unit: Option<u64>,
    told_to_wait: bool,
}

/// One committed model version, as served for download.
pub struct VersionFile {
    /// The safetensors bytes.
    pub bytes: Bytes,
    /// blake3 of `bytes`, hex.
    pub hash: String,
}

/// A shard of the training split, as served for download.
pub struct ShardFile {
    /// The shard's bytes.
    pub bytes: Bytes,
    /// blake3 of `bytes`, hex.
    pub hash: String,
}

/// One row of the loss history.
#[derive(Clone, Debug, Serialize)]
pub struct VersionRecord {
    /// Model version.
    pub version: u64,
    /// Held-out (validation split) loss of this version, nats.
    pub val_loss: f32,
    /// Mean of the accepted units' last-step training losses that made it, nats.
    pub train_loss: Option<f32>,
    /// Results averaged into it.
    pub results: usize,
    /// Milliseconds since the relay started.
    pub at_ms: u64,
}

/// Counters for `/api/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Units handed out (reassignments included).
    pub assigned: u64,
    /// Results accepted.
    pub accepted: u64,
    /// Results rejected, by [`Rejection::code`].
    pub rejected: BTreeMap<&'static str, u64>,
    /// Units reassigned after a disconnect or a missed deadline.
    pub reassigned: u64,
}

/// The JSON body of `/api/status`.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Job name.
    pub job: String,
    /// Current model version.
    pub version: u64,
    /// Current round number.
    pub round: u64,
    /// Sessions connected and past hello.
    pub contributors_online: usize,
    /// Results in the open round.
    pub round_results: usize,
    /// Counters since start.
    pub counters: Counters,
    /// Loss history, oldest first (the last 200 versions).
    pub history: Vec<VersionRecord>,
    /// Devices online, by kind (`webgpu`, `cpu`, …).
    pub devices: BTreeMap<String, usize>,
}

/// The relay's training state.
pub struct Coordinator {
    job: JobConfig,
    started: Instant,
    params: Vec<f32>,
    momentum: Vec<f32>,
    version: u64,
    versions: VecDeque<(u64, VersionFile)>,
    shards: Vec<ShardFile>,
    round: u64,
    /// Set when the round's first unit is handed out: an empty relay never times out.
    round_deadline: Option<Instant>,
    units: BTreeMap<u64, Unit>,
    results: Vec<Vec<f32>>,
    train_losses: Vec<f32>,
    next_unit: u64,
    next_session: u64,
    sessions: BTreeMap<u64, Session>,
    evaluator: Evaluator,
    history: VecDeque<VersionRecord>,
    counters: Counters,
}

const HISTORY_LEN: usize = 200;

impl Coordinator {
    /// Version 0 from the job's seed, its held-out loss, and round 1 open.
    pub fn new(job: JobConfig, corpus: Corpus, now: Instant) -> Self {
        let overlap = job.model.context + 1;
        let shards = (0..job.shards)
            .map(|i| {
                let bytes = corpus.shard(i, job.shards, overlap).to_vec();
                ShardFile { hash: hash_hex(&bytes), bytes: Bytes::from(bytes) }
            })
            .collect();
        let params = job.model.init(job.seed);
        let evaluator = Evaluator::new(&job, corpus);
        let mut coordinator = Coordinator {
            momentum: vec![0.0; params.len()],
            params,
            version: 0,
            versions: VecDeque::new(),
            shards,
            round: 1,
            round_deadline: None,
            units: BTreeMap::new(),
            results: Vec::new(),
            train_losses: Vec::new(),
            next_unit: 1,
            next_session: 1,
            sessions: BTreeMap::new(),
            evaluator,
            history: VecDeque::new(),
            counters: Counters::default(),
            started: now,
            job,
        };
        coordinator.publish(now, 0);
        coordinator
    }

    /// The job being run.
    pub fn job(&self) -> &JobConfig {
        &self.job
    }

    /// Number of model parameters.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// The safetensors file of `version`, if still kept.
    pub fn version_file(&self, version: u64) -> Option<(Bytes, String)> {
        self.versions.iter().find(|(v, _)| *v == version).map(|(_, f)| (f.bytes.clone(), f.hash.clone()))
    }

    /// The bytes of shard `index`.
    pub fn shard_file(&self, index: u32) -> Option<Bytes> {
        self.shards.get(index as usize).map(|s| s.bytes.clone())
    }

    /// A snapshot for `/api/status`.
    pub fn status(&self) -> Status {
        let mut devices = BTreeMap::new();
        for s in self.sessions.values() {
            *devices.entry(s.device.kind.clone()).or_insert(0) += 1;
        }
        Status {
            job: self.job.name.clone(),
            version: self.version,
            round: self.round,
            contributors_online: self.sessions.len(),
            round_results: self.results.len(),
            counters: self.counters.clone(),
            history: self.history.iter().cloned().collect(),
            devices,
        }
    }

    /// Registers a session that has said hello; greets it and gives it work if any.
    pub fn join(&mut self, outbox: Outbox, device: DeviceInfo, now: Instant) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        let welcome = ServerMsg::Welcome(Welcome { session: id, job: self.job.name.clone(), version: self.version });
        self.sessions.insert(id, Session { outbox, device, unit: None, told_to_wait: false });
        self.send(id, welcome);
        self.offer(id, now);
        id
    }

    /// Forgets a session; its unit goes back to the pool and to an idle session.
    pub fn leave(&mut self, session: u64, now: Instant) {
        if let Some(s) = self.sessions.remove(&session)
            && let Some(unit_id) = s.unit
            && let Some(unit) = self.units.get_mut(&unit_id)
            && matches!(unit.state, UnitState::Assigned { session: holder, .. } if holder == session)
        {
            unit.state = UnitState::Open;
            self.counters.reassigned += 1;
            self.offer_all(now);
        }
    }

    /// Judges a submission, acknowledges it, and gives the session its next unit.
    pub fn submit(&mut self, session: u64, sub: Submission, now: Instant) -> Result<(), Rejection> {
        let verdict = self.judge(session, &sub);
        let reason = verdict.err().map(|r| format!("{}: {}", r.code(), self.explain(r, &sub))).unwrap_or_default();
        match verdict {
            Ok(()) => {
                self.units.get_mut(&sub.unit_id).expect("judged present").state = UnitState::Done;
                self.results.push(sub.delta);
                self.train_losses.push(sub.loss_after);
                self.counters.accepted += 1;
            }
            Err(r) => *self.counters.rejected.entry(r.code()).or_insert(0) += 1,
        }
        if let Some(s) = self.sessions.get_mut(&session)
            && s.unit == Some(sub.unit_id)
        {
            s.unit = None;
        }
        if self.results.len() >= self.job.target_results {
            self.commit(now);
        }
        let ack = Ack { unit_id: sub.unit_id, accepted: verdict.is_ok(), reason, version: self.version };
        self.send(session, ServerMsg::Ack(ack));
        self.offer(session, now);
        verdict
    }

    fn judge(&self, session: u64, sub: &Submission) -> Result<(), Rejection> {
        let Some(unit) = self.units.get(&sub.unit_id) else {
            return Err(if sub.unit_id < self.next_unit { Rejection::Stale } else { Rejection::UnknownUnit });
        };
        match unit.state {
            UnitState::Assigned { session: holder, .. } if holder == session => {}
            _ => return Err(Rejection::NotAssigned),
        }
        if sub.version != self.version {
            return Err(Rejection::WrongVersion);
        }
        if sub.steps != self.job.inner_steps {
            return Err(Rejection::WrongSteps);
        }
        if sub.delta.len() != self.params.len() {
            return Err(Rejection::WrongSize);
        }
        if !(sub.loss_before.is_finite() && sub.loss_after.is_finite() && sub.delta.iter().all(|x| x.is_finite())) {
            return Err(Rejection::NonFinite);
        }
        Ok(())
    }

    fn explain(&self, r: Rejection, sub: &Submission) -> String {
        match r {
            Rejection::UnknownUnit => format!("unit {} was never issued", sub.unit_id),
            Rejection::Stale => {
                format!("unit {} is from a closed round; the model is at version {}", sub.unit_id, self.version)
            }
            Rejection::NotAssigned => format!("unit {} is not assigned to this session", sub.unit_id),
            Rejection::WrongVersion => format!("version {} but the unit is for version {}", sub.version, self.version),
            Rejection::WrongSteps => format!("{} steps but the unit has {}", sub.steps, self.job.inner_steps),
            Rejection::WrongSize => format!("delta has {} values, the model {}", sub.delta.len(), self.params.len()),
            Rejection::NonFinite => "delta or loss is NaN or infinite".into(),
        }
    }

    /// Reassigns units past their deadline and closes the round at its deadline.
    pub fn tick(&mut self, now: Instant) {
        let mut reopened = false;
        for unit in self.units.values_mut() {
            // The late session stays busy (its result will be refused as not assigned),
            // so the unit goes to someone else.
            if let UnitState::Assigned { deadline, .. } = unit.state
                && now >= deadline
            {
                unit.state = UnitState::Open;
                self.counters.reassigned += 1;
                reopened = true;
            }
        }
        if let Some(deadline) = self.round_deadline
            && now >= deadline
        {
            if self.results.len() >= self.job.min_results {
                self.commit(now);
            } else {
                self.round_deadline = Some(now + self.job.round_deadline);
            }
        }
        if reopened {
            self.offer_all(now);
        }
    }

    /// Averages the round's results, takes the outer Nesterov step, publishes the new
    /// version and opens the next round.
    fn commit(&mut self, now: Instant) {
        let n = self.results.len();
        let mut mean = vec![0f32; self.params.len()];
        for delta in &self.results {
            for (m, d) in mean.iter_mut().zip(delta) {
                *m += d / n as f32;
            }
        }
        let (lr, mu) = (self.job.outer_lr, self.job.outer_momentum);
        for ((p, m), g) in self.params.iter_mut().zip(self.momentum.iter_mut()).zip(&mean) {
            *m = mu * *m + g;
            *p -= lr * (g + mu * *m);
        }
        self.version += 1;
        self.round += 1;
        self.round_deadline = None;
        self.units.clear();
        self.results.clear();
        for s in self.sessions.values_mut() {
            s.unit = None;
        }
        self.publish(now, n);
        self.offer_all(now);
    }

    /// Writes the current parameters as a downloadable version and records its loss.
    fn publish(&mut self, now: Instant, results: usize) {
        let bytes = checkpoint::encode(
            &self.job.model,
            &self.params,
            &[("version", self.version.to_string()), ("job", self.job.name.clone())],
        );
        let file = VersionFile { hash: hash_hex(&bytes), bytes: Bytes::from(bytes) };
        self.versions.push_back((self.version, file));
        while self.versions.len() > self.job.keep_versions {
            self.versions.pop_front();
        }
        let train_loss = (!self.train_losses.is_empty())
            .then(|| self.train_losses.iter().sum::<f32>() / self.train_losses.len() as f32);
        self.train_losses.clear();
        let record = VersionRecord {
            version: self.version,
            val_loss: self.evaluator.loss(&self.params),
            train_loss,
            results,
            at_ms: now.duration_since(self.started).as_millis() as u64,
        };
        tracing::info!(version = record.version, val_loss = record.val_loss, results, "committed version");
        self.history.push_back(record);
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }

    fn offer_all(&mut self, now: Instant) {
        let idle: Vec<u64> = self.sessions.iter().filter(|(_, s)| s.unit.is_none()).map(|(id, _)| *id).collect();
        for id in idle {
            self.offer(id, now);
        }
    }

    /// Gives an idle session an open unit (creating one while the round is short of its
    /// target), or tells it once to wait.
    fn offer(&mut self, session: u64, now: Instant) {
        let Some(s) = self.sessions.get(&session) else { return };
        if s.unit.is_some() {
            return;
        }
        let open = self.units.iter().find(|(_, u)| u.state == UnitState::Open).map(|(id, _)| *id);
        let unit_id = match open {
            Some(id) => Some(id),
            None if self.units.len() < self.job.target_results => Some(self.create_unit(now)),
            None => None,
        };
        let Some(unit_id) = unit_id else {
            let s = self.sessions.get_mut(&session).expect("checked above");
            if !s.told_to_wait {
                s.told_to_wait = true;
                let reason =
                    format!("round {} is fully assigned; waiting for version {}", self.round, self.version + 1);
                self.send(session, ServerMsg::Wait { reason });
            }
            return;
        };
        let deadline = now + self.job.unit_deadline;
        let unit = self.units.get_mut(&unit_id).expect("found or created above");
        unit.state = UnitState::Assigned { session, deadline };
        let (shard, seed) = (unit.shard, unit.seed);
        let s = self.sessions.get_mut(&session).expect("checked above");
        s.unit = Some(unit_id);
        s.told_to_wait = false;
        self.counters.assigned += 1;
        let msg = ServerMsg::Assign(WorkUnit {
            unit_id,
            version: self.version,
            weights_hash: self.versions.back().expect("current version is published").1.hash.clone(),
            shard,
            shard_hash: self.shards[shard as usize].hash.clone(),
            seed,
            steps: self.job.inner_steps,
            batch: self.job.batch,
            model: self.job.model,
            optim: self.job.optim,
        });
        self.send(session, msg);
    }

    fn create_unit(&mut self, now: Instant) -> u64 {
        self.round_deadline.get_or_insert(now + self.job.round_deadline);
        let id = self.next_unit;
        self.next_unit += 1;
        let mut rng = Rng::from_parts(&[self.job.seed, id]);
        let shard = rng.below(self.job.shards as u64) as u32;
        self.units.insert(id, Unit { shard, seed: rng.next_u64(), state: UnitState::Open });
        id
    }

    /// Queues `msg` for `session`; a full outbox means the session cannot keep up, and
    /// closing the outbox makes its connection end (and [`Self::leave`] follow).
    fn send(&mut self, session: u64, msg: ServerMsg) {
        if let Some(s) = self.sessions.get(&session)
            && s.outbox.try_send(msg).is_err()
        {
            tracing::warn!(session, "outbox full or closed; dropping the session");
            if let Some(unit) =
                self.sessions.remove(&session).and_then(|s| s.unit).and_then(|id| self.units.get_mut(&id))
            {
                unit.state = UnitState::Open;
                self.counters.reassigned += 1;
            }
        }
    }
}

/// How often [`Coordinator::tick`] runs.
pub const TICK: Duration = Duration::from_millis(100);
