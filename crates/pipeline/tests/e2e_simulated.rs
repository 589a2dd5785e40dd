//! The simulated predictor through the full daemon with a video source reaches the same ATE as
//! the back-end alone (`submap::session::Session` over the same dataset), and every output is
//! well-formed.
//!
//! Setup: a synthetic dataset rendered along `freiburg1_xyz` motion (every 10th ground-truth pose (real time),
//! re-timed to 10 Hz), its frames encoded losslessly (RGB H.264) to an MP4 with the `ffmpeg` CLI.
//! Lossless encoding makes the decoded frames identical to the PNGs, so keyframe selection sees
//! the same pixels on both paths.
#![cfg(feature = "video")]

mod common;

use std::path::Path;

use common::*;
use submap::eval::{ape, Alignment};
use submap::session::{Session, SessionConfig, SessionEvent};

const FRAMES: usize = 70;

fn backend_alone_ate(dataset: &Path) -> (f64, usize) {
    let sequence = datasets::tum::read(dataset).expect("dataset");
    let predictor = datasets::sim::SimulatedPredictor::new(
        sequence.clone(),
        datasets::sim::SimConfig::default(),
    )
    .expect("sim");
    let mut session = Session::new(SessionConfig::default(), predictor).expect("session");
    for i in 0..sequence.frames.len() {
        let events = session
            .push_frame(sequence.window_frame(i).expect("frame"))
            .expect("frame accepted");
        assert!(
            !events.iter().any(|e| matches!(
                e,
                SessionEvent::Mapper(m) if matches!(**m, submap::mapper::MapperEvent::Loop(_))
            )),
            "no loop expected on this short clip"
        );
    }
    session.finish().expect("finish");
    let estimate: Vec<submap::tum::StampedPose> = session
        .backend()
        .trajectory()
        .iter()
        .map(|p| submap::tum::StampedPose {
            timestamp_s: p.timestamp_s,
            world_from_cam: p.world_from_cam,
        })
        .collect();
    let result = ape(&sequence.ground_truth(), &estimate, Alignment::Sim3, 0.01).expect("ape");
    (result.stats.rmse, estimate.len())
}

#[test]
fn simulated_predictor_through_the_daemon_matches_the_backend_alone() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, FRAMES, 10, 160, 120);
    let video = work.path().join("clip.mp4");
    encode_video(&dataset, &video);
    let out = work.path().join("out");
    let poses = work.path().join("poses.jsonl");

    run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--input"])
            .arg(&video)
            .arg("--sim-dataset")
            .arg(&dataset)
            .arg("--output")
            .arg(&out)
            .arg("--rrd")
            .arg(out.join("recording.rrd"))
            .arg("--pose-stream")
            .arg(&poses),
    );

    // Outputs exist and are well-formed.
    let trajectory = read_tum(&out.join("trajectory.txt"));
    let summary = summary(&out);
    assert_eq!(summary["frames"], FRAMES as u64);
    assert_eq!(
        summary["keyframes"].as_u64(),
        Some(trajectory.len() as u64),
        "every keyframe has a pose"
    );
    assert!(summary["windows"].as_u64().unwrap_or(0) >= 2, "{summary}");
    assert_eq!(summary["rejected_windows"], 0);
    assert_eq!(summary["interrupted"], false);
    let keyframes = std::fs::read_to_string(out.join("keyframes.txt")).expect("keyframes.txt");
    assert_eq!(
        keyframes.lines().filter(|l| !l.starts_with('#')).count(),
        trajectory.len()
    );
    let points = ply_vertex_count(&out.join("map.ply"));
    assert_eq!(summary["map_points"].as_u64(), Some(points as u64));
    assert!(points > 1000, "{points} map points");
    let pose_lines = std::fs::read_to_string(&poses).expect("pose stream file");
    let first: serde_json::Value =
        serde_json::from_str(pose_lines.lines().next().expect("a pose")).expect("JSON line");
    assert_eq!(first["revision"], 0);
    assert!(
        pose_lines.lines().count() >= trajectory.len(),
        "every keyframe streamed at least once"
    );

    // Same accuracy as the back-end alone.
    let daemon = submap::eval::ape_from_files(
        &dataset.join("groundtruth.txt"),
        &out.join("trajectory.txt"),
        Alignment::Sim3,
        0.01,
    )
    .expect("ape of the daemon's trajectory");
    let (alone_rmse, alone_keyframes) = backend_alone_ate(&dataset);
    println!("Sim(3) ATE RMSE: daemon {:.6} m ({} keyframes), back-end alone {alone_rmse:.6} m ({alone_keyframes} keyframes)", daemon.rmse, daemon.pairs);
    assert_eq!(
        daemon.pairs, alone_keyframes,
        "same keyframes on both paths"
    );
    assert!(daemon.rmse < 0.01, "ATE {} m", daemon.rmse);
    assert!(
        (daemon.rmse - alone_rmse).abs() < 1e-9,
        "daemon {} vs back-end alone {alone_rmse}",
        daemon.rmse
    );
}

#[test]
fn image_folder_and_dataset_sources_agree() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 40, 10, 128, 96);
    let run = |input: &Path, out: &Path| {
        run_ok(
            vggtd()
                .args(["run", "--predictor", "simulated", "--input"])
                .arg(input)
                .arg("--sim-dataset")
                .arg(&dataset)
                .arg("--output")
                .arg(out),
        );
        read_tum(&out.join("trajectory.txt"))
    };
    // The folder `rgb/` holds PNGs named by timestamp: the folder source reads those times.
    let from_folder = run(&dataset.join("rgb"), &work.path().join("out_folder"));
    let from_dataset = run(&dataset, &work.path().join("out_dataset"));
    assert!(!from_dataset.is_empty());
    assert_eq!(
        from_folder, from_dataset,
        "same frames, same timestamps, same seed"
    );
}

/// `--metrics`: a test scrapes the Prometheus endpoint on loopback while a paced run goes.
#[test]
fn the_metrics_endpoint_answers_while_a_run_goes() {
    use std::io::{Read as _, Write as _};
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 60, 10, 128, 96);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = vggtd()
        .args(["run", "--predictor", "simulated", "--realtime", "--input"])
        .arg(&dataset)
        .arg("--output")
        .arg(work.path().join("out"))
        .args(["--metrics", &port.to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawns");
    let scrape = || -> Option<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let value = |answer: &str, name: &str| -> Option<f64> {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        if let Some(answer) = scrape() {
            if value(&answer, "vggtd_windows_total").is_some_and(|w| w >= 1.0) {
                seen = Some(answer);
                break;
            }
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "ended before a scrape"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = seen.expect("the endpoint reports a window while the run goes");
    assert!(child.try_wait().expect("wait").is_none(), "still running");
    let frames = value(&answer, "vggtd_frames_total").expect("frames");
    assert!(frames > 0.0 && frames < 60.0, "{answer}");
    assert!(
        answer.contains("vggtd_queue_depth{queue=\"keyframes\"}"),
        "{answer}"
    );
    assert!(answer.contains("# TYPE vggtd_memory_mib gauge"), "{answer}");
    let status = child.wait().expect("waits");
    assert!(status.success(), "{status}");
}
