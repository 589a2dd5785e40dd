//! The back-end: window predictions in, one consistent trajectory and map out.
//!
//! **Keyframe-level pose graph.** Every keyframe of every window is a node `world_from_cam`
//! (Sim(3), or SL(4) with [`GaugeModel::Sl4`]); a keyframe that two consecutive windows share has
//! one node in each. Three kinds of edges (see [`ConstraintKind`]):
//! - *intra*: between consecutive keyframes of one window, the relative pose the window predicts;
//! - *inter*: between the two copies of a shared keyframe, from the robust alignment of the
//!   points both windows predict at the same pixels of their shared frames (this carries the
//!   windows' relative scale, and their projective correction with SL(4));
//! - *loop*: between an old and a new keyframe, from a verified loop window.
//!
//! A window's *gauge* `G` is the frame its points live in: the window's pose gauge, or for SL(4)
//! with point maps the point map's frame (which may differ by a projective transform). For frame
//! `k` of window `s`, `E(k,s) = G_s_from_cam_k`, and its node is `world_from_G_s · E(k,s)`. The
//! world is the pose gauge of the first window. Each edge's information comes from the
//! prediction's expected error (intra: [`GraphConfig`]) or from the residuals of the fit that
//! measured it (inter and loop); odometry edges use a Huber kernel, loop edges the robust kernel
//! of [`LoopConfig::kernel`] (Huber by default), so one wrong loop cannot bend the map.
//!
//! **Loops** run in two steps so that the caller keeps control of the predictor:
//! [`Backend::push_window`] returns [`LoopCandidate`]s (found by appearance retrieval in the
//! covisibility graph and by proximity of the current pose estimates); the caller predicts each
//! candidate's small window and hands it to [`Backend::push_loop_window`], which verifies it
//! (reprojection overlap with an adaptive depth tolerance, alignment of the loop window to both
//! submaps with adaptive thresholds, consistency with the drift the graph can have accumulated,
//! and, after optimisation, the strain the loop puts on the other edges and its robust weight)
//! and reports a typed [`LoopOutcome`]. The same in two halves: [`Backend::verify_loop`] runs
//! the checks that leave the map as it is, [`Backend::close_loops`] the rest, for several loops
//! in one solve where they agree (the core closes a window's loops that way).
//!
//! Poses are camera-to-world (`world_from_cam`), OpenCV camera axes.
//!
//! Memory: only the latest submap keeps its frames' full-resolution maps (the next window is
//! aligned to it). When a newer submap arrives, the older one is *retired*: the depth,
//! confidence and point maps of the keyframes it owns are decimated by
//! `gcd(map.pixel_stride, align_pixel_stride)` (2 by default: a quarter of the pixels) with
//! intrinsics rescaled to match, which keeps exactly the pixels that the global map and loop
//! verification sample; the maps of keyframes it shares with the submap before it (owned there)
//! are released. Kept per keyframe: its nodes, those decimated maps, and its image (shared
//! `Arc`, needed to re-predict loop windows and to colour points).
//! [`Backend::retained_map_bytes`] reports the map bytes held.
//!
//! Over hours the kept maps and images grow with the keyframes, so they have a bound,
//! `map.max_retained_mib` (see [`Backend::retained_bytes`]). Over it, the retired keyframes
//! that a kept keyframe already covers (same place cell, a quarter of the first keyframe's
//! median depth wide, and the same viewing direction within about 30 degrees: a revisit) give
//! up their maps and pixels first, oldest revisit first; then, if still over, the oldest
//! keyframes do. A released keyframe keeps its nodes, edges and place in the trajectory; it
//! no longer adds points to the map or takes part in a loop window.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use nalgebra::{Isometry3, Matrix3, Matrix4, Point3, Translation3, UnitQuaternion};
use serde::{Deserialize, Serialize};

use crate::align::{apply_h, median_in_place, AlignError, Aligned, Correspondences, RobustConfig};
use crate::covis::{thumbnail_descriptor, CovisConfig, CovisError, CovisGraph};
use crate::lie::{nearest_rotation, Sim3, Sl4};
use crate::map::{confident_pixels, pixel_color, GlobalMap, MapConfig};
use crate::pose_graph::{
    Constraint, ConstraintKind, GraphNode, Information, Kernel, KernelKind, LmConfig, LmReport,
    PoseGraph, PoseGraphError,
};
use crate::prediction::{FramePrediction, Intrinsics, Map2, WindowFrame, WindowPrediction};

/// Which transform relates windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GaugeModel {
    /// Similarity (rotation, translation, scale), from depth and poses.
    #[default]
    Sim3,
    /// Projective 4x4 (as VGGT-SLAM), from point maps when the predictor gives them.
    Sl4,
}

/// Loop-closure settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Look for loops at all. Default true.
    pub enabled: bool,
    /// Minimum descriptor cosine similarity of an appearance candidate. Default 0.85.
    pub min_similarity: f32,
    /// Minimum distance in keyframes between the two frames of a loop. Default 16.
    pub min_keyframe_gap: usize,
    /// Candidates proposed per window at most. Default 2.
    pub max_candidates_per_window: usize,
    /// Also propose old keyframes whose current pose estimate is close to a new one's (a
    /// revisit seen from another side or under other light still gets checked). Default true.
    pub proximity: bool,
    /// Proximity radius, as a fraction of the old keyframe's median depth. Default 0.5.
    pub proximity_radius_rel: f64,
    /// Largest angle between the two optical axes of a proximity candidate, degrees.
    /// Default 35.
    pub proximity_max_angle_deg: f64,
    /// Minimum fraction of the query frame's points that land on the matched frame with a
    /// consistent depth in the loop window. Default 0.3.
    pub min_overlap_ratio: f64,
    /// The relative depth disagreement between the two frames in the loop window (its robust
    /// standard deviation) may be at most this many times the disagreement between
    /// neighbouring frames of the same loop window (the predictor's own noise there)...
    /// Default 3.
    pub disagreement_factor: f64,
    /// ...and never more than this. Default 0.2.
    pub max_depth_disagreement_rel: f64,
    /// Minimum inlier ratio of both alignments of the loop window (under their adaptive
    /// thresholds). Default 0.5.
    pub min_inlier_ratio: f64,
    /// Largest relative noise (robust residual standard deviation over depth) of both
    /// alignments of the loop window. Default 0.08.
    pub max_alignment_noise_rel: f64,
    /// Largest disagreement between the loop and the current estimate, as a fraction of the
    /// path travelled between the two keyframes (VGGT-level drift stays under 0.15 in the
    /// revisit tests)... Default 0.3.
    pub max_drift_rel: f64,
    /// ...plus this fraction of the old keyframe's median depth. Default 0.1.
    pub max_drift_offset_rel: f64,
    /// Largest rotation disagreement between the loop and the current estimate, degrees...
    /// Default 15.
    pub max_rotation_drift_deg: f64,
    /// ...plus this much per keyframe between the two (rotation drift grows along the path).
    /// Default 0.1.
    pub rotation_drift_deg_per_keyframe: f64,
    /// Largest cost a loop may add to the other edges once the map agrees with it (sum of
    /// their whitened squares): this much... Default 24.3 (χ² of 7 degrees of freedom at
    /// 99.9 %).
    pub max_strain_chi2: f64,
    /// ...plus this much per keyframe between its ends (drift spread along the path).
    /// Default 0.1.
    pub max_strain_per_edge: f64,
    /// Robust kernel of loop edges: `huber`, `cauchy` or `quadratic`. Default `huber`.
    pub kernel: KernelKind,
    /// Its scale, in standard deviations. Default 3.
    pub kernel_scale: f64,
    /// A loop edge whose robust weight after optimisation falls below this is taken out again
    /// (the rest of the map disagrees with it). Default 0.05.
    pub min_robust_weight: f64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_similarity: 0.85,
            min_keyframe_gap: 16,
            max_candidates_per_window: 2,
            proximity: true,
            proximity_radius_rel: 0.5,
            proximity_max_angle_deg: 35.0,
            min_overlap_ratio: 0.3,
            disagreement_factor: 3.0,
            max_depth_disagreement_rel: 0.2,
            min_inlier_ratio: 0.5,
            max_alignment_noise_rel: 0.08,
            max_drift_rel: 0.3,
            max_drift_offset_rel: 0.1,
            max_rotation_drift_deg: 15.0,
            rotation_drift_deg_per_keyframe: 0.1,
            max_strain_chi2: 24.3,
            max_strain_per_edge: 0.1,
            kernel: KernelKind::Huber,
            kernel_scale: 3.0,
            min_robust_weight: 0.05,
        }
    }
}

/// Expected errors of a window's own predictions, which weigh the intra-window edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// Standard deviation of the relative rotation of consecutive keyframes, degrees.
    /// Default 0.5.
    pub intra_rotation_sigma_deg: f64,
    /// Standard deviation of their relative translation, as a fraction of the window's median
    /// depth. Default 0.01.
    pub intra_translation_sigma_rel: f64,
    /// Standard deviation of their relative log-scale (a window has one scale). Default 0.002.
    pub intra_scale_sigma: f64,
    /// Smallest standard deviation of an inter-window edge, relative. Default 0.002.
    pub inter_sigma_floor_rel: f64,
    /// Huber kernel scale of intra and inter edges, in standard deviations. Default 3.
    pub odometry_huber: f64,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            intra_rotation_sigma_deg: 0.5,
            intra_translation_sigma_rel: 0.01,
            intra_scale_sigma: 0.002,
            inter_sigma_floor_rel: 0.002,
            odometry_huber: 3.0,
        }
    }
}

/// Back-end settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Sim(3) or SL(4) between windows. Default Sim(3).
    pub gauge: GaugeModel,
    /// Robust estimator settings.
    pub align: RobustConfig,
    /// Pixel stride when sampling correspondences in shared frames. Default 4.
    pub align_pixel_stride: usize,
    /// Minimum correspondences for an alignment. Default 50.
    pub min_align_points: usize,
    /// Most correspondences an alignment uses, evenly spread over the shared frames' pixels
    /// (0: all). A robust fit gains little beyond a few thousand pairs, and without a cap its
    /// cost grows with the resolution and the frames two windows share. Default 4096.
    pub max_align_points: usize,
    /// Covisibility graph settings.
    pub covis: CovisConfig,
    /// Loop closure settings.
    pub loops: LoopConfig,
    /// Edge weighting of the keyframe pose graph.
    pub graph: GraphConfig,
    /// Pose-graph optimiser settings.
    pub pose_graph: LmConfig,
    /// Global map settings.
    pub map: MapConfig,
    /// Windows arrive in metres (their scale was fitted to a depth sensor): windows are aligned
    /// rigidly and the graph keeps their scale. Set by the core for `--metric-scale depth`.
    #[serde(skip)]
    pub known_scale: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            gauge: GaugeModel::Sim3,
            align: RobustConfig::default(),
            align_pixel_stride: 4,
            min_align_points: 50,
            max_align_points: 4096,
            covis: CovisConfig::default(),
            loops: LoopConfig::default(),
            graph: GraphConfig::default(),
            pose_graph: LmConfig::default(),
            map: MapConfig::default(),
            known_scale: false,
        }
    }
}

/// Error of the back-end.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The prediction has no frames, non-finite values or inconsistent map sizes.
    #[error("invalid window prediction: {reason}")]
    InvalidPrediction {
        /// What is wrong.
        reason: &'static str,
    },
    /// A window shares no keyframe with the previous submap.
    #[error("window with frames {first}..={last} shares no keyframe with submap {previous}")]
    NoOverlap {
        /// Previous submap.
        previous: usize,
        /// First frame id of the window.
        first: u64,
        /// Last frame id of the window.
        last: u64,
    },
    /// Too few correspondences in the shared frames.
    #[error("submap {submap}: only {got} correspondences in shared frames (need {needed})")]
    TooFewCorrespondences {
        /// Submap being aligned.
        submap: usize,
        /// Found.
        got: usize,
        /// Needed.
        needed: usize,
    },
    /// The robust alignment failed.
    #[error("submap {submap}: alignment failed: {source}")]
    Align {
        /// Submap being aligned.
        submap: usize,
        /// Cause.
        source: AlignError,
    },
    /// Covisibility graph error.
    #[error(transparent)]
    Covis(#[from] CovisError),
    /// Pose graph error.
    #[error(transparent)]
    PoseGraph(#[from] PoseGraphError),
    /// A loop candidate names a submap that does not exist.
    #[error("loop candidate names submap {submap}, which does not exist")]
    UnknownSubmap {
        /// The submap.
        submap: usize,
    },
}

/// A keyframe's current pose estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyframePose {
    /// Stream-wide frame id.
    pub frame_id: u64,
    /// Capture time, seconds.
    pub timestamp_s: f64,
    /// Submap whose prediction places this keyframe.
    pub submap: usize,
    /// Camera-to-world rotation and camera position (world units; scale is not part of a pose).
    pub world_from_cam: Isometry3<f64>,
}

/// A keyframe as a camera, for exports.
#[derive(Debug, Clone)]
pub struct KeyframeCamera {
    /// Stream-wide frame id.
    pub frame_id: u64,
    /// Capture time, seconds.
    pub timestamp_s: f64,
    /// Camera-to-world (world units).
    pub world_from_cam: Isometry3<f64>,
    /// Intrinsics in pixels of `image` (pixel centres at integer coordinates).
    pub intrinsics: Intrinsics,
    /// The pixels the keyframe's prediction was made from.
    pub image: Arc<image::RgbImage>,
}

