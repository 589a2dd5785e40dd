//! Row softmax without the division: each row becomes `exp(x - max(row))` and the reciprocal of
//! its sum is returned, so that attention can scale its (much smaller) output rows instead.
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

/// `exp(x)` to about 1 ulp for x in [-87, 88]; clamped outside (NaN gives NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = if x < LOWEST {
        LOWEST
    } else if x > HIGHEST {
        HIGHEST
    } else {
        x
    };
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1)
        * r2
        + r
        + 1.0;
    // `shifted + 127` holds n + 127 in its low mantissa bits (0 < n + 127 < 256, and the bits
    // of ROUND above them shift out): moved to the exponent field it is 2^n.
    let two_n = f32::from_bits((shifted + 127.0).to_bits() << 23);
    p * two_n
}

#[inline(always)]
fn rows_impl(scores: &mut [f32], cols: usize, inverse_sums: &mut [f32]) {
    for (row, inverse) in scores.chunks_exact_mut(cols).zip(inverse_sums.iter_mut()) {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut chunks = row.chunks_exact(8);
        for chunk in &mut chunks {
            for (lane, &x) in lanes.iter_mut().zip(chunk) {
                *lane = if x > *lane { x } else { *lane };
            }
        }
        let mut max = chunks
            .remainder()
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        for lane in lanes {
            max = if lane > max { lane } else { max };
        }
        let mut sums = [0.0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for chunk in &mut chunks {
            for (sum, x) in sums.iter_mut().zip(chunk.iter_mut()) {
                *x = exp(*x - max);
                *sum += *x;
            }
        }
        let mut sum = 0.0;
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        *inverse = 1.0 / (sums.iter().sum::<f32>() + sum);
    }
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
