//! The daemon's side of the geometry back-end: [`CoreStage`] wraps the one synchronous core
//! ([`submap::mapper::Mapper`]: window assembly, the covisibility graph, alignment, loops, the
//! keyframe pose graph, the map) and works out what the publishers must (re-)send after each
//! answered request.
//!
//! Poses are `world_from_cam` (OpenCV camera axes); a submap's frame is its window's gauge and
//! `world_from_submap` places it in the world.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use nalgebra::{Isometry3, Matrix4};
use serde::Serialize;
use submap::backend::{LoopOutcome, LoopRejection};
use submap::mapper::{
    Mapper, MapperConfig, MapperError, MapperEvent, MapperStats, Request, RequestKind,
};
use submap::pose_graph::KindResiduals;
use submap::prediction::{Intrinsics, Map2, PredictError, WindowFrame, WindowPrediction};
use submap::window::WindowError;

use crate::outputs::KeyframePose;

/// What the publishers need of one keyframe of a window.
#[derive(Debug, Clone)]
pub struct KeyframeView {
    /// Frame id.
    pub frame_id: u64,
    /// Intrinsics at the prediction's resolution.
    pub intrinsics: Intrinsics,
    /// Prediction resolution `[width, height]`.
    pub resolution: [u32; 2],
    /// The pixels the prediction was made from.
    pub image: Arc<image::RgbImage>,
}

/// A new submap's cloud, for the publishers.
#[derive(Debug, Clone, Default)]
pub struct SubmapCloud {
    /// Submap index.
    pub submap: usize,
    /// Points in the submap's own frame (confidence-filtered, voxel-downsampled); empty when no
    /// output asked for clouds ([`CoreStage::set_clouds`]).
    pub points: Vec<[f32; 3]>,
    /// Colours of `points`.
    pub colors: Vec<[u8; 3]>,
}

/// What one answered request changed, for the publishers.
#[derive(Debug, Clone, Default)]
pub struct BackendStep {
    /// The submap a window created (none for a loop check or a failed window).
    pub new_submap: Option<SubmapCloud>,
    /// Submaps to (re-)place: the new one and every one the pose graph moved.
    pub placed_submaps: Vec<(usize, Matrix4<f64>)>,
    /// Keyframe poses published for the first time.
    pub new_poses: Vec<KeyframePose>,
    /// Keyframe poses the pose graph moved (revision increased).
    pub moved_poses: Vec<KeyframePose>,
    /// Loop closures verified now (matched and query keyframe ids).
    pub new_loops: Vec<(u64, u64)>,
    /// Every loop edge so far, as the two keyframes' current poses.
    pub loop_edges: Vec<(Isometry3<f64>, Isometry3<f64>)>,
    /// The whole current trajectory (with revisions).
    pub trajectory: Vec<KeyframePose>,
    /// The new window's keyframes.
    pub keyframes: Vec<KeyframeView>,
    /// Depth of the window's last frame in world units, with its id.
    pub last_depth: Option<(u64, Map2<f32>)>,
    /// What the back-end keeps for the map after the step (`map.max_retained_mib` bounds it).
    pub retained_bytes: usize,
}

/// Back-end figures for `summary.json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackendSummary {
    /// Windows, failed windows, loop checks, loops, metric-scale fallbacks.
    #[serde(flatten)]
    pub stats: MapperStats,
    /// Rejected loop checks by reason.
    pub rejected_loops: BTreeMap<String, u64>,
    /// Pose-graph nodes (keyframe copies) and edges.
    pub graph_nodes: usize,
    /// Pose-graph edges.
    pub graph_edges: usize,
    /// Bytes of maps and pixels the back-end keeps at the end (`map.max_retained_mib`).
    pub retained_bytes: usize,
    /// Keyframes that gave up their maps under that bound, by why.
    pub released_keyframes: submap::backend::ReleasedKeyframes,
    /// Residuals per edge kind at the end.
    pub residuals: Vec<KindResiduals>,
    /// Metres per window unit of the metric-scale fit, first to last window (with
    /// `--metric-scale depth`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metric_scales: Vec<f64>,
}

