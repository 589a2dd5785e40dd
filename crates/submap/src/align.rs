//! Estimating the transform between two frames from corresponding 3-D points.
//!
//! `src` points are in frame A, `dst` points in frame B; every estimator returns `b_from_a`,
//! so that `b_from_a * src[i] ≈ dst[i]`. Weights are per-correspondence confidences (>= 0).
//!
//! - [`umeyama`]: closed-form weighted least squares (Umeyama 1991), with or without scale.
//! - [`align_sim3`]: RANSAC on minimal samples, then iteratively reweighted Umeyama (Huber).
//! - [`align_sl4`]: normalised weighted DLT for a 4x4 projective transform, RANSAC, then
//!   iteratively reweighted DLT whose weights turn the algebraic error into the geometric one.

use nalgebra::{Matrix3, Matrix4, Point3, Vector3, Vector4};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::lie::{nearest_rotation, Sim3, Sl4};

/// Why an alignment failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlignError {
    /// Inputs of different lengths.
    #[error("{src} source points but {dst} destination points and {weights} weights")]
    LengthMismatch {
        /// Number of source points.
        src: usize,
        /// Number of destination points.
        dst: usize,
        /// Number of weights.
        weights: usize,
    },
    /// Not enough usable (finite, positively weighted) correspondences.
    #[error("need at least {needed} correspondences with positive weight, got {got}")]
    TooFewPoints {
        /// Minimum for this estimator.
        needed: usize,
        /// Usable correspondences found.
        got: usize,
    },
    /// The points are degenerate (collinear, coincident...).
    #[error("degenerate point configuration")]
    Degenerate,
}

/// Settings of the robust estimators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustConfig {
    /// Initial inlier threshold (RANSAC scoring) on residuals divided by each correspondence's
    /// scale (its depth, see [`Correspondences`]) or, without scales, by the destination
    /// cloud's median distance to its centroid. Default 0.05.
    pub inlier_threshold_rel: f64,
    /// Re-estimate the threshold from the residuals during refinement: `adaptive_k` times their
    /// robust standard deviation, clamped to `[min_threshold_rel, max_threshold_rel]`.
    /// Default true.
    pub adaptive: bool,
    /// Multiple of the residuals' robust standard deviation used as the adaptive threshold.
    /// Default 3.
    pub adaptive_k: f64,
    /// Smallest adaptive threshold (relative). Default 0.005.
    pub min_threshold_rel: f64,
    /// Largest adaptive threshold (relative). Default 0.25.
    pub max_threshold_rel: f64,
    /// Most RANSAC hypotheses. Default 64.
    pub ransac_iterations: usize,
    /// RANSAC stops drawing once, at the best hypothesis' inlier ratio `w`, the chance that
    /// none of the draws so far was all inliers, `(1 - w^m)^n` for `n` draws of `m` points,
    /// is below `1 - ransac_confidence`; 1 always draws `ransac_iterations`. Default 0.999.
    pub ransac_confidence: f64,
    /// Iterations of reweighted refinement after RANSAC. Default 8.
    pub refine_iterations: usize,
    /// Seed of the sampler, so results are reproducible. Default 7.
    pub seed: u64,
}

impl Default for RobustConfig {
    fn default() -> Self {
        Self {
            inlier_threshold_rel: 0.05,
            adaptive: true,
            adaptive_k: 3.0,
            min_threshold_rel: 0.005,
            max_threshold_rel: 0.25,
            ransac_iterations: 64,
            ransac_confidence: 0.999,
            refine_iterations: 8,
            seed: 7,
        }
    }
}

/// A robust estimate with its support.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned<T> {
    /// The estimated `b_from_a`.
    pub transform: T,
    /// Correspondences within the inlier threshold.
    pub inliers: usize,
    /// Correspondences considered.
    pub total: usize,
    /// Root mean square residual of the inliers, destination units.
    pub inlier_rmse: f64,
    /// The inlier threshold used: destination units without per-point scales, relative (a
    /// fraction of each point's scale) with them.
    pub threshold: f64,
    /// Robust standard deviation of the normalised residuals (relative to each point's scale,
    /// or to the cloud's spread): the noise level the fit found.
    pub noise: f64,
}

impl<T> Aligned<T> {
    /// Fraction of inliers in `[0, 1]`.
    pub fn inlier_ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.inliers as f64 / self.total as f64
        }
    }
}

fn check_lengths(src: &[Point3<f64>], dst: &[Point3<f64>], w: &[f64]) -> Result<(), AlignError> {
    if src.len() != dst.len() || src.len() != w.len() {
        return Err(AlignError::LengthMismatch {
            src: src.len(),
            dst: dst.len(),
            weights: w.len(),
        });
    }
    Ok(())
}

