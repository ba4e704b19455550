//! Training, written once against [`Backend`]: the inner optimizer's settings and
//! schedule, [`Trainer`] (forward, backward and AdamW over microbatches, in
//! `trainer.rs`, on the buffers of `buffers.rs`), and a work unit's H inner steps
//! ([`train_unit`]).
//!
//! No op ever writes a buffer it reads (see [`crate::backend`]): each activation kind of
//! each layer lives in its own buffer.

mod buffers;
mod lora;
mod trainer;

use serde::{Deserialize, Serialize};

pub use trainer::{MAX_LOGIT_BYTES, Role, Trainer, TrainerShape};

use crate::backend::{Backend, BackendError};
use crate::data::{Tokens, sample_batch};

/// Inner-loop AdamW settings, as sent in a work unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct InnerOptim {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay for matrices and embeddings.
    pub weight_decay: f32,
    /// Global gradient-norm limit (0: none).
    pub grad_clip: f32,
}

impl Default for InnerOptim {
    /// nanoGPT's shakespeare_char settings at their peak learning rate.
    fn default() -> Self {
        InnerOptim { lr: 1e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, grad_clip: 1.0 }
    }
}

impl InnerOptim {
    /// Checks every value is finite and in its meaningful range.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        if !ok(self.lr, 0.0, 1.0) || self.lr == 0.0 {
            return Err(format!("lr = {} must be in (0, 1]", self.lr));
        }
        if !ok(self.beta1, 0.0, 0.999_999) || !ok(self.beta2, 0.0, 0.999_999) {
            return Err(format!("betas ({}, {}) must be in [0, 1)", self.beta1, self.beta2));
        }
        if !ok(self.eps, 1e-12, 1.0) || !ok(self.weight_decay, 0.0, 1.0) || !ok(self.grad_clip, 0.0, 1e6) {
            return Err(format!(
                "eps = {}, weight_decay = {} or grad_clip = {} out of range",
                self.eps, self.weight_decay, self.grad_clip
            ));
        }
        Ok(())
    }
}

/// Linear warmup then cosine decay, as nanoGPT's `get_lr`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub max_lr: f32,
    /// Floor reached at `decay_steps`.
    pub min_lr: f32,
    /// Steps of linear warmup.
    pub warmup_steps: u32,
    /// Step at which the cosine reaches `min_lr`.
    pub decay_steps: u32,
}

impl Schedule {
    /// The learning rate of 0-based step `step`.
    pub fn lr(&self, step: u32) -> f32 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f32 / (self.warmup_steps + 1) as f32;
        }
        if step > self.decay_steps {
            return self.min_lr;
        }
        let ratio = (step - self.warmup_steps) as f32 / (self.decay_steps - self.warmup_steps).max(1) as f32;
        let coeff = 0.5 * (1.0 + (std::f32::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.max_lr - self.min_lr)
    }
}

/// A unit's result: the dense pseudo-gradient and what training measured.
#[derive(Clone, Debug)]
pub struct UnitOutcome {
    /// Pseudo-gradient `θ_start − θ_end`, `layout().total` floats.
    pub delta: Vec<f32>,
    /// The unit's losses.
    pub trained: UnitLosses,
}

/// What a unit's training measured, read back without the parameters.
#[derive(Clone, Debug)]
pub struct UnitLosses {
    /// Loss of each inner step's batch before that step's update, nats per token.
    pub losses: Vec<f32>,
    /// Loss on the first batch before training, nats per token.
    pub loss_before: f32,
    /// Loss on the same first batch after the last step, nats per token.
    pub loss_after: f32,
}

/// How a unit's AdamW moments begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moments {
    /// Zeroed: the unit is a function of its start, data, seed and settings alone, so the
    /// relay can replay it exactly. Dense units, and every replay, start this way.
    Fresh,
    /// Where the trainer's previous unit left them (and its step count), as DiLoCo's
    /// workers keep their inner optimizer across rounds. Compressed units start this way:
    /// their Δ already carries the contributor's own error-feedback residual, so the relay
    /// judges them by direction, and the carried momentum keeps successive units' Δs
    /// pointing the same way, which is what top-k selection with error feedback needs
    /// (`cargo xtask bench diloco`: held-out loss 2.53 → 2.44 for K=4, H=10).
    Carried,
}

