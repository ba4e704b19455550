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
//! Both are bounded, whatever the model's size, by `verify.budget_flops` ([`Work`]): the
//! loss check's batches are cut to fewer rows, and the replay covers the unit's first
//! steps only, when the whole would cost more (`loss.rs`, `replay.rs`).
//!
//! A [`Check`] owns everything it needs, so it runs off the coordinator's lock on the
//! relay's verifier thread (started by [`crate::start`]).

mod loss;
mod replay;

use std::cmp::Ordering;
use std::sync::Arc;

pub use axum::body::Bytes;
use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::TokenWidth;
use crowdgrad_runtime::lora::LoraConfig;
use crowdgrad_runtime::model::GptConfig;
use crowdgrad_runtime::train::{InnerOptim, Role, Trainer, TrainerShape};
use crowdgrad_runtime::trained::Trained;
use serde::Serialize;

pub use replay::compare;

use crate::delta::Delta;
use crate::eval::RELAY_LOGIT_BYTES;

impl Check {
    /// What the unit trained: the model, or adapters on its base.
    pub fn trained(&self) -> Trained {
        Trained { model: self.model, lora: self.lora.clone() }
    }

    /// Whether `trainer` trains what the unit trained.
    fn is_for(&self, trainer: &Trainer<CpuBackend>) -> bool {
        trainer.config() == self.model && trainer.lora_config() == self.lora.as_ref()
    }
}

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
    /// The model trained (the frozen base's shape, where adapters train).
    pub model: GptConfig,
    /// The adapters trained on a frozen base, where the job fine-tunes.
    pub lora: Option<LoraConfig>,
    /// That base, `[model parameters]`.
    pub base: Option<Arc<Vec<f32>>>,
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
    /// How much of the replay and of the loss check to run ([`Work::plan`]).
    pub work: Work,
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
            lora: None,
            base: None,
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
            work: Work { loss_rows: 1, replay_steps: 1 },
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
    /// When only the first `steps` of the unit's were replayed, the replayed Δ is taken
    /// as extrapolated to all of them (× unit steps / `steps`), here and in the norm ratio.
    pub projection: f32,
    /// The unit's steps that were replayed: all of them, or its first few ([`Work`]).
    pub steps: u32,
    /// Whether that was all of them.
    pub whole: bool,
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
    /// Seconds the check took.
    pub seconds: f64,
}

/// How much of a check to run, so that checking one result costs at most a budget of
/// FLOPs whatever the model's size (`verify.budget_flops`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Work {
    /// Rows of each of the loss check's batches (the unit's batch rows, or fewer).
    pub loss_rows: usize,
    /// Inner steps replayed from the unit's start (all of them, or its first few; one at
    /// least).
    pub replay_steps: u32,
}

impl Work {
    /// The work on a unit of `steps` steps of `rows` rows of `model`, with `loss_batches`
    /// batches of each kind in the loss check, within `budget` FLOPs: the loss check takes
    /// up to half (6 FLOPs a parameter a token for a gradient, 2 for a forward pass), its
    /// batches cut to fewer rows when whole ones would cost more (one row at least); the
    /// replay takes what is left, the unit's first steps only when all of them would cost
    /// more (one at least).
    pub fn plan(model: &GptConfig, rows: usize, steps: u32, loss_batches: u32, compressed: bool, budget: f64) -> Work {
        let token = model.layout().total as f64 * model.context as f64;
        // A compressed Δ's check takes a gradient a batch; a dense one's two forward passes.
        let per_row = 2.0 * loss_batches as f64 * token * if compressed { 6.0 } else { 4.0 };
        let loss_rows = if loss_batches == 0 { rows } else { ((budget / 2.0 / per_row) as usize).clamp(1, rows) };
        let spent = if loss_batches == 0 { 0.0 } else { per_row * loss_rows as f64 };
        let step = 6.0 * token * rows as f64;
        let replay_steps = (((budget - spent) / step).max(0.0) as u32).clamp(1, steps.max(1));
        Work { loss_rows, replay_steps }
    }

    /// FLOPs this work takes on a unit of `rows` rows of `model`, replay included or not.
    pub fn flops(&self, model: &GptConfig, rows: usize, loss_batches: u32, compressed: bool, replay: bool) -> f64 {
        let token = model.layout().total as f64 * model.context as f64;
        let loss = 2.0 * loss_batches as f64 * token * if compressed { 6.0 } else { 4.0 } * self.loss_rows as f64;
        let replay = if replay { 6.0 * token * rows as f64 * self.replay_steps as f64 } else { 0.0 };
        loss + replay
    }
}

/// Buffers of a model larger than this many parameters are given back after each check
/// rather than kept for the next: a large model's relay holds them only while checking.
const KEPT_PARAMS: usize = 16 << 20;

/// Runs checks, keeping its CPU trainers between checks of the same small model.
#[derive(Default)]
pub struct Verifier {
    /// For whole or multi-step replays: parameters, gradients, AdamW's moments.
    training: Option<Trainer<CpuBackend>>,
    /// For the loss check and one-step replays, on the start weights where they are:
    /// gradients only.
    gradients: Option<Trainer<CpuBackend>>,
}

