//! DiLoCo rounds: hands out units, judges results, averages them into new versions.
//!
//! The coordinator is plain state behind a mutex, driven by three kinds of calls:
//! session events ([`Coordinator::join`], [`Coordinator::submit`],
//! [`Coordinator::leave`]) and the clock ([`Coordinator::tick`]). It sends messages to
//! sessions through their bounded outboxes and never blocks on them. Every event is
//! written to the [`Ledger`] (in groups: see [`Coordinator::flush_writes`]; a
//! contributor's row with its first unit), and its messages go out once it is;
//! committed versions go to the [`Store`] first (see [`commit`]), so a restarted relay
//! resumes at its last committed version.

mod adopted;
mod aggregate;
mod assign;
mod checks;
mod commit;
mod federated;
mod group_commit;
mod measure;
mod mesh;
mod new_version;
mod newcomers;
mod pacing;
mod registrations;
mod report;
mod round_units;
mod screen;
mod sessions;
mod sketch;
mod timeline;
mod trust;
mod twins;
mod units;
mod verdicts;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint::hash_hex;
use crowdgrad_runtime::data::{Corpus, TokenWidth};
use crowdgrad_runtime::identity::{Identity, KEY_BYTES, SubmitterKey};
use crowdgrad_runtime::protocol::{ServerMsg, Submission, Update};
use crowdgrad_runtime::rng::Rng;
use tokio::sync::mpsc;

pub use self::aggregate::{Weighted, aggregate, outer_step};
pub use self::commit::CommitQueue;
pub use self::federated::FederationStatus;
pub use self::group_commit::FLUSH;
pub use self::measure::{Expectation, Measurement};
pub use self::new_version::{CommitJob, Committed};
pub use self::report::{
    ContributorReport, Counters, FinetuneStatus, History, OnlineSample, Rejection, Status, VersionRecord,
};
use crate::config::JobConfig;
pub use crate::config::Rule;
use crate::delta::Delta;
use crate::eval::Evaluator;
use crate::finetune::Base;
use crate::ledger::{Ledger, now_ms};
use crate::metrics::Metrics;
use crate::recovery;
use crate::store::{Store, WeightsFile};
use crate::verify::Check;

use self::checks::{Claim, Pending};
use self::measure::Judged;
use self::screen::{Kind, Screen};
use self::twins::Held;
use self::units::Units;

/// Versions whose published steps are served.
pub const STEPS_SERVED: usize = 4;

/// A session's outbox; when it is full the session is too slow and is dropped.
pub type Outbox = mpsc::Sender<ServerMsg>;

/// How often [`Coordinator::tick`] runs.
pub const TICK: Duration = Duration::from_millis(100);

/// Results of one contributor out for checking at once; more are refused as `busy`.
const PER_CONTRIBUTOR_CHECKS: usize = 4;
/// Results out for checking at once from contributors who have not passed a replay.
const NEWCOMER_CHECKS: usize = 64;

/// A session that said hello.
struct Session {
    outbox: Outbox,
    contributor: u64,
    /// The ed25519 key its submissions must be signed with.
    key: SubmitterKey,
    device: DeviceInfo,
    unit: Option<u64>,
    told_to_wait: bool,
    /// Seconds per inner step: from the hello's calibration, then from its results.
    step_secs: Option<f64>,
    /// The version of its last assignment: the only one whose peer bytes it may report
    /// ([`Coordinator::fetched`]).
    assigned_version: Option<u64>,
    /// The last version whose peer bytes it reported.
    last_fetched: Option<u64>,
    /// The assignment count when it was last given a unit (0: never); idle sessions are
    /// served least recently first.
    last_assigned: u64,
}