/// Support of an alignment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlignmentReport {
    /// Inlier correspondences.
    pub inliers: usize,
    /// Correspondences used.
    pub total: usize,
    /// RMS residual of inliers, destination submap units.
    pub inlier_rmse: f64,
    /// Robust residual standard deviation relative to depth.
    pub noise_rel: f64,
}

impl<T> From<&Aligned<T>> for AlignmentReport {
    fn from(a: &Aligned<T>) -> Self {
        Self {
            inliers: a.inliers,
            total: a.total,
            inlier_rmse: a.inlier_rmse,
            noise_rel: a.noise,
        }
    }
}

/// How a loop candidate was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateSource {
    /// Image descriptors alike.
    Appearance,
    /// Current pose estimates close.
    Proximity,
    /// Proposed by the caller ([`Backend::propose_loop`]).
    External,
}

/// A proposed loop: predict [`LoopCandidate::window`] and pass it to
/// [`Backend::push_loop_window`].
#[derive(Debug, Clone)]
pub struct LoopCandidate {
    /// The new keyframe.
    pub query_frame: u64,
    /// The old keyframe it resembles.
    pub match_frame: u64,
    /// Submap of the old keyframe.
    pub match_submap: usize,
    /// Submap of the new keyframe.
    pub query_submap: usize,
    /// Descriptor similarity (NaN when a frame has no descriptor).
    pub similarity: f32,
    /// How it was found.
    pub source: CandidateSource,
    /// Frames to predict together (old frames first), images as stored by the back-end.
    pub window: Vec<WindowFrame>,
}

/// A loop that passed verification.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopClosure {
    /// The new keyframe.
    pub query_frame: u64,
    /// The old keyframe.
    pub match_frame: u64,
    /// Old submap.
    pub match_submap: usize,
    /// New submap.
    pub query_submap: usize,
    /// Fraction of consistent reprojections in the loop window.
    pub overlap_ratio: f64,
    /// Relative noise of the two alignments (match side, query side).
    pub alignment_noise: (f64, f64),
    /// Correction the loop asked for before optimisation: translation in world units and
    /// rotation in degrees.
    pub correction: (f64, f64),
    /// Robust weight of the loop edge after optimisation.
    pub robust_weight: f64,
}

/// Why a loop candidate was not accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopRejection {
    /// The predictor failed on the loop window, or returned non-finite values.
    Prediction(String),
    /// The query or match frame is missing from the loop prediction.
    MissingFrames,
    /// Too few of the query's points land on the match frame in the loop window.
    LowOverlap {
        /// Fraction found.
        overlap: f64,
        /// Fraction needed.
        needed: f64,
    },
    /// The two frames' depths disagree too much where they overlap.
    DepthDisagreement {
        /// Robust relative disagreement.
        noise: f64,
        /// Largest allowed.
        max: f64,
    },
    /// Aligning the loop window to one of the submaps failed or was too poor.
    Alignment {
        /// `"match"` or `"query"`.
        side: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The loop disagrees with the current estimate by more than the drift allows.
    Drift {
        /// Translation disagreement, world units.
        translation: f64,
        /// Allowed, world units.
        allowed: f64,
        /// Rotation disagreement, degrees.
        rotation_deg: f64,
        /// Allowed, degrees.
        allowed_deg: f64,
    },
    /// Agreeing with the loop would strain the other edges more than their noise allows.
    Strain {
        /// Cost the loop adds to the other edges (whitened squares).
        strain: f64,
        /// Allowed.
        allowed: f64,
    },
    /// After optimisation the rest of the map outweighed the loop edge.
    Graph {
        /// The edge's robust weight.
        robust_weight: f64,
    },
}

impl std::fmt::Display for LoopRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Prediction(e) => write!(f, "loop window prediction failed: {e}"),
            Self::MissingFrames => write!(f, "query or match frame missing from the prediction"),
            Self::LowOverlap { overlap, needed } => {
                write!(f, "overlap {overlap:.2} below {needed:.2}")
            }
            Self::DepthDisagreement { noise, max } => {
                write!(f, "depth disagreement {noise:.3} above {max:.3}")
            }
            Self::Alignment { side, reason } => write!(f, "{side} side: {reason}"),
            Self::Drift {
                translation,
                allowed,
                rotation_deg,
                allowed_deg,
            } => write!(
                f,
                "correction {translation:.3} (allowed {allowed:.3}) and {rotation_deg:.1} degrees (allowed {allowed_deg:.1}) exceeds the possible drift"
            ),
            Self::Strain { strain, allowed } => write!(
                f,
                "agreeing with it strains the map by {strain:.1} (allowed {allowed:.1})"
            ),
            Self::Graph { robust_weight } => write!(
                f,
                "the map outweighs the loop edge (robust weight {robust_weight:.3})"
            ),
        }
    }
}

/// The result of one loop verification.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopOutcome {
    /// Verified and added to the graph.
    Closed(LoopClosure),
    /// Rejected, with the reason.
    Rejected(LoopRejection),
}

/// What [`Backend::push_window`] changed.
#[derive(Debug, Clone)]
pub struct WindowUpdate {
    /// Index of the new submap.
    pub submap: usize,
    /// Poses of the keyframes first seen in this window.
    pub new_keyframes: Vec<KeyframePose>,
    /// Alignment to the previous submap (`None` for the first).
    pub alignment: Option<AlignmentReport>,
    /// Loops to verify.
    pub loop_candidates: Vec<LoopCandidate>,
}

/// What [`Backend::push_loop_window`] changed.
#[derive(Debug, Clone)]
pub struct LoopUpdate {
    /// The new keyframe of the candidate.
    pub query_frame: u64,
    /// The old keyframe of the candidate.
    pub match_frame: u64,
    /// How the candidate was found.
    pub source: CandidateSource,
    /// Closed or rejected.
    pub outcome: LoopOutcome,
    /// Submaps whose placement changed.
    pub moved_submaps: Vec<usize>,
    /// Optimisation report when the graph was re-optimised.
    pub optimisation: Option<LmReport>,
}

impl LoopUpdate {
    /// The closure, when the loop was accepted.
    pub fn closure(&self) -> Option<&LoopClosure> {
        match &self.outcome {
            LoopOutcome::Closed(c) => Some(c),
            LoopOutcome::Rejected(_) => None,
        }
    }

    /// A rejected update for a candidate.
    pub fn rejected(candidate: &LoopCandidate, why: LoopRejection) -> Self {
        Self::rejected_between(
            candidate.query_frame,
            candidate.match_frame,
            candidate.source,
            why,
        )
    }

    fn rejected_between(
        query_frame: u64,
        match_frame: u64,
        source: CandidateSource,
        why: LoopRejection,
    ) -> Self {
        Self {
            query_frame,
            match_frame,
            source,
            outcome: LoopOutcome::Rejected(why),
            moved_submaps: Vec::new(),
            optimisation: None,
        }
    }
}

/// What [`Backend::verify_loop`] found.
#[derive(Debug, Clone)]
pub enum LoopCheck {
    /// Passed every check that leaves the map as it is; [`Backend::close_loops`] decides the
    /// rest.
    Verified(VerifiedLoop),
    /// Failed one of them.
    Rejected(LoopUpdate),
}

/// A loop that passed [`Backend::verify_loop`], with the edge that would close it.
#[derive(Debug, Clone)]
pub struct VerifiedLoop {
    source: CandidateSource,
    /// The closure as checked (its robust weight is set once it is solved).
    closure: LoopClosure,
    edge: LoopEdge,
    bound: StrainBound,
}

impl VerifiedLoop {
    /// The update of this loop rejected when solved.
    fn rejected(&self, why: LoopRejection) -> LoopUpdate {
        LoopUpdate::rejected_between(
            self.closure.query_frame,
            self.closure.match_frame,
            self.source,
            why,
        )
    }
}

/// A submap's placement in the world, with a revision that increases whenever it moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubmapTransform {
    /// Submap index.
    pub index: usize,
    /// `world_from_submap` (the submap's gauge frame) as a homogeneous matrix, as its first
    /// own keyframe places it (keyframes of one submap may bend apart slightly after loops).
    pub world_from_submap: Matrix4<f64>,
    /// Starts at 0, increases each time the submap moves.
    pub revision: u64,
}

/// Group operations the back-end needs of a node type.
trait Gauge: GraphNode + std::ops::Mul<Output = Self> {
    fn from_camera(pointmap_from_window: &Sl4, window_from_cam: &Isometry3<f64>) -> Self;
    fn inverted(&self) -> Self;
    fn to_matrix(&self) -> Matrix4<f64>;
    /// A pure scaling by `s`.
    fn scaling(s: f64) -> Self;
    /// Robust `dst_from_src` of the correspondences (`with_scale` only matters for Sim(3)).
    fn align(
        c: &Correspondences,
        with_scale: bool,
        config: &RobustConfig,
    ) -> Result<Aligned<Self>, AlignError>;
    /// Camera centre and rotation of a `world_from_cam` node ([`pose_of_matrix`]).
    fn camera_pose(&self) -> Option<Isometry3<f64>> {
        pose_of_matrix(&self.to_matrix())
    }
    /// A loop edge of this node type, kept between its check and its solve.
    fn loop_edge(edge: Constraint<Self>) -> LoopEdge;
    /// The edge back; `None` for an edge of the other node type.
    fn of_loop_edge(edge: &LoopEdge) -> Option<Constraint<Self>>;
}

/// A verified loop's edge, in the node type of the graph that checked it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LoopEdge {
    Sim3(Constraint<Sim3>),
    Sl4(Constraint<Sl4>),
}

impl Gauge for Sim3 {
    fn scaling(s: f64) -> Self {
        Sim3::new(UnitQuaternion::identity(), nalgebra::Vector3::zeros(), s)
    }

    fn from_camera(_: &Sl4, window_from_cam: &Isometry3<f64>) -> Self {
        Sim3::from_isometry(window_from_cam)
    }

    fn inverted(&self) -> Self {
        self.inverse()
    }

    fn to_matrix(&self) -> Matrix4<f64> {
        self.to_homogeneous()
    }

    /// A similarity holds its rotation and centre: no decomposition (the map's trajectory is
    /// read every window).
    fn camera_pose(&self) -> Option<Isometry3<f64>> {
        self.translation
            .iter()
            .all(|v| v.is_finite())
            .then(|| Isometry3::from_parts(Translation3::from(self.translation), self.rotation))
    }

    fn align(
        c: &Correspondences,
        with_scale: bool,
        config: &RobustConfig,
    ) -> Result<Aligned<Self>, AlignError> {
        c.align_sim3(with_scale, config)
    }

    fn loop_edge(edge: Constraint<Self>) -> LoopEdge {
        LoopEdge::Sim3(edge)
    }

    fn of_loop_edge(edge: &LoopEdge) -> Option<Constraint<Self>> {
        match edge {
            LoopEdge::Sim3(e) => Some(*e),
            LoopEdge::Sl4(_) => None,
        }
    }
}

impl Gauge for Sl4 {
    fn scaling(s: f64) -> Self {
        Sl4::from_sim3(&Sim3::scaling(s))
    }

    fn from_camera(pointmap_from_window: &Sl4, window_from_cam: &Isometry3<f64>) -> Self {
        *pointmap_from_window * Sl4::from_sim3(&Sim3::from_isometry(window_from_cam))
    }

    fn inverted(&self) -> Self {
        self.inverse()
    }

    fn to_matrix(&self) -> Matrix4<f64> {
        *self.matrix()
    }

    fn align(
        c: &Correspondences,
        _: bool,
        config: &RobustConfig,
    ) -> Result<Aligned<Self>, AlignError> {
        c.align_sl4(config)
    }

    fn loop_edge(edge: Constraint<Self>) -> LoopEdge {
        LoopEdge::Sl4(edge)
    }

