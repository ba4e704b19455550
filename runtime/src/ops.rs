//! CPU reference implementations of every op, as pure functions on slices.
//!
//! Each forward sits beside its backward, with shapes in the comment above (llm.c style).
//! Row-major everywhere. Linear weights use PyTorch's `[out, in]` layout, so that
//! checkpoints match nanoGPT's state dict. Backward functions *accumulate* into
//! parameter gradients (`+=`) and *overwrite* activation gradients.
//!
//! These functions are the ground truth: the WGSL kernels are tested against them,
//! and they are tested against finite differences.

/// GELU's tanh approximation constant, sqrt(2/pi).
const GELU_SCALE: f32 = 0.797_884_6;

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

/// Splits `out` into runs of whole rows of `row_len` and calls `f(first_row, rows)` on
/// each: on every core natively, inline in the browser. Each output element is computed
/// by exactly one call, in the same order whatever the thread count, so results do not
/// depend on it.
fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row_len.max(1);
    #[cfg(not(target_arch = "wasm32"))]
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows).max(1);
    #[cfg(target_arch = "wasm32")]
    let threads = 1;
    if threads == 1 || out.len() < 16 * 1024 {
        return f(0, out);
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = out.chunks_mut(per * row_len).enumerate();
        let (_, first) = chunks.next().expect("at least one row");
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * per, chunk));
        }
        f(0, first);
    });
}

/// `y[i] += a · x[i]`, the inner loop of every matmul; it vectorises.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Rows processed together by the matmuls, so that each weight row fetched from cache
/// serves several outputs.
const BLOCK: usize = 4;

/// Linear layer. `inp: [rows, k]`, `weight: [n, k]`, `bias: [n]` → `out: [rows, n]`,
/// `out = inp · weightᵀ + bias`. Each output row is `bias + Σ_i inp[r, i] · weightᵀ[i]`,
/// summed in `i` order.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    k: usize,
    n: usize,
) {
    let mut wt = vec![0.0; k * n];
    for o in 0..n {
        for i in 0..k {
            wt[i * n + o] = weight[o * k + i];
        }
    }
    par_rows(&mut out[..rows * n], n, |first, chunk| {
        for (j, block) in chunk.chunks_mut(BLOCK * n).enumerate() {
            let r0 = first + j * BLOCK;
            for o in block.chunks_mut(n) {
                match bias {
                    Some(b) => o.copy_from_slice(&b[..n]),
                    None => o.fill(0.0),
                }
            }
            for i in 0..k {
                let w = &wt[i * n..][..n];
                for (q, o) in block.chunks_mut(n).enumerate() {
                    axpy(o, inp[(r0 + q) * k + i], w);
                }
            }
        }
    });
}

/// Linear backward to the input: `dinp[rows, k] = dout[rows, n] · weight[n, k]` (overwrites).
pub fn matmul_backward_input(dinp: &mut [f32], dout: &[f32], weight: &[f32], rows: usize, k: usize, n: usize) {
    par_rows(&mut dinp[..rows * k], k, |first, chunk| {
        for (j, block) in chunk.chunks_mut(BLOCK * k).enumerate() {
            let r0 = first + j * BLOCK;
            block.fill(0.0);
            for o in 0..n {
                let w = &weight[o * k..][..k];
                for (q, d) in block.chunks_mut(k).enumerate() {
                    axpy(d, dout[(r0 + q) * n + o], w);
                }
            }
        }
    });
}

/// Linear backward to the weight: `dweight[n, k] += doutᵀ[n, rows] · inp[rows, k]`.
pub fn matmul_backward_weight(dweight: &mut [f32], dout: &[f32], inp: &[f32], rows: usize, k: usize, n: usize) {
    par_rows(&mut dweight[..n * k], k, |first, chunk| {
        for (j, block) in chunk.chunks_mut(BLOCK * k).enumerate() {
            let o0 = first + j * BLOCK;
            for r in 0..rows {
                let x = &inp[r * k..][..k];
                for (q, dw) in block.chunks_mut(k).enumerate() {
                    axpy(dw, dout[r * n + o0 + q], x);
                }
            }
        }
    });
}

