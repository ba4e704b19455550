//! Linear layers: the forward product and the two backward products, split over cores
//! by output rows.

use super::parallel::par_rows;
use super::product::{Strided, product};

/// Linear layer. `inp: [rows, k]`, `weight: [n, k]`, `bias: [n]` → `out: [rows, n]`,
/// `out = inp · weightᵀ + bias`.
pub fn matmul_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    rows: usize,
    k: usize,
    n: usize,
) {
    par_rows(&mut out[..rows * n], n, |first, chunk| {
        if let Some(b) = bias {
            chunk.chunks_mut(n).for_each(|o| o.copy_from_slice(&b[..n]));
        }
        let lhs = Strided::row_major(&inp[first * k..], chunk.len() / n.max(1), k);
        product(chunk, n, bias.is_some(), lhs, Strided::row_major(weight, n, k).t());
    });
}

/// Linear backward to the input: `dinp[rows, k] = dout[rows, n] · weight[n, k]` (overwrites).
pub fn matmul_backward_input(dinp: &mut [f32], dout: &[f32], weight: &[f32], rows: usize, k: usize, n: usize) {
    par_rows(&mut dinp[..rows * k], k, |first, chunk| {
        let lhs = Strided::row_major(&dout[first * n..], chunk.len() / k.max(1), n);
        product(chunk, k, false, lhs, Strided::row_major(weight, n, k));
    });
}

/// Linear backward to the weight: `dweight[n, k] += doutᵀ[n, rows] · inp[rows, k]`.
pub fn matmul_backward_weight(dweight: &mut [f32], dout: &[f32], inp: &[f32], rows: usize, k: usize, n: usize) {
    par_rows(&mut dweight[..n * k], k, |first, chunk| {
        let lhs =
            Strided { data: &dout[first..], rows: chunk.len() / k.max(1), cols: rows, row_stride: 1, col_stride: n };
        product(chunk, k, true, lhs, Strided::row_major(inp, rows, k));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `[rows, cols]` of uniform values in (−1, 1).
    fn random(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// `Σ_p a(i, p) · b(p, j)` in f64.
    fn naive(
        m: usize,
        k: usize,
        n: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn assert_close(actual: &[f32], expected: &[f32]) {
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "element {i}: {a} vs {e}");
        }
    }

    /// Shapes large enough to be split over cores, with row counts that do not divide evenly.
    const SHAPES: [(usize, usize, usize); 2] = [(301, 67, 129), (97, 300, 211)];

    #[test]
    fn forward_matches_the_definition() {
        let mut rng = Rng::new(1);
        for (rows, k, n) in SHAPES {
            let (inp, weight, bias) = (random(&mut rng, rows, k), random(&mut rng, n, k), random(&mut rng, 1, n));
            let mut out = vec![f32::NAN; rows * n];
            matmul_forward(&mut out, &inp, &weight, Some(&bias), rows, k, n);
            let mut expected = naive(rows, k, n, |i, p| inp[i * k + p], |p, j| weight[j * k + p]);
            expected.iter_mut().enumerate().for_each(|(e, x)| *x += bias[e % n]);
            assert_close(&out, &expected);
        }
    }

    #[test]
    fn backward_input_matches_the_definition() {
        let mut rng = Rng::new(2);
        for (rows, k, n) in SHAPES {
            let (dout, weight) = (random(&mut rng, rows, n), random(&mut rng, n, k));
            let mut dinp = vec![f32::NAN; rows * k];
            matmul_backward_input(&mut dinp, &dout, &weight, rows, k, n);
            assert_close(&dinp, &naive(rows, n, k, |i, p| dout[i * n + p], |p, j| weight[p * k + j]));
        }
    }

    #[test]
    fn backward_weight_accumulates_the_definition() {
        let mut rng = Rng::new(3);
        for (rows, k, n) in SHAPES {
            let (dout, inp, before) = (random(&mut rng, rows, n), random(&mut rng, rows, k), random(&mut rng, n, k));
            let mut dweight = before.clone();
            matmul_backward_weight(&mut dweight, &dout, &inp, rows, k, n);
            let mut expected = naive(n, rows, k, |i, p| dout[p * n + i], |p, j| inp[p * k + j]);
            expected.iter_mut().zip(&before).for_each(|(e, b)| *e += b);
            assert_close(&dweight, &expected);
        }
    }
}
