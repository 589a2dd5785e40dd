//! A short video generated at test time (synthetic renderer frames encoded to MP4) run through
//! `vggtd run` with the tiny fixture VGGT weights on CPU: it completes, every output exists and is
//! well-formed, and the `.rrd` holds the expected entities (read back through the rerun decoder).
//! Also: recording the predictions and replaying them gives the same trajectory.
#![cfg(feature = "video")]

mod common;

use common::*;

#[test]
fn tiny_vggt_on_a_generated_video_writes_every_output() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 40, 10, 128, 96);
    let video = work.path().join("clip.mp4");
    encode_video(&dataset, &video);
    let out = work.path().join("out");
    let rrd = out.join("recording.rrd");
    let record = work.path().join("windows");

    run_ok(
        vggtd()
            .args(["run", "--input"])
            .arg(&video)
            .args([
                "--weights",
                TINY_WEIGHTS,
                "--model-config",
                TINY_CONFIG,
                "--image-width",
                "84",
                "--output",
            ])
            .arg(&out)
            .arg("--rrd")
            .arg(&rrd)
            .arg("--record")
            .arg(&record),
    );

    let summary = summary(&out);
    println!("tiny VGGT run: {summary}");
    assert_eq!(summary["predictor"], "vggt");
    assert_eq!(summary["frames"], 40);
    let windows = summary["windows"].as_u64().expect("windows");
    let rejected = summary["rejected_windows"].as_u64().expect("rejected");
    assert!(windows + rejected >= 2, "{summary}");
    assert!(
        windows >= 1,
        "at least the first window becomes a submap: {summary}"
    );
    let trajectory = read_tum(&out.join("trajectory.txt"));
    assert!(!trajectory.is_empty());
    assert!(std::fs::read_to_string(out.join("keyframes.txt"))
        .expect("keyframes.txt")
        .starts_with("# frame_id"));
    let points = ply_vertex_count(&out.join("map.ply"));
    assert_eq!(summary["map_points"].as_u64(), Some(points as u64));
    assert!(points > 0);

    let entities = pipeline::viz::rrd_entity_paths(&rrd).expect("rrd reads back");
    let has = |prefix: &str| entities.iter().any(|e| e.starts_with(prefix));
    for expected in [
        "/world/trajectory",
        "/world/keyframes/kf_",
        "/world/submaps/submap_0000",
        "/world/submaps/submap_0000/points",
        "/world/current_camera/depth",
        "/metrics/fps",
        "/metrics/latency_ms",
        "/metrics/memory_mib",
        "/metrics/queue/keyframes",
    ] {
        assert!(has(expected), "{expected} missing; entities: {entities:?}");
    }
    let first_keyframe = format!("/world/keyframes/kf_{:06}/image", 0);
    assert!(
        entities.contains(&first_keyframe),
        "first keyframe's image: {entities:?}"
    );

    // Replay the recorded predictions: same trajectory without the model.
    let replay_out = work.path().join("replay");
    run_ok(
        vggtd()
            .args(["run", "--input"])
            .arg(&video)
            .arg("--predictor")
            .arg(format!("replay:{}", record.display()))
            .arg("--output")
            .arg(&replay_out),
    );
    assert_eq!(
        read_tum(&replay_out.join("trajectory.txt")),
        trajectory,
        "replay reproduces the run"
    );
    assert_eq!(common::summary(&replay_out)["predictor"], "replay");
}