/// Linear backward to the bias: `dbias[n] += Σ_rows dout[rows, n]`.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], rows: usize, n: usize) {
    for o in 0..n {
        let mut acc = 0.0;
        for r in 0..rows {
            acc += dout[r * n + o];
        }
        dbias[o] += acc;
    }
}

/// Elements per parallel chunk of the elementwise ops.
const CHUNK: usize = 4096;

/// GELU (tanh approximation), elementwise: `out[i] = gelu(inp[i])`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    par_rows(out, CHUNK, |first, chunk| {
        for (o, &x) in chunk.iter_mut().zip(&inp[first * CHUNK..]) {
            *o = 0.5 * x * (1.0 + (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh());
        }
    });
}

/// GELU backward, elementwise: `dinp[i] = gelu'(inp[i]) · dout[i]` (overwrites).
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    par_rows(dinp, CHUNK, |first, chunk| {
        let (inp, dout) = (&inp[first * CHUNK..], &dout[first * CHUNK..]);
        for (i, d) in chunk.iter_mut().enumerate() {
            let x = inp[i];
            let u = GELU_SCALE * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            let du = GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
            *d = (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du) * dout[i];
        }
    });
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
            *pi = (zi - max).exp();
            sum += *pi;
        }
        for pi in p.iter_mut() {
            *pi /= sum;
        }
        let t = (targets[r] as usize).min(vocab - 1);
        losses[r] = -(p[t].max(1e-30)).ln();
    }
}

/// Backward of the *mean* cross-entropy over `rows`:
/// `dlogits[r, v] = (probs[r, v] − [v == target_r]) / rows` (overwrites).
pub fn softmax_xent_backward(dlogits: &mut [f32], probs: &[f32], targets: &[u32], rows: usize, vocab: usize) {
    let scale = 1.0 / rows as f32;
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
/// gradients first scaled by `clip` (see [`clip_factor`]).
pub fn adamw(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], h: AdamW, clip: f32) {
    let (bc1, bc2) = h.bias_corrections();
    for i in 0..params.len() {
        let g = grads[i] * clip;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        params[i] -= h.lr * (mhat / (vhat.sqrt() + h.eps) + h.weight_decay * params[i]);
    }
}

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
    for pos in 0..t {
        for i in 0..c {
            let mut acc = 0.0;
            for batch in 0..b {
                acc += dout[(batch * t + pos) * c + i];
            }
            dwpe[pos * c + i] += acc;
        }
    }
}

/// LayerNorm epsilon, as PyTorch's default.
pub const LN_EPS: f32 = 1e-5;

/// LayerNorm over the last dimension. `inp: [rows, c]`, `weight, bias: [c]` →
/// `out: [rows, c]`, and per row the `mean: [rows]` and `rstd: [rows]` (1/σ) that the
/// backward pass reuses.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    c: usize,
) {
    for r in 0..rows {
        let x = &inp[r * c..(r + 1) * c];
        let m = x.iter().sum::<f32>() / c as f32;
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / c as f32;
        let s = 1.0 / (var + LN_EPS).sqrt();
        for i in 0..c {
            out[r * c + i] = (x[i] - m) * s * weight[i] + bias.map_or(0.0, |b| b[i]);
        }
        mean[r] = m;
        rstd[r] = s;
    }
}