/// The core stage state.
pub struct CoreStage {
    mapper: Mapper,
    tracker: PoseTracker,
    submap_revisions: HashMap<usize, u64>,
    voxel_rel: f64,
    /// Whether any output uses the new submaps' clouds.
    clouds: bool,
    /// Kind of the request in flight.
    in_flight: Option<RequestKind>,
    /// The keyframes of a window answer received and not yet processed.
    received_views: Vec<KeyframeView>,
    rejected: BTreeMap<String, u64>,
    metric_scales: Vec<f64>,
}

impl std::fmt::Debug for CoreStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreStage")
            .field("submaps", &self.mapper.backend().num_submaps())
            .finish()
    }
}

impl CoreStage {
    /// A stage around a fresh core. `voxel_rel` (fraction of the window's median depth) thins
    /// the clouds sent to the viewer.
    pub fn new(config: MapperConfig, voxel_rel: f64) -> Result<Self, WindowError> {
        Ok(Self {
            mapper: Mapper::new(config)?,
            tracker: PoseTracker::default(),
            submap_revisions: HashMap::new(),
            voxel_rel,
            clouds: true,
            in_flight: None,
            received_views: Vec::new(),
            rejected: BTreeMap::new(),
            metric_scales: Vec::new(),
        })
    }

    /// Whether the steps carry each new submap's cloud (on by default). Unprojecting and thinning
    /// a window's pixels is the core's largest cost after the loop checks, so a run whose
    /// outputs place no clouds turns it off.
    pub fn set_clouds(&mut self, on: bool) {
        self.clouds = on;
    }

    /// The core.
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// Adds a keyframe; a keyframe the covisibility graph refuses (duplicate id) is skipped.
    pub fn push_keyframe(&mut self, frame: WindowFrame) {
        let frame_id = frame.frame_id;
        if let Err(e) = self.mapper.push_keyframe(frame) {
            tracing::warn!(frame_id, error = %e, "keyframe refused");
        }
    }

    /// Whether the request in flight is a loop check (else a window, or nothing).
    pub fn loop_in_flight(&self) -> bool {
        matches!(self.in_flight, Some(RequestKind::Loop { .. }))
    }

    /// See [`Mapper::next_request`].
    pub fn next_request(&mut self) -> Option<Request> {
        let request = self.mapper.next_request()?;
        self.in_flight = Some(request.kind.clone());
        Some(request)
    }

    /// Takes the answer to the request in flight without processing it yet
    /// ([`Mapper::receive`]: after a loop check's, the next request is ready at once); then
    /// [`CoreStage::process`] reports what changed.
    pub fn receive(
        &mut self,
        id: u64,
        answer: Result<WindowPrediction, PredictError>,
    ) -> Result<(), MapperError> {
        let keyframes = match (&self.in_flight, &answer) {
            (Some(RequestKind::Window { .. }), Ok(p)) => window_views(p),
            _ => Vec::new(),
        };
        self.mapper.receive(id, answer)?;
        self.in_flight = None;
        self.received_views = keyframes;
        Ok(())
    }

    /// Processes the answer taken by [`CoreStage::receive`] and reports what changed.
    pub fn process(&mut self) -> Option<BackendStep> {
        let events = self.mapper.process();
        let keyframes = std::mem::take(&mut self.received_views);
        self.step(keyframes, events)
    }

