//! Files written to `--output DIR`: `trajectory.txt` (TUM), `keyframes.txt`, `map.ply` (written
//! by the back-end's map), `summary.json`. Every file is written atomically (temporary file in
//! the same directory, then rename), so a reader never sees half a file, even after SIGTERM.
//!
//! Poses are `world_from_cam` (camera-to-world, OpenCV camera axes).

use std::path::{Path, PathBuf};

use nalgebra::Isometry3;
use serde::Serialize;

/// The trajectory, TUM format.
pub const TRAJECTORY: &str = "trajectory.txt";
/// The keyframe table.
pub const KEYFRAMES: &str = "keyframes.txt";
/// The global map, binary PLY.
pub const MAP: &str = "map.ply";
/// The run's summary.
pub const SUMMARY: &str = "summary.json";
/// The rerun recording written with `output.write_rrd`.
pub const RECORDING: &str = "recording.rrd";

/// Error while writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output directory cannot be created or written.
    #[error("output directory {path} is not writable: {source}")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing one file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One keyframe's current pose in the world.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyframePose {
    /// Stream-wide frame id.
    pub frame_id: u64,
    /// Capture time, seconds.
    pub timestamp_s: f64,
    /// Camera-to-world.
    pub world_from_cam: Isometry3<f64>,
    /// Submap the keyframe belongs to.
    pub submap: usize,
    /// Times this pose has been (re)published; grows when the pose graph moves it.
    pub revision: u64,
}

/// Creates `dir` if needed and checks that a file can be created in it, before any frame is read.
pub fn ensure_writable_dir(dir: &Path) -> Result<(), OutputError> {
    let not_writable = |source| OutputError::NotWritable {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    let probe = tempfile::Builder::new()
        .prefix(".vggtd-probe")
        .tempfile_in(dir)
        .map_err(not_writable)?;
    drop(probe);
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    submap::io::write_atomic(path, bytes).map_err(|source| OutputError::Write {
        path: path.to_owned(),
        source,
    })
}

/// TUM trajectory text (`timestamp tx ty tz qx qy qz qw`), one keyframe per line, by time.
pub fn tum_trajectory(poses: &[KeyframePose]) -> String {
    let mut stamped: Vec<submap::tum::StampedPose> = poses
        .iter()
        .map(|p| submap::tum::StampedPose {
            timestamp_s: p.timestamp_s,
            world_from_cam: p.world_from_cam,
        })
        .collect();
    stamped.sort_by(|a, b| a.timestamp_s.total_cmp(&b.timestamp_s));
    submap::tum::format_trajectory(&stamped)
}

/// `keyframes.txt`: a header line, then `frame_id timestamp submap revision` per keyframe.
pub fn keyframes_table(poses: &[KeyframePose]) -> String {
    let mut text = String::from("# frame_id timestamp_s submap revision\n");
    for pose in poses {
        text.push_str(&format!(
            "{} {:.6} {} {}\n",
            pose.frame_id, pose.timestamp_s, pose.submap, pose.revision
        ));
    }
    text
}

/// Wall time spent per pipeline phase, seconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PhaseTimes {
    /// Decoding and reading frames.
    pub ingest_s: f64,
    /// Keyframe selection.
    pub keyframe_s: f64,
    /// Model / predictor.
    pub inference_s: f64,
    /// Assembling windows from keyframes (which frames, attention neighbours).
    pub window_s: f64,
    /// Alignment, loop closure, pose graph.
    pub backend_s: f64,
    /// The part of `backend_s` spent on loop checks (verification and the pose graph).
    pub loops_s: f64,
    /// The part of `loops_s` spent after the next request went out, while the predictor worked
    /// on it: verifying a loop check and solving the pose graph for a window's loops.
    pub overlapped_s: f64,
    /// Time the predictor waited for its next request after answering one (measured on its
    /// thread; the run's first request and the end of the stream not counted): the time the
    /// model could have worked and did not.
    pub model_idle_s: f64,
    /// The part of `model_idle_s` in which the core had nothing to ask because it waited for
    /// keyframes (the source or keyframe selection behind). `model_idle_s - input_wait_s` is
    /// what the daemon's own work held the model up.
    pub input_wait_s: f64,
    /// rerun and pose-stream publishing.
    pub publish_s: f64,
    /// From start to the end of the stream.
    pub total_s: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// The run's id (UTC start time and process id); also the rerun recording id and the id in
    /// the output directory's `.vggtd-run.json`.
    pub run_id: String,
    /// When the run started, UTC, RFC 3339.
    pub started_utc: String,
    /// Input path or device.
    pub input: String,
    /// Predictor name.
    pub predictor: String,
    /// Frames read (after stride), including corrupt ones.
    pub frames: u64,
    /// Frames skipped as corrupt.
    pub corrupt_frames: u64,
    /// Frames dropped before keyframe selection because selection could not keep up with the
    /// camera (live sources only).
    pub dropped_frames: u64,
    /// Frames the camera sent that never reached vggtd: lost on the network or dropped from the
    /// subscription's queue while vggtd read too slowly (ROS 2 topics, from the publishers'
    /// sequence numbers).
    pub missed_frames: u64,
    /// Keyframes dropped from a full backlog because inference fell far behind (live sources
    /// only).
    pub dropped_keyframes: u64,
    /// Keyframes selected.
    pub keyframes: u64,
    /// Windows predicted and accepted.
    pub windows: u64,
    /// Windows rejected (non-finite predictions or predictor errors).
    pub rejected_windows: u64,
    /// Loop closures accepted.
    pub loops: u64,
    /// Back-end details: loop checks and rejections by reason, pose-graph size and residuals
    /// per edge kind, metric-scale fits.
    pub backend: crate::backend::BackendSummary,
    /// Points in `map.ply`.
    pub map_points: u64,
    /// Per-phase wall times.
    pub phase_times: PhaseTimes,
    /// Peak resident memory of the process, bytes.
    pub peak_memory_bytes: u64,
    /// The model's device memory (cubecl's pools on `cuda` / `wgpu`; absent on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<crate::vggt_predictor::DeviceMemorySummary>,
    /// Whether the run was stopped by SIGINT/SIGTERM.
    pub interrupted: bool,
    /// Error that ended the stream early, if any (outputs hold what was processed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_error: Option<String>,
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), 0 when unknown.
pub fn peak_memory_bytes() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// Current resident set size in bytes (Linux `VmRSS`), 0 when unknown.
pub fn current_memory_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use nalgebra::{Translation3, UnitQuaternion};

    use super::*;

    #[test]
    fn tum_lines_are_sorted_and_complete() {
        let pose = |frame_id, timestamp_s: f64, x| KeyframePose {
            frame_id,
            timestamp_s,
            world_from_cam: Isometry3::from_parts(
                Translation3::new(x, 2.0, 3.0),
                UnitQuaternion::from_euler_angles(0.0, 0.0, 0.5),
            ),
            submap: 0,
            revision: 0,
        };
        let text = tum_trajectory(&[pose(5, 2.5, 1.0), pose(1, 1.0, -1.0)]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("1.000000 -1.000000000 2.000000000 3.000000000"),
            "{}",
            lines[0]
        );
        let qz: f64 = lines[1]
            .split(' ')
            .nth(6)
            .and_then(|v| v.parse().ok())
            .expect("qz");
        assert!((qz - 0.25f64.sin()).abs() < 1e-9);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"first").expect("write");
        write_atomic(&path, b"second").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").expect("write");
        let err =
            ensure_writable_dir(&file.join("sub")).expect_err("a file cannot hold a directory");
        assert!(err.to_string().contains("not writable"), "{err}");
    }
}