impl Verifier {
    /// Runs `check` (seconds: at most `verify.budget_flops` of CPU work, see [`Work`]).
    pub fn run(&mut self, check: &Check) -> Report {
        let started = std::time::Instant::now();
        let loss = (check.loss_batches > 0).then(|| loss::loss_gain(self.gradients_for(check), check));
        let failed_loss = loss.is_some_and(|l| !l.passes(check.compressed, check.loss_margin, check.min_alignment));
        let replay = (check.replay && !failed_loss).then(|| match check.work.replay_steps {
            1 => replay::first_step(self.gradients_for(check), check),
            steps => replay::steps(self.training_for(check), check, steps),
        });
        if check.trained().layout().total > KEPT_PARAMS {
            (self.training, self.gradients) = (None, None);
        }
        Report { replay, loss, seconds: started.elapsed().as_secs_f64() }
    }

    /// A training trainer for `check`'s model and batches, with a loss slot per step.
    fn training_for(&mut self, check: &Check) -> &mut Trainer<CpuBackend> {
        let shape = TrainerShape::train(check.rows, check.steps as usize + 1).fitting(&check.model, RELAY_LOGIT_BYTES);
        let fits = self
            .training
            .as_ref()
            .is_some_and(|t| check.is_for(t) && t.shape().rows == shape.rows && t.loss_slots() >= shape.loss_slots);
        if !fits {
            self.training = Some(check.trained().trainer(CpuBackend::new(), shape).expect("no CPU limits"));
        }
        let trainer = self.training.as_mut().expect("set above");
        if let Some(base) = &check.base {
            trainer.share_base(base.clone());
        }
        trainer
    }

    /// A gradients-only trainer for `check`'s model, on its start weights (shared, not
    /// copied), whose microbatches divide both the unit's batch and the loss check's.
    fn gradients_for(&mut self, check: &Check) -> &mut Trainer<CpuBackend> {
        let slots = 4 * check.loss_batches as usize + 1;
        let fitting =
            TrainerShape::train(check.rows, slots).with_role(Role::Gradients).fitting(&check.model, RELAY_LOGIT_BYTES);
        let shape = fitting.with_micro_rows(gcd(fitting.micro_rows, check.work.loss_rows));
        let fits = self.gradients.as_ref().is_some_and(|t| check.is_for(t) && t.shape() == shape);
        if !fits {
            self.gradients = Some(check.trained().trainer(CpuBackend::new(), shape).expect("no CPU limits"));
        }
        let trainer = self.gradients.as_mut().expect("set above");
        trainer.share_params(check.start.clone());
        if let Some(base) = &check.base {
            trainer.share_base(base.clone());
        }
        trainer
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crowdgrad_runtime::data::Tokens;
    use crowdgrad_runtime::rng::Rng;
    use crowdgrad_runtime::train::run_unit;

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
            lora: None,
            base: None,
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
            work: Work { loss_rows: 4, replay_steps: 8 },
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
        let unrelated = verifier.run(&Check { loss_batches: 0, ..compressed(random.clone()) });
        assert!(unrelated.replay.expect("replayed").projection.abs() < 0.5, "{unrelated:?}");

        // Only the first step replayed (a large model's budget): with a gradient and the
        // start weights alone, the same as a trainer's one step, and the projection on
        // it, extrapolated to the unit's 8 steps, tells honest from flipped and random.
        let first = |delta: Vec<f32>| Check { work: Work { loss_rows: 4, replay_steps: 1 }, ..compressed(delta) };
        let one = verifier.run(&first(carried.clone())).replay.expect("replayed");
        let stepped = replay::steps(verifier.training_for(&first(carried.clone())), &first(carried.clone()), 1);
        assert!((one.projection - stepped.projection).abs() < 1e-4 * stepped.projection.abs(), "{one:?} {stepped:?}");
        assert!(!one.whole && one.steps == 1 && one.projection > 0.3, "{one:?}");
        let flipped = verifier.run(&Check { loss_batches: 0, ..first(carried.iter().map(|d| -d).collect()) });
        assert!(flipped.replay.expect("replayed").projection < -0.3, "{flipped:?}");
        let unrelated = verifier.run(&Check { loss_batches: 0, ..first(random) });
        assert!(unrelated.replay.expect("replayed").projection.abs() < 0.1, "{unrelated:?}");
    }

    #[test]
    fn the_work_of_a_check_fits_its_budget_as_models_grow() {
        let small = GptConfig::default();
        let all = Work::plan(&small, 8, 20, 4, true, 2e12);
        assert_eq!(all, Work { loss_rows: 8, replay_steps: 20 }, "a small model's check is whole");
        let gpt2 = GptConfig { vocab: 50_304, context: 256, layers: 12, heads: 12, width: 768, bias: true };
        let cut = Work::plan(&gpt2, 8, 50, 4, true, 2e12);
        assert_eq!(cut, Work { loss_rows: 1, replay_steps: 1 }, "GPT-2 small: one row a batch, one step");
        let mid = GptConfig { vocab: 256, context: 256, layers: 6, heads: 6, width: 384, bias: true };
        let some = Work::plan(&mid, 12, 50, 4, true, 2e12);
        assert!(some.replay_steps > 1 && some.replay_steps < 50, "{some:?}");
        assert!(some.flops(&mid, 12, 4, true, true) <= 2e12);
    }
}