/// LayerNorm backward. Overwrites `dinp: [rows, c]`; accumulates `dweight: [c]` and
/// `dbias: [c]` (summed over rows in order).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    for r in 0..rows {
        let (x, g) = (&inp[r * c..(r + 1) * c], &dout[r * c..(r + 1) * c]);
        let (m, s) = (mean[r], rstd[r]);
        let mut dnorm_mean = 0.0;
        let mut dnorm_norm_mean = 0.0;
        for i in 0..c {
            let dnorm = weight[i] * g[i];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * (x[i] - m) * s;
        }
        dnorm_mean /= c as f32;
        dnorm_norm_mean /= c as f32;
        for i in 0..c {
            let norm = (x[i] - m) * s;
            dinp[r * c + i] = (weight[i] * g[i] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
    for i in 0..c {
        let (mut dw, mut db) = (0.0, 0.0);
        for r in 0..rows {
            dw += (inp[r * c + i] - mean[r]) * rstd[r] * dout[r * c + i];
            db += dout[r * c + i];
        }
        dweight[i] += dw;
        if let Some(dbias) = dbias.as_deref_mut() {
            dbias[i] += db;
        }
    }
}

/// Causal multi-head self-attention. `qkv: [b, t, 3c]` holds each position's query, key
/// and value (heads of `c / heads` channels side by side) → `out: [b, t, c]`, and
/// `att: [b, heads, t, t]`, the softmax weights (zero above the diagonal) that the
/// backward pass reuses. Scores are scaled by `1/√(c / heads)`.
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, heads: usize) {
    let hs = c / heads;
    let scale = 1.0 / (hs as f32).sqrt();
    for batch in 0..b {
        for h in 0..heads {
            for t1 in 0..t {
                let q = &qkv[(batch * t + t1) * 3 * c + h * hs..][..hs];
                let row = &mut att[((batch * heads + h) * t + t1) * t..][..t];
                let mut max = f32::NEG_INFINITY;
                for (t2, a) in row.iter_mut().enumerate().take(t1 + 1) {
                    let k = &qkv[(batch * t + t2) * 3 * c + c + h * hs..][..hs];
                    *a = q.iter().zip(k).map(|(x, y)| x * y).sum::<f32>() * scale;
                    max = max.max(*a);
                }
                let mut sum = 0.0;
                for a in row.iter_mut().take(t1 + 1) {
                    *a = (*a - max).exp();
                    sum += *a;
                }
                for (t2, a) in row.iter_mut().enumerate() {
                    *a = if t2 <= t1 { *a / sum } else { 0.0 };
                }
                let o = &mut out[(batch * t + t1) * c + h * hs..][..hs];
                o.fill(0.0);
                for (t2, &a) in row.iter().enumerate().take(t1 + 1) {
                    let v = &qkv[(batch * t + t2) * 3 * c + 2 * c + h * hs..][..hs];
                    for i in 0..hs {
                        o[i] += a * v[i];
                    }
                }
            }
        }
    }
}

/// Attention backward. Overwrites `dqkv: [b, t, 3c]` from `dout: [b, t, c]`, the
/// forward's `qkv` and `att`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    b: usize,
    t: usize,
    c: usize,
    heads: usize,
) {
    let hs = c / heads;
    let scale = 1.0 / (hs as f32).sqrt();
    dqkv[..b * t * 3 * c].fill(0.0);
    let mut dpre = vec![0.0; t];
    for batch in 0..b {
        for h in 0..heads {
            for t1 in 0..t {
                let row = &att[((batch * heads + h) * t + t1) * t..][..t];
                let g = &dout[(batch * t + t1) * c + h * hs..][..hs];
                // d(att)[t2] = g · v[t2]; softmax backward to the scores.
                let mut dot = 0.0;
                for t2 in 0..=t1 {
                    let v = &qkv[(batch * t + t2) * 3 * c + 2 * c + h * hs..][..hs];
                    dpre[t2] = g.iter().zip(v).map(|(x, y)| x * y).sum::<f32>();
                    dot += row[t2] * dpre[t2];
                }
                for t2 in 0..=t1 {
                    dpre[t2] = row[t2] * (dpre[t2] - dot) * scale;
                }
                for t2 in 0..=t1 {
                    let base1 = (batch * t + t1) * 3 * c + h * hs;
                    let base2 = (batch * t + t2) * 3 * c + h * hs;
                    for i in 0..hs {
                        // dq[t1] += dpre·k[t2]; dk[t2] += dpre·q[t1]; dv[t2] += att·g.
                        dqkv[base1 + i] += dpre[t2] * qkv[base2 + c + i];
                        dqkv[base2 + c + i] += dpre[t2] * qkv[base1 + i];
                        dqkv[base2 + 2 * c + i] += row[t2] * g[i];
                    }
                }
            }
        }
    }
}

/// Elementwise `out = a + b` (the residual connection), equal lengths.
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// Sum of squares of `values` in f32, in index order (for global-norm clipping).
pub fn sum_squares(values: &[f32]) -> f32 {
    values.iter().map(|v| v * v).sum()
}
