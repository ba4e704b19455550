//! Checking that a result is the work it claims, on the CPU reference backend.
//!
//! - **Replay** runs the unit again (its batches follow from its shard and seed) and
//!   compares the submitted Δ with the replayed one, on the coordinates the submission
//!   sent: cosine similarity and relative norm. A compressed Δ also carries the
//!   contributor's error-feedback residual, so its tolerances are looser than a dense one's.
//! - The **loss check** (Templar's) applies the submitted Δ and asks that it lowers the
//!   loss of the unit's own batches more than that of batches from another shard: work
//!   done on the assigned data fits that data, a copy or a made-up Δ does not.
//!
//! A [`Check`] owns everything it needs, so it runs off the coordinator's lock on the
//! relay's verifier thread (started by [`crate::start`]).

use std::cmp::Ordering;
use std::sync::Arc;

pub use axum::body::Bytes;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{TokenWidth, Tokens, sample_batch};
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::{InnerOptim, Trainer, run_unit};
use serde::Serialize;

use crate::delta::Delta;

/// The work a result claims, and what to check of it.
pub struct Check {
    /// Names the waiting result in the coordinator that queued it.
    pub ticket: u64,
    /// The contributor whose result it is.
    pub contributor: u64,
    /// Whether that contributor has passed a replay (see [`crate::check_queue`]).
    pub trusted: bool,
    /// The unit.
    pub unit_id: u64,
    /// The model trained.
    pub model: GptConfig,
    /// Rows per batch.
    pub rows: usize,
    /// The weights the unit started from.
    pub start: Arc<Vec<f32>>,
    /// The unit's shard.
    pub shard: Bytes,
    /// A different shard (or the same one when the job has only one).
    pub other_shard: Bytes,
    /// How the shards store tokens.
    pub tokens: TokenWidth,
    /// The unit's sampling seed.
    pub seed: u64,
    /// Inner steps.
    pub steps: u32,
    /// The unit's inner optimizer.
    pub optim: InnerOptim,
    /// The submitted Δ, decoded (`θ_start − θ_end`).
    pub delta: Delta,
    /// Whether it came compressed: then it carries the contributor's error-feedback
    /// residual, and both checks measure direction rather than size (see [`Report`]).
    pub compressed: bool,
    /// Whether to replay the unit.
    pub replay: bool,
    /// Batches of each kind the loss check uses (0: no loss check).
    pub loss_batches: u32,
    /// The job's `verify.loss_margin`, nats per token: a result that fails the loss check
    /// is not replayed (the check costs a few forward passes, a replay a whole unit).
    pub loss_margin: f32,
    /// The job's `verify.min_alignment` (see [`LossGain::alignment`]).
    pub min_alignment: f32,
}

#[cfg(test)]
impl Check {
    /// A check of a 1-layer model's unit `unit_id` for `contributor`, for tests of the
    /// queue.
    pub(crate) fn for_test(unit_id: u64, contributor: u64, trusted: bool) -> Check {
        let model = GptConfig { vocab: 256, context: 4, layers: 1, heads: 1, width: 8, bias: true };
        Check {
            ticket: unit_id,
            contributor,
            trusted,
            unit_id,
            model,
            rows: 1,
            start: Arc::new(Vec::new()),
            shard: Bytes::new(),
            other_shard: Bytes::new(),
            tokens: TokenWidth::Byte,
            seed: 0,
            steps: 1,
            optim: InnerOptim::default(),
            delta: Delta::Dense(Vec::new()),
            compressed: false,
            replay: false,
            loss_batches: 0,
            loss_margin: 0.0,
            min_alignment: 0.0,
        }
    }
}

/// What a replay found.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Replayed {
    /// Cosine similarity of the submitted and replayed Δ on the submitted coordinates.
    pub cosine: f32,
    /// ‖submitted‖ / ‖replayed‖ on the submitted coordinates.
    pub norm_ratio: f32,
    /// `⟨submitted, replayed⟩ / ‖replayed‖²` on the submitted coordinates: how much of the
    /// replayed Δ the submission carries. About 1 or more for an honest compressed Δ
    /// whatever its residual adds, −1 or less for a flipped one, near 0 for an unrelated one.
    pub projection: f32,
}

