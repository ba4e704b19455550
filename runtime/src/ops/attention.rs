//! Causal multi-head self-attention, forward and backward, one batch row per core.
//!
//! `qkv: [b, t, 3c]` holds each position's query, key and value, each `c` wide with the
//! heads' `hs = c / heads` channels side by side. Per batch row and head the work is
//! five small matrix [`product`]s plus the softmax; scores are scaled by `1/√hs`.

use super::parallel::par_rows;
use super::product::{Strided, product};

/// The `[t, hs]` query (`part` 0), key (1) or value (2) of head `h` in one batch row's
/// `qkv: [t, 3c]`.
fn head(qkv: &[f32], part: usize, h: usize, t: usize, c: usize, hs: usize) -> Strided<'_> {
    Strided { data: &qkv[part * c + h * hs..], rows: t, cols: hs, row_stride: 3 * c, col_stride: 1 }
}

/// Forward. `qkv: [b, t, 3c]` → `out: [b, t, c]`, and `att: [b, heads, t, t]`, the
/// softmax weights (zero above the diagonal) that the backward pass reuses.
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], b: usize, t: usize, c: usize, heads: usize) {
    let hs = c / heads;
    let scale = 1.0 / (hs as f32).sqrt();
    par_rows(&mut att[..b * heads * t * t], heads * t * t, |first, chunk| {
        for (i, att) in chunk.chunks_mut(heads * t * t).enumerate() {
            let qkv = &qkv[(first + i) * t * 3 * c..][..t * 3 * c];
            for (h, scores) in att.chunks_mut(t * t).enumerate() {
                product(scores, t, false, head(qkv, 0, h, t, c, hs), head(qkv, 1, h, t, c, hs).t());
                for (t1, row) in scores.chunks_mut(t).enumerate() {
                    softmax_causal(row, t1, scale);
                }
            }
        }
    });
    let att = &*att;
    par_rows(&mut out[..b * t * c], t * c, |first, chunk| {
        for (i, out) in chunk.chunks_mut(t * c).enumerate() {
            let batch = first + i;
            let qkv = &qkv[batch * t * 3 * c..][..t * 3 * c];
            for h in 0..heads {
                let weights = Strided::row_major(&att[(batch * heads + h) * t * t..][..t * t], t, t);
                product(&mut out[h * hs..], c, false, weights, head(qkv, 2, h, t, c, hs));
            }
        }
    });
}

/// Turns `row`, the raw scores of query position `t1`, into softmax weights of
/// `scale · score` over key positions `..=t1`, and zero after.
fn softmax_causal(row: &mut [f32], t1: usize, scale: f32) {
    let (seen, future) = row.split_at_mut(t1 + 1);
    let max = seen.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0.0;
    for a in seen.iter_mut() {
        *a = super::math::exp((*a - max) * scale);
        sum += *a;
    }
    seen.iter_mut().for_each(|a| *a /= sum);
    future.fill(0.0);
}

/// Backward. Overwrites `dqkv: [b, t, 3c]` from `dout: [b, t, c]`, the forward's `qkv`
/// and `att`.
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
    par_rows(&mut dqkv[..b * t * 3 * c], t * 3 * c, |first, chunk| {
        let mut dscores = vec![0.0; t * t];
        for (i, dqkv) in chunk.chunks_mut(t * 3 * c).enumerate() {
            let batch = first + i;
            let qkv = &qkv[batch * t * 3 * c..][..t * 3 * c];
            let dout = &dout[batch * t * c..][..t * c];
            for h in 0..heads {
                let dout = Strided { data: &dout[h * hs..], rows: t, cols: hs, row_stride: c, col_stride: 1 };
                let weights = Strided::row_major(&att[(batch * heads + h) * t * t..][..t * t], t, t);
                // d(weights) = dout · vᵀ, then the softmax backward to the scaled scores.
                product(&mut dscores, t, false, dout, head(qkv, 2, h, t, c, hs).t());
                for (t1, (ds, w)) in dscores.chunks_mut(t).zip(weights.data.chunks(t)).enumerate() {
                    let expected: f32 = w[..=t1].iter().zip(&ds[..=t1]).map(|(w, d)| w * d).sum();
                    ds.iter_mut().zip(w).for_each(|(d, w)| *d = w * (*d - expected) * scale);
                }
                let dscores = Strided::row_major(&dscores, t, t);
                product(&mut dqkv[h * hs..], 3 * c, false, dscores, head(qkv, 1, h, t, c, hs));
                product(&mut dqkv[c + h * hs..], 3 * c, false, dscores.t(), head(qkv, 0, h, t, c, hs));
                product(&mut dqkv[2 * c + h * hs..], 3 * c, false, weights.t(), dout);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Five batch rows (split over cores) give the same results, bit for bit, as each
    /// batch row on its own (computed on one thread: too small to split).
    #[test]
    fn batches_split_over_cores_match_batches_alone() {
        let (b, t, c, heads) = (5, 50, 32, 2);
        let mut rng = Rng::new(4);
        let mut random = |len: usize| (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect::<Vec<f32>>();
        let (qkv, dout) = (random(b * t * 3 * c), random(b * t * c));
        let (mut out, mut att, mut dqkv) =
            (vec![0.0; b * t * c], vec![0.0; b * heads * t * t], vec![0.0; b * t * 3 * c]);
        attention_forward(&mut out, &mut att, &qkv, b, t, c, heads);
        attention_backward(&mut dqkv, &dout, &qkv, &att, b, t, c, heads);
        for batch in 0..b {
            let qkv1 = &qkv[batch * t * 3 * c..][..t * 3 * c];
            let (mut out1, mut att1, mut dqkv1) = (vec![0.0; t * c], vec![0.0; heads * t * t], vec![0.0; t * 3 * c]);
            attention_forward(&mut out1, &mut att1, qkv1, 1, t, c, heads);
            attention_backward(&mut dqkv1, &dout[batch * t * c..][..t * c], qkv1, &att1, 1, t, c, heads);
            assert_eq!(out1, out[batch * t * c..][..t * c]);
            assert_eq!(att1, att[batch * heads * t * t..][..heads * t * t]);
            assert_eq!(dqkv1, dqkv[batch * t * 3 * c..][..t * 3 * c]);
        }
    }
}