fn usable(src: &[Point3<f64>], dst: &[Point3<f64>], w: &[f64]) -> Vec<usize> {
    (0..src.len())
        .filter(|&i| {
            w[i] > 0.0
                && w[i].is_finite()
                && src[i]
                    .coords
                    .iter()
                    .chain(dst[i].coords.iter())
                    .all(|v| v.is_finite())
        })
        .collect()
}

/// Point pairs for an alignment: `src[i]` in frame A should map to `dst[i]` in frame B.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Correspondences {
    /// Points in frame A.
    pub src: Vec<Point3<f64>>,
    /// Points in frame B.
    pub dst: Vec<Point3<f64>>,
    /// Confidence weight of each pair (>= 0).
    pub weight: Vec<f64>,
    /// Expected error scale of each pair, destination units: its depth in the destination
    /// camera, larger for low confidence. Residuals are compared relative to it.
    pub scale: Vec<f64>,
}

impl Correspondences {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.src.len()
    }

    /// True without pairs.
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// Room for `n` more pairs.
    pub fn reserve(&mut self, n: usize) {
        self.src.reserve(n);
        self.dst.reserve(n);
        self.weight.reserve(n);
        self.scale.reserve(n);
    }

    /// Adds a pair.
    pub fn push(&mut self, src: Point3<f64>, dst: Point3<f64>, weight: f64, scale: f64) {
        self.src.push(src);
        self.dst.push(dst);
        self.weight.push(weight);
        self.scale.push(scale);
    }

    /// Keeps at most `max` pairs, evenly spread over the list (pairs come in pixel order, so the
    /// kept ones cover every frame and the whole image); `max = 0` keeps all.
    pub fn thin(&mut self, max: usize) {
        let n = self.len();
        if max == 0 || n <= max {
            return;
        }
        fn keep<T>(v: &mut Vec<T>, n: usize, max: usize) {
            // Position k * n / max never comes before k nor repeats, so each swap takes an
            // element not yet moved.
            for k in 0..max {
                v.swap(k, k * n / max);
            }
            v.truncate(max);
        }
        keep(&mut self.src, n, max);
        keep(&mut self.dst, n, max);
        keep(&mut self.weight, n, max);
        keep(&mut self.scale, n, max);
    }

    /// Robust Sim(3) (or SE(3) without scale) fit with per-pair scales.
    pub fn align_sim3(
        &self,
        with_scale: bool,
        config: &RobustConfig,
    ) -> Result<Aligned<Sim3>, AlignError> {
        align_sim3_scaled(
            &self.src,
            &self.dst,
            &self.weight,
            Some(&self.scale),
            with_scale,
            config,
        )
    }

    /// Robust SL(4) fit with per-pair scales.
    pub fn align_sl4(&self, config: &RobustConfig) -> Result<Aligned<Sl4>, AlignError> {
        align_sl4_scaled(
            &self.src,
            &self.dst,
            &self.weight,
            Some(&self.scale),
            config,
        )
    }
}

/// Weighted Umeyama: the similarity (or rigid transform when `with_scale` is false) minimising
/// `Σ w_i |dst_i - T src_i|²`.
pub fn umeyama(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    weights: &[f64],
    with_scale: bool,
) -> Result<Sim3, AlignError> {
    check_lengths(src, dst, weights)?;
    let idx = usable(src, dst, weights);
    umeyama_indices(src, dst, weights, &idx, with_scale)
}

