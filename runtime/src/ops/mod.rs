//! CPU reference implementations of every op, as pure functions on slices.
//!
//! Each forward sits beside its backward, with shapes in the comment above (llm.c style).
//! Row-major everywhere. Linear weights use PyTorch's `[out, in]` layout, so that
//! checkpoints match nanoGPT's state dict. Backward functions *accumulate* into
//! parameter gradients (`+=`) and *overwrite* activation gradients.
//!
//! These functions are the ground truth: the WGSL kernels are tested against them,
//! and they are tested against finite differences. Natively the heavy ones run on every
//! core (rayon) and the matmuls on the `gemm` crate's kernels. Results are reproducible
//! on a given machine and thread count.

mod attention;
mod dropout;
mod gelu;
mod layernorm;
mod math;
mod matmul;
mod parallel;
mod product;

pub use attention::{attention_backward, attention_forward};
pub use dropout::{DropoutMask, dropout, mix32};
pub use gelu::{gelu_backward, gelu_forward};
pub use layernorm::{LN_EPS, layernorm_backward, layernorm_forward};
pub use matmul::{matmul_backward_input, matmul_backward_weight, matmul_forward};

/// Embedding lookup. `tokens: [rows]`, `table: [vocab, dim]` → `out: [rows, dim]`.
/// Token ids at or past `vocab` are clamped to `vocab - 1`, as the kernels do.
pub fn embedding_forward(out: &mut [f32], tokens: &[u32], table: &[f32], vocab: usize, dim: usize) {
    for (row, &tok) in tokens.iter().enumerate() {
        let t = (tok as usize).min(vocab - 1);
        out[row * dim..(row + 1) * dim].copy_from_slice(&table[t * dim..(t + 1) * dim]);
    }
}

/// Embedding backward: `dtable[tok] += dout[row]` for each row, summed in row order.
/// `tokens: [rows]`, `dout: [rows, dim]`, `dtable: [vocab, dim]`.
pub fn embedding_backward(dtable: &mut [f32], tokens: &[u32], dout: &[f32], vocab: usize, dim: usize) {
    for (row, &tok) in tokens.iter().enumerate() {
        let t = (tok as usize).min(vocab - 1);
        for d in 0..dim {
            dtable[t * dim + d] += dout[row * dim + d];
        }
    }
}

/// Linear backward to the bias: `dbias[n] += Σ_rows dout[rows, n]`.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, n: usize) {
    let mut sums = vec![0.0; n];
    for row in dout[..rows * n].chunks_exact(n.max(1)) {
        sums.iter_mut().zip(row).for_each(|(s, d)| *s += d);
    }
    dbias[..n].iter_mut().zip(&sums).for_each(|(b, s)| *b += s);
}

/// Softmax cross-entropy. `logits: [rows, vocab]`, `targets: [rows]` →
/// `probs: [rows, vocab]` (the softmax) and `losses: [rows]` (−log p of the target, nats).
pub fn softmax_xent_forward(
    probs: &mut [f32],
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
) {
    for r in 0..rows {
        let z = &logits[r * vocab..(r + 1) * vocab];
        let p = &mut probs[r * vocab..(r + 1) * vocab];
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for (pi, &zi) in p.iter_mut().zip(z) {
            *pi = math::exp(zi - max);
            sum += *pi;
        }
        for pi in p.iter_mut() {
            *pi /= sum;
        }
        let t = (targets[r] as usize).min(vocab - 1);
        losses[r] = -(p[t].max(1e-30)).ln();
    }
}

/// Backward of the cross-entropy summed over `rows` and divided by `divisor` (the
/// positions of the whole batch, of which these rows may be a microbatch):
/// `dlogits[r, v] = (probs[r, v] − [v == target_r]) / divisor` (overwrites).
pub fn softmax_xent_backward(
    dlogits: &mut [f32],
    probs: &[f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    divisor: usize,
) {
    let scale = 1.0 / divisor as f32;
    for r in 0..rows {
        let t = (targets[r] as usize).min(vocab - 1);
        for v in 0..vocab {
            let indicator = if v == t { 1.0 } else { 0.0 };
            dlogits[r * vocab + v] = (probs[r * vocab + v] - indicator) * scale;
        }
    }
}

/// Mean of `values`, summed in index order.
pub fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

/// AdamW hyper-parameters for one update of one parameter view.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate for this step.
    pub lr: f32,
    /// First-moment decay β₁.
    pub beta1: f32,
    /// Second-moment decay β₂.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay (0 for biases and norms).
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u32,
    /// Global gradient-norm limit; 0 disables clipping.
    pub max_grad_norm: f32,
}

