//! The daemon's side of the geometry back-end (`submap`): the window builder that turns
//! keyframes into windows, and the back-end stage state that integrates predictions, verifies
//! loops with the shared predictor, and works out what the publishers must (re-)send.
//!
//! Poses are `world_from_cam` (OpenCV camera axes); a submap's frame is its window's gauge and
//! `world_from_submap` places it in the world.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nalgebra::{Isometry3, Matrix4};
use submap::backend::{Backend, BackendConfig};
use submap::covis::{thumbnail_descriptor, CovisGraph};
use submap::prediction::{Intrinsics, Map2, Predictor, WindowFrame, WindowPrediction};
use submap::window::{WindowConfig, WindowError, WindowPlanner};

use crate::outputs::KeyframePose;

/// The predictor, shared by the inference stage (windows) and the back-end stage (loop windows).
pub type SharedPredictor = Arc<Mutex<Box<dyn Predictor>>>;

/// Groups keyframes into overlapping windows and, with `attention_k`, computes sparse-attention
/// neighbour lists from a covisibility graph of the keyframes seen so far.
#[derive(Debug)]
pub struct WindowBuilder {
    planner: WindowPlanner,
    recent: VecDeque<WindowFrame>,
    window_size: usize,
    covis: Option<(CovisGraph, usize)>,
}

/// A window's frames and optional neighbour lists.
pub type BuiltWindow = (Vec<WindowFrame>, Option<Vec<Vec<usize>>>);

impl WindowBuilder {
    /// A builder for `window` geometry; `attention_k` enables sparse attention lists.
    pub fn new(
        window: WindowConfig,
        backend: &BackendConfig,
        attention_k: Option<usize>,
    ) -> Result<Self, WindowError> {
        Ok(Self {
            planner: WindowPlanner::new(window)?,
            recent: VecDeque::new(),
            window_size: window.size,
            covis: attention_k.map(|k| (CovisGraph::new(backend.covis.clone()), k)),
        })
    }

    /// Adds a keyframe; returns a window when one is complete.
    pub fn push(&mut self, frame: WindowFrame) -> Option<BuiltWindow> {
        let frame_id = frame.frame_id;
        if let Some((graph, _)) = self.covis.as_mut() {
            if let Err(e) = graph.add_keyframe(frame_id, &thumbnail_descriptor(&frame.image)) {
                tracing::warn!(frame_id, error = %e, "covisibility graph rejected a keyframe");
            }
        }
        self.recent.push_back(frame);
        while self.recent.len() > self.window_size {
            self.recent.pop_front();
        }
        let window = self.planner.push_keyframe(frame_id)?;
        Some(self.assemble(&window.frame_ids))
    }

    /// The last window at the end of the stream, when keyframes are left uncovered.
    pub fn flush(&mut self) -> Option<BuiltWindow> {
        let window = self.planner.flush()?;
        Some(self.assemble(&window.frame_ids))
    }

    fn assemble(&self, frame_ids: &[u64]) -> BuiltWindow {
        let frames = frame_ids
            .iter()
            .filter_map(|id| self.recent.iter().find(|f| f.frame_id == *id).cloned())
            .collect();
        let neighbours = self
            .covis
            .as_ref()
            .map(|(graph, k)| graph.neighbours_within(frame_ids, *k));
        (frames, neighbours)
    }
}

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

/// What one window changed, for the publishers.
#[derive(Debug, Clone, Default)]
pub struct BackendStep {
    /// Submap created from this window.
    pub submap: usize,
    /// The new submap's cloud in its own frame (confidence-filtered, voxel-downsampled).
    pub submap_points: Vec<[f32; 3]>,
    /// Colours of `submap_points`.
    pub submap_colors: Vec<[u8; 3]>,
    /// Submaps to (re-)place: the new one and every one the pose graph moved.
    pub placed_submaps: Vec<(usize, Matrix4<f64>)>,
    /// Keyframe poses published for the first time.
    pub new_poses: Vec<KeyframePose>,
    /// Keyframe poses the pose graph moved (revision increased).
    pub moved_poses: Vec<KeyframePose>,
    /// Loop closures verified with this window (matched and query keyframe ids).
    pub new_loops: Vec<(u64, u64)>,
    /// Every loop edge so far, as the two keyframes' current poses.
    pub loop_edges: Vec<(Isometry3<f64>, Isometry3<f64>)>,
    /// The whole current trajectory (with revisions).
    pub trajectory: Vec<KeyframePose>,
    /// The window's keyframes.
    pub keyframes: Vec<KeyframeView>,
    /// Depth of the window's last frame, with its id.
    pub last_depth: Option<(u64, Map2<f32>)>,
}

/// The back-end stage state.
pub struct BackendStage {
    backend: Backend,
    predictor: SharedPredictor,
    tracker: PoseTracker,
    submap_revisions: HashMap<usize, u64>,
    voxel_rel: f64,
}

impl std::fmt::Debug for BackendStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendStage")
            .field("submaps", &self.backend.num_submaps())
            .finish()
    }
}

impl BackendStage {
    /// A stage around a fresh back-end; loop windows are predicted with `predictor`.
    /// `voxel_rel` (fraction of the window's median depth) thins the clouds sent to the viewer.
    pub fn new(config: BackendConfig, predictor: SharedPredictor, voxel_rel: f64) -> Self {
        Self {
            backend: Backend::new(config),
            predictor,
            tracker: PoseTracker::default(),
            submap_revisions: HashMap::new(),
            voxel_rel,
        }
    }

