//! The streaming back-end: window predictions in, one consistent trajectory and map out.
//!
//! Each window becomes a submap whose frame is the window's gauge ([`GaugeModel::Sim3`]) or,
//! with [`GaugeModel::Sl4`], the frame of the window's point map (which may differ from the
//! pose gauge by a projective transform). Consecutive submaps share keyframes; the transform
//! `prev_from_cur` is estimated robustly from the 3-D points both predict at the same pixels of
//! those frames. Pose-graph nodes are `world_from_submap` (the world is submap 0's pose gauge).
//!
//! Loop closure runs in two steps so that the caller keeps control of the predictor:
//! [`Backend::push_window`] returns [`LoopCandidate`]s found by descriptor retrieval; the caller
//! predicts each candidate's small window and hands it to [`Backend::push_loop_window`], which
//! verifies it geometrically, adds a loop edge and re-optimises the pose graph.
//!
//! Poses are camera-to-world (`world_from_cam`), OpenCV camera axes.
//!
//! Memory: only the latest submap keeps its frames' full-resolution maps (the next window is
//! aligned to it). When a newer submap arrives, the older one is *retired*: the depth,
//! confidence and point maps of the keyframes it owns are decimated by
//! `gcd(map.pixel_stride, align_pixel_stride)` (2 by default: a quarter of the pixels) with
//! intrinsics rescaled to match, which keeps exactly the pixels that the global map and loop
//! verification sample, so results do not change; the maps of keyframes it shares with the
//! submap before it (owned there) are released. Kept per keyframe: its pose, those decimated
//! maps, and its image (shared `Arc`, needed to re-predict loop windows and to colour points).
//! [`Backend::retained_map_bytes`] reports the map bytes held.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nalgebra::{Isometry3, Matrix3, Matrix4, Point3, Translation3};
use serde::{Deserialize, Serialize};

use crate::align::{align_sim3, align_sl4, AlignError, Aligned, RobustConfig};
use crate::covis::{thumbnail_descriptor, CovisConfig, CovisError, CovisGraph};
use crate::lie::{nearest_rotation, Sim3, Sl4};
use crate::map::{confident_pixels, pixel_color, voxel_downsample, GlobalMap, MapConfig};
use crate::pose_graph::{
    Constraint, ConstraintKind, GraphNode, LmConfig, LmReport, PoseGraph, PoseGraphError,
};
use crate::prediction::{FramePrediction, Intrinsics, Map2, WindowFrame, WindowPrediction};

/// Which transform relates submaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GaugeModel {
    /// Similarity (rotation, translation, scale), from depth and poses.
    #[default]
    Sim3,
    /// Projective 4x4 (as VGGT-SLAM 2.0), from point maps when the predictor gives them.
    Sl4,
}

/// Loop-closure settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoopConfig {
    /// Look for loops at all. Default true.
    pub enabled: bool,
    /// Minimum descriptor cosine similarity of a candidate. Default 0.85.
    pub min_similarity: f32,
    /// Minimum distance in keyframes between the two frames of a loop. Default 16.
    pub min_keyframe_gap: usize,
    /// Candidates proposed per window at most. Default 1.
    pub max_candidates_per_window: usize,
    /// Minimum inlier ratio of both alignments of the loop window. Default 0.6.
    pub min_inlier_ratio: f64,
    /// Minimum fraction of the query frame's points that land on the matched frame with a
    /// consistent depth. Default 0.3.
    pub min_overlap_ratio: f64,
    /// Information weight of a loop edge (sequential edges weigh 1). Default 1.
    pub weight: f64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_similarity: 0.85,
            min_keyframe_gap: 16,
            max_candidates_per_window: 1,
            min_inlier_ratio: 0.6,
            min_overlap_ratio: 0.3,
            weight: 1.0,
        }
    }
}

