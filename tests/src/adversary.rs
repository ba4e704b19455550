//! The adversarial suite's swarm: honest contributors and attackers driving the relay's
//! real coordinator in process, with its real screening, replay and loss check.
//!
//! Every member trains its units for real on the CPU (`train_unit`) and compresses them
//! with its own error-feedback residual, as `crowdgrad contribute` does; attackers then
//! lie in one of the ways of [`Attack`]. A round ends when every member has submitted;
//! the clock then jumps past the round deadline so that the relay closes it with the
//! results it accepted. The checks the relay queues run at once on a [`Verifier`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crowdgrad_relay::config::JobConfig;
use crowdgrad_relay::coordinator::{Coordinator, VersionSource};
use crowdgrad_relay::verify::{Replayed, Verifier};
use crowdgrad_runtime::backend::DeviceInfo;
use crowdgrad_runtime::checkpoint;
use crowdgrad_runtime::codec;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Corpus, Tokens};
use crowdgrad_runtime::identity::Identity;
use crowdgrad_runtime::protocol::{Hello, ServerMsg, Submission, Update, WorkUnit};
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::{Moments, Trainer, train_unit};
use tokio::sync::mpsc;

/// How an attacker lies, every round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attack {
    /// Sends −Δ.
    SignFlip,
    /// Sends 100 × Δ.
    Scale100,
    /// Adds Gaussian noise of 3 × Δ's RMS to each value.
    Noise,
    /// "A little is enough": the honest results' mean minus 1.5 standard deviations per
    /// coordinate (it sees the round's honest results).
    Alie,
    /// A NaN in a dense Δ, or a NaN loss with a compressed one.
    NonFinite,
    /// Its own first accepted result again, for each later unit.
    ReplayOld,
    /// Another contributor's result of the same round, as its own.
    Copy,
    /// Another contributor's result with every value nudged by about 0.1 % (another
    /// hash, nearly the same Δ).
    NearCopy,
    /// A zero Δ, without training.
    FreeRiderZero,
    /// A Gaussian Δ of an honest norm, without training.
    FreeRiderRandom,
    /// A result for its first unit, once that unit's version is further behind than
    /// late results may be.
    StaleVersion,
    /// A result for a unit id never issued.
    WrongUnit,
    /// A result signed with another key.
    ForgedSignature,
    /// Compressed bytes that do not decode.
    Malformed,
    /// Honest for its first [`TRUSTED_AFTER`] units, until the relay replays it only now
    /// and then; then 9 × Δ, just under the 10× norm bound.
    TrustedScale9,
    /// 1.5ᵏ × Δ at its k-th unit: a slow drift that starts inside the norm bound.
    Drift,
    /// Trains only the first of its unit's H steps and sends that step's Δ times H: a
    /// whole unit's size for one step's work. A compressed Δ is judged by its projection
    /// on the replayed one, which this matches, so the relay does not catch it: one of
    /// [`Attack::GAPS`].
    Lazy,
}

/// Units a [`Attack::TrustedScale9`] attacker sends honestly first: the relay's default
/// `verify.trust_after`.
pub const TRUSTED_AFTER: u32 = 5;

impl Attack {
    /// Every attack the relay's checks are held to (`tests/tests/adversarial.rs`).
    pub const ALL: [Attack; 16] = [
        Attack::SignFlip,
        Attack::Scale100,
        Attack::Noise,
        Attack::Alie,
        Attack::NonFinite,
        Attack::ReplayOld,
        Attack::Copy,
        Attack::NearCopy,
        Attack::FreeRiderZero,
        Attack::FreeRiderRandom,
        Attack::StaleVersion,
        Attack::WrongUnit,
        Attack::ForgedSignature,
        Attack::Malformed,
        Attack::TrustedScale9,
        Attack::Drift,
    ];

    /// Attacks the relay is known not to stop yet: the bench measures what they cost,
    /// the test does not hold the relay to them.
    pub const GAPS: [Attack; 1] = [Attack::Lazy];