/// An accepted result waiting for its round to close.
struct Contribution {
    unit: u64,
    /// Whether it was replayed: a round smaller than its rule's
    /// [`Rule::robust_min`] averages only replayed results.
    replayed: bool,
    delta: Delta,
    /// Its steps as a fraction of H.
    share: f32,
    /// `share`, discounted for staleness.
    weight: f32,
    /// Its sequence number on a federated job's results stream (0: standalone).
    seq: u64,
    /// blake3 of its signed receipt (a leaf of its version's receipts root).
    receipt: [u8; 32],
}

/// A shard of the training split, as served for download.
pub struct ShardFile {
    /// The shard's bytes.
    pub bytes: Bytes,
    /// blake3 of `bytes`, hex.
    pub hash: String,
}

/// Where a kept version's weights file is: the current one is in memory, older ones
/// are read from the store.
pub enum VersionSource {
    /// The current version's bytes.
    Memory(Bytes),
    /// An older kept version's file.
    Disk(PathBuf),
}

/// The relay's training state.
pub struct Coordinator {
    job: JobConfig,
    /// A fine-tuning job's frozen base, which every unit and check names.
    base: Option<Arc<Base>>,
    /// The current version's weights (shared with the checks that start from them).
    params: Arc<Vec<f32>>,
    /// The weights of the current and the `round.max_staleness` previous versions,
    /// which checks of their units start from.
    starts: BTreeMap<u64, Arc<Vec<f32>>>,
    version: u64,
    /// The current version's weights file.
    current: WeightsFile,
    /// How contributors check the current version's weights, and may get them from the
    /// version before.
    published: new_version::Published,
    /// The published steps of the last [`STEPS_SERVED`] versions, newest last.
    recent_deltas: Vec<(u64, crowdgrad_runtime::protocol::DeltaRef)>,
    shards: Vec<ShardFile>,
    /// How the shards store tokens.
    tokens: TokenWidth,
    round: u64,
    /// When the round's first unit was created.
    round_started: Option<Instant>,
    /// Set when the round's first unit is handed out: an empty relay never times out.
    round_deadline: Option<Instant>,
    /// The units out, with their states.
    units: Units,
    results: Vec<Contribution>,
    train_losses: Vec<f32>,
    sessions: BTreeMap<u64, Session>,
    /// Which p2p sessions were introduced to each other.
    mesh: mesh::Mesh,
    /// Committed versions' losses and contributors online over time.
    timeline: timeline::Timeline,
    counters: Counters,
    ledger: Ledger,
    store: Store,
    storage_error: Option<String>,
    /// When a commit that could not be written is tried again.
    retry_commit_at: Option<Instant>,
    /// What a commit needs; `None` while one runs (see [`commit`]).
    tools: Option<new_version::Tools>,
    /// The commit whose write failed, to write again.
    failed_commit: Option<new_version::Draft>,
    /// The committer thread's queue; `None` runs commits inline (the parts' unit tests).
    commits: Option<CommitQueue>,
    /// This coordinator's id, which its commits carry.
    owner: u64,
    metrics: Arc<Metrics>,
    /// The relay's key, which signs receipts.
    identity: Arc<Identity>,
    /// Set by the operator: no new units are handed out and rounds do not time out.
    paused: bool,
    /// Norms, hashes and sketches of recent results, which new ones are screened by.
    screen: Screen,
    /// Recent arrival times, for the adaptive round deadline.
    arrivals: pacing::Arrivals,
    /// How often each contributor's results are replayed.
    trust: trust::Trust,
    /// Results out for checking, by ticket.
    pending: HashMap<u64, Pending>,
    /// Checks not yet taken by the verifier.
    checks: Vec<Check>,
    /// Twin results waiting for their twin's, by unit.
    held: HashMap<u64, Held>,
    /// The ledger's open transaction and the messages it holds back.
    group_commit: group_commit::GroupCommit,
    /// Draws check tickets and the loss check's other shard.
    ticket_rng: Rng,
    /// New contributors registered per address.
    newcomers: newcomers::Newcomers,
    /// Contributors welcomed and not yet written to the ledger.
    registrations: registrations::Registrations,
    /// This relay's part in a federated job; `None` when it runs the job alone.
    federated: Option<federated::Federated>,
}