    /// What the core's events changed, for the sinks; `None` when nothing did.
    fn step(
        &mut self,
        keyframes: Vec<KeyframeView>,
        events: Vec<MapperEvent>,
    ) -> Option<BackendStep> {
        let mut new_submap = None;
        let mut new_loops = Vec::new();
        for event in events {
            match event {
                MapperEvent::Window {
                    index,
                    update,
                    metric,
                } => {
                    if let Some(fit) = metric {
                        if let Some(why) = &fit.fallback {
                            tracing::warn!(window = index, "metric scale: {why}");
                        } else {
                            tracing::debug!(
                                window = index,
                                scale = fit.scale,
                                samples = fit.samples,
                                "metric scale"
                            );
                        }
                        self.metric_scales.push(fit.scale);
                    }
                    if let Some(a) = update.alignment {
                        tracing::debug!(
                            window = index,
                            submap = update.submap,
                            inliers = a.inliers,
                            total = a.total,
                            noise = a.noise_rel,
                            "window aligned"
                        );
                    }
                    let mut cloud = SubmapCloud {
                        submap: update.submap,
                        ..SubmapCloud::default()
                    };
                    if self.clouds {
                        let backend = self.mapper.backend();
                        // Thinned at the window's own depth scale, the unit of these points.
                        let voxel_size = self.voxel_rel
                            * backend.submap_median_depth(update.submap).unwrap_or(0.0);
                        let (points, colors) = backend.submap_cloud(update.submap, voxel_size);
                        cloud.points = points.iter().map(|p| [p.x, p.y, p.z]).collect();
                        cloud.colors = colors;
                    }
                    new_submap = Some(cloud);
                }
                MapperEvent::WindowFailed {
                    index,
                    frame_ids,
                    reason,
                } => {
                    tracing::warn!(
                        window = index,
                        keyframes = frame_ids.len(),
                        "window dropped: {reason}"
                    );
                    return None;
                }
                MapperEvent::Loop(update) => match &update.outcome {
                    LoopOutcome::Closed(closure) => {
                        tracing::info!(
                            query = closure.query_frame,
                            matched = closure.match_frame,
                            source = ?update.source,
                            correction = closure.correction.0,
                            correction_deg = closure.correction.1,
                            "loop closed"
                        );
                        new_loops.push((closure.match_frame, closure.query_frame));
                    }
                    LoopOutcome::Rejected(why) => {
                        tracing::debug!(
                            query = update.query_frame,
                            matched = update.match_frame,
                            source = ?update.source,
                            "loop rejected: {why}"
                        );
                        *self
                            .rejected
                            .entry(rejection_kind(why).to_owned())
                            .or_default() += 1;
                    }
                },
            }
        }
        if new_submap.is_none() && new_loops.is_empty() {
            return None;
        }
        let backend = self.mapper.backend();
        let placed_submaps = backend
            .submap_transforms()
            .into_iter()
            .filter(|t| self.submap_revisions.insert(t.index, t.revision) != Some(t.revision))
            .map(|t| (t.index, t.world_from_submap))
            .collect();
        let current = self.trajectory_raw();
        let (new_poses, moved_poses, trajectory) = self.tracker.update(current);
        let loop_edges = self
            .mapper
            .backend()
            .loops()
            .iter()
            .filter_map(|l| {
                Some((
                    self.tracker.get(l.match_frame)?.world_from_cam,
                    self.tracker.get(l.query_frame)?.world_from_cam,
                ))
            })
            .collect();
        // The window's last frame's depth in world units, as the camera it is drawn under.
        let last_depth = keyframes.last().and_then(|k| {
            let depth = self.mapper.backend().keyframe_depth_world(k.frame_id)?;
            Some((k.frame_id, depth))
        });
        Some(BackendStep {
            new_submap,
            placed_submaps,
            new_poses,
            moved_poses,
            new_loops,
            loop_edges,
            trajectory,
            keyframes,
            last_depth,
            retained_bytes: self.mapper.backend().retained_bytes(),
        })
    }

    /// See [`Mapper::finish`].
    pub fn finish(&mut self) {
        self.mapper.finish();
    }

    /// After a stop signal: drops waiting keyframes and loop checks, so the run ends with the
    /// request in flight; reports the loops this closes ([`Mapper::abandon`]).
    pub fn abandon(&mut self) -> Option<BackendStep> {
        let events = self.mapper.abandon();
        self.step(Vec::new(), events)
    }

    fn trajectory_raw(&self) -> Vec<KeyframePose> {
        self.mapper
            .backend()
            .trajectory()
            .into_iter()
            .map(|p| KeyframePose {
                frame_id: p.frame_id,
                timestamp_s: p.timestamp_s,
                world_from_cam: p.world_from_cam,
                submap: p.submap,
                revision: 0,
            })
            .collect()
    }

    /// Every keyframe's current pose, with the revisions published so far.
    pub fn trajectory(&self) -> Vec<KeyframePose> {
        self.trajectory_raw()
            .into_iter()
            .map(|mut p| {
                p.revision = self
                    .tracker
                    .get(p.frame_id)
                    .map_or(0, |published| published.revision);
                p
            })
            .collect()
    }

    /// Loop closures so far.
    pub fn loop_count(&self) -> usize {
        self.mapper.backend().loops().len()
    }

