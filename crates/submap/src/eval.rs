//! Trajectory evaluation with the conventions of the `evo` tool: absolute pose error (APE,
//! translation part) after no / SE(3) / Sim(3) Umeyama alignment, and relative pose error (RPE).
//!
//! Association follows evo: the shorter trajectory's stamps are each matched to the nearest stamp
//! of the longer one, kept when the difference is at most `t_max_diff_s`. Poses are
//! `world_from_cam`; the estimate is aligned onto the ground truth.

use std::path::Path;
use std::str::FromStr;

use nalgebra::{Isometry3, Point3};
use serde::{Deserialize, Serialize};

use crate::align::{median_in_place, umeyama, AlignError};
use crate::lie::Sim3;
use crate::tum::{read_trajectory, StampedPose, TumError};

/// How the estimate is aligned to the ground truth before measuring errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// Compare as given.
    None,
    /// Rigid Umeyama alignment of positions (evo `-a`).
    Se3,
    /// Similarity Umeyama alignment of positions (evo `-as`).
    Sim3,
}

impl FromStr for Alignment {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "se3" => Ok(Self::Se3),
            "sim3" => Ok(Self::Sim3),
            _ => Err(EvalError::UnknownAlignment(s.to_string())),
        }
    }
}

/// Error of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A trajectory file could not be read.
    #[error(transparent)]
    Tum(#[from] TumError),
    /// Too few pose pairs matched in time.
    #[error("only {pairs} pose pairs matched within {t_max_diff_s} s (need {needed})")]
    TooFewPairs {
        /// Pairs found.
        pairs: usize,
        /// Pairs needed.
        needed: usize,
        /// Association tolerance used.
        t_max_diff_s: f64,
    },
    /// Alignment failed (degenerate trajectory).
    #[error("alignment failed: {0}")]
    Align(#[from] AlignError),
    /// Not one of `none`, `se3`, `sim3`.
    #[error("unknown alignment {0:?}: expected none, se3 or sim3")]
    UnknownAlignment(String),
}

/// Error statistics, the fields evo prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// Root mean square error.
    pub rmse: f64,
    /// Mean error.
    pub mean: f64,
    /// Median error.
    pub median: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest error.
    pub min: f64,
    /// Largest error.
    pub max: f64,
    /// Sum of squared errors.
    pub sse: f64,
    /// Number of errors.
    pub pairs: usize,
}

impl ErrorStats {
    /// Statistics of a list of errors (all zero for an empty list).
    pub fn from_errors(errors: &[f64]) -> Self {
        let n = errors.len();
        if n == 0 {
            return Self {
                rmse: 0.0,
                mean: 0.0,
                median: 0.0,
                std: 0.0,
                min: 0.0,
                max: 0.0,
                sse: 0.0,
                pairs: 0,
            };
        }
        let sse: f64 = errors.iter().map(|e| e * e).sum();
        let mean = errors.iter().sum::<f64>() / n as f64;
        let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / n as f64;
        let mut sorted = errors.to_vec();
        Self {
            rmse: (sse / n as f64).sqrt(),
            mean,
            median: median_in_place(&mut sorted),
            std: var.sqrt(),
            min: errors.iter().copied().fold(f64::INFINITY, f64::min),
            max: errors.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            sse,
            pairs: n,
        }
    }
}

/// APE result: the statistics and the transform applied to the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApeResult {
    /// Translation error statistics, ground-truth units.
    pub stats: ErrorStats,
    /// `gt_world_from_est_world` applied to the estimate (identity for [`Alignment::None`]).
    pub gt_from_est: Sim3,
}

/// Index pairs `(gt, est)` matched in time, evo style.
pub fn associate(
    gt: &[StampedPose],
    est: &[StampedPose],
    t_max_diff_s: f64,
) -> Vec<(usize, usize)> {
    let est_longer = est.len() > gt.len();
    let (short, long) = if est_longer { (gt, est) } else { (est, gt) };
    let mut pairs = Vec::new();
    for (i_short, s) in short.iter().enumerate() {
        let mut best: Option<(usize, f64)> = None;
        for (i_long, l) in long.iter().enumerate() {
            let d = (l.timestamp_s - s.timestamp_s).abs();
            // Strictly smaller keeps the first minimum, as numpy's argmin does.
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((i_long, d));
            }
        }
        if let Some((i_long, d)) = best {
            if d <= t_max_diff_s {
                pairs.push(if est_longer {
                    (i_short, i_long)
                } else {
                    (i_long, i_short)
                });
            }
        }
    }
    pairs
}

fn positions(poses: &[StampedPose], idx: impl Iterator<Item = usize>) -> Vec<Point3<f64>> {
    idx.map(|i| Point3::from(poses[i].world_from_cam.translation.vector))
        .collect()
}

