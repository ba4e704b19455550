//! Replays: the unit trained again from its start, whole or its first steps, and the
//! submitted Δ compared with what that gives, on the coordinates it sent.
//!
//! A unit's first step needs no optimizer state: AdamW's first step from fresh moments
//! is a function of the start weights and one gradient. So a one-step replay
//! ([`first_step`]) holds one gradient beside the start weights (shared, not copied),
//! where a longer one ([`steps`]) holds a whole trainer.

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Tokens, sample_batch};
use crowdgrad_runtime::ops::{self, AdamW};
use crowdgrad_runtime::train::{Moments, Trainer, train_unit};

use super::{Check, Replayed};
use crate::delta::Delta;

/// Replays the first `replayed` of the unit's steps (all of them, or fewer) on a
/// training trainer and compares.
pub fn steps(trainer: &mut Trainer<CpuBackend>, check: &Check, replayed: u32) -> Replayed {
    let shard = Tokens::new(&check.shard, check.tokens);
    let replayed = replayed.min(check.steps);
    pollster::block_on(train_unit(trainer, &check.start, shard, check.seed, replayed, &check.optim, Moments::Fresh))
        .expect("the CPU backend's readback cannot fail");
    let end = pollster::block_on(trainer.params()).expect("the CPU backend's readback cannot fail");
    let delta: Vec<f32> = check.start.iter().zip(&end).map(|(s, e)| s - e).collect();
    let mut at_sent = Vec::new();
    check.delta.for_each_nonzero(|i, _| at_sent.push(delta[i]));
    compare_sent(&check.delta, &at_sent, replayed, check.steps)
}

/// Replays the unit's first step alone, on a gradients-only trainer on the start
/// weights: AdamW's first step from fresh moments, at the coordinates the submission
/// sent, as `ops::adamw` takes it (the gradient clipped by its global norm).
pub fn first_step(trainer: &mut Trainer<CpuBackend>, check: &Check) -> Replayed {
    let shard = Tokens::new(&check.shard, check.tokens);
    let batch = sample_batch(shard, check.seed, 0, check.rows, check.model.context);
    let grads = trainer.gradients_in_place(&batch);
    let clip = ops::clip_factor(ops::sum_squares(grads), check.optim.grad_clip);
    let layout = check.trained().layout();
    let (mut entries, mut at_sent) = (layout.entries.iter().peekable(), Vec::new());
    check.delta.for_each_nonzero(|i, _| {
        while entries.peek().is_some_and(|e| e.offset + e.len <= i) {
            entries.next();
        }
        let entry = entries.peek().expect("a sent index is inside the model");
        let o = &check.optim;
        let h = AdamW {
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: if entry.decay { o.weight_decay } else { 0.0 },
            step: 1,
            max_grad_norm: o.grad_clip,
        };
        let (mut p, mut m, mut v) = ([check.start[i]], [0f32], [0f32]);
        ops::adamw(&mut p, &grads[i..=i], &mut m, &mut v, h, clip);
        at_sent.push(check.start[i] - p[0]);
    });
    compare_sent(&check.delta, &at_sent, 1, check.steps)
}

/// Cosine and norm ratio of `submitted` against `replayed` (`[parameters]`), on the
/// coordinates where `submitted` is not zero.
pub fn compare(submitted: &Delta, replayed: &[f32]) -> Replayed {
    let mut at_sent = Vec::new();
    submitted.for_each_nonzero(|i, _| at_sent.push(replayed[i]));
    compare_sent(submitted, &at_sent, 1, 1)
}

/// [`compare`] with the replayed values at the coordinates `submitted` sent, in their
/// order, from a replay of `replayed` of the unit's `steps` steps (extrapolated to all
/// of them: see [`Replayed::projection`]).
fn compare_sent(submitted: &Delta, at_sent: &[f32], replayed: u32, steps: u32) -> Replayed {
    let (mut dot, mut ss, mut rr, mut next) = (0.0f64, 0.0f64, 0.0f64, 0);
    submitted.for_each_nonzero(|_, s| {
        let r = at_sent[next];
        next += 1;
        dot += s as f64 * r as f64;
        ss += s as f64 * s as f64;
        rr += r as f64 * r as f64;
    });
    let scale = steps.max(1) as f64 / replayed.max(1) as f64;
    let cosine = if ss > 0.0 && rr > 0.0 { dot / (ss.sqrt() * rr.sqrt()) } else { 0.0 };
    let norm_ratio = if rr > 0.0 { (ss / rr).sqrt() / scale } else { f64::INFINITY };
    let projection = if rr > 0.0 { dot / rr / scale } else { 0.0 };
    Replayed {
        cosine: cosine as f32,
        norm_ratio: norm_ratio as f32,
        projection: projection as f32,
        steps: replayed,
        whole: replayed >= steps,
    }
}