/// Runs `steps` inner AdamW steps at `opt.lr` from `start` on batches drawn from `data`
/// with `seed`, its moments begun as `moments` says, leaving the trained parameters on
/// the device. Reads back only the losses.
pub async fn train_unit<B: Backend>(
    trainer: &mut Trainer<B>,
    start: &[f32],
    data: Tokens<'_>,
    seed: u64,
    steps: u32,
    opt: &InnerOptim,
    moments: Moments,
) -> Result<UnitLosses, BackendError> {
    let slots = steps as usize + 1;
    assert!(
        slots <= trainer.loss_slots(),
        "{steps} steps need {slots} loss slots, the trainer has {}",
        trainer.loss_slots()
    );
    let (rows, context) = (trainer.batch_size(), trainer.config().context);
    match moments {
        Moments::Fresh => trainer.load(start),
        Moments::Carried => trainer.load_keeping_moments(start),
    }
    let first = sample_batch(data, seed, 0, rows, context);
    for step in 0..steps {
        let batch = if step == 0 { first.clone() } else { sample_batch(data, seed, step, rows, context) };
        trainer.seed_dropout(seed, step);
        trainer.step(&batch, opt, opt.lr, step as usize);
    }
    trainer.forward(&first, steps as usize);
    let mut losses = trainer.losses(0..slots).await?;
    let loss_after = losses.pop().unwrap_or(f32::NAN);
    Ok(UnitLosses { loss_before: losses.first().copied().unwrap_or(f32::NAN), losses, loss_after })
}