/// What the loss check found: loss decreases (nats per token, positive = lower) from
/// applying the submitted Δ. For a compressed Δ these are first-order (`⟨∇loss, Δ⟩`):
/// its residual can make the full step overshoot, which says nothing about honesty.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LossGain {
    /// On batches of the unit's own data.
    pub own: f32,
    /// On batches of another shard.
    pub other: f32,
    /// For a compressed Δ, how far its direction is from chance on the coordinates it
    /// sent: the cosine of Δ with the mean gradient of its own batches there, times
    /// √(coordinates sent). A direction drawn at random scores about ±1 (a standard
    /// normal); honest work points downhill, and scores far above.
    pub alignment: Option<f32>,
}

impl LossGain {
    /// A dense Δ must help its own data at least as much as other data, within `margin`
    /// nats per token (`own + margin ≥ max(other, 0)`). A compressed one must point
    /// downhill on its own data, more than chance allows: an `alignment` of at least
    /// `min_alignment` (its residual carries earlier units' work on other data, so other
    /// data may gain as much). A NaN fails either way.
    pub fn passes(&self, compressed: bool, margin: f32, min_alignment: f32) -> bool {
        if compressed {
            return self.own > 0.0 && self.alignment.is_some_and(|a| a >= min_alignment);
        }
        matches!((self.own + margin).partial_cmp(&self.other.max(0.0)), Some(Ordering::Greater | Ordering::Equal))
    }
}

/// The figures of one check; each part is `None` when it was not asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// Replay figures.
    pub replay: Option<Replayed>,
    /// Loss-check figures.
    pub loss: Option<LossGain>,
}

/// Runs checks, reusing its CPU trainer between checks of the same model.
#[derive(Default)]
pub struct Verifier {
    trainer: Option<Trainer<CpuBackend>>,
}

impl Verifier {
    /// Runs `check` (seconds: a replay costs as much as the unit did on one CPU).
    pub fn run(&mut self, check: &Check) -> Report {
        let slots = (check.steps as usize + 1).max(4 * check.loss_batches as usize);
        let trainer = self.trainer_for(check.model, check.rows, slots);
        let shard = Tokens::new(&check.shard, check.tokens);
        let loss = (check.loss_batches > 0).then(|| loss_gain(trainer, check));
        let failed_loss = loss.is_some_and(|l| !l.passes(check.compressed, check.loss_margin, check.min_alignment));
        let replay = (check.replay && !failed_loss).then(|| {
            let opt = &check.optim;
            let outcome = pollster::block_on(run_unit(trainer, &check.start, shard, check.seed, check.steps, opt))
                .expect("the CPU backend's readback cannot fail");
            compare(&check.delta, &outcome.delta)
        });
        Report { replay, loss }
    }

    fn trainer_for(&mut self, model: GptConfig, rows: usize, slots: usize) -> &mut Trainer<CpuBackend> {
        let fits = self
            .trainer
            .as_ref()
            .is_some_and(|t| t.config() == model && t.batch_size() == rows && t.loss_slots() >= slots);
        if !fits {
            let trainer = Trainer::new(CpuBackend::new(), model, rows, slots).expect("the CPU backend has no limits");
            self.trainer = Some(trainer);
        }
        self.trainer.as_mut().expect("set above")
    }
}

/// Cosine and norm ratio of `submitted` against `replayed` (`[parameters]`), on the
/// coordinates where `submitted` is not zero.
pub fn compare(submitted: &Delta, replayed: &[f32]) -> Replayed {
    let (mut dot, mut ss, mut rr) = (0.0f64, 0.0f64, 0.0f64);
    submitted.for_each_nonzero(|i, s| {
        let r = replayed[i];
        dot += s as f64 * r as f64;
        ss += s as f64 * s as f64;
        rr += r as f64 * r as f64;
    });
    let cosine = if ss > 0.0 && rr > 0.0 { dot / (ss.sqrt() * rr.sqrt()) } else { 0.0 };
    let norm_ratio = if rr > 0.0 { (ss / rr).sqrt() } else { f64::INFINITY };
    let projection = if rr > 0.0 { dot / rr } else { 0.0 };
    Replayed { cosine: cosine as f32, norm_ratio: norm_ratio as f32, projection: projection as f32 }
}