/// Absolute pose error, translation part, after the chosen alignment.
pub fn ape(
    gt: &[StampedPose],
    est: &[StampedPose],
    alignment: Alignment,
    t_max_diff_s: f64,
) -> Result<ApeResult, EvalError> {
    let pairs = associate(gt, est, t_max_diff_s);
    let needed = if alignment == Alignment::None { 1 } else { 3 };
    if pairs.len() < needed {
        return Err(EvalError::TooFewPairs {
            pairs: pairs.len(),
            needed,
            t_max_diff_s,
        });
    }
    let p_gt = positions(gt, pairs.iter().map(|p| p.0));
    let p_est = positions(est, pairs.iter().map(|p| p.1));
    let gt_from_est = match alignment {
        Alignment::None => Sim3::identity(),
        Alignment::Se3 => umeyama(&p_est, &p_gt, &vec![1.0; p_est.len()], false)?,
        Alignment::Sim3 => umeyama(&p_est, &p_gt, &vec![1.0; p_est.len()], true)?,
    };
    let errors: Vec<f64> = p_est
        .iter()
        .zip(&p_gt)
        .map(|(e, g)| (gt_from_est.transform_point(e) - g).norm())
        .collect();
    Ok(ApeResult {
        stats: ErrorStats::from_errors(&errors),
        gt_from_est,
    })
}

/// Reads two TUM files and computes [`ape`].
pub fn ape_from_files(
    gt_path: &Path,
    est_path: &Path,
    alignment: Alignment,
    t_max_diff_s: f64,
) -> Result<ErrorStats, EvalError> {
    let gt = read_trajectory(gt_path)?;
    let est = read_trajectory(est_path)?;
    Ok(ape(&gt, &est, alignment, t_max_diff_s)?.stats)
}

/// Relative pose error, translation part, over associated pose pairs `delta` apart (evo
/// `evo_rpe` with `--delta delta --delta_unit f`): for consecutive matched indices `i` and
/// `i + delta`, the norm of the translation of `(gt_i⁻¹ gt_j)⁻¹ (est_i⁻¹ est_j)`. With
/// [`Alignment::Sim3`] the estimate's scale is corrected first (rotation and translation do not
/// change relative motions).
pub fn rpe(
    gt: &[StampedPose],
    est: &[StampedPose],
    alignment: Alignment,
    delta: usize,
    t_max_diff_s: f64,
) -> Result<ErrorStats, EvalError> {
    let pairs = associate(gt, est, t_max_diff_s);
    let delta = delta.max(1);
    if pairs.len() <= delta {
        return Err(EvalError::TooFewPairs {
            pairs: pairs.len(),
            needed: delta + 1,
            t_max_diff_s,
        });
    }
    let scale = if alignment == Alignment::Sim3 {
        ape(gt, est, alignment, t_max_diff_s)?.gt_from_est.scale
    } else {
        1.0
    };
    let scaled = |iso: &Isometry3<f64>| {
        let mut out = *iso;
        out.translation.vector *= scale;
        out
    };
    let errors: Vec<f64> = (0..pairs.len() - delta)
        .map(|k| {
            let (gi, ei) = pairs[k];
            let (gj, ej) = pairs[k + delta];
            let rel_gt = gt[gi].world_from_cam.inverse() * gt[gj].world_from_cam;
            let rel_est =
                scaled(&est[ei].world_from_cam).inverse() * scaled(&est[ej].world_from_cam);
            (rel_gt.inverse() * rel_est).translation.vector.norm()
        })
        .collect();
    Ok(ErrorStats::from_errors(&errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{Translation3, UnitQuaternion};

    fn pose(t: f64, x: f64) -> StampedPose {
        StampedPose {
            timestamp_s: t,
            world_from_cam: Isometry3::from_parts(
                Translation3::new(x, 0.0, 0.0),
                UnitQuaternion::identity(),
            ),
        }
    }

    #[test]
    fn association_takes_nearest_within_tolerance() {
        let gt: Vec<_> = (0..10).map(|i| pose(i as f64 * 0.1, 0.0)).collect();
        let est = vec![pose(0.104, 0.0), pose(0.35, 0.0), pose(0.691, 0.0)];
        // 0.35 is 0.05 from both neighbours: no match within 0.01 s.
        assert_eq!(associate(&gt, &est, 0.01), vec![(1, 0), (7, 2)]);
    }

    #[test]
    fn stats_match_hand_values() {
        let s = ErrorStats::from_errors(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.median, 2.5);
        assert!((s.rmse - (30.0f64 / 4.0).sqrt()).abs() < 1e-15);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-15);
        assert_eq!((s.min, s.max, s.sse, s.pairs), (1.0, 4.0, 30.0, 4));
    }

    #[test]
    fn sim3_alignment_removes_scale_and_rpe_sees_none() {
        let gt: Vec<_> = (0..20)
            .map(|i| pose(i as f64, (i as f64 * 0.7).sin()))
            .collect();
        let mut est = gt.clone();
        for (k, p) in est.iter_mut().enumerate() {
            p.world_from_cam.translation.vector.x =
                3.0 * gt[k].world_from_cam.translation.vector.x + 1.0;
            p.world_from_cam.translation.vector.y = 0.5 * k as f64 * 1e-9;
        }
        let none = ape(&gt, &est, Alignment::None, 0.01).expect("ape");
        let sim = ape(&gt, &est, Alignment::Sim3, 0.01).expect("ape");
        assert!(none.stats.rmse > 0.5);
        assert!(sim.stats.rmse < 1e-6, "{}", sim.stats.rmse);
        let r = rpe(&gt, &est, Alignment::Sim3, 1, 0.01).expect("rpe");
        assert!(r.rmse < 1e-6, "{}", r.rmse);
    }
}