    fn of_loop_edge(edge: &LoopEdge) -> Option<Constraint<Self>> {
        match edge {
            LoopEdge::Sl4(e) => Some(*e),
            LoopEdge::Sim3(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Graph {
    Sim3(PoseGraph<Sim3>),
    Sl4(PoseGraph<Sl4>),
}

/// Runs `$body` with `$g` bound to the graph's concrete `PoseGraph`.
macro_rules! with_graph {
    ($graph:expr, $g:ident => $body:expr) => {
        match $graph {
            Graph::Sim3($g) => $body,
            Graph::Sl4($g) => $body,
        }
    };
}

#[derive(Debug, Clone)]
struct Submap {
    frames: Vec<FramePrediction>,
    /// `pointmap_from_window`: identity for Sim(3) or without point maps.
    pointmap_from_window: Sl4,
    /// Graph node of each frame.
    nodes: Vec<usize>,
    /// Median confident depth of the window, window units.
    median_depth: f64,
    revision: u64,
    /// Decimation of the owned frames' maps: 1 while this is the latest submap, then
    /// [`Backend::retained_step`]. Frames owned by another submap have empty maps once retired.
    step: usize,
}

impl Submap {
    fn window_from_cam(&self, k: usize) -> Isometry3<f64> {
        self.frames[k].cam_from_window.inverse()
    }

    /// `E(k) = G_from_cam_k`.
    fn gauge_from_cam<T: Gauge>(&self, k: usize) -> T {
        T::from_camera(&self.pointmap_from_window, &self.window_from_cam(k))
    }
}

/// Every `step`-th element of a `width x height` row-major map along both axes.
fn decimate<T: Copy>(map: &Map2<T>, step: usize) -> Map2<T> {
    let width = map.width.div_ceil(step);
    let height = map.height.div_ceil(step);
    let mut data = Vec::with_capacity(width * height);
    for v in (0..map.height).step_by(step) {
        for u in (0..map.width).step_by(step) {
            data.push(map.data[v * map.width + u]);
        }
    }
    Map2 {
        width,
        height,
        data,
    }
}

fn empty_map<T>() -> Map2<T> {
    Map2 {
        width: 0,
        height: 0,
        data: Vec::new(),
    }
}

fn map_bytes<T>(map: &Map2<T>) -> usize {
    map.data.capacity() * std::mem::size_of::<T>()
}

/// Camera centre and rotation of a `world_from_cam` 4x4 (similarity or projective).
fn pose_of_matrix(world_from_cam: &Matrix4<f64>) -> Option<Isometry3<f64>> {
    let centre = apply_h(world_from_cam, &Point3::origin());
    let cam_from_world = world_from_cam.try_inverse()?;
    // cam_from_world's left 3x3 block is proportional to the rotation (exactly for Sim(3)).
    let mut block: Matrix3<f64> = cam_from_world.fixed_view::<3, 3>(0, 0).into();
    if block.determinant() < 0.0 {
        block = -block;
    }
    let rotation: UnitQuaternion<f64> = nearest_rotation(&block).inverse();
    centre
        .coords
        .iter()
        .all(|v| v.is_finite())
        .then(|| Isometry3::from_parts(Translation3::from(centre.coords), rotation))
}

/// World units per window unit near a `world_from_cam` node.
fn scale_of_matrix(world_from_cam: &Matrix4<f64>) -> f64 {
    let m = world_from_cam / world_from_cam[(3, 3)];
    let block: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into();
    block.determinant().abs().cbrt()
}

/// The place a camera is at, for finding revisits: its centre on a grid of `cell` world units,
/// and which of 26 directions (the faces, edges and corners of a cube) its optical axis is
/// nearest to, about 30 degrees wide each.
fn place_cell(world_from_cam: &Isometry3<f64>, cell: f64) -> ([i64; 3], [i8; 3]) {
    let c = world_from_cam.translation.vector / cell;
    let axis = world_from_cam.rotation * nalgebra::Vector3::z();
    let largest = axis.amax().max(1e-12);
    // Components within tan(22.5 deg) of the largest count as part of the direction.
    let part = |x: f64| -> i8 {
        if x.abs() / largest < 0.414 {
            0
        } else {
            x.signum() as i8
        }
    };
    (
        [c.x.floor() as i64, c.y.floor() as i64, c.z.floor() as i64],
        [part(axis.x), part(axis.y), part(axis.z)],
    )
}

/// The back-end.
#[derive(Debug, Clone)]
pub struct Backend {
    config: BackendConfig,
    submaps: Vec<Submap>,
    graph: Graph,
    covis: CovisGraph,
    /// frame id -> (submap, index in the submap) of the prediction that places it.
    owner: BTreeMap<u64, (usize, usize)>,
    loops: Vec<LoopClosure>,
    /// `(match submap, query submap)` of every loop closed (candidates skip a closed pair).
    looped_pairs: HashSet<(usize, usize)>,
    last_report: Option<LmReport>,
    /// Median confident depth of the first keyframe (world units), set by the first window.
    reference_depth: f64,
    /// Keyframes whose maps and pixels were released under `map.max_retained_mib`.
    released: BTreeSet<u64>,
    /// How many of them were revisits of a kept keyframe's place, and how many the oldest.
    released_counts: ReleasedKeyframes,
    /// What a released keyframe's frames hold instead of their pixels.
    no_pixels: Arc<image::RgbImage>,
}

/// Keyframes released under the memory bound (`map.max_retained_mib`), by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReleasedKeyframes {
    /// A kept keyframe covers the same place and direction.
    pub revisits: u64,
    /// The oldest, released when no revisit was left to release.
    pub oldest: u64,
}

/// Old keyframes retrieval proposes per new keyframe, at most.
const RETRIEVED: usize = 3;

impl Backend {
    /// An empty back-end.
    pub fn new(config: BackendConfig) -> Self {
        let graph = match config.gauge {
            GaugeModel::Sim3 => Graph::Sim3(PoseGraph::new()),
            GaugeModel::Sl4 => Graph::Sl4(PoseGraph::new()),
        };
        let mut covis = CovisGraph::new(config.covis.clone());
        if config.loops.enabled {
            let loops = &config.loops;
            covis.prepare_retrieval(loops.min_keyframe_gap, loops.min_similarity, RETRIEVED);
        }
        Self {
            config,
            submaps: Vec::new(),
            graph,
            covis,
            owner: BTreeMap::new(),
            loops: Vec::new(),
            looped_pairs: HashSet::new(),
            last_report: None,
            reference_depth: 0.0,
            released: BTreeSet::new(),
            released_counts: ReleasedKeyframes::default(),
            no_pixels: Arc::new(image::RgbImage::new(0, 0)),
        }
    }

    /// Decimation step of retired submaps' maps: the largest that keeps every pixel the map
    /// (`map.pixel_stride`) and loop verification (`align_pixel_stride`) sample.
    pub fn retained_step(&self) -> usize {
        let (mut a, mut b) = (
            self.config.map.pixel_stride.max(1),
            self.config.align_pixel_stride.max(1),
        );
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }

    /// Bytes of depth, confidence and point maps held by all submaps (images excluded: they are
    /// shared `Arc`s, one per keyframe).
    pub fn retained_map_bytes(&self) -> usize {
        self.submaps
            .iter()
            .flat_map(|s| &s.frames)
            .map(|f| {
                map_bytes(&f.depth)
                    + map_bytes(&f.depth_conf)
                    + f.points_in_window
                        .as_deref()
                        .map_or(0, |(p, c)| map_bytes(p) + map_bytes(c))
            })
            .sum()
    }

    /// What `map.max_retained_mib` bounds: [`Backend::retained_map_bytes`] plus the pixels of
    /// every keyframe not released (one image per keyframe, however many submaps share it).
    pub fn retained_bytes(&self) -> usize {
        let pixels: usize = self
            .owner
            .iter()
            .filter(|(id, _)| !self.released.contains(id))
            .map(|(_, &(s, k))| self.submaps[s].frames[k].image.as_raw().capacity())
            .sum();
        self.retained_map_bytes() + pixels
    }

    /// Keyframes released under the memory bound so far.
    pub fn released_keyframes(&self) -> ReleasedKeyframes {
        self.released_counts
    }

    /// Whether keyframe `frame_id` gave up its maps and pixels under the memory bound.
    pub fn is_released(&self, frame_id: u64) -> bool {
        self.released.contains(&frame_id)
    }

    /// Releases retired keyframes until [`Backend::retained_bytes`] is within
    /// `map.max_retained_mib`: revisits first, then the oldest (see the module docs).
    fn enforce_bound(&mut self) {
        let bound_mib = self.config.map.max_retained_mib;
        if bound_mib.is_nan() || bound_mib <= 0.0 || self.submaps.len() < 2 {
            return;
        }
        let bound = (bound_mib * 1024.0 * 1024.0) as usize;
        let mut held = self.retained_bytes();
        if held <= bound {
            return;
        }
        let latest = self.submaps.len() - 1;
        // The next window is aligned to the latest submap: its frames (those it shares with
        // the submap before it included) keep their maps.
        let in_latest: HashSet<u64> = self.submaps[latest]
            .frames
            .iter()
            .map(|f| f.frame_id)
            .collect();
        // Retired keyframes that still hold maps, oldest first (frame ids grow with time).
        let candidates: Vec<u64> = self
            .owner
            .iter()
            .filter(|(id, &(s, _))| {
                s < latest && !self.released.contains(id) && !in_latest.contains(id)
            })
            .map(|(&id, _)| id)
            .collect();
        let mut revisits = Vec::new();
        if self.reference_depth > 0.0 {
            let cell = 0.25 * self.reference_depth;
            let mut kept_places = HashSet::new();
            for &id in &candidates {
                let Some(pose) = self.keyframe_pose(id) else {
                    continue;
                };
                if !kept_places.insert(place_cell(&pose.world_from_cam, cell)) {
                    revisits.push(id);
                }
            }
        }
        for id in revisits {
            if held <= bound {
                return;
            }
            held = held.saturating_sub(self.release(id));
            self.released_counts.revisits += 1;
        }
        for id in candidates {
            if held <= bound {
                return;
            }
            if self.released.contains(&id) {
                continue;
            }
            held = held.saturating_sub(self.release(id));
            self.released_counts.oldest += 1;
        }
    }

    /// Drops keyframe `frame_id`'s maps and pixels from every submap that holds it; returns the
    /// bytes freed. Its owner is the first submap that holds it, and windows share keyframes
    /// with the one before, so its copies are the submaps from the owner on, up to the first
    /// that lacks it (however large the windows' overlap).
    fn release(&mut self, frame_id: u64) -> usize {
        let Some(&(s, _)) = self.owner.get(&frame_id) else {
            return 0;
        };
        let mut freed = 0;
        let mut pixels = 0;
        let holding = self.submaps[s..]
            .iter_mut()
            .take_while(|sub| sub.frames.iter().any(|f| f.frame_id == frame_id));
        for sub in holding {
            for f in sub.frames.iter_mut().filter(|f| f.frame_id == frame_id) {
                freed += map_bytes(&f.depth)
                    + map_bytes(&f.depth_conf)
                    + f.points_in_window
                        .as_deref()
                        .map_or(0, |(p, c)| map_bytes(p) + map_bytes(c));
                pixels = pixels.max(f.image.as_raw().capacity());
                f.depth = empty_map();
                f.depth_conf = empty_map();
                f.points_in_window = None;
                f.image = Arc::clone(&self.no_pixels);
            }
        }
        self.covis.forget_descriptor(frame_id);
        self.released.insert(frame_id);
        freed + pixels
    }

    /// Shrinks submap `s` to what later steps need (see the module docs).
    fn retire(&mut self, s: usize) {
        let step = self.retained_step();
        let owner = &self.owner;
        let Some(submap) = self.submaps.get_mut(s) else {
            return;
        };
        if submap.step != 1 {
            return;
        }
        submap.step = step;
        for (k, f) in submap.frames.iter_mut().enumerate() {
            if owner.get(&f.frame_id) != Some(&(s, k)) {
                f.depth = empty_map();
                f.depth_conf = empty_map();
                f.points_in_window = None;
                continue;
            }
            if step == 1 {
                continue;
            }
            f.depth = decimate(&f.depth, step);
            f.depth_conf = decimate(&f.depth_conf, step);
            f.points_in_window = f
                .points_in_window
                .as_deref()
                .map(|(p, c)| Box::new((decimate(p, step), decimate(c, step))));
            // Pixel i of the decimated maps is pixel step * i of the full ones.
            let scale = step as f64;
            f.intrinsics = Intrinsics {
                fx: f.intrinsics.fx / scale,
                fy: f.intrinsics.fy / scale,
                cx: f.intrinsics.cx / scale,
                cy: f.intrinsics.cy / scale,
            };
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Number of submaps.
    pub fn num_submaps(&self) -> usize {
        self.submaps.len()
    }

    /// The covisibility graph over keyframes.
    pub fn covisibility(&self) -> &CovisGraph {
        &self.covis
    }

    /// Adds a keyframe to the covisibility graph before its window is predicted (so that the
    /// window's attention lists can use it). Windows add their keyframes themselves otherwise.
    pub fn add_keyframe(&mut self, frame: &WindowFrame) -> Result<(), BackendError> {
        if self.covis.index_of(frame.frame_id).is_none() {
            self.covis
                .add_keyframe(frame.frame_id, &thumbnail_descriptor(&frame.image))?;
        }
        Ok(())
    }

    /// Verified loops so far.
    pub fn loops(&self) -> &[LoopClosure] {
        &self.loops
    }

    /// The report of the last pose-graph optimisation.
    pub fn last_optimisation(&self) -> Option<&LmReport> {
        self.last_report.as_ref()
    }

    /// Residuals of every edge kind at the current estimate.
    pub fn residuals(&self) -> LmReport {
        with_graph!(&self.graph, g => g.report(0, g.cost(), g.cost()))
    }

    /// Number of pose-graph nodes (keyframe copies) and edges.
    pub fn graph_size(&self) -> (usize, usize) {
        with_graph!(&self.graph, g => (g.nodes().len(), g.constraints().len()))
    }

    fn intra_information(&self, median_depth: f64) -> Information {
        let g = &self.config.graph;
        let scale_sigma = if self.config.known_scale {
            g.intra_scale_sigma.min(1e-4)
        } else {
            g.intra_scale_sigma
        };
        Information::from_sigmas(
            g.intra_rotation_sigma_deg.to_radians(),
            g.intra_translation_sigma_rel * median_depth,
            scale_sigma,
        )
    }

    /// Adds a window prediction as a new submap.
    pub fn push_window(
        &mut self,
        prediction: WindowPrediction,
    ) -> Result<WindowUpdate, BackendError> {
        check_finite(&prediction)?;
        self.push_finite_window(prediction)
    }

    /// [`Backend::push_window`] for a prediction its caller has already found finite
    /// ([`WindowPrediction::is_finite`] reads every value of the window).
    pub(crate) fn push_finite_window(
        &mut self,
        prediction: WindowPrediction,
    ) -> Result<WindowUpdate, BackendError> {
        validate_shape(&prediction)?;
        let index = self.submaps.len();
        let pointmap_from_window = self.pointmap_from_window(&prediction.frames);
        let mut frames = prediction.frames;
        if self.config.gauge == GaugeModel::Sim3 {
            // Sim(3) works from depth and poses only; point maps would just hold memory.
            frames.iter_mut().for_each(|f| f.points_in_window = None);
        }
        let median_depth = window_median_depth(&frames);
        let mut submap = Submap {
            frames,
            pointmap_from_window,
            nodes: Vec::new(),
            median_depth,
            revision: 0,
            step: 1,
        };
        // The alignment to the previous submap, at the first shared frame.
        let link = if let Some(prev) = self.submaps.last() {
            let c =
                self.correspondences(&submap.frames, &prev.frames, self.config.align_pixel_stride);
            if c.len() < self.config.min_align_points {
                if !submap
                    .frames
                    .iter()
                    .any(|f| prev.frames.iter().any(|p| p.frame_id == f.frame_id))
                {
                    return Err(BackendError::NoOverlap {
                        previous: index - 1,
                        first: submap.frames[0].frame_id,
                        last: submap.frames[submap.frames.len() - 1].frame_id,
                    });
                }
                return Err(BackendError::TooFewCorrespondences {
                    submap: index,
                    got: c.len(),
                    needed: self.config.min_align_points,
                });
            }
            let (k_cur, k_prev) = submap
                .frames
                .iter()
                .enumerate()
                .find_map(|(k, f)| {
                    prev.frames
                        .iter()
                        .position(|p| p.frame_id == f.frame_id)
                        .map(|kp| (k, kp))
                })
                .ok_or(BackendError::NoOverlap {
                    previous: index - 1,
                    first: submap.frames[0].frame_id,
                    last: submap.frames[submap.frames.len() - 1].frame_id,
                })?;
            Some((c, k_cur, k_prev))
        } else {
            None
        };
        let alignment = match link {
            Some((c, k_cur, k_prev)) => {
                let report = self.chain_window(index, &mut submap, &c, k_cur, k_prev)?;
                Some(report)
            }
            None => {
                self.first_window(&mut submap)?;
                None
            }
        };
        if index == 0 {
            self.reference_depth = submap.frames.first().map_or(0.0, |f| {
                let mut d: Vec<f64> = confident_pixels(f, 4, 0.0).iter().map(|p| p.2).collect();
                median_in_place(&mut d)
            });
        }
        self.submaps.push(submap);
        let mut new_frames = Vec::new();
        for (k, f) in self.submaps[index].frames.iter().enumerate() {
            if let std::collections::btree_map::Entry::Vacant(e) = self.owner.entry(f.frame_id) {
                e.insert((index, k));
                new_frames.push(f.frame_id);
            }
        }
        for id in &new_frames {
            let (s, k) = self.owner[id];
            if self.covis.index_of(*id).is_none() {
                let descriptor = thumbnail_descriptor(&self.submaps[s].frames[k].image);
                match self.covis.add_keyframe(*id, &descriptor) {
                    // A featureless frame takes no part in retrieval; the window stands.
                    Ok(_) | Err(CovisError::BadDescriptor { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if index > 0 {
            self.retire(index - 1);
            self.enforce_bound();
        }
        let loop_candidates = if self.config.loops.enabled {
            self.loop_candidates(index, &new_frames)
        } else {
            Vec::new()
        };
        let new_keyframes = new_frames
            .iter()
            .filter_map(|id| self.keyframe_pose(*id))
            .collect();
        Ok(WindowUpdate {
            submap: index,
            new_keyframes,
            alignment,
            loop_candidates,
        })
    }

    /// Nodes and intra edges of the first window; the world is its pose gauge.
    fn first_window(&mut self, submap: &mut Submap) -> Result<(), BackendError> {
        let info = self.intra_information(submap.median_depth);
        let kernel = Kernel::Huber(self.config.graph.odometry_huber);
        submap.nodes = with_graph!(&mut self.graph, g => {
            let world_from_gauge = gauge_inverse_of_pointmap(g, &submap.pointmap_from_window);
            add_window_nodes(g, submap, world_from_gauge, info, kernel)?
        });
        Ok(())
    }

    /// Aligns a window to the previous one, adds its nodes, intra edges and the inter edge.
    fn chain_window(
        &mut self,
        index: usize,
        submap: &mut Submap,
        c: &Correspondences,
        k_cur: usize,
        k_prev: usize,
    ) -> Result<AlignmentReport, BackendError> {
        let err = |source| BackendError::Align {
            submap: index,
            source,
        };
        let cfg = self.config.align.clone();
        let with_scale = !self.config.known_scale;
        let info = self.intra_information(submap.median_depth);
        let kernel = Kernel::Huber(self.config.graph.odometry_huber);
        let floor = self.config.graph.inter_sigma_floor_rel;
        let prev = &self.submaps[index - 1];
        let prev_node = prev.nodes[k_prev];
        // Depth ratio prev / cur over the shared frames: the windows' relative scale.
        let shared: Vec<(usize, usize)> = submap
            .frames
            .iter()
            .enumerate()
            .filter_map(|(k, f)| {
                prev.frames
                    .iter()
                    .position(|p| p.frame_id == f.frame_id)
                    .map(|kp| (k, kp))
            })
            .collect();
        let ratio = if with_scale {
            let pairs: Vec<_> = shared
                .iter()
                .map(|&(k, kp)| (&submap.frames[k], &prev.frames[kp]))
                .collect();
            depth_ratio(&pairs, self.config.align_pixel_stride)
        } else {
            Some((1.0, 1e-4))
        };
        let (nodes, report) = with_graph!(&mut self.graph, g => {
            let a = aligned(g, c, with_scale, &cfg).map_err(err)?;
            let e_prev = gauge_of(g, prev, k_prev);
            let e_cur = gauge_of(g, submap, k_cur);
            // Consecutive windows are tied at their shared cameras (the same camera in both, up to
            // the windows' relative scale from the depth ratio), not by a transform fitted to
            // their points, which a window's smooth depth errors would bias. Without a usable
            // depth ratio the point fit links them.
            let nodes = match ratio {
                Some((lambda, log_sigma)) => {
                    // The copies of each shared camera coincide, up to the windows' scale.
                    let world_from_cur =
                        g.nodes()[prev_node] * scaling_of(g, lambda) * e_cur.inverted();
                    let nodes = add_window_nodes(g, submap, world_from_cur, info, kernel)?;
                    let sigma_scale = if with_scale {
                        (log_sigma / 4.0).max(floor)
                    } else {
                        1e-4
                    };
                    for &(k, kp) in &shared {
                        g.add_constraint(Constraint {
                            a: prev.nodes[kp],
                            b: nodes[k],
                            a_from_b: scaling_of(g, lambda),
                            information: Information::from_sigmas(
                                floor,
                                floor * submap.median_depth,
                                sigma_scale,
                            ),
                            kernel,
                            kind: ConstraintKind::Inter,
                        })?;
                    }
                    nodes
                }
                None => {
                    // prev_G_from_cur_G from the points of the shared frames.
                    let world_from_prev = g.nodes()[prev_node] * e_prev.inverted();
                    let world_from_cur = world_from_prev * a.transform;
                    let nodes = add_window_nodes(g, submap, world_from_cur, info, kernel)?;
                    // The fit's noise is the spread of single points; the transform it measures
                    // is known far better, but the windows' errors are correlated: count a few
                    // independent samples only.
                    let sigma = (a.noise / 4.0).max(floor);
                    let scale_sigma = if with_scale { sigma } else { 1e-4 };
                    g.add_constraint(Constraint {
                        a: prev_node,
                        b: nodes[k_cur],
                        a_from_b: e_prev.inverted() * a.transform * e_cur,
                        information: Information::from_sigmas(
                            sigma,
                            sigma * submap.median_depth,
                            scale_sigma,
                        ),
                        kernel,
                        kind: ConstraintKind::Inter,
                    })?;
                    nodes
                }
            };
            (nodes, AlignmentReport::from(&a))
        });
        submap.nodes = nodes;
        Ok(report)
    }

    /// The projective correction from a window's pose gauge to its point-map frame (SL(4) mode
    /// with point maps only).
    fn pointmap_from_window(&self, frames: &[FramePrediction]) -> Sl4 {
        if self.config.gauge != GaugeModel::Sl4 {
            return Sl4::identity();
        }
        let mut src = Vec::new();
        let mut dst = Vec::new();
        let mut w = Vec::new();
        for f in frames {
            let Some((points, _)) = f.points_in_window.as_deref() else {
                return Sl4::identity();
            };
            if points.width != f.depth.width || points.height != f.depth.height {
                return Sl4::identity();
            }
            let window_from_cam = f.cam_from_window.inverse();
            for (u, v, d, c) in confident_pixels(f, self.config.align_pixel_stride * 2, 0.0) {
                let p = points.at(u, v);
                src.push(window_from_cam * f.intrinsics.unproject(u as f64, v as f64, d));
                dst.push(Point3::new(
                    f64::from(p[0]),
                    f64::from(p[1]),
                    f64::from(p[2]),
                ));
                w.push(c);
            }
        }
        crate::align::align_sl4(&src, &dst, &w, &self.config.align)
            .map_or_else(|_| Sl4::identity(), |a| a.transform)
    }

    /// The 3-D point a frame predicts at pixel `(u, v)` in its gauge frame, with confidence and
    /// depth.
    /// `window_from_cam` is the inverse of `f.cam_from_window`, computed once per frame by the
    /// caller.
    fn gauge_point(
        &self,
        f: &FramePrediction,
        window_from_cam: &Isometry3<f64>,
        u: usize,
        v: usize,
    ) -> Option<(Point3<f64>, f64, f64)> {
        let d = f64::from(f.depth.at(u, v));
        let c = f64::from(f.depth_conf.at(u, v));
        if self.config.gauge == GaugeModel::Sl4 {
            if let Some((points, conf)) = f.points_in_window.as_deref() {
                if points.width == f.depth.width && points.height == f.depth.height {
                    let p = points.at(u, v);
                    let c = f64::from(conf.at(u, v));
                    let p = Point3::new(f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
                    let depth = if d > 0.0 && d.is_finite() { d } else { 0.0 };
                    return (c > 0.0 && depth > 0.0 && p.coords.iter().all(|x| x.is_finite()))
                        .then_some((p, c, depth));
                }
            }
        }
        (d > 0.0 && d.is_finite() && c > 0.0).then(|| {
            (
                window_from_cam * f.intrinsics.unproject(u as f64, v as f64, d),
                c,
                d,
            )
        })
    }

    /// Correspondences between frames present in both `a` and `b`: points of `a` (src) and of
    /// `b` (dst) at the same pixels, weighted by `min(conf_a, conf_b)`, with an error scale of
    /// `b`'s depth, grown for low confidence (`sqrt(median conf / conf)`, clamped to
    /// `[0.5, 3]`).
    fn correspondences<'a>(
        &self,
        a: impl IntoIterator<Item = &'a FramePrediction>,
        b: &[FramePrediction],
        stride: usize,
    ) -> Correspondences {
        let step = stride.max(1);
        // The frames both sides hold; room for every pixel sampled in them.
        let shared: Vec<(&FramePrediction, &FramePrediction)> = a
            .into_iter()
            .filter_map(|fa| {
                let fb = b.iter().find(|fb| fb.frame_id == fa.frame_id)?;
                (fb.depth.width > 0 && fb.depth.height > 0).then_some((fa, fb))
            })
            .collect();
        let pixels: usize = shared
            .iter()
            .map(|(fa, _)| fa.depth.width.div_ceil(step) * fa.depth.height.div_ceil(step))
            .sum();
        let mut c = Correspondences::default();
        c.reserve(pixels);
        let mut depth = Vec::with_capacity(pixels);
        for (fa, fb) in shared {
            let (inv_a, inv_b) = (fa.cam_from_window.inverse(), fb.cam_from_window.inverse());
            let (wa, ha) = (fa.depth.width, fa.depth.height);
            let (wb, hb) = (fb.depth.width, fb.depth.height);
            for v in (0..ha).step_by(step) {
                for u in (0..wa).step_by(step) {
                    let (ub, vb) = (u * wb / wa, v * hb / ha);
                    let (Some((pa, ca, _)), Some((pb, cb, db))) = (
                        self.gauge_point(fa, &inv_a, u, v),
                        self.gauge_point(fb, &inv_b, ub, vb),
                    ) else {
                        continue;
                    };
                    c.push(pa, pb, ca.min(cb), 1.0);
                    depth.push(db);
                }
            }
        }
        let mut confs = c.weight.clone();
        let c_med = median_in_place(&mut confs).max(1e-12);
        for ((s, w), d) in c.scale.iter_mut().zip(&c.weight).zip(&depth) {
            *s = d * (c_med / w.max(1e-12)).sqrt().clamp(0.5, 3.0);
        }
        c.thin(self.config.max_align_points);
        c
    }

    fn node_of(&self, frame_id: u64) -> Option<usize> {
        let &(s, k) = self.owner.get(&frame_id)?;
        self.submaps[s].nodes.get(k).copied()
    }

    fn node_matrix(&self, node: usize) -> Matrix4<f64> {
        with_graph!(&self.graph, g => g.nodes()[node].to_matrix())
    }

    /// Camera centre and rotation of a keyframe node.
    fn node_pose(&self, node: usize) -> Option<Isometry3<f64>> {
        with_graph!(&self.graph, g => g.nodes()[node].camera_pose())
    }

    fn loop_candidates(&self, index: usize, new_frames: &[u64]) -> Vec<LoopCandidate> {
        let cfg = &self.config.loops;
        let mut found: Vec<(f32, u64, u64, CandidateSource)> = Vec::new();
        let places = if cfg.proximity && !new_frames.is_empty() {
            self.places()
        } else {
            Vec::new()
        };
        let eligible = |m: u64| -> Option<usize> {
            let &(ms, _) = self.owner.get(&m)?;
            (ms + 1 < index && !self.looped_pairs.contains(&(ms, index))).then_some(ms)
        };
        for id in new_frames {
            if let Ok(hits) =
                self.covis
                    .retrieve(*id, cfg.min_keyframe_gap, cfg.min_similarity, RETRIEVED)
            {
                for (m, sim) in hits {
                    if eligible(m).is_some() {
                        found.push((sim, *id, m, CandidateSource::Appearance));
                    }
                }
            }
            if cfg.proximity {
                found.extend(
                    self.proximity_hits(*id, &places)
                        .into_iter()
                        .filter(|(_, m)| eligible(*m).is_some())
                        .map(|(score, m)| (score, *id, m, CandidateSource::Proximity)),
                );
            }
        }
        // Best first; ties broken by frame ids so that the order never depends on hashing.
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut out: Vec<LoopCandidate> = Vec::new();
        for (score, q, m, source) in found {
            if out.len() >= cfg.max_candidates_per_window {
                break;
            }
            let ms = self.owner[&m].0;
            if out.iter().any(|c| c.match_submap == ms) {
                continue;
            }
            if let Some(mut candidate) = self.propose_loop(q, m, source) {
                if candidate.similarity.is_nan() {
                    candidate.similarity = score;
                }
                out.push(candidate);
            }
        }
        out
    }

    /// A loop candidate between two keyframes, for a caller with a place recognition of its
    /// own (and for tests): its window holds the old keyframe and the one after it, the new
    /// keyframe and the one before it. `None` when either keyframe is unknown or they share a
    /// submap.
    pub fn propose_loop(
        &self,
        query_frame: u64,
        match_frame: u64,
        source: CandidateSource,
    ) -> Option<LoopCandidate> {
        let &(ms, mk) = self.owner.get(&match_frame)?;
        let &(qs, qk) = self.owner.get(&query_frame)?;
        if ms == qs || self.released.contains(&match_frame) || self.released.contains(&query_frame)
        {
            return None;
        }
        let mut window: Vec<WindowFrame> = Vec::new();
        for (s, ks) in [(ms, [mk, mk + 1]), (qs, [qk.saturating_sub(1), qk])] {
            let frames = &self.submaps[s].frames;
            let mut ks: Vec<usize> = ks.iter().copied().filter(|k| *k < frames.len()).collect();
            ks.dedup();
            for k in ks {
                let f = &frames[k];
                if window.iter().any(|w| w.frame_id == f.frame_id)
                    || self.released.contains(&f.frame_id)
                {
                    continue;
                }
                window.push(WindowFrame {
                    frame_id: f.frame_id,
                    timestamp_s: f.timestamp_s,
                    image: Arc::clone(&f.image),
                    depth_m: None,
                });
            }
        }
        let similarity = self
            .covis
            .index_of(query_frame)
            .zip(self.covis.index_of(match_frame))
            .map_or(f32::NAN, |(a, b)| self.covis.similarity(a, b));
        Some(LoopCandidate {
            query_frame,
            match_frame,
            match_submap: ms,
            query_submap: qs,
            similarity,
            source,
            window,
        })
    }

    /// Old keyframes whose estimated camera is near keyframe `q`'s and looks the same way, as
    /// `(score in (0, 1], frame id)`.
    fn proximity_hits(&self, q: u64, places: &[Place]) -> Vec<(f32, u64)> {
        let cfg = &self.config.loops;
        let (Some(qi), Some(q_pose)) = (self.covis.index_of(q), self.keyframe_pose(q)) else {
            return Vec::new();
        };
        let q_axis = q_pose.world_from_cam.rotation * nalgebra::Vector3::z();
        let max_angle = cfg.proximity_max_angle_deg.to_radians();
        let mut hits = Vec::new();
        for place in places {
            if place.covis_index + cfg.min_keyframe_gap > qi {
                continue;
            }
            let d =
                (place.pose.translation.vector - q_pose.world_from_cam.translation.vector).norm();
            if d >= place.radius {
                continue;
            }
            let m_axis = place.pose.rotation * nalgebra::Vector3::z();
            if m_axis.angle(&q_axis) < max_angle {
                hits.push(((1.0 - d / place.radius.max(1e-300)) as f32, place.frame_id));
            }
        }
        hits
    }

    /// Where every keyframe that can be a loop's old end is now, for [`Backend::proximity_hits`]
    /// (worked out once per window, not once per new keyframe).
    fn places(&self) -> Vec<Place> {
        let cfg = &self.config.loops;
        self.owner
            .iter()
            .filter(|(m, _)| !self.released.contains(m))
            .filter_map(|(&m, &(ms, mk))| {
                let covis_index = self.covis.index_of(m)?;
                let node = self.submaps[ms].nodes.get(mk)?;
                let world_from_cam = self.node_matrix(*node);
                let pose = self.node_pose(*node)?;
                let radius = cfg.proximity_radius_rel
                    * self.submaps[ms].median_depth
                    * scale_of_matrix(&world_from_cam);
                Some(Place {
                    frame_id: m,
                    covis_index,
                    pose,
                    radius,
                })
            })
            .collect()
    }

    /// Verifies a predicted loop window and, when it passes, adds the loop edge and
    /// re-optimises the pose graph ([`Backend::verify_loop`], then [`Backend::close_loops`]).
    pub fn push_loop_window(
        &mut self,
        candidate: &LoopCandidate,
        prediction: WindowPrediction,
    ) -> Result<LoopUpdate, BackendError> {
        Ok(match self.verify_loop(candidate, prediction)? {
            LoopCheck::Verified(verified) => self.close_loop(verified),
            LoopCheck::Rejected(update) => update,
        })
    }

    /// Every check of a predicted loop window that leaves the map as it is: the reprojection
    /// overlap, the depth agreement, both alignments and the drift the graph can have
    /// accumulated. A loop that passes carries the edge that would close it;
    /// [`Backend::close_loops`] adds it and re-optimises.
    pub fn verify_loop(
        &self,
        candidate: &LoopCandidate,
        prediction: WindowPrediction,
    ) -> Result<LoopCheck, BackendError> {
        if let Err(e) = validate(&prediction) {
            return Ok(LoopCheck::Rejected(LoopUpdate::rejected(
                candidate,
                LoopRejection::Prediction(e.to_string()),
            )));
        }
        let (ms, qs) = (candidate.match_submap, candidate.query_submap);
        for s in [ms, qs] {
            if s >= self.submaps.len() {
                return Err(BackendError::UnknownSubmap { submap: s });
            }
        }
        let reject = |why| Ok(LoopCheck::Rejected(LoopUpdate::rejected(candidate, why)));
        if self.released.contains(&candidate.match_frame) {
            return reject(LoopRejection::MissingFrames);
        }
        let (Some(m_node), Some(q_node)) = (
            self.node_of(candidate.match_frame),
            self.node_of(candidate.query_frame),
        ) else {
            return reject(LoopRejection::MissingFrames);
        };
        let Some(overlap) = self.reprojection_overlap(&prediction, candidate) else {
            return reject(LoopRejection::MissingFrames);
        };
        let loops = self.config.loops.clone();
        // The disagreement may be a few times the window's own noise between neighbours (a
        // revisit is seen from further away than a neighbour), never more than the cap.
        let max_disagreement = overlap.2.map_or(loops.max_depth_disagreement_rel, |r| {
            (loops.disagreement_factor * r)
                .max(0.02)
                .min(loops.max_depth_disagreement_rel)
        });
        if overlap.1 > max_disagreement {
            return reject(LoopRejection::DepthDisagreement {
                noise: overlap.1,
                max: max_disagreement,
            });
        }
        if overlap.0 < loops.min_overlap_ratio {
            return reject(LoopRejection::LowOverlap {
                overlap: overlap.0,
                needed: loops.min_overlap_ratio,
            });
        }
        // Only the frames owned by each side take part, so the two alignments are independent.
        let owner = &self.owner;
        let side = |s: usize| {
            prediction
                .frames
                .iter()
                .filter(move |f| owner.get(&f.frame_id).is_some_and(|o| o.0 == s))
        };
        let stride = self.config.align_pixel_stride;
        let c_m = self.correspondences(side(ms), &self.submaps[ms].frames, stride);
        let c_q = self.correspondences(side(qs), &self.submaps[qs].frames, stride);
        let (mk, qk) = (
            self.owner[&candidate.match_frame].1,
            self.owner[&candidate.query_frame].1,
        );
        let g_cfg = self.config.graph.clone();
        let align_cfg = self.config.align.clone();
        let min_points = self.config.min_align_points;
        let q_depth = self.submaps[qs].median_depth;
        let m_depth = self.submaps[ms].median_depth;
        let path = self.path_length(candidate.match_frame, candidate.query_frame);
        let (lo, hi) = (
            candidate.match_frame.min(candidate.query_frame),
            candidate.match_frame.max(candidate.query_frame),
        );
        let keyframes_between = self.owner.range(lo..=hi).count().saturating_sub(1) as f64;
        let (sub_m, sub_q) = (&self.submaps[ms], &self.submaps[qs]);
        // The loop as the loop window's own cameras see it, in each side's units (scales from
        // the depth ratio of the frame in the loop window and in its submap).
        let in_loop = |id: u64| prediction.frames.iter().find(|f| f.frame_id == id);
        let camera_loop = match (
            in_loop(candidate.match_frame),
            in_loop(candidate.query_frame),
        ) {
            (Some(lm), Some(lq)) => {
                let stride = self.config.align_pixel_stride;
                let lambda_m = depth_ratio(&[(lm, &sub_m.frames[mk])], stride);
                let lambda_q = depth_ratio(&[(lq, &sub_q.frames[qk])], stride);
                lambda_m.zip(lambda_q).map(|((l_m, _), (l_q, _))| {
                    (l_m, lm.cam_from_window * lq.cam_from_window.inverse(), l_q)
                })
            }
            _ => None,
        };
        let outcome = with_graph!(&self.graph, g => {
            let fit = |c: &Correspondences, side: &'static str| {
                if c.len() < min_points {
                    return Err(LoopRejection::Alignment {
                        side,
                        reason: format!("{} correspondences, need {min_points}", c.len()),
                    });
                }
                let a = aligned(g, c, true, &align_cfg).map_err(|e| LoopRejection::Alignment {
                    side,
                    reason: e.to_string(),
                })?;
                if a.inlier_ratio() < loops.min_inlier_ratio {
                    return Err(LoopRejection::Alignment {
                        side,
                        reason: format!(
                            "inlier ratio {:.2} below {:.2}",
                            a.inlier_ratio(),
                            loops.min_inlier_ratio
                        ),
                    });
                }
                if a.noise > loops.max_alignment_noise_rel {
                    return Err(LoopRejection::Alignment {
                        side,
                        reason: format!(
                            "noise {:.3} above {:.3}",
                            a.noise, loops.max_alignment_noise_rel
                        ),
                    });
                }
                Ok(a)
            };
            match (fit(&c_m, "match"), fit(&c_q, "query")) {
                (Err(e), _) | (_, Err(e)) => Err(e),
                (Ok(a_m), Ok(a_q)) => {
                    let e_m = gauge_of(g, sub_m, mk);
                    let e_q = gauge_of(g, sub_q, qk);
                    let m_from_q = match camera_loop {
                        Some((l_m, m_from_q_loop, l_q)) => {
                            scaling_of(g, l_m)
                                * camera_of(g, &m_from_q_loop)
                                * scaling_of(g, 1.0 / l_q)
                        }
                        None => e_m.inverted() * a_m.transform * a_q.transform.inverted() * e_q,
                    };
                    // Disagreement with the current estimate, in world units.
                    let n_m = g.nodes()[m_node];
                    let n_q = g.nodes()[q_node];
                    let predicted = (n_m * m_from_q).camera_pose();
                    let current = n_q.camera_pose();
                    let world_depth = m_depth * scale_of_matrix(&n_m.to_matrix());
                    let (translation, rotation_deg) = match (predicted, current) {
                        (Some(p), Some(c)) => (
                            (p.translation.vector - c.translation.vector).norm(),
                            p.rotation.angle_to(&c.rotation).to_degrees(),
                        ),
                        _ => (f64::INFINITY, 180.0),
                    };
                    let allowed = loops.max_drift_rel * path + loops.max_drift_offset_rel * world_depth;
                    let allowed_deg = loops.max_rotation_drift_deg
                        + loops.rotation_drift_deg_per_keyframe * keyframes_between;
                    if translation > allowed || rotation_deg > allowed_deg {
                        Err(LoopRejection::Drift { translation, allowed, rotation_deg, allowed_deg })
                    } else {
                        let sigma_align = (a_m.noise.powi(2) + a_q.noise.powi(2)).sqrt() / 4.0;
                        let rot = (g_cfg.intra_rotation_sigma_deg.to_radians().powi(2)
                            + sigma_align.powi(2))
                        .sqrt();
                        let trans = (g_cfg.intra_translation_sigma_rel.powi(2) + sigma_align.powi(2))
                            .sqrt()
                            * q_depth;
                        let scale = (g_cfg.intra_scale_sigma.powi(2) + sigma_align.powi(2)).sqrt();
                        let edge = Constraint {
                            a: m_node,
                            b: q_node,
                            a_from_b: m_from_q,
                            information: Information::from_sigmas(rot, trans, scale),
                            kernel: loops.kernel.with_scale(loops.kernel_scale),
                            kind: ConstraintKind::Loop,
                        };
                        let bound = StrainBound {
                            chi2: loops.max_strain_chi2,
                            per_edge: loops.max_strain_per_edge,
                        };
                        Ok((
                            LoopClosure {
                                query_frame: candidate.query_frame,
                                match_frame: candidate.match_frame,
                                match_submap: ms,
                                query_submap: qs,
                                overlap_ratio: overlap.0,
                                alignment_noise: (a_m.noise, a_q.noise),
                                correction: (translation, rotation_deg),
                                robust_weight: 0.0,
                            },
                            Gauge::loop_edge(edge),
                            bound,
                        ))
                    }
                }
            }
        });
        Ok(match outcome {
            Err(why) => LoopCheck::Rejected(LoopUpdate::rejected(candidate, why)),
            Ok((closure, edge, bound)) => LoopCheck::Verified(VerifiedLoop {
                source: candidate.source,
                closure,
                edge,
                bound,
            }),
        })
    }

    /// Adds verified loops to the pose graph and re-optimises. Several loops (a window's, checked
    /// against the same map) are first solved together, once ([`run_loop_edges`]: each loop
    /// keeps its own strain bound with the other loops counted against it, and its robust
    /// weight). When any fails, the graph is restored and the loops are closed one by one, as
    /// [`Backend::push_loop_window`] does, which decides each on its own. Returns one update per
    /// loop, in order.
    pub fn close_loops(&mut self, loops: Vec<VerifiedLoop>) -> Vec<LoopUpdate> {
        if loops.len() > 1 {
            if let Ok(solved) = self.solve_loops(&loops) {
                return self.book_loops(loops, solved);
            }
        }
        loops.into_iter().map(|l| self.close_loop(l)).collect()
    }

    /// Adds one verified loop and re-optimises.
    fn close_loop(&mut self, l: VerifiedLoop) -> LoopUpdate {
        match self.solve_loops(std::slice::from_ref(&l)) {
            Ok(solved) => {
                // `book_loops` gives one update per loop; the fallback is never used.
                let unbooked = l.rejected(LoopRejection::Graph { robust_weight: 0.0 });
                self.book_loops(vec![l], solved).pop().unwrap_or(unbooked)
            }
            Err(why) => l.rejected(why),
        }
    }

    /// [`run_loop_edges`] on the pose graph; the graph is as it was on a rejection.
    fn solve_loops(&mut self, loops: &[VerifiedLoop]) -> Result<SolvedLoops, LoopRejection> {
        let lm = self.config.pose_graph.clone();
        let min_weight = self.config.loops.min_robust_weight;
        with_graph!(&mut self.graph, g => {
            let edges: Option<Vec<_>> = loops
                .iter()
                .map(|l| edge_for(g, &l.edge).map(|edge| (edge, l.bound)))
                .collect();
            match edges {
                Some(edges) => run_loop_edges(g, &edges, &lm, min_weight),
                None => Err(LoopRejection::Graph { robust_weight: 0.0 }),
            }
        })
    }

    /// Bumps the revision of every submap with a node that moved; returns them.
    fn mark_moved(&mut self, moved_nodes: &[f64]) -> Vec<usize> {
        let mut moved = Vec::new();
        for (i, s) in self.submaps.iter_mut().enumerate() {
            if s.nodes.iter().any(|n| moved_nodes[*n] > 1e-12) {
                s.revision += 1;
                moved.push(i);
            }
        }
        moved
    }

    /// Books loops solved together: the submaps that moved, each loop's covisibility edge and
    /// place in the list of loops, the solve's report. One update per loop, in order.
    fn book_loops(
        &mut self,
        loops: Vec<VerifiedLoop>,
        (weights, report, moved_nodes): SolvedLoops,
    ) -> Vec<LoopUpdate> {
        let moved = self.mark_moved(&moved_nodes);
        let updates = loops
            .into_iter()
            .zip(weights)
            .map(|(l, weight)| self.book_loop(l, weight, &report, &moved))
            .collect();
        self.last_report = Some(report);
        updates
    }

    /// Books a solved loop: its covisibility edge and place in the list of loops.
    fn book_loop(
        &mut self,
        l: VerifiedLoop,
        robust_weight: f64,
        report: &LmReport,
        moved: &[usize],
    ) -> LoopUpdate {
        let closure = LoopClosure {
            robust_weight,
            ..l.closure
        };
        let _ = self
            .covis
            .add_loop_edge(closure.match_frame, closure.query_frame);
        self.loops.push(closure.clone());
        self.looped_pairs
            .insert((closure.match_submap, closure.query_submap));
        LoopUpdate {
            query_frame: closure.query_frame,
            match_frame: closure.match_frame,
            source: l.source,
            outcome: LoopOutcome::Closed(closure),
            moved_submaps: moved.to_vec(),
            optimisation: Some(report.clone()),
        }
    }

    /// Distance travelled (world units) along the keyframe trajectory from `a` to `b`.
    fn path_length(&self, a: u64, b: u64) -> f64 {
        let (lo, hi) = (a.min(b), a.max(b));
        let centres: Vec<_> = self
            .owner
            .range(lo..=hi)
            .filter_map(|(id, _)| self.keyframe_pose(*id))
            .map(|p| p.world_from_cam.translation.vector)
            .collect();
        centres.windows(2).map(|w| (w[1] - w[0]).norm()).sum()
    }

    /// In the loop window: the fraction of the query frame's points that project into the
    /// match frame's image with a depth that agrees there (within three robust standard
    /// deviations of the disagreement, at least 1 %), that standard deviation, and the same
    /// standard deviation between neighbouring frames of the loop window that certainly see the
    /// same surfaces (the predictor's own noise level on this window, the reference the
    /// disagreement is judged against).
    fn reprojection_overlap(
        &self,
        prediction: &WindowPrediction,
        c: &LoopCandidate,
    ) -> Option<(f64, f64, Option<f64>)> {
        let find = |id: u64| prediction.frames.iter().position(|f| f.frame_id == id);
        let (qi, mi) = (find(c.query_frame)?, find(c.match_frame)?);
        let (overlap, sigma) = self.pair_agreement(&prediction.frames[qi], &prediction.frames[mi]);
        // Neighbours in the window: the frame before the query, the frame after the match.
        let reference = [(qi.checked_sub(1), qi), (Some(mi + 1), mi)]
            .into_iter()
            .filter_map(|(a, b)| {
                let a = a.filter(|&a| a < prediction.frames.len() && a != qi && a != mi)?;
                let (o, s) = self.pair_agreement(&prediction.frames[a], &prediction.frames[b]);
                (o > 0.0 && s.is_finite()).then_some(s)
            })
            .fold(None, |acc: Option<f64>, s| {
                Some(acc.map_or(s, |a| a.min(s)))
            });
        Some((overlap, sigma, reference))
    }

    /// Fraction of `from`'s sampled points that land on `to` with an agreeing depth, and the
    /// robust standard deviation of the relative depth disagreement where they land.
    fn pair_agreement(&self, from: &FramePrediction, to: &FramePrediction) -> (f64, f64) {
        let to_from = to.cam_from_window * from.cam_from_window.inverse();
        let pixels = confident_pixels(from, self.config.align_pixel_stride, 0.0);
        if pixels.is_empty() || to.depth.width == 0 {
            return (0.0, f64::INFINITY);
        }
        let errors: Vec<f64> = pixels
            .iter()
            .filter_map(|(u, v, d, _)| {
                let p = to_from * from.intrinsics.unproject(*u as f64, *v as f64, *d);
                let (x, y) = to.intrinsics.project(&p)?;
                let (xr, yr) = (x.round(), y.round());
                if xr < 0.0
                    || yr < 0.0
                    || xr >= to.depth.width as f64
                    || yr >= to.depth.height as f64
                {
                    return None;
                }
                let dm = f64::from(to.depth.at(xr as usize, yr as usize));
                (dm > 0.0 && dm.is_finite()).then(|| (dm - p.z).abs() / dm)
            })
            .collect();
        if errors.is_empty() {
            return (0.0, f64::INFINITY);
        }
        let mut sorted = errors.clone();
        // Half-normal: the median of |x| is 0.6745 σ.
        let sigma = median_in_place(&mut sorted) / 0.6745;
        let tolerance = (3.0 * sigma).max(0.01);
        let consistent = errors.iter().filter(|e| **e < tolerance).count();
        (consistent as f64 / pixels.len() as f64, sigma)
    }

    /// Re-runs the pose-graph optimisation (for instance after changing weights).
    pub fn optimize(&mut self) -> LmReport {
        let report = with_graph!(&mut self.graph, g => g.optimize(&self.config.pose_graph));
        self.last_report = Some(report.clone());
        report
    }

    /// `world_from_submap` of every submap (its gauge frame, as its first own keyframe places
    /// it), with revisions.
    pub fn submap_transforms(&self) -> Vec<SubmapTransform> {
        (0..self.submaps.len())
            .map(|s| SubmapTransform {
                index: s,
                world_from_submap: self.world_from_gauge(s),
                revision: self.submaps[s].revision,
            })
            .collect()
    }

    /// First frame of submap `s` that it owns (its first frame for the first submap).
    fn first_owned(&self, s: usize) -> usize {
        let sub = &self.submaps[s];
        (0..sub.frames.len())
            .find(|&k| self.owner.get(&sub.frames[k].frame_id) == Some(&(s, k)))
            .unwrap_or(0)
    }

    /// `world_from_G_s` as the node of frame `k` of submap `s` places it.
    fn world_from_gauge_at(&self, s: usize, k: usize) -> Matrix4<f64> {
        let sub = &self.submaps[s];
        with_graph!(&self.graph, g => {
            (g.nodes()[sub.nodes[k]] * gauge_of(g, sub, k).inverted()).to_matrix()
        })
    }

    fn world_from_gauge(&self, s: usize) -> Matrix4<f64> {
        self.world_from_gauge_at(s, self.first_owned(s))
    }

    fn keyframe_pose(&self, frame_id: u64) -> Option<KeyframePose> {
        let &(s, k) = self.owner.get(&frame_id)?;
        let f = &self.submaps[s].frames[k];
        let pose = self.node_pose(self.submaps[s].nodes[k])?;
        Some(KeyframePose {
            frame_id,
            timestamp_s: f.timestamp_s,
            submap: s,
            world_from_cam: pose,
        })
    }

    /// World units per unit of the keyframe's own prediction (its node's scale).
    pub fn keyframe_scale(&self, frame_id: u64) -> Option<f64> {
        let &(s, k) = self.owner.get(&frame_id)?;
        Some(scale_of_matrix(&self.node_matrix(self.submaps[s].nodes[k])))
    }

    /// A keyframe's predicted depth in world units (at its retained resolution).
    pub fn keyframe_depth_world(&self, frame_id: u64) -> Option<Map2<f32>> {
        let &(s, k) = self.owner.get(&frame_id)?;
        let scale = self.keyframe_scale(frame_id)? as f32;
        let mut depth = self.submaps[s].frames[k].depth.clone();
        depth.data.iter_mut().for_each(|d| *d *= scale);
        Some(depth)
    }

    /// Median confident depth of a submap's window, in the submap's own units.
    pub fn submap_median_depth(&self, s: usize) -> Option<f64> {
        self.submaps.get(s).map(|sub| sub.median_depth)
    }

    /// Current pose of every keyframe, in frame-id order.
    pub fn trajectory(&self) -> Vec<KeyframePose> {
        self.owner
            .keys()
            .filter_map(|id| self.keyframe_pose(*id))
            .collect()
    }

    /// [`Backend::trajectory`] as TUM poses, ready for [`crate::tum::write_trajectory`].
    pub fn trajectory_stamped(&self) -> Vec<crate::tum::StampedPose> {
        self.trajectory()
            .iter()
            .map(|k| crate::tum::StampedPose {
                timestamp_s: k.timestamp_s,
                world_from_cam: k.world_from_cam,
            })
            .collect()
    }

    /// Points of one submap in its gauge frame with colours (for viewers that place submaps
    /// with [`Backend::submap_transforms`]); keyframes owned by other submaps are left out.
    pub fn submap_points(&self, s: usize) -> (Vec<Point3<f32>>, Vec<[u8; 3]>) {
        let mut pts = Vec::new();
        let mut cols = Vec::new();
        self.each_submap_point(s, |p, c| {
            pts.push(p);
            cols.push(c);
        });
        (pts, cols)
    }

    /// [`Backend::submap_points`] thinned to voxels of edge `voxel` (submap units) as they are
    /// made, without holding every pixel first ([`crate::map::voxel_downsample`] of them).
    pub fn submap_cloud(&self, s: usize, voxel: f64) -> (Vec<Point3<f32>>, Vec<[u8; 3]>) {
        let mut grid = crate::map::VoxelGrid::new(voxel);
        self.each_submap_point(s, |p, c| grid.insert(&p, c, ()));
        let (points, colors, _) = grid.finish();
        (points, colors)
    }

    fn each_submap_point(&self, s: usize, mut point: impl FnMut(Point3<f32>, [u8; 3])) {
        let Some(sub) = self.submaps.get(s) else {
            return;
        };
        let cfg = &self.config.map;
        let stride = (cfg.pixel_stride / sub.step).max(1);
        for (k, f) in sub.frames.iter().enumerate() {
            if self.owner.get(&f.frame_id) != Some(&(s, k)) {
                continue;
            }
            let window_from_cam = f.cam_from_window.inverse();
            for (u, v, d, _) in confident_pixels(f, stride, cfg.conf_quantile) {
                let p_window = window_from_cam * f.intrinsics.unproject(u as f64, v as f64, d);
                let Some(p) = sub.pointmap_from_window.transform_point(&p_window) else {
                    continue;
                };
                point(
                    Point3::new(p.x as f32, p.y as f32, p.z as f32),
                    pixel_color(f, u, v),
                );
            }
        }
    }

    /// The global map: every keyframe's confident points placed by its own node in the world
    /// frame (from the point map with SL(4), from depth otherwise), voxel-downsampled.
    pub fn map(&self) -> GlobalMap {
        self.map_with_sources().0
    }

    /// [`Backend::map`], with the keyframe pixel each point comes from (the first of its voxel):
    /// `(frame id, u, v)`, in pixels of the keyframe's image ([`Backend::keyframe_cameras`]).
    pub fn map_with_sources(&self) -> (GlobalMap, Vec<(u64, f64, f64)>) {
        let cfg = &self.config.map;
        let voxel = cfg.voxel_rel * self.reference_depth;
        // Thinned as the pixels are placed: the grids hold a voxel's sums, never every pixel;
        // the end of a long run thins tens of millions of pixels, on every core.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let scan = |sink: &mut crate::map::PointSink<'_, (u64, f64, f64)>| {
            for (&frame_id, &(s, k)) in &self.owner {
                let sub = &self.submaps[s];
                let f = &sub.frames[k];
                let stride = (cfg.pixel_stride / sub.step).max(1);
                let world_from_cam = self.node_matrix(sub.nodes[k]);
                // With SL(4) and point maps the map is the point map, brought into the camera
                // by the window's projective correction; otherwise the depth unprojected.
                let point_map = f
                    .points_in_window
                    .as_deref()
                    .filter(|(p, _)| p.width == f.depth.width && p.height == f.depth.height)
                    .map(|(p, _)| {
                        let cam_from_pointmap = (sub.pointmap_from_window
                            * Sl4::from_sim3(&Sim3::from_isometry(&f.cam_from_window.inverse())))
                        .inverse();
                        (p, world_from_cam * cam_from_pointmap.matrix())
                    });
                for (u, v, d, _) in confident_pixels(f, stride, cfg.conf_quantile) {
                    let p = match &point_map {
                        Some((points, world_from_pointmap)) => {
                            let q = points.at(u, v);
                            apply_h(
                                world_from_pointmap,
                                &Point3::new(f64::from(q[0]), f64::from(q[1]), f64::from(q[2])),
                            )
                        }
                        None => apply_h(
                            &world_from_cam,
                            &f.intrinsics.unproject(u as f64, v as f64, d),
                        ),
                    };
                    if p.coords.iter().all(|x| x.is_finite()) {
                        // Pixel of the retained (maybe decimated) map -> pixel of the image.
                        let step = sub.step as f64;
                        sink(
                            &Point3::new(p.x as f32, p.y as f32, p.z as f32),
                            pixel_color(f, u, v),
                            (frame_id, u as f64 * step, v as f64 * step),
                        );
                    }
                }
            }
        };
        let (points_in_world, colors, sources) =
            crate::map::voxel_thin_parallel(voxel, threads, scan);
        (
            GlobalMap {
                points_in_world,
                colors,
                voxel_size: if voxel > 0.0 { voxel } else { 0.0 },
            },
            sources,
        )
    }

    /// Every keyframe as a camera: its pose, its image (the pixels its prediction was made
    /// from) and the intrinsics in that image's pixels, in frame-id order. Keyframes released
    /// under the memory bound have no pixels left and are not listed.
    pub fn keyframe_cameras(&self) -> Vec<KeyframeCamera> {
        self.owner
            .iter()
            .filter(|(id, _)| !self.released.contains(id))
            .filter_map(|(&frame_id, &(s, k))| {
                let sub = &self.submaps[s];
                let f = &sub.frames[k];
                let pose = self.keyframe_pose(frame_id)?;
                let step = sub.step as f64;
                Some(KeyframeCamera {
                    frame_id,
                    timestamp_s: f.timestamp_s,
                    world_from_cam: pose.world_from_cam,
                    intrinsics: Intrinsics {
                        fx: f.intrinsics.fx * step,
                        fy: f.intrinsics.fy * step,
                        cx: f.intrinsics.cx * step,
                        cy: f.intrinsics.cy * step,
                    },
                    image: Arc::clone(&f.image),
                })
            })
            .collect()
    }

    /// The keyframe ids of a submap, in window order.
    pub fn submap_frame_ids(&self, s: usize) -> Vec<u64> {
        self.submaps
            .get(s)
            .map(|sub| sub.frames.iter().map(|f| f.frame_id).collect())
            .unwrap_or_default()
    }

    /// Frame ids with the submap placing them.
    pub fn keyframe_owners(&self) -> HashMap<u64, usize> {
        self.owner.iter().map(|(id, (s, _))| (*id, *s)).collect()
    }
}

// The helpers below take the graph only to fix the node type inside `with_graph!`.

/// `E(k)` of a submap frame.
fn gauge_of<T: Gauge>(_g: &PoseGraph<T>, sub: &Submap, k: usize) -> T {
    sub.gauge_from_cam::<T>(k)
}

/// A rigid transform in the graph's group.
fn camera_of<T: Gauge>(_g: &PoseGraph<T>, iso: &Isometry3<f64>) -> T {
    T::from_camera(&Sl4::identity(), iso)
}

/// A pure scaling in the graph's group.
fn scaling_of<T: Gauge>(_g: &PoseGraph<T>, s: f64) -> T {
    T::scaling(s)
}

/// Median ratio `depth_b / depth_a` over same-pixel pairs of the frames `(a, b)` (which may have
/// different resolutions), and the robust standard deviation of its log; `None` without
/// enough valid pairs.
fn depth_ratio(
    pairs: &[(&FramePrediction, &FramePrediction)],
    stride: usize,
) -> Option<(f64, f64)> {
    let mut logs = Vec::new();
    for (fa, fb) in pairs {
        let (wa, ha) = (fa.depth.width, fa.depth.height);
        let (wb, hb) = (fb.depth.width, fb.depth.height);
        if wa == 0 || wb == 0 || ha == 0 || hb == 0 {
            continue;
        }
        for v in (0..ha).step_by(stride.max(1)) {
            for u in (0..wa).step_by(stride.max(1)) {
                let (ub, vb) = (u * wb / wa, v * hb / ha);
                let (da, db) = (fa.depth.at(u, v), fb.depth.at(ub, vb));
                let (ca, cb) = (fa.depth_conf.at(u, v), fb.depth_conf.at(ub, vb));
                if da > 0.0 && db > 0.0 && ca > 0.0 && cb > 0.0 && da.is_finite() && db.is_finite()
                {
                    logs.push(f64::from(db / da).ln());
                }
            }
        }
    }
    if logs.len() < 20 {
        return None;
    }
    let median = median_in_place(&mut logs.clone());
    let mut dev: Vec<f64> = logs.iter().map(|l| (l - median).abs()).collect();
    let sigma = median_in_place(&mut dev) / 0.6745;
    Some((median.exp(), sigma))
}

/// Robust alignment in the graph's group.
fn aligned<T: Gauge>(
    _g: &PoseGraph<T>,
    c: &Correspondences,
    with_scale: bool,
    config: &RobustConfig,
) -> Result<Aligned<T>, AlignError> {
    T::align(c, with_scale, config)
}

/// `world_from_G` of the first window: the world is its pose gauge.
fn gauge_inverse_of_pointmap<T: Gauge>(_g: &PoseGraph<T>, pointmap_from_window: &Sl4) -> T {
    // For Sim(3) the correction is the identity; for SL(4) the gauge is the point-map frame.
    T::from_camera(pointmap_from_window, &Isometry3::identity()).inverted()
}

/// Adds one node per frame of `submap` at `world_from_gauge · E(k)` and the intra edges between
/// consecutive frames; returns the nodes. Nothing is added when the edge settings are invalid.
fn add_window_nodes<T: Gauge>(
    g: &mut PoseGraph<T>,
    submap: &Submap,
    world_from_gauge: T,
    information: Information,
    kernel: Kernel,
) -> Result<Vec<usize>, PoseGraphError> {
    if !(information.is_valid() && kernel.is_valid()) {
        let n = g.nodes().len();
        return Err(PoseGraphError::BadWeight { a: n, b: n + 1 });
    }
    let es: Vec<T> = (0..submap.frames.len())
        .map(|k| submap.gauge_from_cam(k))
        .collect();
    let nodes: Vec<usize> = es
        .iter()
        .map(|e| g.add_node(world_from_gauge * *e))
        .collect();
    for k in 1..es.len() {
        let edge = Constraint {
            a: nodes[k - 1],
            b: nodes[k],
            a_from_b: es[k - 1].inverted() * es[k],
            information,
            kernel,
            kind: ConstraintKind::Intra,
        };
        g.add_constraint(edge)?;
    }
    Ok(nodes)
}

/// A keyframe's current place, for loop candidates by proximity.
#[derive(Debug, Clone, Copy)]
struct Place {
    frame_id: u64,
    /// Its number in the covisibility graph (keyframes in time order).
    covis_index: usize,
    /// Current `world_from_cam` (camera centre and rotation).
    pose: Isometry3<f64>,
    /// Search radius around it, world units.
    radius: f64,
}

/// How much a loop may strain the rest of the graph: at most `chi2 + per_edge · n` of added
/// cost, `n` the number of nodes between its two ends.
#[derive(Debug, Clone, Copy)]
struct StrainBound {
    chi2: f64,
    per_edge: f64,
}

/// What [`run_loop_edges`] returns for loops that stayed: each loop's robust weight, the
/// optimisation report and how far each node moved.
type SolvedLoops = (Vec<f64>, LmReport, Vec<f64>);

/// `edge` as an edge of `g`'s node type (`None` for the other type).
fn edge_for<T: Gauge>(_g: &PoseGraph<T>, edge: &LoopEdge) -> Option<Constraint<T>> {
    T::of_loop_edge(edge)
}

/// Adds loop edges and optimises once for all of them, first at full weight so that true loops
/// after a long drift pull the map into agreement (a robust kernel would discount them at the
/// drifted start), then with their robust kernels from there (unless every edge ended where its
/// kernel is quadratic). A loop stays only when the strain on everything but its own edge, the
/// other new loops counted from zero, is within its `bound` (for several loops this is stricter
/// than closing them in turn: a false loop pulling against a true one strains the true one's
/// edge), and its robust weight ends at least `min_weight`. Returns each loop's weight, the
/// report and per-node movement, or the first failing loop's rejection with the graph restored.
/// Loops whose whole cost at the start is within every loop's bound, each inside its kernel's
/// quadratic core, cannot fail the strain test and are solved once, with their kernels.
fn run_loop_edges<T: Gauge>(
    g: &mut PoseGraph<T>,
    edges: &[(Constraint<T>, StrainBound)],
    lm: &LmConfig,
    min_weight: f64,
) -> Result<SolvedLoops, LoopRejection> {
    let before: Vec<T> = g.nodes().to_vec();
    let cost_before = g.cost();
    let restore = |g: &mut PoseGraph<T>, added: usize, before: &[T]| {
        for _ in 0..added {
            g.pop_constraint();
        }
        for (i, n) in before.iter().enumerate() {
            g.set_node(i, *n);
        }
    };
    // (index, kernel, allowed strain) of each added edge.
    let mut added = Vec::with_capacity(edges.len());
    for (edge, bound) in edges {
        let Ok(index) = g.add_constraint(Constraint {
            kernel: Kernel::Quadratic,
            ..*edge
        }) else {
            restore(g, added.len(), &before);
            return Err(LoopRejection::Graph { robust_weight: 0.0 });
        };
        let span = edge.a.abs_diff(edge.b) as f64;
        added.push((index, edge.kernel, bound.chi2 + bound.per_edge * span));
    }
    let own_before: Vec<f64> = added
        .iter()
        .map(|&(index, _, _)| g.whitened_norm(index).powi(2))
        .collect();
    let set_kernels = |g: &mut PoseGraph<T>| {
        for &(index, kernel, _) in &added {
            g.set_kernel(index, kernel);
        }
    };
    // The optimiser only takes steps that lower the total cost, so the other edges can gain at
    // most the new edges' own cost at the start: loops that ask for less than every bound, and
    // sit where their kernels are still quadratic (the full-weight pass would solve the same
    // problem), need no strain pass.
    let asked: f64 = own_before.iter().sum();
    let quadratic_at_start = added
        .iter()
        .zip(&own_before)
        .all(|(&(_, kernel, allowed), &own)| asked <= allowed && kernel.weight(own) >= 1.0);
    let report = if quadratic_at_start {
        set_kernels(g);
        g.optimize(lm)
    } else {
        let first = g.optimize(lm);
        let mut in_core = true;
        for &(index, kernel, allowed) in &added {
            let own = g.whitened_norm(index).powi(2);
            let strain = first.final_cost - own - cost_before;
            if strain > allowed {
                restore(g, added.len(), &before);
                return Err(LoopRejection::Strain { strain, allowed });
            }
            in_core &= kernel.weight(own) >= 1.0;
        }
        set_kernels(g);
        // Where every loop edge ends inside its kernel's quadratic core (Huber loops that agree
        // with the map), the kernels price and weigh the edges as the quadratic did: the
        // solution stands.
        if in_core {
            first
        } else {
            g.optimize(lm)
        }
    };
    let weights: Vec<f64> = added
        .iter()
        .map(|&(index, _, _)| report.edge_weights[index])
        .collect();
    if let Some(&weight) = weights.iter().find(|&&w| w < min_weight) {
        restore(g, added.len(), &before);
        return Err(LoopRejection::Graph {
            robust_weight: weight,
        });
    }
    let moved = before
        .iter()
        .zip(g.nodes())
        .map(|(b, a)| (b.to_matrix() - a.to_matrix()).abs().max())
        .collect();
    Ok((weights, report, moved))
}

/// Median confident depth over a window's frames (window units).
fn window_median_depth(frames: &[FramePrediction]) -> f64 {
    let mut d: Vec<f64> = frames
        .iter()
        .flat_map(|f| confident_pixels(f, 8, 0.0).into_iter().map(|p| p.2))
        .collect();
    median_in_place(&mut d)
}

fn validate(p: &WindowPrediction) -> Result<(), BackendError> {
    check_finite(p)?;
    validate_shape(p)
}

/// Every value of the prediction is finite ([`WindowPrediction::is_finite`]).
fn check_finite(p: &WindowPrediction) -> Result<(), BackendError> {
    if p.is_finite() {
        Ok(())
    } else {
        Err(BackendError::InvalidPrediction {
            reason: "non-finite values",
        })
    }
}

/// [`validate`] without the finite check.
fn validate_shape(p: &WindowPrediction) -> Result<(), BackendError> {
    if p.frames.is_empty() {
        return Err(BackendError::InvalidPrediction {
            reason: "no frames",
        });
    }
    for f in &p.frames {
        let n = f.depth.width * f.depth.height;
        if n == 0
            || f.depth.data.len() != n
            || f.depth_conf.data.len() != n
            || f.depth_conf.width != f.depth.width
        {
            return Err(BackendError::InvalidPrediction {
                reason: "depth/confidence size mismatch",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nalgebra::Vector3;

    use super::*;

    /// A ring of `n` cameras on the unit circle, chained by odometry edges that each turn
    /// `yaw_bias` radians too far (the nodes start where that drift puts them), and the loop edge
    /// that closes it (true relative pose, same sigmas).
    fn drifted_ring(n: usize, yaw_bias: f64) -> (PoseGraph<Sim3>, Constraint<Sim3>) {
        let truth: Vec<Sim3> = (0..n).map(|i| ring_pose(n, i)).collect();
        let information = Information::from_sigmas(0.01, 0.01, 0.01);
        let mut g = PoseGraph::new();
        let mut pose = truth[0];
        g.add_node(pose);
        for i in 1..n {
            let mut step = truth[i - 1].inverted() * truth[i];
            step.rotation *= UnitQuaternion::from_euler_angles(0.0, 0.0, yaw_bias);
            pose = pose * step;
            g.add_node(pose);
            g.add_constraint(Constraint {
                a: i - 1,
                b: i,
                a_from_b: step,
                information,
                kernel: Kernel::Huber(3.0),
                kind: ConstraintKind::Intra,
            })
            .expect("edge");
        }
        g.optimize(&LmConfig::default());
        let edge = Constraint {
            a: 0,
            b: n - 1,
            a_from_b: truth[0].inverted() * truth[n - 1],
            information,
            kernel: Kernel::Huber(3.0),
            kind: ConstraintKind::Loop,
        };
        (g, edge)
    }

    /// Camera `i` of a ring of `n` on the unit circle.
    fn ring_pose(n: usize, i: usize) -> Sim3 {
        let a = std::f64::consts::TAU * i as f64 / n as f64;
        Sim3::new(
            UnitQuaternion::from_euler_angles(0.0, 0.0, a),
            Vector3::new(a.cos(), a.sin(), 0.0),
            1.0,
        )
    }

    /// A second loop edge of a [`drifted_ring`], from camera 1 to camera `n - 2`, its
    /// measurement moved `offset` along x (0: the true relative pose).
    fn second_loop(n: usize, edge: &Constraint<Sim3>, offset: f64) -> Constraint<Sim3> {
        let mut a_from_b = ring_pose(n, 1).inverted() * ring_pose(n, n - 2);
        a_from_b.translation.x += offset;
        Constraint {
            a: 1,
            b: n - 2,
            a_from_b,
            ..*edge
        }
    }

    /// One loop closed on its own, as [`Backend::push_loop_window`] closes it.
    fn run_loop_edge(
        g: &mut PoseGraph<Sim3>,
        edge: Constraint<Sim3>,
        lm: &LmConfig,
        bound: StrainBound,
        min_weight: f64,
    ) -> Result<(f64, LmReport, Vec<f64>), LoopRejection> {
        run_loop_edges(g, &[(edge, bound)], lm, min_weight)
            .map(|(weights, report, moved)| (weights[0], report, moved))
    }

    /// Verified loops closed in one solve, as [`Backend::close_loops`] first tries.
    fn run_together(
        g: &mut PoseGraph<Sim3>,
        loops: &[VerifiedLoop],
        lm: &LmConfig,
        min_weight: f64,
    ) -> Result<SolvedLoops, LoopRejection> {
        let edges: Vec<_> = loops
            .iter()
            .map(|l| (edge_for(g, &l.edge).expect("a similarity edge"), l.bound))
            .collect();
        run_loop_edges(g, &edges, lm, min_weight)
    }

    /// A loop as [`Backend::verify_loop`] hands it on, under the default strain bound.
    fn verified(edge: Constraint<Sim3>) -> VerifiedLoop {
        let loops = LoopConfig::default();
        VerifiedLoop {
            source: CandidateSource::Appearance,
            closure: LoopClosure {
                query_frame: edge.b as u64,
                match_frame: edge.a as u64,
                match_submap: 0,
                query_submap: 1,
                overlap_ratio: 1.0,
                alignment_noise: (0.0, 0.0),
                correction: (0.0, 0.0),
                robust_weight: 0.0,
            },
            edge: LoopEdge::Sim3(edge),
            bound: StrainBound {
                chi2: loops.max_strain_chi2,
                per_edge: loops.max_strain_per_edge,
            },
        }
    }

    #[test]
    fn loops_that_agree_are_solved_together_to_the_map_closing_them_one_by_one_gives() {
        let n = 60;
        let (g0, edge) = drifted_ring(n, 0.002);
        let loops = [verified(edge), verified(second_loop(n, &edge, 0.0))];
        let (lm, min_weight) = (LmConfig::default(), LoopConfig::default().min_robust_weight);
        let mut one_by_one = g0.clone();
        for l in &loops {
            let edge = edge_for(&one_by_one, &l.edge).expect("a similarity edge");
            run_loop_edge(&mut one_by_one, edge, &lm, l.bound, min_weight).expect("closed");
        }
        let mut together = g0.clone();
        let (weights, _, moved) =
            run_together(&mut together, &loops, &lm, min_weight).expect("closed");
        assert_eq!(weights.len(), 2);
        assert!(weights.iter().all(|w| *w >= min_weight), "{weights:?}");
        assert_eq!(together.constraints().len(), g0.constraints().len() + 2);
        assert!(moved.iter().any(|m| *m > 0.05), "the loops moved the ring");
        let gap = furthest(&together, &one_by_one);
        assert!(gap < 1e-4, "{gap}");
    }

    #[test]
    fn a_false_loop_cannot_hide_behind_a_true_one_in_a_joint_solve() {
        let n = 60;
        let (g0, edge) = drifted_ring(n, 0.002);
        let loops = [verified(edge), verified(second_loop(n, &edge, 0.3))];
        let (lm, min_weight) = (LmConfig::default(), LoopConfig::default().min_robust_weight);
        // One by one, the true loop closes and the false one is turned away.
        let mut one_by_one = g0.clone();
        let outcomes: Vec<_> = loops
            .iter()
            .map(|l| {
                let edge = edge_for(&one_by_one, &l.edge).expect("a similarity edge");
                run_loop_edge(&mut one_by_one, edge, &lm, l.bound, min_weight)
            })
            .collect();
        assert!(outcomes[0].is_ok(), "{:?}", outcomes[0].as_ref().err());
        assert!(outcomes[1].is_err(), "the false loop closed one by one");
        // Together, the pair fails as a whole and leaves the graph as it was.
        let mut together = g0.clone();
        assert!(run_together(&mut together, &loops, &lm, min_weight).is_err());
        assert_eq!(together.constraints().len(), g0.constraints().len());
        assert_eq!(furthest(&together, &g0), 0.0, "restored");
    }

    #[test]
    fn closing_a_true_and_a_false_loop_together_falls_back_to_one_by_one() {
        let n = 60;
        let (g0, edge) = drifted_ring(n, 0.002);
        let mut backend = Backend::new(BackendConfig::default());
        backend.graph = Graph::Sim3(g0);
        let updates =
            backend.close_loops(vec![verified(edge), verified(second_loop(n, &edge, 0.3))]);
        assert_eq!(updates.len(), 2);
        assert!(updates[0].closure().is_some(), "{:?}", updates[0].outcome);
        assert!(
            matches!(updates[1].outcome, LoopOutcome::Rejected(_)),
            "{:?}",
            updates[1].outcome
        );
        assert_eq!(backend.loops().len(), 1);
        assert_eq!(backend.graph_size().1, n - 1 + 1);
    }

    /// The loop closed the long way: at full weight, then with its kernel.
    fn two_passes(mut g: PoseGraph<Sim3>, edge: Constraint<Sim3>) -> PoseGraph<Sim3> {
        let kernel = edge.kernel;
        let index = g
            .add_constraint(Constraint {
                kernel: Kernel::Quadratic,
                ..edge
            })
            .expect("edge");
        g.optimize(&LmConfig::default());
        g.set_kernel(index, kernel);
        g.optimize(&LmConfig::default());
        g
    }

    fn furthest(a: &PoseGraph<Sim3>, b: &PoseGraph<Sim3>) -> f64 {
        a.nodes()
            .iter()
            .zip(b.nodes())
            .map(|(x, y)| (x.translation - y.translation).norm())
            .fold(0.0, f64::max)
    }

    #[test]
    fn a_similaritys_camera_pose_is_the_one_its_matrix_decomposes_into() {
        for i in 0..50 {
            let x = f64::from(i);
            let node = Sim3::new(
                UnitQuaternion::from_euler_angles(0.3 * x, -0.17 * x, 2.9 - 0.11 * x),
                Vector3::new(x.sin() * 5.0, -x, 0.5 * x.cos()),
                0.05 + 0.3 * x,
            );
            let direct = node.camera_pose().expect("finite");
            let decomposed = pose_of_matrix(&node.to_matrix()).expect("finite");
            assert!(
                (direct.translation.vector - decomposed.translation.vector).norm() < 1e-9,
                "{i}"
            );
            assert!(direct.rotation.angle_to(&decomposed.rotation) < 1e-9, "{i}");
        }
    }

    #[test]
    fn a_loop_inside_its_kernel_core_is_solved_once_to_the_same_map() {
        let (g0, edge) = drifted_ring(30, 0.0002);
        let mut g = g0.clone();
        let bound = StrainBound {
            chi2: 9.0,
            per_edge: 0.0,
        };
        g.add_constraint(Constraint {
            kernel: Kernel::Quadratic,
            ..edge
        })
        .expect("edge");
        let own_before = g.whitened_norm(g.constraints().len() - 1).powi(2);
        g.pop_constraint();
        assert!(
            own_before > 0.25 && own_before < 9.0,
            "the drift must be visible and inside the Huber core: {own_before}"
        );
        let cost_before = g.cost();
        let (weight, _, moved) =
            run_loop_edge(&mut g, edge, &LmConfig::default(), bound, 0.5).expect("closed");
        assert_eq!(weight, 1.0);
        assert!(moved.iter().any(|m| *m > 1e-3), "the loop moved the ring");
        // The strain the single pass put on the odometry is within what the loop asked for.
        let own = g.whitened_norm(g.constraints().len() - 1).powi(2);
        assert!(g.cost() - own - cost_before <= own_before);
        let reference = two_passes(g0, edge);
        let gap = furthest(&g, &reference);
        assert!(gap < 1e-5, "{gap}");
    }

    #[test]
    fn a_loop_outside_its_kernel_core_is_checked_for_strain_and_restored_when_too_much() {
        let (g0, edge) = drifted_ring(30, 0.005);
        let tight = StrainBound {
            chi2: 1.0,
            per_edge: 0.0,
        };
        let mut g = g0.clone();
        let rejected = run_loop_edge(&mut g, edge, &LmConfig::default(), tight, 0.5);
        assert!(
            matches!(rejected, Err(LoopRejection::Strain { .. })),
            "{rejected:?}"
        );
        assert_eq!(g.constraints().len(), g0.constraints().len());
        assert_eq!(furthest(&g, &g0), 0.0, "restored");
        let loose = StrainBound {
            chi2: 1e9,
            per_edge: 0.0,
        };
        let (weight, _, _) =
            run_loop_edge(&mut g, edge, &LmConfig::default(), loose, 0.0).expect("closed");
        let reference = two_passes(g0, edge);
        let gap = furthest(&g, &reference);
        assert!(gap < 1e-5, "{gap}");
        assert!(weight <= 1.0);
    }
}