fn umeyama_indices(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    w: &[f64],
    idx: &[usize],
    with_scale: bool,
) -> Result<Sim3, AlignError> {
    if idx.len() < 3 {
        return Err(AlignError::TooFewPoints {
            needed: 3,
            got: idx.len(),
        });
    }
    // The weights' sum and the weighted sums of the points in one pass (each sum still in
    // index order).
    let mut w_sum = 0.0;
    let mut mean_src = [0.0; 3];
    let mut mean_dst = [0.0; 3];
    for &i in idx {
        w_sum += w[i];
        for k in 0..3 {
            mean_src[k] += w[i] * src[i][k];
            mean_dst[k] += w[i] * dst[i][k];
        }
    }
    if w_sum <= 0.0 {
        return Err(AlignError::TooFewPoints { needed: 3, got: 0 });
    }
    for k in 0..3 {
        mean_src[k] /= w_sum;
        mean_dst[k] /= w_sum;
    }
    let mut var_src = 0.0;
    let mut cov_rows = [0.0; 9];
    for &i in idx {
        let xs = [
            src[i].x - mean_src[0],
            src[i].y - mean_src[1],
            src[i].z - mean_src[2],
        ];
        let xd = [
            dst[i].x - mean_dst[0],
            dst[i].y - mean_dst[1],
            dst[i].z - mean_dst[2],
        ];
        var_src += w[i] * (xs[0] * xs[0] + xs[1] * xs[1] + xs[2] * xs[2]);
        for r in 0..3 {
            for c in 0..3 {
                cov_rows[r * 3 + c] += w[i] * xd[r] * xs[c];
            }
        }
    }
    var_src /= w_sum;
    let cov = Matrix3::from_row_slice(&cov_rows) / w_sum;
    let (mean_src, mean_dst) = (Vector3::from(mean_src), Vector3::from(mean_dst));
    if var_src <= 1e-300 {
        return Err(AlignError::Degenerate);
    }
    let svd = cov.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return Err(AlignError::Degenerate);
    };
    let mut s = Matrix3::identity();
    if u.determinant() * v_t.determinant() < 0.0 {
        // Singular values are sorted in decreasing order: flip the smallest.
        s[(2, 2)] = -1.0;
    }
    let r = u * s * v_t;
    let scale = if with_scale {
        (Matrix3::from_diagonal(&svd.singular_values) * s).trace() / var_src
    } else {
        1.0
    };
    if !(scale.is_finite() && scale > 0.0) {
        return Err(AlignError::Degenerate);
    }
    let rotation = nearest_rotation(&r);
    let translation = mean_dst - scale * (rotation * mean_src);
    Ok(Sim3::new(rotation, translation, scale))
}

/// Median distance of the chosen destination points to their centroid, the unit of the
/// relative inlier threshold.
fn spread(dst: &[Point3<f64>], idx: &[usize]) -> f64 {
    let c = idx.iter().map(|&i| dst[i].coords).sum::<Vector3<f64>>() / idx.len().max(1) as f64;
    let mut d: Vec<f64> = idx.iter().map(|&i| (dst[i].coords - c).norm()).collect();
    median_in_place(&mut d)
}

/// Median of a slice (mean of the two middle values for an even length; 0 for empty), in
/// linear time: the slice is left partitioned around its middle, not sorted.
pub(crate) fn median_in_place(v: &mut [f64]) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let (below, &mut middle, _) = v.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        middle
    } else {
        // The largest value below the middle one is the other middle value.
        let lower = below
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(middle);
        0.5 * (lower + middle)
    }
}

/// Distances between `m · src` (dehomogenised) and `dst` for one matrix `m`; infinite for points
/// sent to infinity. A matrix whose last row is `(0, 0, 0, 1)` (every Sim(3)) skips the
/// homogeneous divide, which is by exactly 1 for finite points, so both paths give the same
/// bits.
struct Residual<'m> {
    a: &'m [f64],
    affine: bool,
}

impl<'m> Residual<'m> {
    fn new(m: &'m Matrix4<f64>) -> Self {
        let a = m.as_slice();
        // Column-major storage: element (r, c) is a[c * 4 + r].
        let affine = a[3] == 0.0 && a[7] == 0.0 && a[11] == 0.0 && a[15] == 1.0;
        Self { a, affine }
    }

    #[inline(always)]
    fn at(&self, src: &Point3<f64>, dst: &Point3<f64>) -> f64 {
        let a = self.a;
        let (x, y, z) = (src.x, src.y, src.z);
        let (px, py, pz) = if self.affine {
            (
                a[0] * x + a[4] * y + a[8] * z + a[12],
                a[1] * x + a[5] * y + a[9] * z + a[13],
                a[2] * x + a[6] * y + a[10] * z + a[14],
            )
        } else {
            let hw = a[3] * x + a[7] * y + a[11] * z + a[15];
            if hw.abs() < 1e-12 {
                return f64::INFINITY;
            }
            (
                (a[0] * x + a[4] * y + a[8] * z + a[12]) / hw,
                (a[1] * x + a[5] * y + a[9] * z + a[13]) / hw,
                (a[2] * x + a[6] * y + a[10] * z + a[14]) / hw,
            )
        };
        let (dx, dy, dz) = (px - dst.x, py - dst.y, pz - dst.z);
        (dx * dx + dy * dy + dz * dz).sqrt()
    }
}

/// Huber weight for residual `r` and threshold `delta`.
fn huber_weight(r: f64, delta: f64) -> f64 {
    if r <= delta {
        1.0
    } else {
        delta / r
    }
}

