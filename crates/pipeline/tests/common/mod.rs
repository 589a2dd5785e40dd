//! Shared helpers of the end-to-end tests: a synthetic dataset rendered along the real
//! `freiburg1_xyz` motion, its frames encoded to a video with the `ffmpeg` CLI, and output checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const GT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/trajectories/freiburg1_xyz-groundtruth.txt"
);
pub const TINY_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/tiny_a/config.json"
);
pub const TINY_WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/tiny_a/weights.safetensors"
);

/// Frame rate of the generated clips; dataset timestamps are `i / FPS` so that the video's
/// presentation times equal them exactly.
pub const FPS: u32 = 10;

/// Renders `frames` views along every `stride`-th pose of the fr1_xyz ground truth, re-timed to
/// `i / FPS` seconds, into `dir` (TUM layout).
pub fn render(
    dir: &Path,
    frames: usize,
    stride: usize,
    width: u32,
    height: u32,
) -> datasets::synth::SynthSummary {
    render_from(dir, frames, stride, width, height, 0.0)
}

/// [`render`] with the times `start_s + i / FPS`.
pub fn render_from(
    dir: &Path,
    frames: usize,
    stride: usize,
    width: u32,
    height: u32,
    start_s: f64,
) -> datasets::synth::SynthSummary {
    let poses = submap::tum::read_trajectory(Path::new(GT)).expect("fixture trajectory");
    let retimed: Vec<submap::tum::StampedPose> = poses
        .iter()
        .step_by(stride)
        .take(frames)
        .enumerate()
        .map(|(i, p)| submap::tum::StampedPose {
            timestamp_s: start_s + i as f64 / f64::from(FPS),
            world_from_cam: p.world_from_cam,
        })
        .collect();
    std::fs::create_dir_all(dir).expect("mkdir");
    let trajectory = dir.join("trajectory_in.txt");
    submap::tum::write_trajectory(&trajectory, &retimed).expect("write trajectory");
    let options = datasets::synth::SynthOptions {
        width,
        height,
        ..Default::default()
    };
    datasets::synth::render_dataset(&trajectory, dir, &options).expect("renders")
}

/// Encodes the dataset's RGB frames (in `rgb.txt` order) at `FPS` with lossless RGB H.264.
pub fn encode_video(dataset: &Path, out: &Path) {
    let sequence = datasets::tum::read(dataset).expect("dataset");
    let frames = dataset.join("frames");
    std::fs::create_dir_all(&frames).expect("mkdir");
    for (i, frame) in sequence.frames.iter().enumerate() {
        std::fs::copy(&frame.rgb_path, frames.join(format!("f{i:05}.png"))).expect("copy frame");
    }
    let status = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-framerate",
            &FPS.to_string(),
            "-i",
        ])
        .arg(frames.join("f%05d.png"))
        .args(["-c:v", "libx264rgb", "-qp", "0", "-bf", "0"])
        .arg(out)
        .status()
        .expect("the ffmpeg CLI is installed (apt package `ffmpeg`)");
    assert!(status.success(), "ffmpeg failed");
}

pub fn vggtd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vggtd"))
}

/// `vggtd [GLOBAL...] run` with the simulated predictor into an output directory that cannot
/// be created (it would lie under a plain file).
pub fn run_into_unwritable(global: &[&str]) -> Output {
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    vggtd()
        .args(global)
        .args(["run", "--predictor", "simulated", "--input"])
        .arg(work.path())
        .arg("--output")
        .arg(file.join("out"))
        .output()
        .expect("runs")
}

pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("vggtd runs");
    assert!(
        output.status.success(),
        "vggtd failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Parses `trajectory.txt`: (timestamp, tx, ty, tz, qx, qy, qz, qw) per line; checks that each
/// quaternion is unit and every number finite.
pub fn read_tum(path: &Path) -> Vec<[f64; 8]> {
    let text = std::fs::read_to_string(path).expect("trajectory exists");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let values: Vec<f64> = line
                .split_whitespace()
                .map(|v| v.parse().expect("number"))
                .collect();
            let row: [f64; 8] = values.try_into().expect("8 columns");
            assert!(row.iter().all(|v| v.is_finite()), "{line}");
            let norm =
                (row[4] * row[4] + row[5] * row[5] + row[6] * row[6] + row[7] * row[7]).sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "non-unit quaternion in {line}");
            row
        })
        .collect()
}

/// Checks a binary PLY's header and size; returns its vertex count.
pub fn ply_vertex_count(path: &Path) -> usize {
    let bytes = std::fs::read(path).expect("map.ply exists");
    let header_end = bytes
        .windows(11)
        .position(|w| w == b"end_header\n")
        .expect("PLY header")
        + 11;
    let header = std::str::from_utf8(&bytes[..header_end]).expect("ASCII header");
    assert!(
        header.starts_with("ply\nformat binary_little_endian 1.0\n"),
        "{header}"
    );
    let count: usize = header
        .lines()
        .find_map(|l| l.strip_prefix("element vertex "))
        .and_then(|n| n.trim().parse().ok())
        .expect("vertex count");
    let properties: Vec<&str> = header
        .lines()
        .filter(|l| l.starts_with("property"))
        .collect();
    let stride: usize = properties
        .iter()
        .map(|p| match p.split_whitespace().nth(1) {
            Some("float") | Some("float32") => 4,
            Some("uchar") | Some("uint8") => 1,
            Some("double") => 8,
            other => panic!("unexpected property type {other:?}"),
        })
        .sum();
    assert_eq!(
        bytes.len() - header_end,
        count * stride,
        "PLY body size matches its header"
    );
    count
}