    /// The rejection codes that count as the right reason, where one is required (the
    /// attacks that no check can miss); `None` where aggregation may be what bounds it.
    pub fn required_reasons(self) -> Option<&'static [&'static str]> {
        match self {
            Attack::NonFinite => Some(&["non_finite"]),
            Attack::ReplayOld | Attack::Copy | Attack::NearCopy => Some(&["duplicate"]),
            Attack::StaleVersion => Some(&["stale", "not_assigned"]),
            Attack::WrongUnit => Some(&["unknown_unit"]),
            Attack::ForgedSignature => Some(&["bad_signature"]),
            Attack::Malformed => Some(&["malformed"]),
            _ => None,
        }
    }

    /// Whether the bar asks that at least 90 % of these are caught.
    pub fn must_be_caught(self) -> bool {
        matches!(self, Attack::FreeRiderZero | Attack::FreeRiderRandom | Attack::Copy | Attack::NearCopy)
    }
}

/// What happened to one kind of member's submissions.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Submissions that carried the attack (or, for honest members, all).
    pub sent: u32,
    /// Of those, accepted.
    pub accepted: u32,
    /// Of those, rejected, by code.
    pub rejected: BTreeMap<String, u32>,
    /// How each replayed one compared with its replay: the cosine for a dense Δ, the
    /// projection for a compressed one (the figure the relay judges).
    pub replay_scores: Vec<f32>,
    /// The loss check's alignment of each compressed one it checked (see
    /// `crowdgrad_relay::verify::LossGain::alignment`).
    pub alignments: Vec<f32>,
}

impl Tally {
    /// Rejected submissions.
    pub fn caught(&self) -> u32 {
        self.rejected.values().sum()
    }

    /// The least and greatest replay score seen, if any was replayed.
    pub fn score_range(&self) -> Option<(f32, f32)> {
        range(&self.replay_scores)
    }

    /// The least and greatest alignment the loss check measured, if any.
    pub fn alignment_range(&self) -> Option<(f32, f32)> {
        range(&self.alignments)
    }
}

/// The least and greatest of `values`, if any.
fn range(values: &[f32]) -> Option<(f32, f32)> {
    let min = values.iter().copied().reduce(f32::min)?;
    Some((min, values.iter().copied().fold(min, f32::max)))
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The honest members' submissions.
    pub honest: Tally,
    /// The attackers' attacking submissions.
    pub attacks: Tally,
    /// Held-out loss of the last version, nats.
    pub val_loss: f32,
    /// Versions committed.
    pub versions: u64,
    /// Results replayed by the relay.
    pub replayed: u64,
    /// Pairs of twin results compared, and of those, pairs that disagreed.
    pub twins: (u64, u64),
    /// Seconds the run took.
    pub seconds: f64,
    /// Seconds the relay's checks (loss checks and replays) took in all.
    pub check_seconds: f64,
}

struct Member {
    session: u64,
    inbox: mpsc::Receiver<ServerMsg>,
    identity: Identity,
    attack: Option<Attack>,
    trainer: Option<Trainer<CpuBackend>>,
    residual: Vec<f32>,
    unit: Option<WorkUnit>,
    first_unit: Option<WorkUnit>,
    first_accepted: Option<Update>,
    /// Units it has submitted for.
    units: u32,
    /// The update it sent last, kept until its ack says whether it was accepted.
    last_sent: Option<Update>,
    rng: Rng,
}