/// Mean loss decrease from `θ` to `θ − Δ` on `loss_batches` of the unit's batches and
/// on as many batches of the other shard: measured for a dense Δ, first-order
/// (`⟨∇loss(θ), Δ⟩`) for a compressed one.
fn loss_gain(trainer: &mut Trainer<CpuBackend>, check: &Check) -> LossGain {
    let (n, context) = (check.loss_batches as usize, check.model.context);
    let mut rng = Rng::from_parts(&[check.seed, check.unit_id, 0x1055]);
    let own = Tokens::new(&check.shard, check.tokens);
    let other = Tokens::new(&check.other_shard, check.tokens);
    let mut batches = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let step = rng.below(check.steps as u64) as u32;
        batches.push(sample_batch(own, check.seed, step, check.rows, context));
    }
    let other_seed = rng.next_u64();
    for i in 0..n {
        batches.push(sample_batch(other, other_seed, i as u32, check.rows, context));
    }
    let mean = |part: &[f32]| part.iter().sum::<f32>() / part.len() as f32;
    if check.compressed {
        trainer.load(&check.start);
        let mut own_gradient = vec![0f32; check.start.len()];
        let gains: Vec<f32> = batches
            .iter()
            .enumerate()
            .map(|(i, batch)| {
                let grad =
                    pollster::block_on(trainer.gradients(batch)).expect("the CPU backend's readback cannot fail");
                if i < n {
                    own_gradient.iter_mut().zip(&grad).for_each(|(sum, g)| *sum += g);
                }
                let mut gain = 0f32;
                check.delta.for_each_nonzero(|i, d| gain += (grad[i] as f64 * d as f64) as f32);
                gain
            })
            .collect();
        let alignment = Some(alignment(&own_gradient, &check.delta));
        return LossGain { own: mean(&gains[..n]), other: mean(&gains[n..]), alignment };
    }
    let after: Vec<f32> = check.start.iter().zip(check.delta.dense().iter()).map(|(p, d)| p - d).collect();
    let mut mean_loss = |params: &[f32]| {
        trainer.load(params);
        for (slot, batch) in batches.iter().enumerate() {
            trainer.forward(batch, slot);
        }
        let losses = pollster::block_on(trainer.losses(0..2 * n)).expect("the CPU backend's readback cannot fail");
        (mean(&losses[..n]), mean(&losses[n..]))
    };
    let (own_before, other_before) = mean_loss(&check.start);
    let (own_after, other_after) = mean_loss(&after);
    LossGain { own: own_before - own_after, other: other_before - other_after, alignment: None }
}

