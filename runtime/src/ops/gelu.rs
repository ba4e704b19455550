//! GELU with GPT-2's tanh approximation.
//!
//! `0.5 · (1 + tanh u)` equals `sigmoid(2u)`, which [`sigmoid`] computes without a
//! library call, so these loops vectorise.

use super::math::sigmoid;
use super::parallel::par_rows;

/// √(2/π), the scale inside the tanh.
const GELU_SCALE: f32 = 0.797_884_6;
/// The cubic term's coefficient.
const GELU_CUBIC: f32 = 0.044_715;
/// Elements per parallel chunk.
const CHUNK: usize = 4096;

/// `2u`, where `u = √(2/π) · (x + 0.044715 x³)` is the tanh's argument.
fn twice_u(x: f32) -> f32 {
    2.0 * GELU_SCALE * (x + GELU_CUBIC * x * x * x)
}

/// Elementwise `out[i] = gelu(inp[i]) = 0.5 · x · (1 + tanh u)`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    par_rows(out, CHUNK, |first, chunk| {
        for (o, &x) in chunk.iter_mut().zip(&inp[first * CHUNK..]) {
            *o = x * sigmoid(twice_u(x));
        }
    });
}

/// Elementwise `dinp[i] = gelu'(inp[i]) · dout[i]` (overwrites), where
/// `gelu'(x) = s + 2x · s(1 − s) · du/dx` with `s = sigmoid(2u)`.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    par_rows(dinp, CHUNK, |first, chunk| {
        let (inp, dout) = (&inp[first * CHUNK..], &dout[first * CHUNK..]);
        for ((d, &x), &g) in chunk.iter_mut().zip(inp).zip(dout) {
            let s = sigmoid(twice_u(x));
            let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x);
            *d = (s + 2.0 * x * s * (1.0 - s) * du) * g;
        }
    });
}
