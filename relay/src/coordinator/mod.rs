//! DiLoCo rounds: hands out units, judges results, averages them into new versions.
//!
//! The coordinator is plain state behind a mutex, driven by three kinds of calls:
//! session events ([`Coordinator::join`], [`Coordinator::submit`],
//! [`Coordinator::leave`]) and the clock ([`Coordinator::tick`]). It sends messages to
//! sessions through their bounded outboxes and never blocks on them. Every event is
//! written to the [`Ledger`]; committed versions go to the [`Store`] first
//! (see [`commit`]), so a restarted relay resumes at its last committed version.

mod aggregate;
mod checks;
mod commit;
mod measure;
mod mesh;
mod newcomers;
mod pacing;
mod report;
mod screen;
mod sketch;
mod trust;
mod twins;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint::hash_hex;
use crowdgrad_runtime::codec;
use crowdgrad_runtime::data::{Corpus, TokenWidth};
use crowdgrad_runtime::identity::{Identity, KEY_BYTES, Receipt, ReceiptFields, hex, verify_submission};
use crowdgrad_runtime::protocol::{Ack, Hello, ServerMsg, Submission, Update, Welcome, WorkUnit};
use crowdgrad_runtime::rng::Rng;
use tokio::sync::mpsc;

pub use self::aggregate::{Weighted, aggregate, outer_step};
pub use self::commit::{CommitJob, CommitQueue, Committed};
pub use self::measure::{Expectation, Measurement};
pub use self::report::{ContributorReport, Counters, History, OnlineSample, Rejection, Status, VersionRecord};
use crate::client_addr;
use crate::config::JobConfig;
pub use crate::config::Rule;
use crate::eval::Evaluator;
use crate::ledger::{Ledger, ResultRow, UnitRowState, now_ms};
use crate::metrics::{Metrics, Reason};
use crate::recovery;
use crate::store::Store;
use crate::verify::Check;

use self::checks::{Claim, Pending};
use self::measure::Judged;
use self::screen::{Kind, Screen};
use self::twins::Held;

/// A session's outbox; when it is full the session is too slow and is dropped.
pub type Outbox = mpsc::Sender<ServerMsg>;

/// Session ids, unique for the life of the process (across job changes, which replace
/// the coordinator).
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// How often [`Coordinator::tick`] runs.
pub const TICK: Duration = Duration::from_millis(100);

/// Versions of loss history `/api/status` shows.
const HISTORY_LEN: usize = 200;
/// Results of one contributor out for checking at once; more are refused as `busy`.
const PER_CONTRIBUTOR_CHECKS: usize = 4;
/// Results out for checking at once from contributors who have not passed a replay.
const NEWCOMER_CHECKS: usize = 64;

/// Versions of loss history kept in memory, which `/api/history` returns.
const FULL_HISTORY_LEN: usize = 10_000;
/// How often the number of contributors online is sampled.
const ONLINE_EVERY: Duration = Duration::from_secs(10);
/// Samples of contributors online kept (a day at one per 10 s).
const ONLINE_LEN: usize = 8640;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitState {
    Open,
    Assigned {
        session: u64,
        deadline: Instant,
    },
    /// Its result passed screening and waits for replay, the loss check or its twin's.
    Checking,
    Done,
}

/// A unit of work. Units assigned when their round closes stay, as late units, while
/// their version is at most `round.max_staleness` behind.
#[derive(Clone)]
struct Unit {
    round: u64,
    version: u64,
    shard: u32,
    seed: u64,
    /// Inner steps, sized to the device it is assigned to.
    steps: u32,
    state: UnitState,
    assigned_at: Option<Instant>,
    /// The contributor it was last assigned to.
    holder: Option<u64>,
    /// The unit issued with the same work to another contributor (see [`twins`]).
    twin: Option<u64>,
}