/// Most correspondences a RANSAC hypothesis is scored on: enough to rank hypotheses by their
/// support (a fraction's standard error is under 1.1 % at this size), while the scoring no
/// longer grows with the image size.
const MAX_SCORED: usize = 2048;

/// Shared robust loop: RANSAC over minimal samples (scored on at most [`MAX_SCORED`] of the
/// correspondences), then reweighted refinement on all of them.
///
/// Residuals are divided by each correspondence's expected error scale (`scales`, e.g. its
/// depth, larger for low confidence) or, without scales, by the destination cloud's spread.
/// With [`RobustConfig::adaptive`] the inlier threshold is then re-estimated from the residuals
/// themselves (a multiple of their robust standard deviation), so it follows the noise of the
/// predictions instead of a fixed fraction.
#[allow(clippy::too_many_arguments)]
fn robust<T: Copy>(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    weights: &[f64],
    scales: Option<&[f64]>,
    config: &RobustConfig,
    minimal: usize,
    fit: impl Fn(&[usize], &[f64]) -> Option<T>,
    to_matrix: impl Fn(&T) -> Matrix4<f64>,
) -> Result<Aligned<T>, AlignError> {
    check_lengths(src, dst, weights)?;
    if let Some(s) = scales {
        if s.len() != src.len() {
            return Err(AlignError::LengthMismatch {
                src: src.len(),
                dst: dst.len(),
                weights: s.len(),
            });
        }
    }
    let mut idx = usable(src, dst, weights);
    if let Some(s) = scales {
        idx.retain(|&i| s[i].is_finite() && s[i] > 0.0);
    }
    if idx.len() < minimal {
        return Err(AlignError::TooFewPoints {
            needed: minimal,
            got: idx.len(),
        });
    }
    let unit = match scales {
        Some(_) => 1.0,
        None => spread(dst, &idx),
    };
    if unit <= 0.0 {
        return Err(AlignError::Degenerate);
    }
    let scale_of = |i: usize| scales.map_or(unit, |s| s[i]);
    // Normalised residuals use plain arithmetic on the matrix: this loop is hot.
    let normalised = |m: &Residual, i: usize| m.at(&src[i], &dst[i]) / scale_of(i);
    // The residuals of `t` at `idx`, into `out` (reused across the refinement's iterations).
    let residuals = |t: &T, out: &mut Vec<f64>| {
        let m = to_matrix(t);
        let m = Residual::new(&m);
        out.clear();
        out.extend(idx.iter().map(|&i| normalised(&m, i)));
    };
    let mut threshold = config.inlier_threshold_rel;
    if threshold <= 0.0 {
        return Err(AlignError::Degenerate);
    }
    // Hypotheses are told apart on an even subsample of the correspondences (they come in pixel
    // order, so it is spread over the frames); the refinement below uses every one.
    let subsample: Vec<usize>;
    let scored: &[usize] = if idx.len() <= MAX_SCORED {
        &idx
    } else {
        subsample = (0..MAX_SCORED)
            .map(|k| idx[k * idx.len() / MAX_SCORED])
            .collect();
        &subsample
    };
    // (score, inliers) of a hypothesis on the scored correspondences.
    let score = |t: &T, threshold: f64| -> (f64, usize) {
        let m = to_matrix(t);
        let m = Residual::new(&m);
        scored.iter().fold((0.0, 0), |(sum, n), &i| {
            let r = normalised(&m, i);
            if r < threshold {
                (sum + weights[i] * (1.0 - (r / threshold).powi(2)), n + 1)
            } else {
                (sum, n)
            }
        })
    };
    // Draws after which, at inlier ratio `w`, an all-inlier draw was missed with probability
    // below 1 - confidence.
    let enough = |inliers: usize| -> f64 {
        let w = inliers as f64 / scored.len() as f64;
        let miss = 1.0 - config.ransac_confidence;
        let all_in = w.powi(minimal as i32);
        if config.ransac_confidence >= 1.0 || miss.is_nan() || all_in <= 0.0 {
            return f64::INFINITY;
        }
        if all_in >= 1.0 {
            return 0.0;
        }
        miss.ln() / (1.0 - all_in).ln()
    };
    let mut best: Option<(T, f64, usize)> = fit(&idx, weights).map(|t| {
        let (s, n) = score(&t, threshold);
        (t, s, n)
    });
    let mut rng = StdRng::seed_from_u64(config.seed);
    for draw in 0..config.ransac_iterations {
        if best
            .as_ref()
            .is_some_and(|(_, _, n)| draw as f64 >= enough(*n))
        {
            break;
        }
        let pick: Vec<usize> = sample(&mut rng, idx.len(), minimal)
            .iter()
            .map(|k| idx[k])
            .collect();
        let Some(t) = fit(&pick, weights) else {
            continue;
        };
        let (s, n) = score(&t, threshold);
        if best.as_ref().is_none_or(|(_, b, _)| s > *b) {
            best = Some((t, s, n));
        }
    }
    let Some((mut transform, _, _)) = best else {
        return Err(AlignError::Degenerate);
    };
    let mut w = weights.to_vec();
    // Buffers of the refinement: residuals, a copy for their median, the pairs still in.
    let mut res = Vec::with_capacity(idx.len());
    let mut scratch = Vec::with_capacity(idx.len());
    let mut support = Vec::with_capacity(idx.len());
    // The noise of the RANSAC estimate; an adaptive refinement replaces it before using it.
    let mut noise = 0.0;
    if !(config.adaptive && config.refine_iterations > 0) {
        residuals(&transform, &mut res);
        noise = robust_sigma(&res, &mut scratch);
    }
    for _ in 0..config.refine_iterations {
        residuals(&transform, &mut res);
        if config.adaptive {
            noise = robust_sigma(&res, &mut scratch);
            threshold = (config.adaptive_k * noise)
                .clamp(config.min_threshold_rel, config.max_threshold_rel);
        }
        support.clear();
        for (&i, &r) in idx.iter().zip(&res) {
            w[i] = if r > 3.0 * threshold {
                0.0
            } else {
                weights[i] * huber_weight(r, threshold * 0.5)
            };
            if w[i] > 0.0 {
                support.push(i);
            }
        }
        if support.len() < minimal {
            break;
        }
        match fit(&support, &w) {
            Some(t) => transform = t,
            None => break,
        }
    }
    residuals(&transform, &mut res);
    if config.adaptive {
        noise = robust_sigma(&res, &mut scratch);
        threshold =
            (config.adaptive_k * noise).clamp(config.min_threshold_rel, config.max_threshold_rel);
    }
    let m = to_matrix(&transform);
    let m = Residual::new(&m);
    let inlier_res: Vec<f64> = idx
        .iter()
        .zip(&res)
        .filter(|(_, r)| **r < threshold)
        .map(|(&i, _)| m.at(&src[i], &dst[i]))
        .collect();
    let inlier_rmse = if inlier_res.is_empty() {
        f64::INFINITY
    } else {
        (inlier_res.iter().map(|r| r * r).sum::<f64>() / inlier_res.len() as f64).sqrt()
    };
    Ok(Aligned {
        transform,
        inliers: inlier_res.len(),
        total: idx.len(),
        inlier_rmse,
        threshold: threshold * if scales.is_some() { 1.0 } else { unit },
        noise,
    })
}