    /// Integrates one window, verifies its loop candidates, and reports what changed.
    pub fn push(
        &mut self,
        prediction: WindowPrediction,
    ) -> Result<BackendStep, submap::backend::BackendError> {
        let keyframes = prediction
            .frames
            .iter()
            .map(|f| KeyframeView {
                frame_id: f.frame_id,
                intrinsics: f.intrinsics,
                resolution: [f.depth.width as u32, f.depth.height as u32],
                image: Arc::clone(&f.image),
            })
            .collect();
        let last_depth = prediction
            .frames
            .last()
            .map(|f| (f.frame_id, f.depth.clone()));
        let voxel_size = self.voxel_rel
            * prediction
                .frames
                .first()
                .map_or(0.0, |f| median_depth(&f.depth));
        let update = self.backend.push_window(prediction)?;
        let mut new_loops = Vec::new();
        for candidate in &update.loop_candidates {
            let predicted = {
                let mut predictor = self
                    .predictor
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                predictor.predict(&candidate.window, None)
            };
            let loop_prediction = match predicted {
                Ok(p) if p.is_finite() => p,
                Ok(_) => {
                    tracing::warn!(
                        query = candidate.query_frame,
                        "loop window prediction has NaN/Inf: skipped"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(query = candidate.query_frame, error = %e, "loop window prediction failed");
                    continue;
                }
            };
            match self.backend.push_loop_window(candidate, loop_prediction) {
                Ok(outcome) => match (outcome.closure, outcome.rejection) {
                    (Some(closure), _) => {
                        tracing::info!(
                            query = closure.query_frame,
                            matched = closure.match_frame,
                            "loop closed"
                        );
                        new_loops.push((closure.match_frame, closure.query_frame));
                    }
                    (None, reason) => {
                        tracing::debug!(query = candidate.query_frame, ?reason, "loop rejected")
                    }
                },
                Err(e) => {
                    tracing::warn!(query = candidate.query_frame, error = %e, "loop verification failed")
                }
            }
        }

        let (points, colors) = self.backend.submap_points(update.submap);
        let (points, colors) = submap::map::voxel_downsample(&points, &colors, voxel_size);
        let placed_submaps = self
            .backend
            .submap_transforms()
            .into_iter()
            .filter(|t| self.submap_revisions.insert(t.index, t.revision) != Some(t.revision))
            .map(|t| (t.index, t.world_from_submap))
            .collect();
        let current = self.trajectory_raw();
        let (new_poses, moved_poses, trajectory) = self.tracker.update(current);
        let loop_edges = self
            .backend
            .loops()
            .iter()
            .filter_map(|l| {
                Some((
                    self.tracker.get(l.match_frame)?.world_from_cam,
                    self.tracker.get(l.query_frame)?.world_from_cam,
                ))
            })
            .collect();
        Ok(BackendStep {
            submap: update.submap,
            submap_points: points.iter().map(|p| [p.x, p.y, p.z]).collect(),
            submap_colors: colors,
            placed_submaps,
            new_poses,
            moved_poses,
            new_loops,
            loop_edges,
            trajectory,
            keyframes,
            last_depth,
        })
    }

    fn trajectory_raw(&self) -> Vec<KeyframePose> {
        self.backend
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
        self.backend.loops().len()
    }

    /// Writes the global map as binary PLY (atomically); returns the number of points.
    pub fn write_map_ply(&self, path: &Path) -> Result<u64, submap::map::MapError> {
        let map = self.backend.map();
        submap::map::write_ply(path, &map)?;
        Ok(map.points_in_world.len() as u64)
    }
}

fn median_depth(depth: &Map2<f32>) -> f64 {
    let mut valid: Vec<f32> = depth
        .data
        .iter()
        .copied()
        .filter(|d| d.is_finite() && *d > 0.0)
        .collect();
    if valid.is_empty() {
        return 0.0;
    }
    let middle = valid.len() / 2;
    let (_, median, _) = valid.select_nth_unstable_by(middle, f32::total_cmp);
    f64::from(*median)
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

    #[test]
    fn window_builder_emits_overlapping_windows_with_neighbours() {
        let frame = |frame_id: u64| WindowFrame {
            frame_id,
            timestamp_s: frame_id as f64,
            image: Arc::new(image::RgbImage::from_fn(16, 12, |x, y| {
                image::Rgb([(x * 9 + frame_id as u32) as u8, (y * 13) as u8, 90])
            })),
        };
        let mut builder = WindowBuilder::new(
            WindowConfig {
                size: 3,
                overlap: 1,
            },
            &BackendConfig::default(),
            Some(1),
        )
        .expect("valid geometry");
        let windows: Vec<BuiltWindow> = (0..6).filter_map(|id| builder.push(frame(id))).collect();
        let ids: Vec<Vec<u64>> = windows
            .iter()
            .map(|(f, _)| f.iter().map(|f| f.frame_id).collect())
            .collect();
        assert_eq!(ids, [vec![0, 1, 2], vec![2, 3, 4]]);
        let neighbours = windows[0].1.as_ref().expect("attention_k set");
        assert!(
            neighbours
                .iter()
                .enumerate()
                .all(|(i, list)| list[0] == i && list.len() == 2),
            "{neighbours:?}"
        );
        let (last, _) = builder.flush().expect("frame 5 is uncovered");
        assert_eq!(last.last().map(|f| f.frame_id), Some(5));
    }
}
