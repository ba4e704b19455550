//! Count sketches of Δs, to refuse near-copies: a copy of another contributor's result
//! with every value nudged has another hash, but its sketch has a cosine of about 1
//! with the original's, while two honest results (other data, other residuals) stay
//! far below.

use crowdgrad_runtime::rng::Rng;

/// Buckets per sketch.
const BUCKETS: usize = 256;

/// A Δ folded into [`BUCKETS`] signed sums; cosines of sketches estimate cosines of Δs
/// (to within about `1/√BUCKETS`).
#[derive(Clone)]
pub(super) struct Sketch([f32; BUCKETS]);

impl Sketch {
    /// The sketch of `delta`: each value goes to a bucket and a sign picked by a hash
    /// of its index.
    pub fn of(delta: &[f32]) -> Self {
        let mut sums = [0.0f32; BUCKETS];
        for (i, &v) in delta.iter().enumerate() {
            if v != 0.0 {
                let h = Rng::new(i as u64).next_u64();
                let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
                sums[(h >> 1) as usize % BUCKETS] += sign * v;
            }
        }
        Sketch(sums)
    }

    /// Its bucket sums, as the ledger stores them.
    pub fn values(&self) -> &[f32] {
        &self.0
    }

    /// A sketch from stored bucket sums; `None` unless there are exactly [`BUCKETS`].
    pub fn from_values(values: &[f32]) -> Option<Self> {
        values.try_into().ok().map(Sketch)
    }

    /// The cosine similarity of two sketches (0 when either is zero).
    pub fn cosine(&self, other: &Sketch) -> f32 {
        let dot: f32 = self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum();
        let norms = self.norm() * other.norm();
        if norms > 0.0 { dot / norms } else { 0.0 }
    }

    fn norm(&self) -> f32 {
        self.0.iter().map(|v| v * v).sum::<f32>().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudged_copy_is_near_one_and_unrelated_deltas_near_zero() {
        let mut rng = Rng::new(3);
        let a: Vec<f32> = (0..100_000).map(|_| rng.normal()).collect();
        let nudged: Vec<f32> = a.iter().map(|v| v * (1.0 + 1e-3 * rng.normal())).collect();
        let other: Vec<f32> = (0..100_000).map(|_| rng.normal()).collect();
        let sa = Sketch::of(&a);
        assert!(sa.cosine(&Sketch::of(&nudged)) > 0.999);
        assert!(sa.cosine(&Sketch::of(&other)).abs() < 0.25);
        let half: Vec<f32> = a.iter().zip(&other).map(|(x, y)| x + y).collect();
        let c = sa.cosine(&Sketch::of(&half));
        assert!((c - 0.707).abs() < 0.15, "cos 45° ≈ 0.71: {c}");
        assert_eq!(Sketch::of(&[0.0; 10]).cosine(&sa), 0.0);
    }
}