impl AdamW {
    /// `(1 − β₁ᵗ, 1 − β₂ᵗ)`, computed once on the host so CPU and GPU agree.
    pub fn bias_corrections(&self) -> (f32, f32) {
        (1.0 - self.beta1.powi(self.step as i32), 1.0 - self.beta2.powi(self.step as i32))
    }
}

/// The factor gradients are scaled by so that their global norm `√grad_sumsq` stays
/// within `max_norm` (PyTorch's `clip_grad_norm_`); 1 when `max_norm` is 0.
pub fn clip_factor(grad_sumsq: f32, max_norm: f32) -> f32 {
    let norm = grad_sumsq.sqrt();
    if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 }
}

/// AdamW update, elementwise over equal-length `params`, `grads`, `m`, `v`, with the
/// gradients first scaled by `clip` (see [`clip_factor`]). Natively, blocks of
/// [`BLOCK`] values go to different cores; each value's arithmetic is the same.
pub fn adamw(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW, clip: f32) {
    let (bc1, bc2) = h.bias_corrections();
    let update = |params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]| {
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * clip;
            *m = h.beta1 * *m + (1.0 - h.beta1) * g;
            *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
            let mhat = *m / bc1;
            let vhat = *v / bc2;
            *p -= h.lr * (mhat / (vhat.sqrt() + h.eps) + h.weight_decay * *p);
        }
    };
    assert!(grads.len() == params.len() && m.len() == params.len() && v.len() == params.len(), "AdamW lengths differ");
    #[cfg(not(target_arch = "wasm32"))]
    if params.len() > BLOCK {
        use rayon::prelude::*;
        let blocks = params.par_chunks_mut(BLOCK).zip(grads.par_chunks(BLOCK));
        let blocks = blocks.zip(m.par_chunks_mut(BLOCK)).zip(v.par_chunks_mut(BLOCK));
        blocks.for_each(|(((p, g), m), v)| update(p, g, m, v));
        return;
    }
    update(params, grads, m, v)
}

/// Values per block of the elementwise passes over all parameters ([`adamw`],
/// [`sum_squares`]).
const BLOCK: usize = 1 << 16;

/// Token plus position embedding. `tokens: [b, t]`, `wte: [vocab, c]`, `wpe: [≥t, c]` →
/// `out: [b, t, c]`, `out[b, t] = wte[tokens[b, t]] + wpe[t]`.
pub fn encoder_forward(out: &mut [f32], tokens: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize, vocab: usize) {
    for (row, &tok) in tokens.iter().enumerate() {
        let (tok, pos) = ((tok as usize).min(vocab - 1), row % t);
        for i in 0..c {
            out[row * c + i] = wte[tok * c + i] + wpe[pos * c + i];
        }
    }
}

/// Position-embedding backward: `dwpe[t, c] += Σ_b dout[b, t, c]`, batches in order.
/// (The token part is [`embedding_backward`].)
pub fn position_backward(dwpe: &mut [f32], dout: &[f32], b: usize, t: usize, c: usize) {
    let mut sums = vec![0.0; t * c];
    for batch in dout[..b * t * c].chunks_exact((t * c).max(1)) {
        sums.iter_mut().zip(batch).for_each(|(s, d)| *s += d);
    }
    dwpe[..t * c].iter_mut().zip(&sums).for_each(|(w, s)| *w += s);
}

/// Elementwise `out = a + b` (the residual connection), equal lengths.
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// `out = factor · inp`, elementwise.
pub fn scale(out: &mut [f32], inp: &[f32], factor: f32) {
    for (o, x) in out.iter_mut().zip(inp) {
        *o = factor * x;
    }
}

/// Sum of squares of `values` in f32 (for global-norm clipping): each block of [`BLOCK`]
/// values summed in 16 lanes, then the blocks' sums in index order, so the result is the
/// same on any number of cores (natively the blocks go to different cores).
pub fn sum_squares(values: &[f32]) -> f32 {
    fn block_sum(block: &[f32]) -> f32 {
        let mut lanes = [0f32; 16];
        let mut chunks = block.chunks_exact(16);
        for chunk in &mut chunks {
            lanes.iter_mut().zip(chunk).for_each(|(lane, v)| *lane += v * v);
        }
        lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()
    }
    #[cfg(not(target_arch = "wasm32"))]
    if values.len() > BLOCK {
        use rayon::prelude::*;
        let sums: Vec<f32> = values.par_chunks(BLOCK).map(block_sum).collect();
        return sums.iter().sum();
    }
    values.chunks(BLOCK).map(block_sum).sum()
}
