//! `exp` written so a loop over a slice compiles to SIMD: no call, no branch, only float and
//! integer arithmetic the compiler vectorises. libm's `expf` is a scalar call per element, and
//! in the `Conv` epilogue (BatchNorm + SiLU over every output) it was ~8 % of the interpreter's
//! time on yolo11n (docs/benchmarks.md, issue 14).
//!
//! Method: `exp(x) = 2ⁿ · exp(r)` with `n = round(x / ln 2)` and `r = x − n·ln 2` (ln 2 split in
//! a short high part, so `n·hi` is exact, and a low part), `|r| ≤ ln 2 / 2`; `exp(r)` by its
//! Taylor series to degree 7 (truncation below 0.05 ulp there), evaluated by Horner; `2ⁿ` built
//! from its exponent bits in two halves, so results overflow to ∞ above ~88.7 and fall into
//! subnormals and 0 below ~−87.3 as the true function does. Measured against f64 `exp` by the
//! tests below: at most 2 ulp over the whole normal range.

/// 1.5 · 2²³: adding it to a float of magnitude < 2²² rounds that float to an integer (ties to
/// even) held in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// log₂ e.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2's leading bits (9 significant bits: `n · LN2_HI` is exact for |n| < 2¹⁵).
const LN2_HI: f32 = 0.693_359_4; // exactly 355 / 512
/// ln 2 − [`LN2_HI`].
const LN2_LO: f32 = -2.121_944_4e-4;
/// Inputs are clamped here first: below, the result is 0 anyway; above, ∞; inside, `n` fits the
/// two exponent halves.
const LO: f32 = -110.0;
const HI: f32 = 89.0;

/// eˣ within 2 ulp (∞ above ~88.72, subnormal or 0 below ~−87.34, NaN for NaN). Inlined into
/// loops, it vectorises.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // `clamp` keeps NaN (it only replaces values compared below or above).
    let x = x.clamp(LO, HI);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // 1 + r + r²/2! + … + r⁷/7!
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // n as an integer, from the rounding trick's low mantissa bits; then 2ⁿ = 2^(n/2) · 2^(n − n/2),
    // each half a normal float for n in [−159, 129].
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = ni >> 1;
    let s1 = f32::from_bits(((half + 127) << 23) as u32);
    let s2 = f32::from_bits(((ni - half + 127) << 23) as u32);
    p * s1 * s2
}

/// The logistic function 1 / (1 + e⁻ᵛ) on [`exp`].
#[inline(always)]
pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place of `want`'s f32 neighbourhood.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_over_the_normal_range() {
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        // Every 61st float from −87.3 to 88.7 (≈ 35 million values).
        let (lo, hi) = ((-87.3f32).to_bits(), 88.7f32.to_bits());
        let neg = (0..=lo).rev().step_by(61).map(f32::from_bits);
        let pos = (0..=hi).step_by(61).map(f32::from_bits);
        for x in neg.chain(pos) {
            let e = ulps(exp(x), (x as f64).exp());
            if e > worst {
                (worst, at) = (e, x);
            }
        }
        eprintln!("exp: worst {worst:.3} ulp at {at:e}");
        assert!(worst <= 2.0, "exp: {worst} ulp at {at:e}");
    }

    #[test]
    fn exp_saturates_like_the_true_function() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        // The largest finite result and a subnormal one stay close to the truth.
        let big = 88.72f32;
        assert!(ulps(exp(big), (big as f64).exp()) <= 2.0);
        let sub = exp(-95.0) as f64;
        assert!((sub - (-95.0f64).exp()).abs() < 1e-44, "{sub:e}");
    }

    #[test]
    fn sigmoid_is_close_to_the_exact_one() {
        // Relative to the value, or to 1e-30 below it: near the bottom of the range the result
        // is subnormal, and for v below −88.7 e⁻ᵛ overflows and it is 0 (as with libm's `expf`)
        // where the truth is a few 1e-39.
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let v = i as f32 * 1e-3;
            let want = 1.0 / (1.0 + (-(v as f64)).exp());
            let scale = want.max(1e-30);
            worst = worst.max((sigmoid(v) as f64 - want).abs() / scale);
        }
        eprintln!("sigmoid: worst relative error {worst:e}");
        assert!(worst < 4.0 * f32::EPSILON as f64, "{worst:e}");
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert!(sigmoid(f32::NAN).is_nan());
    }
}
