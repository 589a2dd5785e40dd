//! Evaluation harness for the back-end on simulated data: render a dataset along a trajectory
//! (a TUM file or a [`PathKind`]), run keyframe selection, the core and the simulated
//! predictor over it, and score the trajectory against the ground truth like `evo_ape`.
//! Used by the revisit tests and by `backend-eval` (`bench/RESULTS.md`).

use std::path::{Path, PathBuf};

use submap::eval::{ape, Alignment};
use submap::mapper::{MapperEvent, MapperStats};
use submap::pose_graph::LmReport;
use submap::session::{Session, SessionConfig, SessionEvent};
use submap::tum::{read_trajectory, write_trajectory, StampedPose};

use crate::error::{io_err, DatasetError};
use crate::paths::{path, PathKind};
use crate::sim::{SimConfig, SimulatedPredictor};
use crate::synth::{render_dataset, SynthOptions};

/// Where a rendered dataset comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Trajectory {
    /// A TUM trajectory file, every `stride`-th pose.
    File {
        /// The file.
        path: PathBuf,
        /// Keep every `stride`-th pose.
        stride: usize,
    },
    /// A synthetic path of `frames` poses.
    Path {
        /// Its shape.
        kind: PathKind,
        /// Number of poses.
        frames: usize,
    },
}

impl Trajectory {
    /// A short name for folders and tables.
    pub fn name(&self) -> String {
        match self {
            Self::File { path, stride } => format!(
                "{}-s{stride}",
                path.file_stem()
                    .map_or("trajectory".into(), |s| s.to_string_lossy().into_owned())
            ),
            Self::Path { kind, frames } => format!("{}-{frames}", kind.name()),
        }
    }
}

/// Renders the dataset for `trajectory` into `root/<name>-<w>x<h>` unless it is there already;
/// returns the folder.
///
/// The dataset is rendered into a private folder and renamed into place whole, so callers
/// in other threads or processes asking for the same dataset at once never read a half-written
/// one: the first rename wins and the others discard their copy.
pub fn render(
    trajectory: &Trajectory,
    root: &Path,
    width: u32,
    height: u32,
) -> Result<PathBuf, DatasetError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = root.join(format!("{}-{width}x{height}", trajectory.name()));
    let complete =
        |dir: &Path| dir.join("groundtruth.txt").is_file() && dir.join("depth.txt").is_file();
    if complete(&dir) {
        return Ok(dir);
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let work = root.join(format!(
        ".{}-{width}x{height}.{}-{n}.partial",
        trajectory.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let rendered = render_into(trajectory, &work, width, height);
    if let Err(e) = rendered {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    if dir.exists() && !complete(&dir) {
        // Left by an older layout or a killed process: never by a render in progress, which
        // only ever writes its private folder.
        let _ = std::fs::remove_dir_all(&dir);
    }
    match std::fs::rename(&work, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if complete(&dir) => {
            let _ = std::fs::remove_dir_all(&work);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work);
            Err(io_err(&dir)(e))
        }
    }
}

fn render_into(
    trajectory: &Trajectory,
    dir: &Path,
    width: u32,
    height: u32,
) -> Result<(), DatasetError> {
    let (source, stride) = match trajectory {
        Trajectory::File { path, stride } => (path.clone(), *stride),
        Trajectory::Path { kind, frames } => {
            let file = dir.join("path.txt");
            write_trajectory(&file, &path(*kind, *frames, 1000.0)).map_err(|e| {
                DatasetError::InvalidOption {
                    name: "trajectory",
                    message: e.to_string(),
                }
            })?;
            (file, 1)
        }
    };
    let options = SynthOptions {
        seed: 1,
        width,
        height,
        stride,
        max_frames: None,
        ..SynthOptions::default()
    };
    render_dataset(&source, dir, &options).map(|_| ())
}

/// What one simulated run gave.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// Sim(3)-aligned ATE RMSE, metres (evo `-as`).
    pub ate_sim3_m: f64,
    /// SE(3)-aligned ATE RMSE, metres (evo `-a`, no scale).
    pub ate_se3_m: f64,
    /// Keyframes in the trajectory.
    pub keyframes: usize,
    /// The core's counts (windows, failed windows, loop checks, loops, metric fallbacks).
    pub stats: MapperStats,
    /// Why loop checks were rejected, one line each.
    pub rejections: Vec<String>,
    /// Accepted loops as (old, new) frame indices into the sequence.
    pub closures: Vec<(u64, u64)>,
    /// Pose-graph residuals at the end.
    pub residuals: LmReport,
    /// Points in the global map.
    pub map_points: usize,
    /// The estimated trajectory.
    pub trajectory: Vec<StampedPose>,
}

/// Runs keyframe selection, the core and the simulated predictor over the dataset in `dir`.
/// With metric scale on, frames carry the dataset's depth.
pub fn run(dir: &Path, config: &SessionConfig, sim: &SimConfig) -> Result<SimRun, String> {
    let predictor =
        SimulatedPredictor::from_tum_dir(dir, sim.clone()).map_err(|e| e.to_string())?;
    let sequence = predictor.sequence().clone();
    let mut session = Session::new(config.clone(), predictor).map_err(|e| e.to_string())?;
    let mut rejections = Vec::new();
    let mut closures = Vec::new();
    let mut note = |events: Vec<SessionEvent>| {
        for event in events {
            if let SessionEvent::Mapper(event) = event {
                let MapperEvent::Loop(update) = *event else {
                    continue;
                };
                match &update.outcome {
                    submap::backend::LoopOutcome::Rejected(why) => rejections.push(format!(
                        "{} -> {} ({:?}): {why}",
                        update.match_frame, update.query_frame, update.source
                    )),
                    submap::backend::LoopOutcome::Closed(c) => {
                        closures.push((c.match_frame, c.query_frame))
                    }
                }
            }
        }
    };
    for i in 0..sequence.frames.len() {
        let frame = if config.metric_scale.enabled() {
            sequence.window_frame_with_depth(i).map(|(f, _)| f)
        } else {
            sequence.window_frame(i)
        }
        .map_err(|e| e.to_string())?;
        note(session.push_frame(frame).map_err(|e| e.to_string())?);
    }
    note(session.finish().map_err(|e| e.to_string())?);
    let backend = session.backend();
    let trajectory = backend.trajectory_stamped();
    let gt = read_trajectory(&dir.join("groundtruth.txt")).map_err(|e| e.to_string())?;
    let sim3 = ape(&gt, &trajectory, Alignment::Sim3, 0.01).map_err(|e| e.to_string())?;
    let se3 = ape(&gt, &trajectory, Alignment::Se3, 0.01).map_err(|e| e.to_string())?;
    Ok(SimRun {
        ate_sim3_m: sim3.stats.rmse,
        ate_se3_m: se3.stats.rmse,
        keyframes: trajectory.len(),
        stats: session.mapper().stats().clone(),
        rejections,
        closures,
        residuals: backend.residuals(),
        map_points: backend.map().points_in_world.len(),
        trajectory,
    })
}