/// `cos(gradient, Δ) · √k` on the `k` coordinates where Δ is not zero (0 when either is
/// zero there): see [`LossGain::alignment`].
fn alignment(gradient: &[f32], delta: &Delta) -> f32 {
    let (mut dot, mut gg, mut dd, mut sent) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    delta.for_each_nonzero(|i, d| {
        let g = gradient[i];
        dot += g as f64 * d as f64;
        gg += g as f64 * g as f64;
        dd += d as f64 * d as f64;
        sent += 1;
    });
    if gg > 0.0 && dd > 0.0 { (dot / (gg.sqrt() * dd.sqrt()) * (sent as f64).sqrt()) as f32 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_looks_only_at_sent_coordinates() {
        let replayed = [1.0, 2.0, 3.0, 4.0];
        let dense = |values: &[f32]| Delta::Dense(values.to_vec());
        let same = compare(&dense(&replayed), &replayed);
        assert!((same.cosine - 1.0).abs() < 1e-6 && (same.norm_ratio - 1.0).abs() < 1e-6);
        let sparse = compare(&dense(&[0.0, 4.0, 0.0, 8.0]), &replayed);
        assert!((sparse.cosine - 1.0).abs() < 1e-6, "{sparse:?}");
        assert!((sparse.norm_ratio - 2.0).abs() < 1e-6, "{sparse:?}");
        let flipped = compare(&dense(&[-1.0, -2.0, -3.0, -4.0]), &replayed);
        assert!((flipped.cosine + 1.0).abs() < 1e-6);
        let nothing = compare(&dense(&[0.0; 4]), &replayed);
        assert_eq!(nothing.cosine, 0.0);
    }

    #[test]
    fn an_honest_unit_replays_close_and_a_loss_raising_one_is_not_replayed() {
        let model = GptConfig { vocab: 256, context: 16, layers: 1, heads: 2, width: 32, bias: true };
        let corpus = crowdgrad_runtime::data::Corpus::builtin();
        let shard = Bytes::copy_from_slice(corpus.train().slice(0, 20_000).bytes());
        let other_shard = Bytes::copy_from_slice(corpus.train().slice(20_000, 40_000).bytes());
        let start = Arc::new(model.init(5));
        let optim = InnerOptim { lr: 3e-3, ..InnerOptim::default() };
        let mut trainer = Trainer::new(CpuBackend::new(), model, 4, 9).unwrap();
        let data = Tokens::new(&shard, TokenWidth::Byte);
        let honest = pollster::block_on(run_unit(&mut trainer, &start, data, 7, 8, &optim)).unwrap().delta;
        let check = |delta: Vec<f32>| Check {
            ticket: 1,
            contributor: 1,
            trusted: false,
            unit_id: 1,
            model,
            rows: 4,
            start: start.clone(),
            shard: shard.clone(),
            other_shard: other_shard.clone(),
            tokens: TokenWidth::Byte,
            seed: 7,
            steps: 8,
            optim,
            delta: Delta::Dense(delta),
            replay: true,
            loss_batches: 4,
            loss_margin: 0.05,
            min_alignment: 3.0,
            compressed: false,
        };
        let mut verifier = Verifier::default();
        let report = verifier.run(&check(honest.clone()));
        let (replay, loss) = (report.replay.expect("replayed"), report.loss.expect("loss-checked"));
        assert!(replay.cosine > 0.999 && (replay.norm_ratio - 1.0).abs() < 1e-3, "{replay:?}");
        assert!(loss.passes(false, 0.05, 3.0), "{loss:?}");
        let flipped = verifier.run(&check(honest.iter().map(|d| -d).collect()));
        assert!(!flipped.loss.expect("loss-checked").passes(false, 0.05, 3.0), "{flipped:?}");
        assert_eq!(flipped.replay, None, "a result the loss check refuses costs no replay");

        // Compressed: the submission carries a residual (here three earlier units' Δs)
        // that dwarfs its own Δ and pulls the cosine down, not the projection.
        let earlier = pollster::block_on(run_unit(&mut trainer, &start, data, 8, 8, &optim)).unwrap().delta;
        let carried: Vec<f32> = honest.iter().zip(&earlier).map(|(h, e)| h + 3.0 * e).collect();
        let compressed = |delta: Vec<f32>| Check { compressed: true, ..check(delta) };
        let report = verifier.run(&compressed(carried.clone()));
        let (replay, loss) = (report.replay.expect("replayed"), report.loss.expect("loss-checked"));
        assert!(replay.cosine < 0.9 && replay.projection > 1.0, "{replay:?}");
        assert!(loss.passes(true, 0.05, 3.0), "first order, downhill on its own batches: {loss:?}");
        let flipped = verifier.run(&compressed(carried.iter().map(|d| -d).collect()));
        assert!(!flipped.loss.expect("loss-checked").passes(true, 0.05, 3.0), "{flipped:?}");
        let rms = (honest.iter().map(|d| d * d).sum::<f32>() / honest.len() as f32).sqrt();
        let mut rng = Rng::new(11);
        let random: Vec<f32> = honest.iter().map(|_| rng.normal() * 3.0 * rms).collect();
        let unrelated = verifier.run(&Check { loss_batches: 0, ..compressed(random) });
        assert!(unrelated.replay.expect("replayed").projection.abs() < 0.5, "{unrelated:?}");
    }
}
