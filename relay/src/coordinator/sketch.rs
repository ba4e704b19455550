//! Count sketches of Δs, to refuse near-copies: a copy of another contributor's result
//! with every value nudged has another hash, but its sketch has a cosine of about 1
//! with the original's, while two honest results (other data, other residuals) stay
//! far below.

use crowdgrad_runtime::rng::Rng;

use crate::delta::Delta;

/// Buckets per sketch.
const BUCKETS: usize = 256;
/// Partial sums a cosine keeps apart, so that the compiler can use vector lanes.
const LANES: usize = 8;

/// A Δ folded into [`BUCKETS`] signed sums, scaled to unit length (or all zero); cosines
/// of sketches estimate cosines of Δs (to within about `1/√BUCKETS`). Being unit
/// vectors, comparing a new result with every recent one under the coordinator's lock is
/// one dot product each.
#[derive(Clone)]
pub(super) struct Sketch([f32; BUCKETS]);

impl Sketch {
    /// The sketch of `delta`: each nonzero value goes to a bucket and a sign picked by a
    /// hash of its index.
    pub fn of(delta: &Delta) -> Self {
        let mut sums = [0.0f32; BUCKETS];
        delta.for_each_nonzero(|i, v| {
            let h = Rng::new(i as u64).next_u64();
            let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
            sums[(h >> 1) as usize % BUCKETS] += sign * v;
        });
        Sketch::unit(sums)
    }

    /// Its bucket values, as the ledger stores them.
    pub fn values(&self) -> &[f32] {
        &self.0
    }

    /// A sketch from stored bucket values (scaled to unit length again); `None` unless
    /// there are exactly [`BUCKETS`].
    pub fn from_values(values: &[f32]) -> Option<Self> {
        values.try_into().ok().map(Sketch::unit)
    }

    /// The cosine similarity of two sketches (0 when either is zero).
    pub fn cosine(&self, other: &Sketch) -> f32 {
        dot(&self.0, &other.0)
    }

    fn unit(mut sums: [f32; BUCKETS]) -> Self {
        let norm = dot(&sums, &sums).sqrt();
        if norm > 0.0 && norm.is_finite() {
            sums.iter_mut().for_each(|v| *v /= norm);
        } else {
            sums = [0.0; BUCKETS];
        }
        Sketch(sums)
    }
}

/// `a · b`, summed in [`LANES`] interleaved partial sums.
fn dot(a: &[f32; BUCKETS], b: &[f32; BUCKETS]) -> f32 {
    let mut partial = [0.0f32; LANES];
    for (a, b) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for lane in 0..LANES {
            partial[lane] += a[lane] * b[lane];
        }
    }
    partial.iter().sum()
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
        let half: Vec<f32> = a.iter().zip(&other).map(|(x, y)| x + y).collect();
        let sketch = |values: &[f32]| Sketch::of(&Delta::Dense(values.to_vec()));
        let sa = sketch(&a);
        assert!(sa.cosine(&sketch(&nudged)) > 0.999);
        assert!(sa.cosine(&sketch(&other)).abs() < 0.25);
        let c = sa.cosine(&sketch(&half));
        assert!((c - 0.707).abs() < 0.15, "cos 45° ≈ 0.71: {c}");
        assert_eq!(sketch(&[0.0; 10]).cosine(&sa), 0.0);
        let scaled = Sketch::from_values(&sa.values().iter().map(|v| 3.0 * v).collect::<Vec<_>>()).unwrap();
        assert!((scaled.cosine(&sa) - 1.0).abs() < 1e-5, "stored sketches are scaled to unit length");
    }
}
