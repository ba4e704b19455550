//! LayerNorm over the last dimension, forward and backward.

/// LayerNorm epsilon, as PyTorch's default.
pub const LN_EPS: f32 = 1e-5;

/// Forward. `inp: [rows, c]`, `weight, bias: [c]` → `out: [rows, c]`, and per row the
/// `mean: [rows]` and `rstd: [rows]` (1/σ) that the backward pass reuses.
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

/// Backward. Overwrites `dinp: [rows, c]`; accumulates `dweight: [c]` and `dbias: [c]`
/// (each summed over rows in order, then added).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    rows: usize,
    c: usize,
) {
    let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
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
            dw[i] += norm * g[i];
            db[i] += g[i];
        }
    }
    dweight[..c].iter_mut().zip(&dw).for_each(|(a, d)| *a += d);
    if let Some(dbias) = dbias {
        dbias[..c].iter_mut().zip(&db).for_each(|(a, d)| *a += d);
    }
}
