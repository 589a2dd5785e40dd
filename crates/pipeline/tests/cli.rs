//! The command line: `config`, flags overriding the file, `eval`, `simulate`, `--help`.

mod common;

use common::*;

#[test]
fn print_default_is_a_valid_config() {
    let output = run_ok(vggtd().args(["config", "--print-default"]));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("d.toml");
    std::fs::write(&file, &text).expect("write");
    run_ok(vggtd().args(["config", "--check"]).arg(&file));
    assert!(
        text.contains("[model]") && text.contains("image_width = 518"),
        "{text}"
    );
}

#[test]
fn config_typo_reports_file_line_and_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[queues]\nkeyframes = 2\nkeyframez = 3\n").expect("write");
    let output = vggtd()
        .args(["config", "--check"])
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:3:") && stderr.contains("keyframez") && stderr.contains("hint:"),
        "{stderr}"
    );
}

#[test]
fn flags_override_the_config_file() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 30, 10, 96, 72);
    let config = work.path().join("c.toml");
    std::fs::write(
        &config,
        "[input]\nmax_frames = 5\n\n[model]\npredictor = \"simulated\"\n",
    )
    .expect("write");
    let out = work.path().join("out");
    run_ok(
        vggtd()
            .args(["run", "--input"])
            .arg(&dataset)
            .arg("--config")
            .arg(&config)
            .arg("--output")
            .arg(&out)
            .args(["--max-frames", "25"]),
    );
    assert_eq!(
        summary(&out)["frames"],
        25,
        "--max-frames wins over input.max_frames"
    );
    let out_file_only = work.path().join("out2");
    run_ok(
        vggtd()
            .args(["run", "--input"])
            .arg(&dataset)
            .arg("--config")
            .arg(&config)
            .arg("--output")
            .arg(&out_file_only),
    );
    assert_eq!(
        summary(&out_file_only)["frames"],
        5,
        "the file applies without the flag"
    );
}

#[test]
fn eval_json_against_the_evo_fixture() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/trajectories");
    let output = run_ok(vggtd().args([
        "eval",
        "--gt",
        &format!("{dir}/freiburg1_xyz-groundtruth.txt"),
        "--est",
        &format!("{dir}/freiburg1_xyz-rgbdslam.txt"),
        "--align",
        "se3",
        "--json",
    ]));
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/evo_reference.json")).expect("reference"),
    )
    .expect("JSON");
    let expected = &reference["freiburg1_xyz-rgbdslam.txt|se3"];
    for key in ["rmse", "mean", "median", "max"] {
        let (got, want) = (
            stats[key].as_f64().expect("number"),
            expected[key].as_f64().expect("number"),
        );
        assert!((got - want).abs() < 1e-6, "{key}: {got} vs evo {want}");
    }
    assert_eq!(stats["pairs"], expected["pairs"]);
}

#[test]
fn help_lists_every_subcommand() {
    let output = run_ok(vggtd().arg("--help"));
    let text = String::from_utf8_lossy(&output.stdout);
    for sub in ["run", "eval", "simulate", "config", "fetch-weights"] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
    }
}

#[test]
fn run_help_says_both_checkpoint_formats_load() {
    let output = run_ok(vggtd().args(["run", "--help"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--weights"), "{text}");
    assert!(text.contains(".safetensors"), "{text}");
    assert!(text.contains("PyTorch `.pt`"), "{text}");
}

#[test]
fn simulate_writes_a_tum_dataset() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = work.path().join("sim");
    run_ok(
        vggtd()
            .args([
                "simulate",
                "--trajectory",
                GT,
                "--max-frames",
                "4",
                "--width",
                "32",
                "--height",
                "24",
                "--output",
            ])
            .arg(&out),
    );
    for file in ["rgb.txt", "depth.txt", "groundtruth.txt"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    assert_eq!(std::fs::read_dir(out.join("rgb")).expect("rgb/").count(), 4);
}

#[test]
fn errors_are_said_once_and_json_logs_are_one_object_per_line() {
    // An output directory that cannot be created: the OS error is part of the message, once.
    let output = run_into_unwritable(&[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(error_lines.len(), 1, "{stderr}");
    assert!(error_lines[0].contains("not writable"), "{stderr}");
    assert!(!stderr.contains("Caused by"), "{stderr}");
    assert_eq!(
        error_lines[0].matches("Not a directory").count(),
        1,
        "the cause once: {stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no colour codes off a terminal");

    let output = run_into_unwritable(&["--log-format", "json"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let objects: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = objects.last().expect("a log line");
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not writable")),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_value_names_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = vggtd()
        .args([
            "run",
            "--predictor",
            "simulated",
            "--image-width",
            "15",
            "--input",
        ])
        .arg(dir.path())
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("command line (--image-width): invalid value for `model.image_width`"),
        "{stderr}"
    );
    assert!(!stderr.contains(":0:"), "{stderr}");
}

fn has_cameras() -> bool {
    std::fs::read_dir("/dev").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("video"))
    })
}

#[test]
fn cameras_on_a_machine_without_any_says_so() {
    if has_cameras() {
        let output = run_ok(vggtd().arg("cameras"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("/dev/video"), "{stdout}");
        eprintln!("this machine has cameras: listed them\n{stdout}");
        return;
    }
    let output = run_ok(vggtd().arg("cameras"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("no cameras found") && stdout.contains("/dev/video"),
        "{stdout}"
    );
}

#[test]
fn a_camera_that_does_not_exist_is_said_plainly() {
    let missing = "/dev/video-vggtd-test-missing";
    let work = tempfile::tempdir().expect("tempdir");
    // With weights (the source says it) and without (said before any download: offline here).
    for extra in [
        &["--weights", TINY_WEIGHTS, "--model-config", TINY_CONFIG][..],
        &["--offline"][..],
    ] {
        let output = vggtd()
            .args(["run", "--input", missing, "--output"])
            .arg(work.path().join("out"))
            .args(extra)
            .env("VGGTD_CACHE", work.path().join("cache"))
            .env_remove("VGGTD_WEIGHTS")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("no such camera") && stderr.contains("does not exist"),
            "{extra:?}: {stderr}"
        );
        assert!(!stderr.contains("not supported by this build"), "{stderr}");
        let error = stderr
            .lines()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or("");
        assert!(
            !error.contains("weights"),
            "the input is checked first: {stderr}"
        );
        assert!(!work.path().join("out").exists());
    }
}