/// [`train_unit`] from [`Moments::Fresh`], then the parameters are read back for the
/// dense Δ.
pub async fn run_unit<B: Backend>(
    trainer: &mut Trainer<B>,
    start: &[f32],
    data: Tokens<'_>,
    seed: u64,
    steps: u32,
    opt: &InnerOptim,
) -> Result<UnitOutcome, BackendError> {
    let trained = train_unit(trainer, start, data, seed, steps, opt, Moments::Fresh).await?;
    let end = trainer.params().await?;
    Ok(UnitOutcome { delta: start.iter().zip(&end).map(|(s, e)| s - e).collect(), trained })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cpu::CpuBackend;
    use crate::data::Corpus;
    use crate::model::GptConfig;

    fn delta(trainer: &mut Trainer<CpuBackend>, start: &[f32], data: Tokens<'_>, moments: Moments) -> Vec<f32> {
        pollster::block_on(train_unit(trainer, start, data, 5, 3, &InnerOptim::default(), moments)).unwrap();
        let end = pollster::block_on(trainer.params()).unwrap();
        start.iter().zip(&end).map(|(s, e)| s - e).collect()
    }

    #[test]
    fn carried_moments_continue_the_last_unit_and_fresh_ones_replay_exactly() {
        let cfg = GptConfig { context: 16, layers: 1, width: 32, heads: 2, ..GptConfig::default() };
        let (start, corpus) = (cfg.init(3), Corpus::builtin());
        let mut trainer = Trainer::new(CpuBackend::new(), cfg, 4, 4).unwrap();
        let fresh = delta(&mut trainer, &start, corpus.train(), Moments::Fresh);
        // On a new trainer there is nothing to carry: the same Δ as a fresh unit.
        let mut new = Trainer::new(CpuBackend::new(), cfg, 4, 4).unwrap();
        assert_eq!(delta(&mut new, &start, corpus.train(), Moments::Carried), fresh);
        // After a unit, carried moments change the next one; fresh ones give it again.
        let carried = delta(&mut trainer, &start, corpus.train(), Moments::Carried);
        assert_ne!(carried, fresh, "the moments of the unit before were carried");
        assert_eq!(delta(&mut trainer, &start, corpus.train(), Moments::Fresh), fresh, "a fresh unit replays");
    }

    #[test]
    fn microbatches_add_up_to_the_batch_and_every_role_agrees() {
        let cfg = GptConfig { context: 16, layers: 2, width: 32, heads: 2, ..GptConfig::default() };
        let (start, corpus) = (cfg.init(9), Corpus::builtin());
        let batch = sample_batch(corpus.train(), 4, 0, 6, cfg.context);
        let whole = TrainerShape { rows: 6, micro_rows: 6, loss_slots: 1, role: Role::Gradients };
        let gradients_of = |shape: TrainerShape| {
            let mut trainer = Trainer::with_shape(CpuBackend::new(), cfg, shape).unwrap();
            trainer.load(&start);
            let grads = pollster::block_on(trainer.gradients(&batch)).unwrap();
            (grads, pollster::block_on(trainer.losses(0..1)).unwrap()[0])
        };
        let (reference, loss) = gradients_of(whole);
        for micro_rows in [1, 2, 3] {
            let (grads, micro_loss) = gradients_of(TrainerShape { micro_rows, ..whole });
            let worst = reference.iter().zip(&grads).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = reference.iter().map(|g| g.abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-5 * scale, "microbatches of {micro_rows}: {worst} off (largest {scale})");
            assert!((micro_loss - loss).abs() < 1e-5, "{micro_loss} vs {loss}");
        }
        // A forward-only trainer on shared weights: the same loss, and the caller's
        // weights stay as they were when it is loaded with others.
        let mut forward =
            Trainer::with_shape(CpuBackend::new(), cfg, TrainerShape { micro_rows: 2, role: Role::Forward, ..whole })
                .unwrap();
        let shared = Arc::new(start.clone());
        forward.share_params(shared.clone());
        forward.forward(&batch, 0);
        assert!((pollster::block_on(forward.losses(0..1)).unwrap()[0] - loss).abs() < 1e-5);
        forward.load(&cfg.init(10));
        assert_eq!(*shared, start, "a shared buffer is copied before it is written");
        // The largest microbatch whose logits fit: 16 positions × 256 tokens × 4 bytes a row.
        assert_eq!(TrainerShape::train(6, 1).fitting(&cfg, 3 * 16 * 256 * 4).micro_rows, 3);
        assert_eq!(TrainerShape::train(6, 1).fitting(&cfg, 1).micro_rows, 1);
    }

    #[test]
    fn a_trainer_of_adapters_holds_the_base_once_and_the_adapters_as_often_as_its_role_needs() {
        let cfg = GptConfig::gpt2_small(256);
        let lora = crate::lora::LoraConfig {
            targets: vec![crate::lora::LoraTarget::Attention],
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
        };
        let shape = TrainerShape::train(4, 21);
        let (whole, adapters) = (shape.bytes(&cfg), shape.bytes_with(&cfg, Some(&lora)));
        let (base, four_copies) = (4 * cfg.layout().total as u64, 16 * cfg.layout().total as u64);
        assert!(adapters > base, "the base is held: {adapters} bytes");
        assert!(whole - adapters > four_copies - base - base / 10, "no gradients or moments for the base");
        // What the adapters add: at most a few copies of the activations' size.
        let activations = whole - four_copies;
        assert!(adapters - base < 2 * activations, "{adapters} bytes, {activations} of activations");
        // The real trainer holds about that (within 10% of the buffers it makes).
        let small = GptConfig { context: 16, layers: 2, width: 32, heads: 2, ..GptConfig::default() };
        let trainer = Trainer::with_lora(CpuBackend::new(), small, &lora, shape).unwrap();
        let estimate = shape.bytes_with(&small, Some(&lora));
        let allocated = 4 * trainer.backend().allocated() as u64;
        assert!(estimate.abs_diff(allocated) * 10 < allocated, "estimate {estimate}, allocated {allocated}");
    }
}