/// Robust per-axis standard deviation from residual norms: the median norm of 3-D Gaussian
/// errors of σ per axis is 1.538 σ (the median of a χ distribution with 3 degrees of freedom).
/// `scratch` holds the finite residuals while their median is selected.
fn robust_sigma(residuals: &[f64], scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend(residuals.iter().copied().filter(|r| r.is_finite()));
    median_in_place(scratch) / 1.538
}

/// Robust, confidence-weighted Sim(3) alignment `b_from_a` (`with_scale = false` gives SE(3)).
pub fn align_sim3(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    weights: &[f64],
    with_scale: bool,
    config: &RobustConfig,
) -> Result<Aligned<Sim3>, AlignError> {
    align_sim3_scaled(src, dst, weights, None, with_scale, config)
}

/// [`align_sim3`] with a per-correspondence residual scale (see [`Correspondences::scale`]).
pub fn align_sim3_scaled(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    weights: &[f64],
    scales: Option<&[f64]>,
    with_scale: bool,
    config: &RobustConfig,
) -> Result<Aligned<Sim3>, AlignError> {
    robust(
        src,
        dst,
        weights,
        scales,
        config,
        3,
        |idx, w| umeyama_indices(src, dst, w, idx, with_scale).ok(),
        Sim3::to_homogeneous,
    )
}

