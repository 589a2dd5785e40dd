//! Row softmax without the division: each row becomes `exp(x - max(row))` and the reciprocal of
//! its sum is returned, so that attention can scale its (much smaller) output rows instead; and
//! the exact (erf) GELU.
//!
//! `exp` is a Cephes-style polynomial (range reduction by ln 2, degree-6 polynomial, exponent
//! built from the bits), accurate to about 1 ulp and written so the compiler vectorises it; on
//! x86-64 CPUs with AVX2 and FMA an AVX2 copy of the loop is chosen at run time.

// `#[target_feature]` functions must be called in an unsafe block after the CPU is checked.
#![allow(unsafe_code)]

/// 1.5 * 2^23: adding and subtracting it rounds an f32 below 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a part exact in few bits and a remainder (Cody-Waite reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Inputs are clamped here so the exponent stays a normal number (exp(-87) ~ 1.6e-38).
const LOWEST: f32 = -87.0;
const HIGHEST: f32 = 88.0;

/// `exp(x)` to about 1 ulp for x in [-87, 88]; clamped outside (NaN gives NaN). The last
/// Cephes coefficient, 0.50000001201, is 0.5 in f32.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(LOWEST, HIGHEST);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * r2
        + r
        + 1.0;
    // `shifted + 127` holds n + 127 in its low mantissa bits (0 < n + 127 < 256, and the bits
    // of ROUND above them shift out): moved to the exponent field it is 2^n.
    let two_n = f32::from_bits((shifted + 127.0).to_bits() << 23);
    p * two_n
}

/// Largest value of a non-empty slice (NaN-free input), in eight lanes so it vectorises.
#[inline(always)]
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Sum of a slice in eight lanes (a fixed order, so every build rounds alike).
#[inline(always)]
fn sum_of(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn rows_impl(scores: &mut [f32], cols: usize, inverse_sums: &mut [f32]) {
    for (row, inverse) in scores.chunks_exact_mut(cols).zip(inverse_sums.iter_mut()) {
        let max = max_of(row);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        *inverse = 1.0 / sum_of(row);
    }
}

/// Abramowitz & Stegun 7.1.26: erf(x) = 1 - poly(t) exp(-x^2), t = 1 / (1 + p|x|), absolute
/// error below 1.5e-7 (the formula PyTorch's vectorised CPU erf uses).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_impl(values: &mut [f32]) {
    for x in values.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(values: &mut [f32]) {
    gelu_impl(values)
}

/// `x * (1 + erf(x / sqrt(2))) / 2` in place, on the calling thread.
pub fn gelu_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { gelu_avx2(values) };
        return;
    }
    gelu_impl(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(scores: &mut [f32], cols: usize, inverse_sums: &mut [f32]) {
    rows_impl(scores, cols, inverse_sums)
}

/// For each row of `scores` (`inverse_sums.len()` rows of `cols`): replaces x by
/// `exp(x - max(row))` and stores `1 / sum(row)` in `inverse_sums`.
///
/// # Panics
/// When `scores` does not hold exactly `inverse_sums.len() * cols` values, or `cols` is 0.
pub fn softmax_rows_unnormalised(scores: &mut [f32], cols: usize, inverse_sums: &mut [f32]) {
    assert!(cols > 0, "softmax over empty rows");
    assert_eq!(scores.len(), inverse_sums.len() * cols, "scores shape");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { rows_avx2(scores, cols, inverse_sums) };
        return;
    }
    rows_impl(scores, cols, inverse_sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_over_the_softmax_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.000_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_matches_the_float64_erf_form() {
        // erf is not in std: its Taylor series in f64, good to ~1e-8 for |x| <= 4.3 (the
        // largest terms, ~e^(x^2), cost 8 of f64's 16 digits); beyond |x| = 6 GELU is x or 0
        // to far below f32 resolution.
        fn erf64(x: f64) -> f64 {
            let mut term = x;
            let mut sum = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let inputs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let mut got = inputs.clone();
        gelu_in_place(&mut got);
        for (&x, &g) in inputs.iter().zip(&got) {
            let x64 = x as f64;
            let want = if x64.abs() > 6.0 {
                if x64 > 0.0 {
                    x64
                } else {
                    0.0
                }
            } else {
                0.5 * x64 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2))
            };
            // erf's 1.5e-7, plus the rounding of erf and of 1 + erf near 1 (an ulp of 1 in
            // all), both scaled by |x| / 2; plus rounding of the result.
            let erf_error = 1.5e-7 + f32::EPSILON as f64;
            let bound = erf_error * 0.5 * x64.abs() + 2.0 * f32::EPSILON as f64 * want.abs();
            assert!(
                (g as f64 - want).abs() <= bound,
                "gelu({x}) = {g}, want {want}"
            );
        }
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f32::NAN).is_nan());
    }

    #[test]
    fn rows_match_a_float64_softmax() {
        let cols = 37; // not a multiple of the 8 lanes
        let rows = 5;
        let scores: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1013) as f32 / 50.0 - 10.0)
            .collect();
        let mut work = scores.clone();
        let mut inverse = vec![0.0; rows];
        softmax_rows_unnormalised(&mut work, cols, &mut inverse);
        for r in 0..rows {
            let row = &scores[r * cols..(r + 1) * cols];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let total: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            for c in 0..cols {
                let want = (row[c] as f64 - max).exp() / total;
                let got = work[r * cols + c] as f64 * inverse[r] as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * want.max(1e-3),
                    "[{r},{c}] {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn the_portable_loop_agrees_with_the_dispatched_one() {
        let cols = 100;
        let scores: Vec<f32> = (0..3 * cols)
            .map(|i| (i as f32 * 0.37).sin() * 30.0)
            .collect();
        let (mut a, mut b) = (scores.clone(), scores);
        let (mut ia, mut ib) = (vec![0.0; 3], vec![0.0; 3]);
        softmax_rows_unnormalised(&mut a, cols, &mut ia);
        rows_impl(&mut b, cols, &mut ib);
        // The same operations in the same order: FMA contraction is not allowed in Rust, so the
        // vector and scalar builds round identically.
        assert_eq!(a, b);
        assert_eq!(ia, ib);
    }
}