/// Back-end settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    /// Sim(3) or SL(4) between submaps. Default Sim(3).
    pub gauge: GaugeModel,
    /// Robust estimator settings.
    pub align: RobustConfig,
    /// Pixel stride when sampling correspondences in shared frames. Default 4.
    pub align_pixel_stride: usize,
    /// Minimum correspondences for an alignment. Default 50.
    pub min_align_points: usize,
    /// Covisibility graph settings.
    pub covis: CovisConfig,
    /// Loop closure settings.
    pub loops: LoopConfig,
    /// Pose-graph optimiser settings.
    pub pose_graph: LmConfig,
    /// Global map settings.
    pub map: MapConfig,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            gauge: GaugeModel::Sim3,
            align: RobustConfig::default(),
            align_pixel_stride: 4,
            min_align_points: 50,
            covis: CovisConfig::default(),
            loops: LoopConfig::default(),
            pose_graph: LmConfig::default(),
            map: MapConfig::default(),
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
    /// A loop window does not contain frames of both submaps.
    #[error("loop window lacks frames of submap {submap}")]
    LoopWindowIncomplete {
        /// The submap without frames in the window.
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

/// Support of an alignment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlignmentReport {
    /// Inlier correspondences.
    pub inliers: usize,
    /// Correspondences used.
    pub total: usize,
    /// RMS residual of inliers, destination submap units.
    pub inlier_rmse: f64,
}

impl<T> From<&Aligned<T>> for AlignmentReport {
    fn from(a: &Aligned<T>) -> Self {
        Self {
            inliers: a.inliers,
            total: a.total,
            inlier_rmse: a.inlier_rmse,
        }
    }
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
    /// Descriptor similarity.
    pub similarity: f32,
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
    /// Old submap (edge start).
    pub match_submap: usize,
    /// New submap (edge end).
    pub query_submap: usize,
    /// Fraction of consistent reprojections found in verification.
    pub overlap_ratio: f64,
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
    /// The verified loop, or `None` when verification rejected it.
    pub closure: Option<LoopClosure>,
    /// Why it was rejected.
    pub rejection: Option<String>,
    /// Submaps whose `world_from_submap` changed.
    pub moved_submaps: Vec<usize>,
    /// Optimisation report when the graph was re-optimised.
    pub optimisation: Option<LmReport>,
}

/// A submap's placement in the world, with a revision that increases whenever it moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubmapTransform {
    /// Submap index.
    pub index: usize,
    /// `world_from_submap` as a homogeneous matrix (a similarity or a projective transform).
    pub world_from_submap: Matrix4<f64>,
    /// The similarity when the gauge model is Sim(3).
    pub sim3: Option<Sim3>,
    /// Starts at 0, increases each time the transform changes.
    pub revision: u64,
}

#[derive(Debug, Clone)]
enum Graph {
    Sim3(PoseGraph<Sim3>),
    Sl4(PoseGraph<Sl4>),
}

#[derive(Debug, Clone)]
struct Submap {
    frames: Vec<FramePrediction>,
    /// `pointmap_from_window`: identity for Sim(3) or without point maps.
    pointmap_from_window: Sl4,
    revision: u64,
    /// Decimation of the owned frames' maps: 1 while this is the latest submap, then
    /// [`Backend::retained_step`]. Frames owned by another submap have empty maps once retired.
    step: usize,
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

/// The streaming back-end.
#[derive(Debug, Clone)]
pub struct Backend {
    config: BackendConfig,
    submaps: Vec<Submap>,
    graph: Graph,
    covis: CovisGraph,
    /// frame id -> (submap, index in the submap) of the prediction that places it.
    owner: BTreeMap<u64, (usize, usize)>,
    loops: Vec<LoopClosure>,
    looped_pairs: Vec<(usize, usize)>,
    last_report: Option<LmReport>,
    /// Median confident depth of the first keyframe (world units), set by the first window.
    reference_depth: f64,
}

impl Backend {
    /// An empty back-end.
    pub fn new(config: BackendConfig) -> Self {
        let graph = match config.gauge {
            GaugeModel::Sim3 => Graph::Sim3(PoseGraph::new()),
            GaugeModel::Sl4 => Graph::Sl4(PoseGraph::new()),
        };
        let covis = CovisGraph::new(config.covis.clone());
        Self {
            config,
            submaps: Vec::new(),
            graph,
            covis,
            owner: BTreeMap::new(),
            loops: Vec::new(),
            looped_pairs: Vec::new(),
            last_report: None,
            reference_depth: 0.0,
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
                        .as_ref()
                        .map_or(0, |(p, c)| map_bytes(p) + map_bytes(c))
            })
            .sum()
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
                .as_ref()
                .map(|(p, c)| (decimate(p, step), decimate(c, step)));
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

