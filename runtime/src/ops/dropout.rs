//! Inverted dropout with a mask that is a pure function of a seed and each element's
//! index, so that the CPU and the GPU drop the same elements, a replay drops them again,
//! and the backward pass is the same op on the output's gradient.

/// Chris Wellons' `lowbias32`: an invertible 32-bit mix, the same in WGSL.
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// A dropout mask: element `i` is kept, times `factor = 1 / (1 − p)`, when
/// `mix32(i ^ salt) ≥ threshold`, with `salt = mix32(seed)` and `threshold = ⌊p · 2³²⌋`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    /// `mix32(seed)`.
    pub salt: u32,
    /// Elements whose hash is below this are dropped.
    pub threshold: u32,
    /// What kept elements are multiplied by.
    pub factor: f32,
}

impl DropoutMask {
    /// The mask that drops a share `p` (in `[0, 1)`) of the elements, drawn from `seed`.
    pub fn new(p: f32, seed: u32) -> Self {
        assert!((0.0..1.0).contains(&p), "dropout {p} is outside [0, 1)");
        let threshold = (p as f64 * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        DropoutMask { salt: mix32(seed), threshold, factor: 1.0 / (1.0 - p) }
    }

    /// Whether element `index` is kept.
    pub fn keeps(&self, index: u32) -> bool {
        mix32(index ^ self.salt) >= self.threshold
    }
}

/// `out[i] = factor · inp[i]` where the mask keeps element `i`, and 0 where it drops it.
pub fn dropout(out: &mut [f32], inp: &[f32], mask: DropoutMask) {
    for (i, (o, x)) in out.iter_mut().zip(inp).enumerate() {
        *o = if mask.keeps(i as u32) { mask.factor * x } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_drops_its_share_and_keeps_the_mean() {
        let n = 100_000;
        let inp = vec![1.0f32; n];
        let mut out = vec![0.0; n];
        dropout(&mut out, &inp, DropoutMask::new(0.1, 7));
        let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        let mut other = vec![0.0; n];
        dropout(&mut other, &inp, DropoutMask::new(0.1, 8));
        assert_ne!(out, other, "another seed, another mask");
        dropout(&mut other, &inp, DropoutMask::new(0.0, 8));
        assert!(other.iter().all(|&v| v == 1.0), "p = 0 keeps everything as it is");
    }
}