/// A run: the relay's coordinator for `job` on `corpus`, `honest` honest members and
/// one attacker per entry of `attackers`, for `rounds` rounds. (The unit deadline is
/// set to a day: the simulated clock jumps past round deadlines, and every member
/// submits in time.)
pub fn run(mut job: JobConfig, corpus: Corpus, honest: usize, attackers: &[Attack], rounds: u32) -> Outcome {
    job.round.unit_deadline_secs = 86_400.0;
    let started = Instant::now();
    let mut clock = Instant::now();
    let mut c = Coordinator::open(job.clone(), corpus, Default::default()).expect("the coordinator opens");
    let mut verifier = Verifier::default();
    let roles = (0..honest).map(|_| None).chain(attackers.iter().map(|&a| Some(a)));
    let mut members: Vec<Member> = roles.enumerate().map(|(i, attack)| join(&mut c, attack, i as u64, clock)).collect();
    let (mut honest_tally, mut attack_tally) = (Tally::default(), Tally::default());
    // Which units carried attacks (a check may come after another member's submission).
    let mut attacked_units = std::collections::HashSet::new();
    for _ in 0..rounds {
        for m in &mut members {
            let is_attack = m.attack.is_some();
            drain(m, is_attack, &mut honest_tally, &mut attack_tally);
        }
        let mut honest_updates: Vec<(Update, Vec<f32>)> = Vec::new();
        let version = c.version();
        // Honest members first: copiers and ALIE see this round's honest results. A
        // second pass runs the units of this version given out during the first (ones
        // whose first holder's result was refused), as a live contributor would at once.
        let count = members.len();
        for (pass, i) in (0..2).flat_map(|pass| (0..count).map(move |i| (pass, i))) {
            let m = &mut members[i];
            if pass == 1 {
                drain(m, m.attack.is_some(), &mut honest_tally, &mut attack_tally);
                if m.unit.as_ref().is_none_or(|u| u.version != version) {
                    continue;
                }
            }
            let Some(unit) = m.unit.take() else { continue };
            let weights = weights(&mut c, &unit);
            let delta = match m.attack {
                // One step of work, passed off as H.
                Some(Attack::Lazy) => {
                    let one = train(&mut c, m, &unit, &weights, 1);
                    one.iter().map(|d| d * unit.steps as f32).collect()
                }
                _ => train(&mut c, m, &unit, &weights, unit.steps),
            };
            let late = job.round.max_staleness as u64;
            let (sub, is_attack) = lie(m, &unit, delta, &honest_updates, late);
            if m.attack.is_none() {
                honest_updates.push((sub.update.clone(), decoded(&sub.update, weights.len())));
            }
            let tally = if is_attack { &mut attack_tally } else { &mut honest_tally };
            tally.sent += 1;
            if is_attack {
                attacked_units.insert(sub.unit_id);
            }
            m.last_sent = Some(sub.update.clone());
            let _ = c.submit(m.session, sub, clock);
            let tallies = (&mut honest_tally, &mut attack_tally);
            run_checks(&mut c, &mut verifier, &attacked_units, tallies, clock);
            m.first_unit.get_or_insert(unit);
            drain(m, is_attack, &mut honest_tally, &mut attack_tally);
        }
        clock += job.round_deadline() * 4 + Duration::from_secs(1);
        c.tick(clock);
    }
    // The units still out expire, and results held for their twins go on alone.
    clock += job.unit_deadline() + Duration::from_secs(1);
    c.tick(clock);
    run_checks(&mut c, &mut verifier, &attacked_units, (&mut honest_tally, &mut attack_tally), clock);
    for m in &mut members {
        let is_attack = m.attack.is_some();
        drain(m, is_attack, &mut honest_tally, &mut attack_tally);
    }
    let status = c.status();
    Outcome {
        honest: honest_tally,
        attacks: attack_tally,
        val_loss: status.history.last().map_or(f32::NAN, |r| r.val_loss),
        versions: status.version,
        replayed: status.counters.replayed,
        twins: (status.counters.twins_compared, status.counters.twins_disagreed),
        seconds: started.elapsed().as_secs_f64(),
        check_seconds: status.counters.check_seconds,
    }
}

/// Runs the checks `c` queued and hands it their reports, counting replay scores and
/// loss alignments into the honest or the attack tally (`tallies`) by unit.
fn run_checks(
    c: &mut Coordinator,
    verifier: &mut Verifier,
    attacked_units: &std::collections::HashSet<u64>,
    (honest, attacks): (&mut Tally, &mut Tally),
    now: Instant,
) {
    for check in c.take_checks() {
        let report = verifier.run(&check);
        let owner = if attacked_units.contains(&check.unit_id) { &mut *attacks } else { &mut *honest };
        let score = |r: Replayed| if check.compressed { r.projection } else { r.cosine };
        owner.replay_scores.extend(report.replay.map(score));
        owner.alignments.extend(report.loss.and_then(|l| l.alignment));
        c.checked(check, report, now);
    }
}

fn join(c: &mut Coordinator, attack: Option<Attack>, index: u64, now: Instant) -> Member {
    let (outbox, inbox) = mpsc::channel(64);
    let identity = Identity::generate();
    let device = DeviceInfo { kind: "cpu".into(), adapter: "adversarial suite".into(), software: true };
    let hello =
        Hello { agent: format!("{attack:?}"), device, resume: None, gflops: 0.0, key: identity.public(), p2p: false };
    let session = c.join(outbox, hello, now);
    Member {
        session,
        inbox,
        identity,
        attack,
        trainer: None,
        residual: Vec::new(),
        unit: None,
        first_unit: None,
        first_accepted: None,
        units: 0,
        last_sent: None,
        rng: Rng::from_parts(&[index, 0xAD]),
    }
}