/// Similarity that moves the points' centroid to the origin and their mean distance to √3
/// (Hartley normalisation), as a 4x4 matrix.
fn normalising_transform(pts: &[Point3<f64>], idx: &[usize], w: &[f64]) -> Option<Matrix4<f64>> {
    let w_sum: f64 = idx.iter().map(|&i| w[i]).sum();
    if w_sum <= 0.0 {
        return None;
    }
    let c = idx
        .iter()
        .map(|&i| pts[i].coords * w[i])
        .sum::<Vector3<f64>>()
        / w_sum;
    let d = idx
        .iter()
        .map(|&i| w[i] * (pts[i].coords - c).norm())
        .sum::<f64>()
        / w_sum;
    if d <= 1e-300 {
        return None;
    }
    let s = 3f64.sqrt() / d;
    let mut m = Matrix4::identity() * s;
    m[(3, 3)] = 1.0;
    m.fixed_view_mut::<3, 1>(0, 3).copy_from(&(-s * c));
    Some(m)
}

/// Weighted DLT for `dst ~ H src` in homogeneous coordinates (3 equations per point).
fn dlt_sl4(src: &[Point3<f64>], dst: &[Point3<f64>], w: &[f64], idx: &[usize]) -> Option<Sl4> {
    if idx.len() < 5 {
        return None;
    }
    let t_src = normalising_transform(src, idx, w)?;
    let t_dst = normalising_transform(dst, idx, w)?;
    // AᵀA accumulated block-wise: unknowns are the rows h_0..h_3 of H (4 values each); point
    // equations `h_r·x - y_r (h_3·x) = 0` touch blocks (r, r), (r, 3), (3, r) and (3, 3), all
    // multiples of x xᵀ.
    let mut ata = [0f64; 256];
    let ts = t_src.as_slice();
    let td = t_dst.as_slice();
    let apply = |m: &[f64], p: &Point3<f64>| -> [f64; 4] {
        // Column-major 4x4 times (x, y, z, 1).
        let mut out = [0.0; 4];
        for (r, o) in out.iter_mut().enumerate() {
            *o = m[r] * p.x + m[4 + r] * p.y + m[8 + r] * p.z + m[12 + r];
        }
        out
    };
    for &i in idx {
        let x = apply(ts, &src[i]);
        let yh = apply(td, &dst[i]);
        let y = [yh[0] / yh[3], yh[1] / yh[3], yh[2] / yh[3]];
        let wi = w[i];
        let y2 = y[0] * y[0] + y[1] * y[1] + y[2] * y[2];
        for a in 0..4 {
            for b in 0..4 {
                let xx = wi * x[a] * x[b];
                for r in 0..3 {
                    ata[(r * 4 + a) * 16 + r * 4 + b] += xx;
                    ata[(r * 4 + a) * 16 + 12 + b] -= y[r] * xx;
                    ata[(12 + a) * 16 + r * 4 + b] -= y[r] * xx;
                }
                ata[(12 + a) * 16 + 12 + b] += y2 * xx;
            }
        }
    }
    let h = crate::linalg::smallest_eigenvector(&ata, 16)?;
    let h_norm = Matrix4::from_row_slice(&h);
    let t_dst_inv = t_dst.try_inverse()?;
    Sl4::from_matrix(t_dst_inv * h_norm * t_src)
}

/// Robust, confidence-weighted SL(4) (projective) alignment `b_from_a`.
pub fn align_sl4(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    weights: &[f64],
    config: &RobustConfig,
) -> Result<Aligned<Sl4>, AlignError> {
    align_sl4_scaled(src, dst, weights, None, config)
}

/// [`align_sl4`] with a per-correspondence residual scale (see [`Correspondences::scale`]).
pub fn align_sl4_scaled(
    src: &[Point3<f64>],
    dst: &[Point3<f64>],
    weights: &[f64],
    scales: Option<&[f64]>,
    config: &RobustConfig,
) -> Result<Aligned<Sl4>, AlignError> {
    let fit = |idx: &[usize], w: &[f64]| -> Option<Sl4> {
        let first = dlt_sl4(src, dst, w, idx)?;
        if idx.len() <= 5 {
            return Some(first);
        }
        // Reweight so that the algebraic error approximates the Euclidean one: the algebraic
        // residual equals the geometric one times the homogeneous coordinate of `H src`.
        let mut w2 = w.to_vec();
        for &i in idx {
            let hw = (first.matrix() * src[i].to_homogeneous()).w;
            let hw_norm = hw / first.matrix()[(3, 3)].abs().max(1e-12);
            w2[i] = w[i] / hw_norm.powi(2).max(1e-12);
        }
        dlt_sl4(src, dst, &w2, idx).or(Some(first))
    };
    robust(src, dst, weights, scales, config, 5, fit, |t: &Sl4| {
        *t.matrix()
    })
}