    /// Back-end figures for the summary.
    pub fn summary(&self) -> BackendSummary {
        let backend = self.mapper.backend();
        let (graph_nodes, graph_edges) = backend.graph_size();
        BackendSummary {
            stats: self.mapper.stats().clone(),
            rejected_loops: self.rejected.clone(),
            graph_nodes,
            graph_edges,
            retained_bytes: backend.retained_bytes(),
            released_keyframes: backend.released_keyframes(),
            residuals: backend.residuals().by_kind,
            metric_scales: self.metric_scales.clone(),
        }
    }
}

/// A short, stable name of a rejection reason for counting.
fn rejection_kind(why: &LoopRejection) -> &'static str {
    match why {
        LoopRejection::Prediction(_) => "prediction",
        LoopRejection::MissingFrames => "missing_frames",
        LoopRejection::LowOverlap { .. } => "low_overlap",
        LoopRejection::DepthDisagreement { .. } => "depth_disagreement",
        LoopRejection::Alignment { .. } => "alignment",
        LoopRejection::Drift { .. } => "drift",
        LoopRejection::Strain { .. } => "strain",
        LoopRejection::Graph { .. } => "graph",
    }
}

/// The keyframe views of a window prediction.
fn window_views(p: &WindowPrediction) -> Vec<KeyframeView> {
    p.frames
        .iter()
        .map(|f| KeyframeView {
            frame_id: f.frame_id,
            intrinsics: f.intrinsics,
            resolution: [f.depth.width as u32, f.depth.height as u32],
            image: Arc::clone(&f.image),
        })
        .collect()
}

/// Tracks published keyframe poses and their revisions.
#[derive(Debug, Default)]
pub struct PoseTracker {
    published: HashMap<u64, KeyframePose>,
}

impl PoseTracker {
    /// Translation (world units) or rotation (radians) change that counts as a move.
    const MOVE_EPS: f64 = 1e-9;

    /// Compares the back-end's poses with what was published; returns (new, moved, all) with
    /// revisions updated.
    pub fn update(
        &mut self,
        current: impl IntoIterator<Item = KeyframePose>,
    ) -> (Vec<KeyframePose>, Vec<KeyframePose>, Vec<KeyframePose>) {
        let (mut new, mut moved, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for mut pose in current {
            match self.published.get(&pose.frame_id) {
                None => {
                    pose.revision = 0;
                    new.push(pose.clone());
                }
                Some(old) => {
                    let delta = old.world_from_cam.inverse() * pose.world_from_cam;
                    let changed = delta.translation.vector.norm() > Self::MOVE_EPS
                        || delta.rotation.angle() > Self::MOVE_EPS
                        || old.submap != pose.submap;
                    pose.revision = old.revision + u64::from(changed);
                    if changed {
                        moved.push(pose.clone());
                    }
                }
            }
            self.published.insert(pose.frame_id, pose.clone());
            all.push(pose);
        }
        (new, moved, all)
    }

    /// The latest published pose of a keyframe.
    pub fn get(&self, frame_id: u64) -> Option<&KeyframePose> {
        self.published.get(&frame_id)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::Vector3;

    use super::*;

    fn pose(frame_id: u64, x: f64) -> KeyframePose {
        KeyframePose {
            frame_id,
            timestamp_s: frame_id as f64,
            world_from_cam: Isometry3::new(Vector3::new(x, 0.0, 0.0), Vector3::zeros()),
            submap: 0,
            revision: 99,
        }
    }

    #[test]
    fn tracker_counts_revisions_only_on_moves() {
        let mut tracker = PoseTracker::default();
        let (new, moved, _) = tracker.update([pose(1, 0.0), pose(2, 1.0)]);
        assert_eq!((new.len(), moved.len()), (2, 0));
        assert_eq!(new[0].revision, 0);
        let (new, moved, all) = tracker.update([pose(1, 0.0), pose(2, 1.5), pose(3, 2.0)]);
        assert_eq!(new.iter().map(|p| p.frame_id).collect::<Vec<_>>(), [3]);
        assert_eq!(
            moved
                .iter()
                .map(|p| (p.frame_id, p.revision))
                .collect::<Vec<_>>(),
            [(2, 1)]
        );
        assert_eq!(
            all.iter().map(|p| p.revision).collect::<Vec<_>>(),
            [0, 1, 0]
        );
    }
}