impl Coordinator {
    /// Opens the job's storage and resumes at its last committed version, or commits
    /// version 0 from the job's seed; abandons the rounds a previous run left open and
    /// opens the next. Events are counted in `metrics`.
    pub fn open(job: JobConfig, corpus: Corpus, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut ledger = Ledger::open(&job.storage.dir, &job)?;
        let key_file = job.storage.dir.join("relay.key");
        let identity = Identity::load_or_create(&key_file).with_context(|| format!("{}", key_file.display()))?;
        let store = Store::new(&job.storage.dir);
        let overlap = job.model.context + 1;
        let shards = (0..job.data.shards)
            .map(|i| {
                let bytes = corpus.shard(i, job.data.shards, overlap).bytes().to_vec();
                ShardFile { hash: hash_hex(&bytes), bytes: Bytes::from(bytes) }
            })
            .collect();
        let width = corpus.width();
        let base = job
            .finetune
            .as_ref()
            .map(|f| Base::read(&f.base, &job.model, &job.storage.dir).context("finetune.base"))
            .transpose()?
            .map(Arc::new);
        let mut evaluator = Evaluator::new(&job, corpus, base.as_ref().map(|b| b.values.clone()));
        let recovered = recovery::reconcile(&store, &mut ledger, &job, &mut evaluator)
            .with_context(|| format!("reconciling {} with the ledger", job.storage.dir.join("versions").display()))?;
        if recovered.removed > 0 || !recovered.adopted.is_empty() || !recovered.set_aside.is_empty() {
            tracing::warn!(?recovered, "the checkpoint folder and the ledger disagreed");
        }
        let (version, params, current) = match ledger.last_version()? {
            Some(row) => {
                let (file, params) = store
                    .read(&job.trained(), row.version, &row.weights_hash, &row.momentum_hash)
                    .with_context(|| format!("loading committed version {}", row.version))?;
                (row.version, Arc::new(params), file)
            }
            None => {
                let params = match &job.model_init {
                    Some(dir) => crate::hf_dir::read_weights(dir, &job.model).context("model.init")?,
                    None => job.trained().init(job.seed),
                };
                let params = Arc::new(params);
                let loss = evaluator.loss(&params);
                let zeros = |e: &crowdgrad_runtime::model::ParamEntry| Ok(vec![0u8; 4 * e.len]);
                let momentum_hash = store
                    .write_momentum(&job.trained(), 0, &job.name, zeros)
                    .context("writing version 0's momentum")?;
                let written = new_version::Written {
                    version: 0,
                    val_loss: loss,
                    train_loss: None,
                    results: 0,
                    round: 0,
                    units_below: recovered.units_below + job.round.target as u64 + 1,
                    committed_by: String::new(),
                };
                let file = new_version::persist(
                    &store,
                    &mut ledger,
                    &job,
                    written,
                    &params,
                    &momentum_hash,
                    None,
                    &[],
                    |_, _| Ok(()),
                )
                .context("writing version 0")?;
                (0, params, file)
            }
        };
        let (round, next_unit) = ledger.abandon_open_rounds((recovered.round + 1, recovered.units_below))?;
        let screen = Screen::load(&ledger).context("reading the screen's history")?;
        ledger.open_round(round, version)?;
        let versions = ledger.recent_versions(timeline::KEPT_VERSIONS)?.into_iter().map(VersionRecord::from);
        let timeline = timeline::Timeline::new(versions.collect());
        let registrations = registrations::Registrations::new(ledger.next_contributor_id()?);
        let published = new_version::Published::of(version, &params, &store)
            .with_context(|| format!("reading version {version}'s published step"))?;
        let recent_deltas = new_version::kept_steps(version, STEPS_SERVED, &store)
            .context("reading the recent versions' published steps")?;
        let tools = new_version::Tools {
            evaluator,
            ledger: ledger.second_connection().context("opening the ledger for commits")?,
            store: store.clone(),
            job: job.clone(),
            engine: None,
        };
        tracing::info!(version, round, dir = %job.storage.dir.display(), "resuming");
        metrics.version.set(version as i64);
        if let Some(last) = timeline.last() {
            metrics.val_loss.set(last.val_loss as f64);
            metrics.train_loss.set(last.train_loss.unwrap_or(f32::NAN) as f64);
        }
        Ok(Coordinator {
            base,
            starts: BTreeMap::from([(version, params.clone())]),
            params,
            version,
            current,
            recent_deltas,
            published,
            shards,
            tokens: width,
            round,
            round_started: None,
            round_deadline: None,
            units: Units::new(next_unit),
            results: Vec::new(),
            train_losses: Vec::new(),
            sessions: BTreeMap::new(),
            mesh: mesh::Mesh::default(),
            tools: Some(tools),
            failed_commit: None,
            commits: None,
            owner: commit::new_owner(),
            timeline,
            counters: Counters::default(),
            ledger,
            store,
            storage_error: None,
            retry_commit_at: None,
            metrics,
            identity: Arc::new(identity),
            paused: false,
            screen,
            arrivals: pacing::Arrivals::default(),
            trust: trust::Trust::new(random_u64()),
            pending: HashMap::new(),
            checks: Vec::new(),
            held: HashMap::new(),
            group_commit: Default::default(),
            ticket_rng: Rng::new(random_u64()),
            newcomers: Default::default(),
            registrations,
            federated: None,
            job,
        })
    }