/// The projective transform that maps a homogeneous point to its image, for tests and
/// simulations: `[I 0; vᵀ 1]` scaled to SL(4).
pub fn projective_tilt(v: Vector3<f64>) -> Sl4 {
    let mut m = Matrix4::identity();
    m.fixed_view_mut::<1, 3>(3, 0).copy_from(&v.transpose());
    Sl4::from_matrix(m).unwrap_or_else(Sl4::identity)
}

/// Applies a 4x4 matrix to a point and dehomogenises (no check for points at infinity).
pub fn apply_h(m: &Matrix4<f64>, p: &Point3<f64>) -> Point3<f64> {
    let h: Vector4<f64> = m * p.to_homogeneous();
    Point3::new(h.x / h.w, h.y / h.w, h.z / h.w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::UnitQuaternion;
    use rand::Rng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn the_linear_time_median_is_the_sorted_median() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in [1, 2, 3, 4, 7, 10, 101, 1000] {
            // Repeated values too: a coarse grid of 20 levels.
            let v: Vec<f64> = (0..n)
                .map(|_| f64::from(rng.random_range(0..20)) * 0.5 - 3.0)
                .collect();
            let mut sorted = v.clone();
            sorted.sort_by(f64::total_cmp);
            let expected = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
            };
            assert_eq!(median_in_place(&mut v.clone()), expected, "n = {n}");
        }
        assert_eq!(median_in_place(&mut []), 0.0);
    }

    fn cloud(n: usize, seed: u64) -> Vec<Point3<f64>> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                Point3::new(
                    rng.random_range(-1.0..1.0),
                    rng.random_range(-1.0..1.0),
                    rng.random_range(1.0..3.0),
                )
            })
            .collect()
    }

    fn truth() -> Sim3 {
        Sim3::new(
            UnitQuaternion::from_euler_angles(0.4, -0.3, 0.9),
            Vector3::new(0.3, -2.0, 1.5),
            2.5,
        )
    }

    /// Applies `t`, adds Gaussian noise of `sigma`, and replaces every `outlier_every`-th
    /// point by a far-away random one.
    fn corrupt(
        pts: &[Point3<f64>],
        map: impl Fn(&Point3<f64>) -> Point3<f64>,
        sigma: f64,
        outlier_every: usize,
    ) -> Vec<Point3<f64>> {
        let mut rng = StdRng::seed_from_u64(99);
        let noise = Normal::new(0.0, sigma).expect("valid sigma");
        pts.iter()
            .enumerate()
            .map(|(i, p)| {
                if i % outlier_every == 0 {
                    Point3::new(
                        rng.random_range(-20.0..20.0),
                        rng.random_range(-20.0..20.0),
                        rng.random_range(-20.0..20.0),
                    )
                } else {
                    let q = map(p);
                    Point3::new(
                        q.x + noise.sample(&mut rng),
                        q.y + noise.sample(&mut rng),
                        q.z + noise.sample(&mut rng),
                    )
                }
            })
            .collect()
    }

    #[test]
    fn umeyama_exact_recovery() {
        let src = cloud(50, 1);
        let t = truth();
        let dst: Vec<_> = src.iter().map(|p| t.transform_point(p)).collect();
        let est = umeyama(&src, &dst, &vec![1.0; 50], true).expect("fit");
        assert!((est.to_homogeneous() - t.to_homogeneous()).abs().max() < 1e-9);
    }

    #[test]
    fn umeyama_rejects_bad_input() {
        let src = cloud(2, 1);
        assert_eq!(
            umeyama(&src, &src, &[1.0, 1.0], true),
            Err(AlignError::TooFewPoints { needed: 3, got: 2 })
        );
        assert!(matches!(
            umeyama(&src, &src, &[1.0], true),
            Err(AlignError::LengthMismatch { .. })
        ));
        let same = vec![Point3::new(1.0, 1.0, 1.0); 5];
        assert_eq!(
            umeyama(&same, &same, &[1.0; 5], true),
            Err(AlignError::Degenerate)
        );
    }

    #[test]
    fn sim3_robust_recovers_under_noise_and_outliers() {
        let src = cloud(400, 2);
        let t = truth();
        // 20 % outliers, noise 1 % of the cloud size.
        let dst = corrupt(&src, |p| t.transform_point(p), 0.02, 5);
        let w = vec![1.0; src.len()];
        let plain = umeyama(&src, &dst, &w, true).expect("fit");
        let est = align_sim3(&src, &dst, &w, true, &RobustConfig::default()).expect("fit");
        let err_scale = (est.transform.scale / t.scale - 1.0).abs();
        let err_rot = est.transform.rotation.angle_to(&t.rotation);
        let err_t = (est.transform.translation - t.translation).norm();
        assert!(err_scale < 0.01, "scale error {err_scale}");
        assert!(err_rot < 0.01, "rotation error {err_rot} rad");
        assert!(err_t < 0.05, "translation error {err_t}");
        assert!(
            est.inliers >= 300 && est.inliers <= 330,
            "inliers {}",
            est.inliers
        );
        // The outliers ruin plain least squares, which is what the robust loop is for.
        let plain_err_scale = (plain.scale / t.scale - 1.0).abs();
        assert!(
            plain_err_scale > 5.0 * err_scale,
            "plain scale error {plain_err_scale} vs robust {err_scale}"
        );
    }

    #[test]
    fn early_stopping_ransac_still_finds_the_truth_among_many_outliers() {
        let src = cloud(600, 5);
        let t = truth();
        let w = vec![1.0; src.len()];
        // Half the points are outliers: the all-points fit is far off, and at an inlier ratio
        // of one half 0.999 confidence takes 52 draws of 3.
        let dst = corrupt(&src, |p| t.transform_point(p), 0.02, 2);
        for confidence in [0.999, 1.0] {
            let config = RobustConfig {
                ransac_confidence: confidence,
                ..RobustConfig::default()
            };
            let est = align_sim3(&src, &dst, &w, true, &config).expect("fit");
            let err_rot = est.transform.rotation.angle_to(&t.rotation);
            let err_scale = (est.transform.scale / t.scale - 1.0).abs();
            assert!(
                err_rot < 0.01 && err_scale < 0.01,
                "{confidence}: {err_rot} {err_scale}"
            );
        }
    }

    #[test]
    fn thinning_keeps_evenly_spread_pairs_together() {
        let mut c = Correspondences::default();
        for i in 0..10 {
            let x = f64::from(i);
            c.push(
                Point3::new(x, 0.0, 0.0),
                Point3::new(0.0, x, 0.0),
                x,
                10.0 + x,
            );
        }
        let all = c.clone();
        c.thin(0);
        assert_eq!(c, all, "0 keeps all");
        c.thin(10);
        assert_eq!(c, all, "no more than there are");
        c.thin(4);
        assert_eq!(c.weight, [0.0, 2.0, 5.0, 7.0]);
        assert_eq!(c.scale, [10.0, 12.0, 15.0, 17.0]);
        assert!(c.src.iter().zip(&c.dst).all(|(a, b)| a.x == b.y));
    }

    #[test]
    fn sim3_weights_matter() {
        let src = cloud(100, 3);
        let t = truth();
        let mut dst: Vec<_> = src.iter().map(|p| t.transform_point(p)).collect();
        // Corrupt 30 points heavily but give them zero confidence.
        let mut w = vec![1.0; 100];
        for i in 0..30 {
            dst[i].x += 5.0;
            w[i] = 0.0;
        }
        let est = umeyama(&src, &dst, &w, true).expect("fit");
        assert!((est.to_homogeneous() - t.to_homogeneous()).abs().max() < 1e-9);
    }

    #[test]
    fn sl4_robust_recovers_projective_transform() {
        let src = cloud(400, 4);
        let h_true = Sl4::from_sim3(&truth()) * projective_tilt(Vector3::new(0.05, -0.03, 0.04));
        let dst = corrupt(
            &src,
            |p| h_true.transform_point(p).expect("finite"),
            0.01,
            5,
        );
        let w = vec![1.0; src.len()];
        let est = align_sl4(&src, &dst, &w, &RobustConfig::default()).expect("fit");
        // Compare the action on the clean points rather than matrix entries.
        let max_err = src
            .iter()
            .map(|p| {
                (est.transform.transform_point(p).expect("finite")
                    - h_true.transform_point(p).expect("finite"))
                .norm()
            })
            .fold(0.0, f64::max);
        assert!(max_err < 0.03, "max point error {max_err}");
        assert!(est.inliers >= 300, "inliers {}", est.inliers);
    }

    #[test]
    fn sl4_exact_without_noise() {
        let src = cloud(30, 5);
        let h_true = projective_tilt(Vector3::new(0.1, 0.0, -0.05)) * Sl4::from_sim3(&truth());
        let dst: Vec<_> = src
            .iter()
            .map(|p| h_true.transform_point(p).expect("finite"))
            .collect();
        let est = align_sl4(&src, &dst, &[1.0; 30], &RobustConfig::default()).expect("fit");
        assert!((est.transform.matrix() - h_true.matrix()).abs().max() < 1e-6);
    }
}
