//! The back-end through the daemon: the same input gives byte-identical outputs run after run
//! (the core serialises windows and loop checks, the simulated predictor's noise depends on
//! each window alone), metric scale from a dataset's depth images, and clear errors for inputs
//! it cannot use.

mod common;

use std::path::Path;

use common::*;

/// A rendered fr1_xyz stretch long enough for loop checks: 150 frames of every 7th pose.
fn dataset(dir: &Path) {
    let summary = render(dir, 150, 7, 128, 96);
    assert_eq!(summary.frames, 150);
}

/// Runs `command`, which must fail with a message and no panic; returns its stderr.
fn fails(command: &mut std::process::Command) -> String {
    let output = command.output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn run(dataset: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    run_ok(
        vggtd()
            .args([
                "run",
                "--predictor",
                "simulated",
                "--sim-preset",
                "vggt",
                "--input",
            ])
            .arg(dataset)
            .arg("--output")
            .arg(out)
            .args(extra),
    )
}

#[test]
fn same_input_same_output() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    dataset(&data);
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    run(&data, &a, &[]);
    run(&data, &b, &[]);
    let s = summary(&a);
    assert!(s["windows"].as_u64().expect("windows") >= 4, "{s}");
    assert!(
        s["backend"]["loop_checks"].as_u64().expect("loop checks") >= 1,
        "the stretch revisits its start: {s}"
    );
    for name in ["trajectory.txt", "keyframes.txt", "map.ply"] {
        let (x, y) = (
            std::fs::read(a.join(name)).expect("first run"),
            std::fs::read(b.join(name)).expect("second run"),
        );
        assert!(!x.is_empty(), "{name} is empty");
        assert!(x == y, "{name} differs between two runs of the same input");
    }
    let (sa, sb) = (summary(&a), summary(&b));
    for key in ["keyframes", "windows", "loops"] {
        assert_eq!(sa[key], sb[key], "{key}");
    }
    assert_eq!(sa["backend"], sb["backend"], "back-end figures");
}

#[test]
fn metric_scale_from_depth_images_gives_metres() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    dataset(&data);
    let out = work.path().join("metric");
    run(&data, &out, &["--metric-scale", "depth"]);
    let s = summary(&out);
    let scales = s["backend"]["metric_scales"]
        .as_array()
        .expect("one scale per window");
    assert_eq!(scales.len() as u64, s["windows"].as_u64().expect("windows"));
    assert_eq!(s["backend"]["metric_fallbacks"], 0, "{s}");
    // Without scale alignment the trajectory already matches the ground truth in metres.
    let output = run_ok(
        vggtd()
            .args(["eval", "--align", "se3", "--json", "--gt"])
            .arg(data.join("groundtruth.txt"))
            .arg("--est")
            .arg(out.join("trajectory.txt")),
    );
    let ape: serde_json::Value = serde_json::from_slice(&output.stdout).expect("eval prints JSON");
    let rmse = ape["rmse"].as_f64().expect("rmse");
    assert!(rmse < 0.06, "SE(3)-aligned ATE {rmse} m");
}

#[test]
fn metric_scale_without_depth_is_a_clear_error() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    dataset(&data);
    // An image folder: the same pictures, no depth.
    let folder = work.path().join("images");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for (i, entry) in std::fs::read_dir(data.join("rgb"))
        .expect("rgb/")
        .enumerate()
        .take(10)
    {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), folder.join(format!("{i:04}.png"))).expect("copy");
    }
    let stderr = fails(
        vggtd()
            .args([
                "run",
                "--predictor",
                "simulated",
                "--metric-scale",
                "depth",
                "--input",
            ])
            .arg(&folder)
            .arg("--sim-dataset")
            .arg(&data)
            .arg("--output")
            .arg(work.path().join("out")),
    );
    assert!(
        stderr.contains("--metric-scale depth needs depth images"),
        "{stderr}"
    );
}