struct Session {
    outbox: Outbox,
    contributor: u64,
    /// The ed25519 key its submissions must be signed with.
    key: [u8; KEY_BYTES],
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
    delta: Vec<f32>,
    /// Its steps as a fraction of H.
    share: f32,
    /// `share`, discounted for staleness.
    weight: f32,
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
    /// The current version's weights (shared with the checks that start from them).
    params: Arc<Vec<f32>>,
    /// The weights of the current and the `round.max_staleness` previous versions,
    /// which checks of their units start from.
    starts: BTreeMap<u64, Arc<Vec<f32>>>,
    version: u64,
    /// The current version's weights file and its blake3 hex.
    current: (Bytes, String),
    shards: Vec<ShardFile>,
    /// How the shards store tokens.
    tokens: TokenWidth,
    round: u64,
    /// When the round's first unit was created.
    round_started: Option<Instant>,
    /// Set when the round's first unit is handed out: an empty relay never times out.
    round_deadline: Option<Instant>,
    units: BTreeMap<u64, Unit>,
    results: Vec<Contribution>,
    train_losses: Vec<f32>,
    next_unit: u64,
    sessions: BTreeMap<u64, Session>,
    /// Which p2p sessions were introduced to each other.
    mesh: mesh::Mesh,
    /// The loss history, oldest first (the last [`FULL_HISTORY_LEN`] versions).
    history: VecDeque<VersionRecord>,
    counters: Counters,
    ledger: Ledger,
    store: Store,
    storage_error: Option<String>,
    /// When a commit that could not be written is tried again.
    retry_commit_at: Option<Instant>,
    /// What a commit needs; `None` while one runs (see [`commit`]).
    tools: Option<commit::Tools>,
    /// The commit whose write failed, to write again.
    failed_commit: Option<commit::Pending>,
    /// The committer thread's queue; `None` runs commits inline (the parts' unit tests).
    commits: Option<CommitQueue>,
    /// This coordinator's id, which its commits carry.
    owner: u64,
    metrics: Arc<Metrics>,
    /// The relay's key, which signs receipts.
    identity: Identity,
    /// Units accepted into the open round with their receipts' hashes.
    round_receipts: Vec<(u64, [u8; 32])>,
    /// Set by the operator: no new units are handed out and rounds do not time out.
    paused: bool,
    /// Norms, hashes and sketches of recent results, which new ones are screened by.
    screen: Screen,
    /// Recent arrival times, for the adaptive round deadline.
    arrivals: pacing::Arrivals,
    /// Contributors online over time, oldest first.
    online: VecDeque<OnlineSample>,
    last_online_sample: Option<Instant>,
    /// How often each contributor's results are replayed.
    trust: trust::Trust,
    /// Results out for checking, by ticket.
    pending: HashMap<u64, Pending>,
    /// Checks not yet taken by the verifier.
    checks: Vec<Check>,
    /// Twin results waiting for their twin's, by unit.
    held: HashMap<u64, Held>,
    /// Draws check tickets and the loss check's other shard.
    ticket_rng: Rng,
    /// New contributors registered per address.
    newcomers: newcomers::Newcomers,
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
        let mut evaluator = Evaluator::new(&job, corpus);
        let recovered = recovery::reconcile(&store, &mut ledger, &job, &mut evaluator)
            .with_context(|| format!("reconciling {} with the ledger", job.storage.dir.join("versions").display()))?;
        if recovered.removed > 0 || !recovered.adopted.is_empty() || !recovered.set_aside.is_empty() {
            tracing::warn!(?recovered, "the checkpoint folder and the ledger disagreed");
        }
        let (version, params, momentum, current) = match ledger.last_version()? {
            Some(row) => {
                let (bytes, params, momentum) = store
                    .read(&job.model, row.version, &row.weights_hash, &row.momentum_hash)
                    .with_context(|| format!("loading committed version {}", row.version))?;
                (row.version, params, momentum, (Bytes::from(bytes), row.weights_hash))
            }
            None => {
                let params = job.model.init(job.seed);
                let momentum = vec![0.0; params.len()];
                let loss = evaluator.loss(&params);
                let written = commit::Written {
                    version: 0,
                    val_loss: loss,
                    train_loss: None,
                    results: 0,
                    round: 0,
                    units_below: recovered.units_below + job.round.target as u64 + 1,
                };
                let row = commit::persist(&store, &mut ledger, &job, written, &params, &momentum, None, &[])
                    .context("writing version 0")?;
                (0, params, momentum, row)
            }
        };
        let (round, next_unit) = ledger.abandon_open_rounds((recovered.round + 1, recovered.units_below))?;
        let screen = Screen::load(&ledger).context("reading the screen's history")?;
        ledger.open_round(round, version)?;
        let history: VecDeque<VersionRecord> =
            ledger.recent_versions(FULL_HISTORY_LEN)?.into_iter().map(VersionRecord::from).collect();
        let tools = commit::Tools {
            evaluator,
            ledger: ledger.second_connection().context("opening the ledger for commits")?,
            store: store.clone(),
            job: job.clone(),
            momentum,
        };
        tracing::info!(version, round, dir = %job.storage.dir.display(), "resuming");
        metrics.version.set(version as i64);
        if let Some(last) = history.back() {
            metrics.val_loss.set(last.val_loss as f64);
            metrics.train_loss.set(last.train_loss.unwrap_or(f32::NAN) as f64);
        }
        let params = Arc::new(params);
        Ok(Coordinator {
            starts: BTreeMap::from([(version, params.clone())]),
            params,
            version,
            current,
            shards,
            tokens: width,
            round,
            round_started: None,
            round_deadline: None,
            units: BTreeMap::new(),
            results: Vec::new(),
            train_losses: Vec::new(),
            next_unit,
            sessions: BTreeMap::new(),
            mesh: mesh::Mesh::default(),
            tools: Some(tools),
            failed_commit: None,
            commits: None,
            owner: commit::new_owner(),
            history,
            counters: Counters::default(),
            ledger,
            store,
            storage_error: None,
            retry_commit_at: None,
            metrics,
            identity,
            round_receipts: Vec::new(),
            paused: false,
            screen,
            arrivals: pacing::Arrivals::default(),
            online: VecDeque::new(),
            last_online_sample: None,
            trust: trust::Trust::new(random_u64()),
            pending: HashMap::new(),
            checks: Vec::new(),
            held: HashMap::new(),
            ticket_rng: Rng::new(random_u64()),
            newcomers: Default::default(),
            job,
        })
    }

    /// The relay's public key, which signs every receipt.
    pub fn relay_key(&self) -> [u8; KEY_BYTES] {
        self.identity.public()
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
            return Some((VersionSource::Memory(self.current.0.clone()), self.current.1.clone()));
        }
        let hash = self.ledger.kept_version(version);
        let hash = self.note_storage("looking up a version", hash)??;
        Some((VersionSource::Disk(self.store.weights_path(version)), hash))
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
            parameters: self.params.len(),
            unit_steps: self.job.inner.steps,
            version: self.version,
            round: self.round,
            contributors_online: self.sessions.len(),
            round_results: self.results.len(),
            counters: self.counters.clone(),
            history: self.history.iter().skip(self.history.len().saturating_sub(HISTORY_LEN)).cloned().collect(),
            devices,
            storage_error: self.storage_error.clone(),
            paused: self.paused,
            round_deadline_secs: self.arrivals.deadline(self.job.round_deadline()).as_secs_f64(),
            checks_pending: self.pending.len() + self.held.len(),
            bytes_in: self.metrics.bytes_in.get(),
            bytes_out: self.metrics.bytes_out.get(),
            p2p_share: self.counters.p2p_share(),
        }
    }

    /// The loss curve of every committed version (up to the last 10,000) and the
    /// number of contributors online over time, for `/api/history`.
    pub fn history(&self) -> History {
        History {
            versions: self.history.iter().cloned().collect(),
            contributors: self.online.iter().cloned().collect(),
        }
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

    /// Registers a session that has said hello, as the contributor its resume token
    /// names or as a new one; greets it and gives it work if any.
    pub fn join(&mut self, outbox: Outbox, hello: Hello, now: Instant) -> u64 {
        self.admit(outbox, hello, None, now).expect("without an address there is no limit")
    }

    /// Like [`Self::join`], for a session from `address`: a hello that would register a
    /// new contributor is refused, with why, once the address has used its
    /// `limits.new_contributors_per_hour`.
    pub fn join_from(&mut self, outbox: Outbox, hello: Hello, address: IpAddr, now: Instant) -> Result<u64, String> {
        self.admit(outbox, hello, Some(address), now)
    }

    fn admit(&mut self, outbox: Outbox, hello: Hello, address: Option<IpAddr>, now: Instant) -> Result<u64, String> {
        let resumed = match hello.resume.as_deref() {
            Some(token) => {
                let found = self.ledger.resume_contributor(token);
                self.note_storage("resuming a contributor", found).flatten().map(|c| (c, token.to_string()))
            }
            None => None,
        };
        let (contributor, token) = match resumed {
            Some(known) => {
                self.counters.resumed += 1;
                known
            }
            None => {
                let per_hour = self.job.limits.new_contributors_per_hour;
                if let Some(address) = address
                    && !self.newcomers.admit(client_addr::limit_key(address), per_hour, now)
                {
                    return Err(format!(
                        "this address registered {per_hour} new contributors in the last hour; \
                         resume with your token, or try later"
                    ));
                }
                let token = new_token();
                let device = format!("{} ({})", hello.device.kind, hello.device.adapter);
                let created = self.ledger.new_contributor(&token, &hex(&hello.key), &hello.agent, &device);
                (self.note_storage("registering a contributor", created).unwrap_or(0), token)
            }
        };
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let welcome = ServerMsg::Welcome(Welcome {
            session: id,
            contributor,
            token,
            job: self.job.name.clone(),
            version: self.version,
            ice_servers: self.job.mesh.ice_servers.clone(),
        });
        let step_secs = pacing::step_secs_from_calibration(&self.job, self.params.len(), hello.gflops);
        let session = Session {
            outbox,
            contributor,
            key: hello.key,
            device: hello.device,
            unit: None,
            told_to_wait: false,
            step_secs,
            assigned_version: None,
            last_fetched: None,
            last_assigned: 0,
        };
        self.sessions.insert(id, session);
        self.send(id, welcome);
        if hello.p2p {
            self.mesh_join(id);
        }
        self.offer(id, now);
        Ok(id)
    }

    /// Forgets a session; its unit goes back to the pool and to an idle session.
    pub fn leave(&mut self, session: u64, now: Instant) {
        self.mesh_leave(session);
        if let Some(unit_id) = self.sessions.get(&session).and_then(|s| s.unit)
            && self.holds(session, unit_id)
        {
            self.sessions.remove(&session);
            self.release(unit_id);
            self.offer_all(now);
        }
        self.sessions.remove(&session);
    }

    /// Whether `unit_id` is assigned to `session` now.
    fn holds(&self, session: u64, unit_id: u64) -> bool {
        self.units
            .get(&unit_id)
            .is_some_and(|u| matches!(u.state, UnitState::Assigned { session: holder, .. } if holder == session))
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
        let (contributor, key) = self.sessions.get(&session).map_or((0, [0; KEY_BYTES]), |s| (s.contributor, s.key));
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
            let twin = self.units.get(&claim.unit_id).is_some_and(|u| u.twin.is_some());
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

    /// Records a verdict, counts an accepted result into its round (committing the round
    /// at its target), and acknowledges it.
    fn settle(
        &mut self,
        session: u64,
        contributor: u64,
        claim: &Claim,
        verdict: Result<Judged, (Rejection, String)>,
        now: Instant,
    ) {
        let reason = verdict.as_ref().err().map(|(_, reason)| reason.clone()).unwrap_or_default();
        let row = ResultRow {
            unit: claim.unit_id,
            contributor,
            version: claim.version,
            accepted: verdict.is_ok(),
            reason: &reason,
            losses: claim.losses,
        };
        let recorded = self.ledger.record_result(&row);
        self.note_storage("recording a result", recorded);
        let accepted = verdict.is_ok();
        let receipt = match verdict {
            Ok(judged) => Some(self.accept(session, contributor, claim, judged, now)),
            Err((r, _)) => {
                *self.counters.rejected.entry(r.code()).or_insert(0) += 1;
                self.metrics.rejected.get_or_create(&Reason { reason: r.code().into() }).inc();
                None
            }
        };
        if self.results.len() >= self.job.round.target && self.retry_commit_at.is_none() {
            self.close_round(now);
        }
        let ack = Ack { unit_id: claim.unit_id, accepted, reason, version: self.version, receipt };
        self.send(session, ServerMsg::Ack(ack));
    }

    /// Counts an accepted result into its round and signs its receipt.
    fn accept(&mut self, session: u64, contributor: u64, claim: &Claim, judged: Judged, now: Instant) -> Receipt {
        let Judged { delta, norm, .. } = judged;
        let unit = self.units.get_mut(&claim.unit_id).expect("settled units are present");
        unit.state = UnitState::Done;
        let (round, shard, seed, steps) = (unit.round, unit.shard, unit.seed, unit.steps);
        let took = unit.assigned_at.map(|at| now.duration_since(at).as_secs_f64() / steps as f64);
        // While a commit runs, accepted results count into the round after it.
        let behind = self.version + u64::from(self.tools.is_none()) - unit.version;
        let put = self.ledger.put_unit(claim.unit_id, round, shard, seed, UnitRowState::Done, Some(contributor), None);
        self.note_storage("recording a unit", put);
        if let (Some(s), Some(took)) = (self.sessions.get_mut(&session), took) {
            // Half old, half new: one slow unit (a download) does not halve the next.
            s.step_secs = Some(s.step_secs.map_or(took, |old| 0.5 * (old + took)));
        }
        if behind == 0
            && let Some(started) = self.round_started
        {
            self.arrivals.record(now.duration_since(started));
        } else if behind > 0 {
            self.counters.late_accepted += 1;
        }
        let tokens = steps as u64 * self.job.inner.batch as u64 * self.job.model.context as u64;
        self.counters.tokens += tokens;
        let fields = ReceiptFields {
            contributor: claim.key,
            unit_id: claim.unit_id,
            version: claim.version,
            tokens,
            flops: 6 * self.params.len() as u64 * tokens,
        };
        let signed = self.identity.sign_receipt(fields);
        let stored = self.ledger.record_receipt(&signed);
        self.note_storage("recording a receipt", stored);
        self.round_receipts.push((claim.unit_id, signed.hash()));
        let share = steps as f32 / self.job.inner.steps as f32;
        let recorded = self.screen.record_norm(&self.ledger, claim.kind, norm / share);
        self.note_storage("recording a norm", recorded);
        let weight = share * pacing::staleness_weight(behind) * claim.weight;
        self.results.push(Contribution { unit: claim.unit_id, replayed: claim.replayed, delta, share, weight });
        self.train_losses.push(claim.losses.1);
        self.counters.accepted += 1;
        self.metrics.accepted.inc();
        signed
    }

    /// Remembers a screened Δ's hash and sketch, so that replays and copies of it are
    /// refused.
    fn remember(&mut self, unit: u64, judged: &Judged) {
        let remembered = self.screen.remember(&self.ledger, unit, judged.hash, &judged.sketch);
        self.note_storage("recording a screened delta", remembered);
    }

    /// The submission's dense Δ, with its norm and hash, if it is acceptable.
    /// Screens `sub` from `session` with its `measurement` (made off the lock, or here
    /// when `None`): signature, unit, codec, values, then the screen's norm bound,
    /// duplicates and near-copies, in that order.
    fn judge(&self, session: u64, sub: &Submission, measurement: Option<Measurement>) -> Result<Judged, Rejection> {
        let measurement = self.own(measurement);
        let signed = match &measurement {
            Some(m) => m.signed(),
            None => self.sessions.get(&session).is_some_and(|s| verify_submission(&s.key, sub)),
        };
        if !signed {
            return Err(Rejection::BadSignature);
        }
        let Some(unit) = self.units.get(&sub.unit_id) else {
            return Err(if sub.unit_id < self.next_unit { Rejection::Stale } else { Rejection::UnknownUnit });
        };
        match unit.state {
            UnitState::Assigned { session: holder, .. } if holder == session => {}
            _ => return Err(Rejection::NotAssigned),
        }
        if sub.version != unit.version {
            return Err(Rejection::WrongVersion);
        }
        if sub.steps != unit.steps {
            return Err(Rejection::WrongSteps);
        }
        let judged = match measurement {
            Some(m) => m.into_judged()?,
            None => measure::decode_and_measure(sub, self.unit_codec(unit), self.params.len())?,
        };
        let kind = if matches!(sub.update, Update::Compressed(_)) { Kind::Compressed } else { Kind::Dense };
        let share = unit.steps as f32 / self.job.inner.steps as f32;
        if let Some(median) = self.screen.norm_median(kind, share) {
            let ratio = self.job.aggregation.max_norm_ratio;
            if judged.norm > ratio * median || judged.norm < median / ratio {
                return Err(Rejection::NormBound);
            }
        }
        if self.screen.seen(&judged.hash) && !self.is_twins_result(sub.unit_id, &judged.hash) {
            return Err(Rejection::Duplicate);
        }
        if self.screen.near_copy(&judged.sketch, unit.twin) {
            return Err(Rejection::Duplicate);
        }
        Ok(judged)
    }

    fn explain(&self, r: Rejection, sub: &Submission) -> String {
        let unit = self.units.get(&sub.unit_id);
        match r {
            Rejection::UnknownUnit => format!("unit {} was never issued", sub.unit_id),
            Rejection::Stale => format!(
                "unit {} is from a round more than {} versions behind; the model is at version {}",
                sub.unit_id, self.job.round.max_staleness, self.version
            ),
            Rejection::NotAssigned => format!("unit {} is not assigned to this session", sub.unit_id),
            Rejection::WrongVersion => {
                format!("version {} but the unit is for version {}", sub.version, unit.map_or(0, |u| u.version))
            }
            Rejection::WrongSteps => format!("{} steps but the unit has {}", sub.steps, unit.map_or(0, |u| u.steps)),
            Rejection::WrongSize => match &sub.update {
                Update::Dense(delta) => format!("delta has {} values, the model {}", delta.len(), self.params.len()),
                Update::Compressed(_) => "the compressed delta has the wrong size".into(),
            },
            Rejection::WrongCodec => {
                let sent = match &sub.update {
                    Update::Dense(_) => "a dense delta".to_string(),
                    Update::Compressed(bytes) => codec::header(bytes)
                        .map_or_else(|e| e.0, |(c, _)| format!("chunk {}, top-{} at {} bits", c.chunk, c.k, c.bits)),
                };
                let asked = match unit.and_then(|u| self.unit_codec(u)) {
                    None => "a dense delta".to_string(),
                    Some(c) => format!("chunk {}, top-{} at {} bits", c.chunk, c.k, c.bits),
                };
                format!("sent {sent}; the unit asked for {asked}")
            }
            Rejection::NonFinite => "delta or loss is NaN or infinite".into(),
            Rejection::BadSignature => "the signature does not match this contributor's key".into(),
            Rejection::NormBound => format!(
                "the delta's norm is not within {0}× of the median of recent results (either way)",
                self.job.aggregation.max_norm_ratio
            ),
            Rejection::Duplicate => {
                "the same delta, or one within a cosine of 0.995, was already accepted (a replay or a copy)".into()
            }
            Rejection::ReplayMismatch | Rejection::LossCheck => String::new(),
            Rejection::Busy => format!(
                "the relay is checking as many results as it holds for this contributor ({PER_CONTRIBUTOR_CHECKS}) \
                 or for contributors without a passed replay ({NEWCOMER_CHECKS}); take the next unit"
            ),
            Rejection::Malformed => match &sub.update {
                Update::Compressed(bytes) => {
                    codec::decode(bytes, self.params.len()).err().map_or_else(String::new, |e| e.0)
                }
                Update::Dense(_) => String::new(),
            },
        }
    }

    /// Reassigns units past their deadline, closes the round at its deadline, and
    /// retries a commit that could not be written.
    pub fn tick(&mut self, now: Instant) {
        if self.last_online_sample.is_none_or(|last| now >= last + ONLINE_EVERY) {
            self.last_online_sample = Some(now);
            self.online.push_back(OnlineSample { at_ms: now_ms(), online: self.sessions.len() });
            if self.online.len() > ONLINE_LEN {
                self.online.pop_front();
            }
        }
        // The late session stays busy (its result will be refused as not assigned), so
        // the unit goes to someone else.
        let expired: Vec<u64> = self
            .units
            .iter()
            .filter(|(_, u)| matches!(u.state, UnitState::Assigned { deadline, .. } if now >= deadline))
            .map(|(id, _)| *id)
            .collect();
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
                self.close_round(now);
            } else {
                self.round_deadline = Some(now + self.arrivals.deadline(self.job.round_deadline()));
            }
        }
        self.release_orphans(now);
        if !expired.is_empty() {
            self.offer_all(now);
        }
    }

    /// Takes a unit from its holder: a unit of the open round goes back to the pool; a
    /// late unit is dropped, and so is a twin whose sibling's result is in (done or
    /// being checked, or gone with its round): the same work again would only be refused
    /// as a copy of it.
    fn release(&mut self, unit_id: u64) {
        let sibling_in = self.units.get(&unit_id).and_then(|u| u.twin).is_some_and(|t| {
            self.units.get(&t).is_none_or(|t| matches!(t.state, UnitState::Checking | UnitState::Done))
        });
        let Some(unit) = self.units.get_mut(&unit_id) else { return };
        if unit.round != self.round || sibling_in {
            let (round, shard, seed) = (unit.round, unit.shard, unit.seed);
            self.units.remove(&unit_id);
            let put = self.ledger.put_unit(unit_id, round, shard, seed, UnitRowState::Abandoned, None, None);
            self.note_storage("recording a unit", put);
            return;
        }
        unit.state = UnitState::Open;
        unit.assigned_at = None;
        let (shard, seed) = (unit.shard, unit.seed);
        self.counters.reassigned += 1;
        let put = self.ledger.put_unit(unit_id, self.round, shard, seed, UnitRowState::Open, None, None);
        self.note_storage("recording a unit", put);
    }

    fn offer_all(&mut self, now: Instant) {
        // The longest without work first, so that when a round has fewer units than idle
        // sessions the same ones do not get them every time.
        let mut idle: Vec<(u64, u64)> =
            self.sessions.iter().filter(|(_, s)| s.unit.is_none()).map(|(id, s)| (s.last_assigned, *id)).collect();
        idle.sort_unstable();
        for (_, id) in idle {
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
        let contributor = s.contributor;
        if self.paused {
            self.tell_to_wait(session, "the job is paused by its operator".into());
            return;
        }
        let round = self.round;
        // Never both twins to one contributor.
        let sibling_holder = |u: &Unit| u.twin.and_then(|t| self.units.get(&t)).and_then(|t| t.holder);
        let open = self
            .units
            .iter()
            .find(|(_, u)| u.state == UnitState::Open && u.round == round && sibling_holder(u) != Some(contributor))
            .map(|(id, _)| *id);
        let created = self.units.values().filter(|u| u.round == round).count();
        let unit_id = match open {
            Some(id) => Some(id),
            None if created < self.job.round.target && self.retry_commit_at.is_none() && !self.committing() => {
                let id = self.create_unit(now);
                if self.wants_twin(created) {
                    self.create_twin(id);
                }
                Some(id)
            }
            None => None,
        };
        let Some(unit_id) = unit_id else {
            let reason = format!("round {} is fully assigned; waiting for version {}", self.round, self.version + 1);
            self.tell_to_wait(session, reason);
            return;
        };
        let deadline = now + self.job.unit_deadline();
        let steps = pacing::unit_steps(&self.job, self.sessions[&session].step_secs);
        // Twins run the same steps: the first assigned sets them.
        let twin = self.units[&unit_id].twin.and_then(|t| self.units.get(&t));
        let steps = twin.filter(|t| t.holder.is_some()).map_or(steps, |t| t.steps);
        let unit = self.units.get_mut(&unit_id).expect("found or created above");
        unit.state = UnitState::Assigned { session, deadline };
        (unit.steps, unit.assigned_at, unit.holder) = (steps, Some(now), Some(contributor));
        let (shard, seed) = (unit.shard, unit.seed);
        let codec = self.unit_codec(&self.units[&unit_id]);
        let deadline_ms = now_ms() + self.job.unit_deadline().as_millis() as i64;
        let put = self.ledger.put_unit(
            unit_id,
            self.round,
            shard,
            seed,
            UnitRowState::Assigned,
            Some(contributor),
            Some(deadline_ms),
        );
        self.note_storage("recording a unit", put);
        let s = self.sessions.get_mut(&session).expect("checked above");
        s.unit = Some(unit_id);
        s.told_to_wait = false;
        self.counters.assigned += 1;
        s.last_assigned = self.counters.assigned;
        s.assigned_version = Some(self.version);
        self.metrics.assigned.inc();
        let msg = ServerMsg::Assign(WorkUnit {
            unit_id,
            version: self.version,
            weights_hash: self.current.1.clone(),
            shard,
            shard_hash: self.shards[shard as usize].hash.clone(),
            seed,
            steps,
            batch: self.job.inner.batch,
            tokens: self.tokens,
            codec,
            model: self.job.model,
            optim: self.job.inner_optim(self.version),
        });
        self.send(session, msg);
    }

    /// How a unit's Δ must come back: compressed with the job's codec, or dense (`None`)
    /// when compression is off or the unit has a twin (twins compare dense Δs).
    fn unit_codec(&self, unit: &Unit) -> Option<codec::CodecConfig> {
        if unit.twin.is_some() { None } else { self.job.compression.codec() }
    }

    /// Tells an idle session to wait, once until it next gets work.
    fn tell_to_wait(&mut self, session: u64, reason: String) {
        let Some(s) = self.sessions.get_mut(&session) else { return };
        if !s.told_to_wait {
            s.told_to_wait = true;
            self.send(session, ServerMsg::Wait { reason });
        }
    }

    fn create_unit(&mut self, now: Instant) -> u64 {
        self.round_deadline.get_or_insert(now + self.arrivals.deadline(self.job.round_deadline()));
        self.round_started.get_or_insert(now);
        let id = self.next_unit;
        self.next_unit += 1;
        let mut rng = Rng::from_parts(&[self.job.seed, id]);
        let shard = rng.below(self.job.data.shards as u64) as u32;
        let unit = Unit {
            round: self.round,
            version: self.version,
            shard,
            seed: rng.next_u64(),
            steps: self.job.inner.steps,
            state: UnitState::Open,
            assigned_at: None,
            holder: None,
            twin: None,
        };
        self.units.insert(id, unit);
        id
    }

    /// Queues `msg` for `session`; a full outbox means the session cannot keep up, and
    /// closing the outbox makes its connection end (and [`Self::leave`] follow).
    fn send(&mut self, session: u64, msg: ServerMsg) {
        if let Some(s) = self.sessions.get(&session)
            && s.outbox.try_send(msg).is_err()
        {
            tracing::warn!(session, "outbox full or closed; dropping the session");
            if let Some(unit) = self.sessions.remove(&session).and_then(|s| s.unit) {
                self.release(unit);
            }
        }
    }

    /// Queues `msg` for `session` if its outbox has room, and drops the message (not the
    /// session) otherwise; for messages that only another client's behaviour causes.
    /// Returns whether it was queued.
    fn send_lossy(&mut self, session: u64, msg: ServerMsg) -> bool {
        let Some(s) = self.sessions.get(&session) else { return false };
        let queued = s.outbox.try_send(msg).is_ok();
        if !queued {
            tracing::info!(session, "outbox full; dropped a message for it");
        }
        queued
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
    let mut job = JobConfig::default();
    (job.storage.dir, job.data.eval_batches) = (dir.to_path_buf(), 1);
    Coordinator::open(job, Corpus::builtin(), Default::default()).expect("the coordinator opens")
}

/// A fresh resume token: 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 bits from the OS, for seeds a contributor must not predict.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    u64::from_le_bytes(bytes)
}
