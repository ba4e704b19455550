//! The loss check (Templar's): a result must lower the loss of its own unit's batches,
//! and by no less than another shard's. It runs on a gradients-only trainer on the start
//! weights, with [`super::Work::loss_rows`] rows a batch.

use std::sync::Arc;

use crowdgrad_runtime::cpu::CpuBackend;
use crowdgrad_runtime::data::{Tokens, sample_batch};
use crowdgrad_runtime::rng::Rng;
use crowdgrad_runtime::train::Trainer;

use super::{Check, LossGain};
use crate::delta::Delta;

/// Mean loss decrease from `θ` to `θ − Δ` on `loss_batches` of the unit's batches and on
/// as many batches of the other shard: measured for a dense Δ, first-order
/// (`⟨∇loss(θ), Δ⟩`) for a compressed one, from the gradients at the coordinates it sent
/// alone.
pub fn loss_gain(trainer: &mut Trainer<CpuBackend>, check: &Check) -> LossGain {
    let (n, context, rows) = (check.loss_batches as usize, check.model.context, check.work.loss_rows);
    let mut rng = Rng::from_parts(&[check.seed, check.unit_id, 0x1055]);
    let own = Tokens::new(&check.shard, check.tokens);
    let other = Tokens::new(&check.other_shard, check.tokens);
    let mut batches = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let step = rng.below(check.steps as u64) as u32;
        batches.push(sample_batch(own, check.seed, step, rows, context));
    }
    let other_seed = rng.next_u64();
    for i in 0..n {
        batches.push(sample_batch(other, other_seed, i as u32, rows, context));
    }
    let mean = |part: &[f32]| part.iter().sum::<f32>() / part.len() as f32;
    if check.compressed {
        // The own batches' summed gradient, at the coordinates sent.
        let mut own_gradient = Vec::new();
        let gains: Vec<f32> = batches
            .iter()
            .enumerate()
            .map(|(b, batch)| {
                let grad = trainer.gradients_in_place(batch);
                let (mut gain, mut sent) = (0f32, 0);
                check.delta.for_each_nonzero(|i, d| {
                    gain += (grad[i] as f64 * d as f64) as f32;
                    if b < n {
                        match own_gradient.get_mut(sent) {
                            Some(sum) => *sum += grad[i],
                            None => own_gradient.push(grad[i]),
                        }
                    }
                    sent += 1;
                });
                gain
            })
            .collect();
        let alignment = Some(alignment(&own_gradient, &check.delta));
        return LossGain { own: mean(&gains[..n]), other: mean(&gains[n..]), alignment };
    }
    let after: Vec<f32> = check.start.iter().zip(check.delta.to_dense()).map(|(p, d)| p - d).collect();
    let mut mean_loss = |params: Arc<Vec<f32>>| {
        trainer.share_params(params);
        for (slot, batch) in batches.iter().enumerate() {
            trainer.forward(batch, slot);
        }
        let losses = pollster::block_on(trainer.losses(0..2 * n)).expect("the CPU backend's readback cannot fail");
        (mean(&losses[..n]), mean(&losses[n..]))
    };
    let (own_after, other_after) = mean_loss(Arc::new(after));
    let (own_before, other_before) = mean_loss(check.start.clone());
    LossGain { own: own_before - own_after, other: other_before - other_after, alignment: None }
}

/// `cos(gradient, Δ) · √k` on the `k` coordinates where Δ is not zero (0 when either is
/// zero there), `gradient` given at those coordinates in their order: see
/// [`LossGain::alignment`].
fn alignment(gradient: &[f32], delta: &Delta) -> f32 {
    let (mut dot, mut gg, mut dd, mut sent) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    delta.for_each_nonzero(|_, d| {
        let g = gradient.get(sent).copied().unwrap_or(0.0);
        dot += g as f64 * d as f64;
        gg += g as f64 * g as f64;
        dd += d as f64 * d as f64;
        sent += 1;
    });
    if gg > 0.0 && dd > 0.0 { (dot / (gg.sqrt() * dd.sqrt()) * (sent as f64).sqrt()) as f32 } else { 0.0 }
}