#[test]
fn known_intrinsics_replace_the_predicted_ones() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    dataset(&data);
    let (own, calibrated, wrong) = (
        work.path().join("own"),
        work.path().join("calibrated"),
        work.path().join("wrong"),
    );
    run(&data, &own, &[]);
    // The dataset's calibration is what the simulation answers with: nothing changes.
    let output = run(&data, &calibrated, &["--intrinsics", "dataset"]);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("known intrinsics replace the predicted ones"),
        "{log}"
    );
    for name in ["trajectory.txt", "map.ply"] {
        assert!(
            std::fs::read(own.join(name)).expect("own")
                == std::fs::read(calibrated.join(name)).expect("calibrated"),
            "{name}: the dataset's own calibration changes nothing"
        );
    }
    // A focal length 30 % too long is used: the map changes.
    let k = std::fs::read_to_string(data.join("intrinsics.txt")).expect("intrinsics.txt");
    let v: Vec<f64> = k
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let flag = format!("{},{},{},{}", v[0] * 1.3, v[1] * 1.3, v[2], v[3]);
    run(&data, &wrong, &["--intrinsics", &flag]);
    assert!(
        std::fs::read(own.join("map.ply")).expect("own")
            != std::fs::read(wrong.join("map.ply")).expect("wrong"),
        "the given intrinsics are used"
    );
}

#[test]
fn bad_intrinsics_are_clear_errors() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    dataset(&data);
    let out = work.path().join("out");
    let with_intrinsics = |flag: &str| {
        let mut command = vggtd();
        command
            .args([
                "run",
                "--predictor",
                "simulated",
                "--intrinsics",
                flag,
                "--input",
            ])
            .arg(&data)
            .arg("--output")
            .arg(&out);
        command
    };
    for (flag, expected) in [
        ("1,2,3", "FX,FY,CX,CY"),
        ("-500,500,60,40", "focal lengths must be positive"),
    ] {
        let stderr = fails(&mut with_intrinsics(flag));
        assert!(
            stderr.contains("input.intrinsics") && stderr.contains(expected),
            "{flag}: {stderr}"
        );
    }
    // A principal point outside the frames: every window fails with the reason, and the run
    // ends with an error that says nothing was reconstructed (and writes nothing).
    let output = with_intrinsics("100,100,5000,40").output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("lies outside the 128x96 input frames"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no window was reconstructed") && !stderr.contains(" 0 windows rejected"),
        "{stderr}"
    );
    assert!(!out.join("summary.json").exists());
}

#[test]
fn missing_depth_images_keep_the_last_scale_and_are_counted() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    dataset(&data);
    // The input: a copy whose second half has no depth images (and one corrupt one); the
    // simulation answers from the intact dataset.
    let input = work.path().join("input");
    std::fs::create_dir_all(input.join("rgb")).expect("mkdir");
    std::fs::create_dir_all(input.join("depth")).expect("mkdir");
    for name in ["rgb.txt", "depth.txt", "groundtruth.txt", "intrinsics.txt"] {
        std::fs::copy(data.join(name), input.join(name)).expect("copy");
    }
    let mut depth: Vec<(f64, std::path::PathBuf)> = std::fs::read_dir(data.join("depth"))
        .expect("depth/")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let t: f64 = p
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .expect("timestamp name");
            (t, p)
        })
        .collect();
    depth.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = depth.len() / 2;
    for (i, (_, path)) in depth.iter().enumerate() {
        let name = path.file_name().expect("name");
        if i < half - 1 {
            std::fs::copy(path, input.join("depth").join(name)).expect("copy");
        } else if i == half - 1 {
            std::fs::write(input.join("depth").join(name), b"not a png").expect("corrupt");
        }
    }
    for entry in std::fs::read_dir(data.join("rgb")).expect("rgb/") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            input.join("rgb").join(path.file_name().expect("name")),
        )
        .expect("copy");
    }
    let out = work.path().join("out");
    let sim_dataset = data.to_str().expect("utf-8 path");
    let output = run(
        &input,
        &out,
        &["--metric-scale", "depth", "--sim-dataset", sim_dataset],
    );
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("depth image unreadable"), "{log}");
    assert!(log.contains("kept the previous window's scale"), "{log}");
    let s = summary(&out);
    let fallbacks = s["backend"]["metric_fallbacks"].as_u64().expect("counted");
    assert!(fallbacks >= 1, "{s}");
    assert!(
        fallbacks < s["windows"].as_u64().expect("windows"),
        "the first half still has depth: {s}"
    );
    assert_eq!(s["frames"], 150, "every frame was read");
    assert!(!read_tum(&out.join("trajectory.txt")).is_empty());
}