/// Takes the member's latest assignment and counts its acks (as attacks when
/// `is_attack`).
fn drain(m: &mut Member, is_attack: bool, honest: &mut Tally, attacks: &mut Tally) {
    while let Ok(msg) = m.inbox.try_recv() {
        match msg {
            ServerMsg::Assign(unit) => m.unit = Some(unit),
            ServerMsg::Ack(ack) => count_ack(m, ack.accepted, &ack.reason, is_attack, honest, attacks),
            _ => {}
        }
    }
}

fn count_ack(m: &mut Member, accepted: bool, reason: &str, is_attack: bool, honest: &mut Tally, attacks: &mut Tally) {
    let tally = if is_attack { attacks } else { honest };
    if accepted {
        tally.accepted += 1;
        if m.first_accepted.is_none() {
            m.first_accepted = m.last_sent.clone();
        }
    } else {
        let code = reason.split(':').next().unwrap_or(reason).to_string();
        *tally.rejected.entry(code).or_insert(0) += 1;
    }
}

/// The weights `unit` starts from.
fn weights(c: &mut Coordinator, unit: &WorkUnit) -> Vec<f32> {
    let bytes = match c.version_file(unit.version).expect("the unit's version is kept").0 {
        VersionSource::Memory(bytes) => bytes.to_vec(),
        VersionSource::Disk(path) => std::fs::read(path).expect("a kept version's file"),
    };
    checkpoint::decode(&unit.model, &bytes).expect("the relay's weights decode")
}

/// Runs the first `steps` of `unit` as the contributor loop does (a compressed unit
/// carries AdamW's moments on from the member's last unit): their Δ.
fn train(c: &mut Coordinator, m: &mut Member, unit: &WorkUnit, start: &[f32], steps: u32) -> Vec<f32> {
    let fits = m.trainer.as_ref().is_some_and(|t| t.loss_slots() > unit.steps as usize);
    if !fits {
        let trainer = Trainer::new(CpuBackend::new(), unit.model, unit.batch as usize, unit.steps as usize + 1);
        m.trainer = Some(trainer.expect("a CPU trainer"));
    }
    let shard = c.shard_file(unit.shard).expect("the unit's shard");
    let data = Tokens::new(&shard, unit.tokens);
    let trainer = m.trainer.as_mut().expect("made above");
    let moments = if unit.codec.is_some() { Moments::Carried } else { Moments::Fresh };
    pollster::block_on(train_unit(trainer, start, data, unit.seed, steps, &unit.optim, moments)).expect("CPU training");
    let end = pollster::block_on(trainer.params()).expect("CPU readback");
    start.iter().zip(&end).map(|(s, e)| s - e).collect()
}

/// `values` as the unit asks (compressed with the member's residual, or dense).
fn pack(m: &mut Member, unit: &WorkUnit, values: &[f32]) -> Update {
    match unit.codec {
        Some(cfg) => {
            if m.residual.len() != values.len() {
                m.residual = vec![0.0; values.len()];
            }
            Update::Compressed(codec::encode(values, &mut m.residual, &cfg))
        }
        None => Update::Dense(values.to_vec()),
    }
}

fn decoded(update: &Update, len: usize) -> Vec<f32> {
    match update {
        Update::Dense(values) => values.clone(),
        Update::Compressed(bytes) => codec::decode(bytes, len).expect("an honest encoding decodes"),
    }
}

