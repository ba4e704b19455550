//! Branch-free `exp` and sigmoid, so that the loops calling them vectorise (the C
//! library's `expf` and `tanhf` are scalar calls).

/// `eˣ` within 2 ulp of the exact value for `x` in [−87, 88]; clamped to that range,
/// so large inputs saturate instead of overflowing, and NaN stays NaN.
///
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`; `eʳ` comes from Cephes' degree-6 polynomial
/// and `2ⁿ` from writing `n` into the exponent bits.
pub(crate) fn exp(x: f32) -> f32 {
    /// ln 2 split in two so that `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 · 2²³: adding it rounds a float to the nearest integer, held in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    (poly * r * r + r + 1.0) * f32::from_bits(exponent as u32)
}

/// The logistic function `1 / (1 + e⁻ˣ)`.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library() {
        for i in -86_999..=87_999 {
            let x = i as f32 * 1e-3;
            let (ours, libm) = (exp(x), x.exp());
            let ulp = (libm.to_bits() as i64 - ours.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {ours}, expected {libm} ({ulp} ulp)");
        }
    }

    #[test]
    fn exp_saturates_and_keeps_nan() {
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_matches_tanh_form() {
        for i in -200..=200 {
            let x = i as f32 * 0.05;
            assert!((sigmoid(2.0 * x) - 0.5 * (1.0 + x.tanh())).abs() < 1e-6, "x = {x}");
        }
    }
}