    /// Verified loops so far.
    pub fn loops(&self) -> &[LoopClosure] {
        &self.loops
    }

    /// The report of the last pose-graph optimisation.
    pub fn last_optimisation(&self) -> Option<&LmReport> {
        self.last_report.as_ref()
    }

    /// Adds a window prediction as a new submap.
    pub fn push_window(
        &mut self,
        prediction: WindowPrediction,
    ) -> Result<WindowUpdate, BackendError> {
        validate(&prediction)?;
        let index = self.submaps.len();
        let pointmap_from_window = self.pointmap_from_window(&prediction.frames);
        let mut frames = prediction.frames;
        if self.config.gauge == GaugeModel::Sim3 {
            // Sim(3) works from depth and poses only; point maps would just hold memory.
            frames.iter_mut().for_each(|f| f.points_in_window = None);
        }
        let submap = Submap {
            frames,
            pointmap_from_window,
            revision: 0,
            step: 1,
        };
        let alignment = if let Some(prev) = self.submaps.last() {
            let (src, dst, w) = self.shared_correspondences(&submap.frames, prev);
            if src.len() < self.config.min_align_points {
                if !submap
                    .frames
                    .iter()
                    .any(|f| prev.frames.iter().any(|p| p.frame_id == f.frame_id))
                {
                    let first = submap.frames[0].frame_id;
                    let last = submap.frames[submap.frames.len() - 1].frame_id;
                    return Err(BackendError::NoOverlap {
                        previous: index - 1,
                        first,
                        last,
                    });
                }
                return Err(BackendError::TooFewCorrespondences {
                    submap: index,
                    got: src.len(),
                    needed: self.config.min_align_points,
                });
            }
            Some(self.add_sequential_node(index, &src, &dst, &w)?)
        } else {
            match &mut self.graph {
                Graph::Sim3(g) => {
                    g.add_node(Sim3::identity());
                }
                Graph::Sl4(g) => {
                    g.add_node(submap.pointmap_from_window.inverse());
                }
            }
            None
        };
        if index == 0 {
            self.reference_depth = submap.frames.first().map_or(0.0, |f| {
                let mut d: Vec<f64> = confident_pixels(f, 4, 0.0).iter().map(|p| p.2).collect();
                crate::align::median_in_place(&mut d)
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
            let descriptor = thumbnail_descriptor(&self.submaps[s].frames[k].image);
            self.covis.add_keyframe(*id, &descriptor)?;
        }
        if index > 0 {
            self.retire(index - 1);
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

    fn add_sequential_node(
        &mut self,
        index: usize,
        src: &[Point3<f64>],
        dst: &[Point3<f64>],
        w: &[f64],
    ) -> Result<AlignmentReport, BackendError> {
        let err = |source| BackendError::Align {
            submap: index,
            source,
        };
        match &mut self.graph {
            Graph::Sim3(g) => {
                let a = align_sim3(src, dst, w, true, &self.config.align).map_err(err)?;
                chain_next(g, index, a.transform)?;
                Ok((&a).into())
            }
            Graph::Sl4(g) => {
                let a = align_sl4(src, dst, w, &self.config.align).map_err(err)?;
                chain_next(g, index, a.transform)?;
                Ok((&a).into())
            }
        }
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
            let Some((points, _)) = &f.points_in_window else {
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
        align_sl4(&src, &dst, &w, &self.config.align)
            .map_or_else(|_| Sl4::identity(), |a| a.transform)
    }

    /// The 3-D point a frame predicts at pixel `(u, v)` in its submap frame, with confidence.
    fn submap_point(&self, f: &FramePrediction, u: usize, v: usize) -> Option<(Point3<f64>, f64)> {
        if self.config.gauge == GaugeModel::Sl4 {
            if let Some((points, conf)) = &f.points_in_window {
                if points.width == f.depth.width && points.height == f.depth.height {
                    let p = points.at(u, v);
                    let c = f64::from(conf.at(u, v));
                    let p = Point3::new(f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
                    return (c > 0.0 && p.coords.iter().all(|x| x.is_finite())).then_some((p, c));
                }
            }
        }
        let d = f64::from(f.depth.at(u, v));
        let c = f64::from(f.depth_conf.at(u, v));
        (d > 0.0 && d.is_finite() && c > 0.0).then(|| {
            (
                f.cam_from_window.inverse() * f.intrinsics.unproject(u as f64, v as f64, d),
                c,
            )
        })
    }

    /// Correspondences between frames present in both `a` and `b`: points of `a` (src) and of
    /// `b` (dst) at the same pixels, with weights `min(conf_a, conf_b)`.
    fn correspondences(
        &self,
        a: &[FramePrediction],
        b: &[FramePrediction],
        stride: usize,
    ) -> (Vec<Point3<f64>>, Vec<Point3<f64>>, Vec<f64>) {
        let mut src = Vec::new();
        let mut dst = Vec::new();
        let mut w = Vec::new();
        for fa in a {
            let Some(fb) = b.iter().find(|fb| fb.frame_id == fa.frame_id) else {
                continue;
            };
            let (wa, ha) = (fa.depth.width, fa.depth.height);
            let (wb, hb) = (fb.depth.width, fb.depth.height);
            if wb == 0 || hb == 0 {
                continue;
            }
            for v in (0..ha).step_by(stride.max(1)) {
                for u in (0..wa).step_by(stride.max(1)) {
                    let (ub, vb) = (u * wb / wa, v * hb / ha);
                    let (Some((pa, ca)), Some((pb, cb))) =
                        (self.submap_point(fa, u, v), self.submap_point(fb, ub, vb))
                    else {
                        continue;
                    };
                    src.push(pa);
                    dst.push(pb);
                    w.push(ca.min(cb));
                }
            }
        }
        (src, dst, w)
    }

    fn shared_correspondences(
        &self,
        cur: &[FramePrediction],
        prev: &Submap,
    ) -> (Vec<Point3<f64>>, Vec<Point3<f64>>, Vec<f64>) {
        self.correspondences(cur, &prev.frames, self.config.align_pixel_stride)
    }

    fn loop_candidates(&self, index: usize, new_frames: &[u64]) -> Vec<LoopCandidate> {
        let cfg = &self.config.loops;
        let mut found: Vec<(f32, u64, u64)> = Vec::new();
        for id in new_frames {
            let Ok(hits) = self
                .covis
                .retrieve(*id, cfg.min_keyframe_gap, cfg.min_similarity, 3)
            else {
                continue;
            };
            for (m, sim) in hits {
                let Some(&(ms, _)) = self.owner.get(&m) else {
                    continue;
                };
                if ms + 1 >= index || self.looped_pairs.contains(&(ms, index)) {
                    continue;
                }
                found.push((sim, *id, m));
            }
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut out: Vec<LoopCandidate> = Vec::new();
        for (sim, q, m) in found {
            if out.len() >= cfg.max_candidates_per_window {
                break;
            }
            let (ms, mk) = self.owner[&m];
            let (qs, qk) = self.owner[&q];
            if out.iter().any(|c| c.match_submap == ms) {
                continue;
            }
            let mut window = Vec::new();
            for (s, ks) in [(ms, [mk, mk + 1]), (qs, [qk.saturating_sub(1), qk])] {
                let frames = &self.submaps[s].frames;
                let mut ks: Vec<usize> = ks.iter().copied().filter(|k| *k < frames.len()).collect();
                ks.dedup();
                for k in ks {
                    let f = &frames[k];
                    if window
                        .iter()
                        .any(|w: &WindowFrame| w.frame_id == f.frame_id)
                    {
                        continue;
                    }
                    window.push(WindowFrame {
                        frame_id: f.frame_id,
                        timestamp_s: f.timestamp_s,
                        image: Arc::clone(&f.image),
                    });
                }
            }
            out.push(LoopCandidate {
                query_frame: q,
                match_frame: m,
                match_submap: ms,
                query_submap: qs,
                similarity: sim,
                window,
            });
        }
        out
    }

    /// Verifies a predicted loop window and, when it passes, adds the loop edge and
    /// re-optimises the pose graph.
    pub fn push_loop_window(
        &mut self,
        candidate: &LoopCandidate,
        prediction: WindowPrediction,
    ) -> Result<LoopUpdate, BackendError> {
        validate(&prediction)?;
        let reject = |reason: String| LoopUpdate {
            closure: None,
            rejection: Some(reason),
            moved_submaps: Vec::new(),
            optimisation: None,
        };
        let (ms, qs) = (candidate.match_submap, candidate.query_submap);
        if ms >= self.submaps.len() || qs >= self.submaps.len() {
            return Err(BackendError::LoopWindowIncomplete { submap: ms.max(qs) });
        }
        // Only the frames owned by each side take part, so the two alignments are independent.
        let side = |s: usize| -> Vec<FramePrediction> {
            prediction
                .frames
                .iter()
                .filter(|f| self.owner.get(&f.frame_id).is_some_and(|o| o.0 == s))
                .cloned()
                .collect()
        };
        let (frames_m, frames_q) = (side(ms), side(qs));
        if frames_m.is_empty() {
            return Err(BackendError::LoopWindowIncomplete { submap: ms });
        }
        if frames_q.is_empty() {
            return Err(BackendError::LoopWindowIncomplete { submap: qs });
        }
        let Some(overlap) = self.reprojection_overlap(&prediction, candidate) else {
            return Ok(reject(
                "query or match frame missing from the loop prediction".into(),
            ));
        };
        if overlap < self.config.loops.min_overlap_ratio {
            return Ok(reject(format!(
                "overlap {overlap:.2} below {:.2}",
                self.config.loops.min_overlap_ratio
            )));
        }
        let stride = self.config.align_pixel_stride;
        let (src_m, dst_m, w_m) = self.correspondences(&frames_m, &self.submaps[ms].frames, stride);
        let (src_q, dst_q, w_q) = self.correspondences(&frames_q, &self.submaps[qs].frames, stride);
        let min_ratio = self.config.loops.min_inlier_ratio;
        let before = self.world_matrices();
        let weight = self.config.loops.weight;
        let cfg = &self.config.align;
        let edge = LoopEdge {
            a: ms,
            b: qs,
            weight,
            min_ratio,
        };
        let result: Result<(), String> = match &mut self.graph {
            Graph::Sim3(g) => edge.add(
                g,
                align_sim3(&src_m, &dst_m, &w_m, true, cfg),
                align_sim3(&src_q, &dst_q, &w_q, true, cfg),
            ),
            Graph::Sl4(g) => edge.add(
                g,
                align_sl4(&src_m, &dst_m, &w_m, cfg),
                align_sl4(&src_q, &dst_q, &w_q, cfg),
            ),
        };
        if let Err(reason) = result {
            return Ok(reject(reason));
        }
        let report = match &mut self.graph {
            Graph::Sim3(g) => g.optimize(&self.config.pose_graph),
            Graph::Sl4(g) => g.optimize(&self.config.pose_graph),
        };
        let after = self.world_matrices();
        let mut moved = Vec::new();
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            if (b - a).abs().max() > 1e-12 {
                self.submaps[i].revision += 1;
                moved.push(i);
            }
        }
        let _ = self
            .covis
            .add_loop_edge(candidate.match_frame, candidate.query_frame);
        let closure = LoopClosure {
            query_frame: candidate.query_frame,
            match_frame: candidate.match_frame,
            match_submap: ms,
            query_submap: qs,
            overlap_ratio: overlap,
        };
        self.loops.push(closure.clone());
        self.looped_pairs.push((ms, qs));
        self.last_report = Some(report.clone());
        Ok(LoopUpdate {
            closure: Some(closure),
            rejection: None,
            moved_submaps: moved,
            optimisation: Some(report),
        })
    }

    /// Fraction of the query frame's points (in the loop window) that project into the match
    /// frame's image with a depth within 5 % of the match frame's own depth there.
    fn reprojection_overlap(
        &self,
        prediction: &WindowPrediction,
        c: &LoopCandidate,
    ) -> Option<f64> {
        let q = prediction
            .frames
            .iter()
            .find(|f| f.frame_id == c.query_frame)?;
        let m = prediction
            .frames
            .iter()
            .find(|f| f.frame_id == c.match_frame)?;
        let m_from_q = m.cam_from_window * q.cam_from_window.inverse();
        let pixels = confident_pixels(q, self.config.align_pixel_stride, 0.0);
        if pixels.is_empty() {
            return Some(0.0);
        }
        let consistent = pixels
            .iter()
            .filter(|(u, v, d, _)| {
                let p = m_from_q * q.intrinsics.unproject(*u as f64, *v as f64, *d);
                let Some((x, y)) = m.intrinsics.project(&p) else {
                    return false;
                };
                let (xr, yr) = (x.round(), y.round());
                if xr < 0.0 || yr < 0.0 || xr >= m.depth.width as f64 || yr >= m.depth.height as f64
                {
                    return false;
                }
                let dm = f64::from(m.depth.at(xr as usize, yr as usize));
                dm > 0.0 && (dm - p.z).abs() < 0.05 * dm
            })
            .count();
        Some(consistent as f64 / pixels.len() as f64)
    }

    /// Re-runs the pose-graph optimisation (for instance after changing weights).
    pub fn optimize(&mut self) -> LmReport {
        let report = match &mut self.graph {
            Graph::Sim3(g) => g.optimize(&self.config.pose_graph),
            Graph::Sl4(g) => g.optimize(&self.config.pose_graph),
        };
        self.last_report = Some(report.clone());
        report
    }

    fn world_matrices(&self) -> Vec<Matrix4<f64>> {
        match &self.graph {
            Graph::Sim3(g) => g.nodes().iter().map(Sim3::to_homogeneous).collect(),
            Graph::Sl4(g) => g.nodes().iter().map(|n| *n.matrix()).collect(),
        }
    }

    /// `world_from_submap` of every submap, with revisions.
    pub fn submap_transforms(&self) -> Vec<SubmapTransform> {
        let mats = self.world_matrices();
        (0..self.submaps.len())
            .map(|i| SubmapTransform {
                index: i,
                world_from_submap: mats[i],
                sim3: match &self.graph {
                    Graph::Sim3(g) => Some(g.nodes()[i]),
                    Graph::Sl4(_) => None,
                },
                revision: self.submaps[i].revision,
            })
            .collect()
    }

    /// `world_from_window` of a submap's pose gauge as a 4x4 matrix.
    fn world_from_window(&self, s: usize) -> Matrix4<f64> {
        match &self.graph {
            Graph::Sim3(g) => g.nodes()[s].to_homogeneous(),
            Graph::Sl4(g) => g.nodes()[s].matrix() * self.submaps[s].pointmap_from_window.matrix(),
        }
    }

    fn keyframe_pose(&self, frame_id: u64) -> Option<KeyframePose> {
        let &(s, k) = self.owner.get(&frame_id)?;
        let f = &self.submaps[s].frames[k];
        let world_from_window = self.world_from_window(s);
        let window_from_cam = f.cam_from_window.inverse();
        let centre = crate::align::apply_h(
            &world_from_window,
            &Point3::from(window_from_cam.translation.vector),
        );
        // cam_from_world's left 3x3 block is proportional to the rotation (exactly for Sim(3)).
        let window_from_world = world_from_window.try_inverse()?;
        let cam_from_world = f.cam_from_window.to_homogeneous() * window_from_world;
        let mut block: Matrix3<f64> = cam_from_world.fixed_view::<3, 3>(0, 0).into();
        if block.determinant() < 0.0 {
            block = -block;
        }
        let rotation = nearest_rotation(&block).inverse();
        Some(KeyframePose {
            frame_id,
            timestamp_s: f.timestamp_s,
            submap: s,
            world_from_cam: Isometry3::from_parts(Translation3::from(centre.coords), rotation),
        })
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

    /// Points of one submap in its own frame with colours (for viewers that place submaps with
    /// [`Backend::submap_transforms`]); keyframes owned by other submaps are left out.
    pub fn submap_points(&self, s: usize) -> (Vec<Point3<f32>>, Vec<[u8; 3]>) {
        let mut pts = Vec::new();
        let mut cols = Vec::new();
        let Some(sub) = self.submaps.get(s) else {
            return (pts, cols);
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
                pts.push(Point3::new(p.x as f32, p.y as f32, p.z as f32));
                cols.push(pixel_color(f, u, v));
            }
        }
        (pts, cols)
    }

    /// The global map: every keyframe's confident points in the world frame, voxel-downsampled.
    pub fn map(&self) -> GlobalMap {
        let mut pts = Vec::new();
        let mut cols = Vec::new();
        let cfg = &self.config.map;
        for (&_, &(s, k)) in &self.owner {
            let f = &self.submaps[s].frames[k];
            let stride = (cfg.pixel_stride / self.submaps[s].step).max(1);
            let world_from_cam =
                self.world_from_window(s) * f.cam_from_window.inverse().to_homogeneous();
            for (u, v, d, _) in confident_pixels(f, stride, cfg.conf_quantile) {
                let p = crate::align::apply_h(
                    &world_from_cam,
                    &f.intrinsics.unproject(u as f64, v as f64, d),
                );
                if p.coords.iter().all(|x| x.is_finite()) {
                    pts.push(Point3::new(p.x as f32, p.y as f32, p.z as f32));
                    cols.push(pixel_color(f, u, v));
                }
            }
        }
        let voxel = cfg.voxel_rel * self.reference_depth();
        let (points_in_world, colors) = voxel_downsample(&pts, &cols, voxel);
        GlobalMap {
            points_in_world,
            colors,
            voxel_size: if voxel > 0.0 { voxel } else { 0.0 },
        }
    }

    /// Median depth of the first keyframe, in world units (the world is submap 0's gauge).
    fn reference_depth(&self) -> f64 {
        self.reference_depth
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

fn validate(p: &WindowPrediction) -> Result<(), BackendError> {
    if p.frames.is_empty() {
        return Err(BackendError::InvalidPrediction {
            reason: "no frames",
        });
    }
    if !p.is_finite() {
        return Err(BackendError::InvalidPrediction {
            reason: "non-finite values",
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

/// Adds submap `index` after `index - 1`, placed by `prev_from_next` (its alignment to the
/// previous submap), with the sequential edge that measured it.
fn chain_next<T>(
    graph: &mut PoseGraph<T>,
    index: usize,
    prev_from_next: T,
) -> Result<(), PoseGraphError>
where
    T: GraphNode + std::ops::Mul<Output = T>,
{
    let world_from_next = graph.nodes()[index - 1] * prev_from_next;
    graph.add_node(world_from_next);
    graph.add_constraint(Constraint {
        a: index - 1,
        b: index,
        a_from_b: prev_from_next,
        weight: 1.0,
        kind: ConstraintKind::Sequential,
    })
}

/// A verified loop edge between submaps `a` (the match) and `b` (the query): both submaps are
/// aligned to the loop window, and the edge is `a_from_loop * (b_from_loop)^-1` when both
/// alignments keep at least `min_ratio` of their correspondences as inliers.
struct LoopEdge {
    a: usize,
    b: usize,
    weight: f64,
    min_ratio: f64,
}

impl LoopEdge {
    fn add<T, E>(
        &self,
        graph: &mut PoseGraph<T>,
        match_alignment: Result<Aligned<T>, E>,
        query_alignment: Result<Aligned<T>, E>,
    ) -> Result<(), String>
    where
        T: GraphNode + std::ops::Mul<Output = T> + Invertible,
        E: std::fmt::Display,
    {
        match (match_alignment, query_alignment) {
            (Ok(m), Ok(q))
                if m.inlier_ratio() >= self.min_ratio && q.inlier_ratio() >= self.min_ratio =>
            {
                graph
                    .add_constraint(Constraint {
                        a: self.a,
                        b: self.b,
                        a_from_b: m.transform * q.transform.inverted(),
                        weight: self.weight,
                        kind: ConstraintKind::Loop,
                    })
                    .map_err(|e| e.to_string())
            }
            (Ok(m), Ok(q)) => Err(format!(
                "inlier ratios {:.2} / {:.2} below {:.2}",
                m.inlier_ratio(),
                q.inlier_ratio(),
                self.min_ratio
            )),
            (Err(e), _) | (_, Err(e)) => Err(format!("alignment failed: {e}")),
        }
    }
}

/// Group inverse, for code generic over [`Sim3`] and [`Sl4`].
trait Invertible {
    fn inverted(&self) -> Self;
}

impl Invertible for Sim3 {
    fn inverted(&self) -> Self {
        self.inverse()
    }
}

impl Invertible for Sl4 {
    fn inverted(&self) -> Self {
        self.inverse()
    }
}