    /// The relay's public key, which signs every receipt.
    pub fn relay_key(&self) -> [u8; KEY_BYTES] {
        self.identity.public()
    }

    /// Another connection to this relay's ledger, for a thread that writes it off the
    /// coordinator's lock.
    pub fn ledger_connection(&self) -> anyhow::Result<Ledger> {
        self.ledger.second_connection()
    }

    /// Why the relay cannot take contributors' work now, one line each (`/readyz`):
    /// storage failing, a commit failing, the engine away.
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(e) = &self.storage_error {
            reasons.push(format!("storage: {e}"));
        }
        if self.retry_commit_at.is_some() {
            reasons.push(format!("version {} could not be written and is being tried again", self.version + 1));
        }
        reasons.extend(self.federation_unready());
        reasons
    }

    /// What the ledger holds about the contributor signing as `key` (hex).
    pub fn contributor(&mut self, key: &str) -> Option<ContributorReport> {
        let counts = self.ledger.contributor_counts(key);
        let (accepted, rejected) = self.note_storage("reading a contributor", counts)?;
        let receipts = self.ledger.receipts(Some(key));
        let receipts = self.note_storage("reading receipts", receipts)?;
        (accepted + rejected > 0 || !receipts.is_empty()).then(|| ContributorReport {
            key: key.to_string(),
            accepted,
            rejected,
            tokens: receipts.iter().map(|r| r.tokens).sum(),
            flops: receipts.iter().map(|r| r.flops).sum(),
            receipts,
        })
    }

    /// The job being run.
    pub fn job(&self) -> &JobConfig {
        &self.job
    }

    /// Number of model parameters.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// The current model version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where `version`'s weights file is, with its blake3 hex, if it is kept.
    pub fn version_file(&mut self, version: u64) -> Option<(VersionSource, String)> {
        if version == self.version {
            let source = match &self.current.bytes {
                Some(bytes) => VersionSource::Memory(bytes.clone()),
                None => VersionSource::Disk(self.store.weights_path(version)),
            };
            return Some((source, self.current.hash.clone()));
        }
        let hash = self.ledger.kept_version(version);
        let hash = self.note_storage("looking up a version", hash)??;
        Some((VersionSource::Disk(self.store.weights_path(version)), hash))
    }

    /// Where `version`'s published step is, with its blake3 hex: the last
    /// [`STEPS_SERVED`] versions' are served (a contributor a few versions behind steps
    /// through them; a tab fetching the one just announced may finish after the next is
    /// committed), while their files are kept.
    pub fn delta_file(&self, version: u64) -> Option<(VersionSource, String)> {
        let (_, delta) = self.recent_deltas.iter().find(|(v, _)| *v == version)?;
        Some((VersionSource::Disk(self.store.delta_path(version)), delta.hash.clone()))
    }

    /// Where `version`'s Hugging Face `model.safetensors` is (or will be) written.
    pub fn hf_weights_path(&self, version: u64) -> PathBuf {
        self.store.hf_weights_path(version)
    }

    /// The bytes of shard `index`.
    pub fn shard_file(&self, index: u32) -> Option<Bytes> {
        self.shards.get(index as usize).map(|s| s.bytes.clone())
    }

    /// A fine-tuning job's frozen base, `[model parameters]`.
    pub fn base_values(&self) -> Option<Arc<Vec<f32>>> {
        self.base.as_ref().map(|b| b.values.clone())
    }

    /// The frozen base's file, if this is a fine-tuning job and `hash` names it.
    pub fn base_file(&self, hash: &str) -> Option<PathBuf> {
        self.base.as_ref().filter(|b| b.hash == hash).map(|b| b.file.clone())
    }

    /// A snapshot for `/api/status`.
    pub fn status(&self) -> Status {
        let mut devices = BTreeMap::new();
        for s in self.sessions.values() {
            *devices.entry(s.device.kind.clone()).or_insert(0) += 1;
        }
        Status {
            job: self.job.name.clone(),
            parameters: self.params.len(),
            data: self
                .job
                .data
                .path
                .as_ref()
                .and_then(|p| p.file_name())
                .map_or_else(|| "the built-in corpus".to_string(), |name| name.to_string_lossy().into_owned()),
            finetune: self.job.finetune.as_ref().map(|f| FinetuneStatus {
                base: f.base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                base_parameters: self.job.model.layout().total,
                targets: f.targets.clone(),
                rank: f.rank,
            }),
            vocab: self.job.model.vocab,
            tokenizer: self.job.data.tokenizer.name(),
            unit_steps: self.job.inner.steps,
            version: self.version,
            round: self.round,
            contributors_online: self.sessions.len(),
            round_results: self.results.len(),
            counters: self.counters.clone(),
            history: self.timeline.recent(),
            devices,
            storage_error: self.storage_error.clone(),
            paused: self.paused,
            round_deadline_secs: self.arrivals.deadline(self.job.round_deadline()).as_secs_f64(),
            checks_pending: self.pending.len() + self.held.len(),
            bytes_in: self.metrics.bytes_in.get(),
            bytes_out: self.metrics.bytes_out.get(),
            p2p_share: self.counters.p2p_share(),
            federation: self.federation_status(),
        }
    }

    /// The loss curve of every committed version (up to the last 10,000) and the
    /// number of contributors online over time, for `/api/history`.
    pub fn history(&self) -> History {
        self.timeline.history()
    }

    /// Runs this job's commits on the committer thread behind `queue`, off the lock.
    pub fn commit_off_lock(&mut self, queue: CommitQueue) {
        self.commits = Some(queue);
    }

    /// Pauses (no new units; rounds wait) or resumes the job.
    pub fn set_paused(&mut self, paused: bool, now: Instant) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        tracing::info!(paused, "job control");
        if paused {
            for s in self.sessions.values_mut() {
                s.told_to_wait = false;
            }
        } else if let Some(deadline) = self.round_deadline.as_mut() {
            *deadline = (*deadline).max(now + self.job.round_deadline());
        }
        self.offer_all(now);
    }

    /// Screens a submission and gives the session its next unit, measuring it here
    /// (under the lock: the relay's sessions measure off it, see
    /// [`Self::submit_measured`]).
    pub fn submit(&mut self, session: u64, sub: Submission, now: Instant) -> Result<(), Rejection> {
        self.submit_measured(session, sub, None, now)
    }

    /// Screens a submission, with its `measurement` when one was made off the lock
    /// ([`Self::expectation`]), and gives the session its next unit. A result that fails
    /// screening is refused (and acknowledged) at once; one that passes is accepted, or,
    /// when it is to be replayed or loss-checked, waits in [`Self::take_checks`] for
    /// [`Self::checked`], which acknowledges it. `Ok` means it passed screening.
    pub fn submit_measured(
        &mut self,
        session: u64,
        sub: Submission,
        measurement: Option<Measurement>,
        now: Instant,
    ) -> Result<(), Rejection> {
        self.in_one_write(|c| c.take_submission(session, sub, measurement, now))
    }

    /// [`Self::submit_measured`], inside its ledger transaction.
    fn take_submission(
        &mut self,
        session: u64,
        sub: Submission,
        measurement: Option<Measurement>,
        now: Instant,
    ) -> Result<(), Rejection> {
        let (contributor, key) =
            self.sessions.get(&session).map_or((0, [0; KEY_BYTES]), |s| (s.contributor, s.key.bytes()));
        let claim = Claim {
            unit_id: sub.unit_id,
            version: sub.version,
            losses: (sub.loss_before, sub.loss_after),
            key,
            kind: if matches!(sub.update, Update::Compressed(_)) { Kind::Compressed } else { Kind::Dense },
            weight: 1.0,
            replayed: false,
        };
        let judged = self.judge(session, &sub, measurement).and_then(|judged| {
            if self.outbox_full() {
                return Err(Rejection::Backlogged);
            }
            let twin = self.units.get(claim.unit_id).is_some_and(|u| u.twin.is_some());
            let plan = if twin { None } else { self.plan_check(contributor, claim.kind) };
            if plan.is_some() && !self.room_for_check(contributor) {
                return Err(Rejection::Busy);
            }
            Ok((judged, twin, plan))
        });
        let outcome = match judged {
            Ok((judged, twin, plan)) => {
                self.remember(claim.unit_id, &judged);
                match plan {
                    _ if twin => self.pair(session, contributor, claim, judged, now),
                    Some(plan) => self.queue_check(session, contributor, claim, judged, plan),
                    None => self.settle(session, contributor, &claim, Ok(judged), now),
                }
                Ok(())
            }
            Err(r) => {
                let reason = format!("{}: {}", r.code(), self.explain(r, &sub));
                // Its unit goes to someone else at once, not at its deadline: a session
                // that fails every unit must not hold a round up.
                if self.holds(session, sub.unit_id) {
                    self.release(sub.unit_id);
                    self.offer_all(now);
                }
                self.settle(session, contributor, &claim, Err((r, reason)), now);
                Err(r)
            }
        };
        if let Some(s) = self.sessions.get_mut(&session)
            && s.unit == Some(sub.unit_id)
        {
            s.unit = None;
        }
        self.offer(session, now);
        outcome
    }

    /// Reassigns units past their deadline, closes the round at its deadline, and
    /// retries a commit that could not be written.
    pub fn tick(&mut self, now: Instant) {
        self.in_one_write(|c| c.advance_clock(now));
    }

    /// [`Self::tick`], inside its ledger transaction.
    fn advance_clock(&mut self, now: Instant) {
        self.timeline.sample_online(now, now_ms(), self.sessions.len());
        // The late session stays busy (its result will be refused as not assigned), so
        // the unit goes to someone else.
        let expired = self.units.expired(now);
        for &unit in &expired {
            self.release(unit);
        }
        if let Some(retry) = self.retry_commit_at
            && now >= retry
        {
            self.close_round(now);
        } else if let Some(deadline) = self.round_deadline
            && now >= deadline
            && self.retry_commit_at.is_none()
            && !self.paused
        {
            if self.results.len() >= self.job.round.min {
                if self.may_close_early(now) {
                    self.close_round(now);
                }
            } else {
                self.round_deadline = Some(now + self.arrivals.deadline(self.job.round_deadline()));
            }
        }
        self.release_orphans(now);
        if !expired.is_empty() {
            self.offer_all(now);
        }
        self.offer_when_due(now);
    }

    /// Queues `msg` for `session`; a full outbox means the session cannot keep up, and
    /// closing the outbox makes its connection end (and [`Self::leave`] follow).
    /// While the ledger's transaction is open, the message waits for it to land
    /// ([`Self::flush_writes`]).
    fn send(&mut self, session: u64, msg: ServerMsg) {
        if let Some(msg) = self.group_commit.hold(session, msg, false) {
            self.send_now(session, msg);
        }
    }

    /// [`Self::send`], not held back.
    fn send_now(&mut self, session: u64, msg: ServerMsg) {
        if let Some(s) = self.sessions.get(&session)
            && s.outbox.try_send(msg).is_err()
        {
            tracing::warn!(session, "outbox full or closed; dropping the session");
            self.forget_unwritten(session);
            if let Some(unit) = self.sessions.remove(&session).and_then(|s| s.unit) {
                self.release(unit);
            }
        }
    }

    /// Queues `msg` for `session` if its outbox has room, and drops the message (not the
    /// session) otherwise; for messages that only another client's behaviour causes.
    /// Returns whether it was queued (or held, like [`Self::send`]'s).
    fn send_lossy(&mut self, session: u64, msg: ServerMsg) -> bool {
        let Some(msg) = self.group_commit.hold(session, msg, true) else { return true };
        let Some(s) = self.sessions.get(&session) else { return false };
        let queued = s.outbox.try_send(msg).is_ok();
        if !queued {
            tracing::info!(session, "outbox full; dropped a message for it");
        }
        queued
    }

    /// Gives out contributor ids only past those the ledger holds now (after another
    /// coordinator of the same storage ran).
    pub fn skip_written_contributor_ids(&mut self) {
        let next = self.ledger.next_contributor_id();
        if let Some(next) = self.note_storage("reading contributor ids", next) {
            self.registrations.skip_to(next);
        }
    }

    /// Writes `contributor`'s ledger row if it has none yet: before its first unit or
    /// result refers to it.
    fn register(&mut self, contributor: u64) {
        if let Some(n) = self.registrations.take(contributor) {
            let written = self.ledger.register_contributor(contributor, &n.token, &n.key, &n.agent, &n.device);
            if self.note_storage("registering a contributor", written).is_some() {
                self.group_commit.registering(contributor, n);
            } else {
                self.registrations.restore(contributor, n);
            }
        }
    }

    /// Passes `result` through; on an error, logs it and shows it in status until the
    /// next version is written.
    fn note_storage<T>(&mut self, what: &str, result: anyhow::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::error!("ledger: {what} failed: {e:#}");
                self.storage_error = Some(format!("{what} failed: {e:#}"));
                None
            }
        }
    }
}

/// A coordinator for the default job with its storage in `dir`, for the parts' unit tests.
#[cfg(test)]
fn for_test(dir: &std::path::Path) -> Coordinator {
    for_test_with(dir, |_| {})
}

/// [`for_test`] with `adjust` applied to the job first.
#[cfg(test)]
fn for_test_with(dir: &std::path::Path, adjust: impl FnOnce(&mut JobConfig)) -> Coordinator {
    let mut job = JobConfig::default();
    (job.storage.dir, job.data.eval_batches) = (dir.to_path_buf(), 1);
    adjust(&mut job);
    Coordinator::open(job, Corpus::builtin(), Default::default()).expect("the coordinator opens")
}

/// 64 bits from the OS, for seeds a contributor must not predict.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    u64::from_le_bytes(bytes)
}