pub fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary.json"))
        .expect("JSON")
}

pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Runs the ffmpeg CLI on `input` with `args` into `output`.
pub fn ffmpeg(args: &[&str], input: &Path, output: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(input)
        .args(args)
        .arg(output)
        .status()
        .expect("the ffmpeg CLI is installed (apt package `ffmpeg`)");
    assert!(status.success(), "ffmpeg {args:?} failed");
}

/// A dataset's frames through a real codec: encoded to H.264 (`clip.mp4` in `root`), decoded
/// again by ffmpeg into one raw RGB file (`frames.rgb`) and JPEG files (`jpeg/`).
pub struct DecodedFrames {
    /// The video.
    pub video: PathBuf,
    /// Every frame's rgb24 pixels, one after the other.
    pub raw: PathBuf,
    /// One JPEG file per frame, in frame order by name.
    pub jpegs: PathBuf,
}

pub fn decoded_frames(dataset: &Path, root: &Path) -> DecodedFrames {
    let video = root.join("clip.mp4");
    encode_video(dataset, &video);
    let raw = root.join("frames.rgb");
    ffmpeg(&["-f", "rawvideo", "-pix_fmt", "rgb24"], &video, &raw);
    let jpegs = root.join("jpeg");
    std::fs::create_dir_all(&jpegs).expect("mkdir");
    ffmpeg(&["-q:v", "2"], &video, &jpegs.join("f%05d.jpg"));
    DecodedFrames { video, raw, jpegs }
}

/// Sim(3)-aligned ATE of `out/trajectory.txt` against the dataset's ground truth, and the pairs.
pub fn sim3_ate(dataset: &Path, out: &Path) -> (f64, usize) {
    let ape = submap::eval::ape_from_files(
        &dataset.join("groundtruth.txt"),
        &out.join("trajectory.txt"),
        submap::eval::Alignment::Sim3,
        0.01,
    )
    .expect("ape");
    (ape.rmse, ape.pairs)
}

/// Checks the last ROS 2 messages of a run as an independent reader decoded them (`back`:
/// `path`, `path_frame`, `tf`, `map`, `depth`, `info` as the tests' Python scripts print them)
/// against the run's outputs in `out`: the last path is the final trajectory, the last map the
/// final map, the depth a positive 32FC1 image with intrinsics of its size.
pub fn check_last_ros_messages(back: &serde_json::Value, out: &Path) {
    let trajectory = read_tum(&out.join("trajectory.txt"));
    let path = back["path"].as_array().expect("path");
    assert_eq!(path.len(), trajectory.len());
    for (p, t) in path.iter().zip(&trajectory) {
        for k in 0..4 {
            let v = p[k].as_f64().expect("number");
            assert!((v - t[k]).abs() < 1e-6, "path {p} vs trajectory {t:?}");
        }
    }
    assert_eq!(back["path_frame"], "map");
    assert_eq!(back["tf"], serde_json::json!(["map", "camera"]));
    let map = &back["map"];
    let ply_points = ply_vertex_count(&out.join("map.ply"));
    assert_eq!(map["width"], ply_points as u64, "{map}");
    assert_eq!(map["bytes"], 16 * ply_points as u64);
    assert_eq!(map["frame"], "map");
    assert_eq!(
        map["fields"],
        serde_json::json!([["x", 0, 7], ["y", 4, 7], ["z", 8, 7], ["rgb", 12, 7]])
    );
    let depth = &back["depth"];
    assert_eq!(depth["encoding"], "32FC1");
    let (dw, dh) = (
        depth["width"].as_u64().expect("w"),
        depth["height"].as_u64().expect("h"),
    );
    assert_eq!(depth["bytes"], dw * dh * 4);
    assert!(depth["min"].as_f64().expect("min") > 0.0, "{depth}");
    let info = &back["info"];
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(dw), Some(dh))
    );
    assert!(info["k"][0].as_f64().expect("fx") > 0.0, "{info}");
    assert_eq!(info["k"][8], 1.0);
}

/// The Python of the tests that check against Python packages (`VGGTD_PYTHON`, which `.ci/run`
/// sets up with `packages`), or `None` with a line saying the test is skipped.
pub fn test_python(packages: &str) -> Option<PathBuf> {
    let python = std::env::var_os("VGGTD_PYTHON").map(PathBuf::from);
    if python.is_none() {
        println!("skipped: set VGGTD_PYTHON to a Python with {packages} (as .ci/run does)");
    }
    python
}

/// Sends signal `name` (`TERM`, `INT`) to process `pid` with kill(1).
pub fn send_signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{name} failed");
}