/// The member's submission for `unit` given its honest Δ, and whether it attacks
/// (`max_staleness`: the versions a late result may be behind).
fn lie(
    m: &mut Member,
    unit: &WorkUnit,
    delta: Vec<f32>,
    honest: &[(Update, Vec<f32>)],
    max_staleness: u64,
) -> (Submission, bool) {
    let n = delta.len();
    let rms = (delta.iter().map(|d| d * d).sum::<f32>() / n as f32).sqrt();
    let mut sub = Submission {
        unit_id: unit.unit_id,
        version: unit.version,
        steps: unit.steps,
        loss_before: 3.0,
        loss_after: 2.5,
        update: Update::Dense(Vec::new()),
        signature: Vec::new(),
    };
    m.units += 1;
    let attack = match m.attack {
        Some(Attack::ReplayOld) if m.first_accepted.is_none() => None,
        Some(Attack::TrustedScale9) if m.units <= TRUSTED_AFTER => None,
        Some(Attack::Copy | Attack::NearCopy | Attack::Alie) if honest.is_empty() => None,
        Some(Attack::StaleVersion)
            if m.first_unit.as_ref().is_none_or(|f| f.version + max_staleness >= unit.version) =>
        {
            None
        }
        other => other,
    };
    sub.update = match attack {
        None | Some(Attack::Lazy) => pack(m, unit, &delta),
        Some(Attack::SignFlip) => pack(m, unit, &delta.iter().map(|d| -d).collect::<Vec<_>>()),
        Some(Attack::Scale100) => pack(m, unit, &delta.iter().map(|d| 100.0 * d).collect::<Vec<_>>()),
        Some(Attack::TrustedScale9) => pack(m, unit, &delta.iter().map(|d| 9.0 * d).collect::<Vec<_>>()),
        Some(Attack::Drift) => {
            let factor = 1.5f32.powi(m.units as i32);
            pack(m, unit, &delta.iter().map(|d| factor * d).collect::<Vec<_>>())
        }
        Some(Attack::Noise) => {
            let noisy: Vec<f32> = delta.iter().map(|d| d + 3.0 * rms * m.rng.normal()).collect();
            pack(m, unit, &noisy)
        }
        Some(Attack::Alie) => pack(m, unit, &alie(honest, n)),
        // A compressed unit's values cannot be NaN (its scale would not decode): its loss is.
        Some(Attack::NonFinite) if unit.codec.is_some() => {
            sub.loss_after = f32::NAN;
            pack(m, unit, &delta)
        }
        Some(Attack::NonFinite) => {
            let mut values = delta.clone();
            values[0] = f32::NAN;
            Update::Dense(values)
        }
        Some(Attack::ReplayOld) => m.first_accepted.clone().expect("checked above"),
        Some(Attack::Copy) => honest[0].0.clone(),
        Some(Attack::NearCopy) => {
            let nudged: Vec<f32> = honest[0].1.iter().map(|v| v * (1.0 + 1e-3 * m.rng.normal())).collect();
            // Sent as the original was: without a residual of its own.
            match unit.codec {
                Some(cfg) => Update::Compressed(codec::encode(&nudged, &mut vec![0.0; n], &cfg)),
                None => Update::Dense(nudged),
            }
        }
        Some(Attack::FreeRiderZero) => pack(m, unit, &vec![0.0; n]),
        Some(Attack::FreeRiderRandom) => {
            let random: Vec<f32> = (0..n).map(|_| rms * m.rng.normal()).collect();
            pack(m, unit, &random)
        }
        Some(Attack::StaleVersion) => {
            let first = m.first_unit.as_ref().expect("checked above");
            (sub.unit_id, sub.version, sub.steps) = (first.unit_id, first.version, first.steps);
            pack(m, unit, &delta)
        }
        Some(Attack::WrongUnit) => {
            sub.unit_id = 1 << 40;
            pack(m, unit, &delta)
        }
        Some(Attack::ForgedSignature) => pack(m, unit, &delta),
        Some(Attack::Malformed) => Update::Compressed((0..64).map(|_| m.rng.next_u64() as u8).collect()),
    };
    sub.signature = match attack {
        Some(Attack::ForgedSignature) => Identity::generate().sign_submission(&sub),
        _ => m.identity.sign_submission(&sub),
    };
    (sub, attack.is_some())
}

/// ALIE: per coordinate, the mean of the honest results minus 1.5 standard deviations.
fn alie(honest: &[(Update, Vec<f32>)], n: usize) -> Vec<f32> {
    let k = honest.len() as f32;
    (0..n)
        .map(|i| {
            let mean = honest.iter().map(|(_, d)| d[i]).sum::<f32>() / k;
            let var = honest.iter().map(|(_, d)| (d[i] - mean).powi(2)).sum::<f32>() / k;
            mean - 1.5 * var.sqrt()
        })
        .collect()
}
