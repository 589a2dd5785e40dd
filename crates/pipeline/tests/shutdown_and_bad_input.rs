//! SIGTERM in the middle of a run leaves valid outputs; bad inputs give clear errors (or
//! warnings) as the issue lists them.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn sigterm_mid_run_leaves_valid_outputs_and_exits_zero() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 80, 10, 128, 96);
    let out = work.path().join("out");
    let poses = work.path().join("poses.jsonl");
    // --realtime paces the 80 frames over 8 s, so the signal lands mid-stream.
    let mut child = vggtd()
        .args(["run", "--predictor", "simulated", "--realtime", "--input"])
        .arg(&dataset)
        .arg("--output")
        .arg(&out)
        .arg("--pose-stream")
        .arg(&poses)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&poses)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "no pose streamed in time");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "exited before the first window"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // stderr is read line by line as it comes, to see when the signal is acknowledged.
    let stderr_pipe = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr_pipe).lines() {
            let Ok(line) = line else { break };
            let _ = lines_tx.send((Instant::now(), line));
        }
    });
    let signalled = Instant::now();
    send_signal(child.id(), "TERM");
    let status = child.wait().expect("waits");
    reader.join().expect("reader");
    let lines: Vec<(Instant, String)> = lines_rx.try_iter().collect();
    let stderr: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(status.success(), "exit status {status}: {stderr}");
    let (said_at, _) = lines
        .iter()
        .find(|(_, l)| l.contains("finishing the window in flight"))
        .unwrap_or_else(|| panic!("the signal is acknowledged: {stderr}"));
    let delay = said_at.duration_since(signalled);
    assert!(
        delay < Duration::from_secs(1),
        "acknowledged after {delay:?}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal escape codes in a log that is not a terminal: {stderr:?}"
    );

    let summary = summary(&out);
    assert_eq!(summary["interrupted"], true, "{summary}");
    let frames = summary["frames"].as_u64().expect("frames");
    assert!(
        frames > 0 && frames < 80,
        "stopped mid-stream after {frames} frames"
    );
    let trajectory = read_tum(&out.join("trajectory.txt"));
    assert!(
        !trajectory.is_empty(),
        "the finished window's poses are kept"
    );
    assert!(ply_vertex_count(&out.join("map.ply")) > 0);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn missing_weights_name_the_file_before_any_frame() {
    let work = tempfile::tempdir().expect("tempdir");
    let missing = work.path().join("nope.safetensors");
    let output = vggtd()
        .args(["run", "--input"])
        .arg(work.path()) // an empty folder: reading it would fail differently
        .arg("--weights")
        .arg(&missing)
        .args(["--model-config", TINY_CONFIG, "--output"])
        .arg(work.path().join("out"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nope.safetensors") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn wrong_weights_name_the_file_and_keys() {
    let work = tempfile::tempdir().expect("tempdir");
    // The tiny checkpoint against the VGGT-1B architecture (no --model-config): shapes differ.
    let output = vggtd()
        .args(["run", "--input"])
        .arg(work.path())
        .args(["--weights", TINY_WEIGHTS, "--output"])
        .arg(work.path().join("out"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("weights.safetensors") && stderr.contains("does not match"),
        "{stderr}"
    );
    assert!(stderr.contains("aggregator."), "names keys: {stderr}");
    assert!(
        stderr.contains("--model-config"),
        "suggests the flag: {stderr}"
    );
}

#[test]
fn unwritable_output_directory_fails_at_start() {
    let output = run_into_unwritable(&[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not writable"), "{stderr}");
}

#[test]
fn corrupt_images_are_skipped_with_a_warning() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 30, 10, 96, 72);
    // Corrupt two frames of the dataset in place.
    let sequence = datasets::tum::read(&dataset).expect("dataset");
    for i in [5, 17] {
        std::fs::write(&sequence.frames[i].rgb_path, b"definitely not a PNG").expect("corrupt");
    }
    let out = work.path().join("out");
    let output = run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--input"])
            .arg(&dataset)
            .arg("--output")
            .arg(&out),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("corrupt frame skipped"), "{stderr}");
    let summary = summary(&out);
    assert_eq!(summary["corrupt_frames"], 2);
    assert_eq!(summary["frames"], 30);
    assert!(!read_tum(&out.join("trajectory.txt")).is_empty());
}

#[test]
#[cfg(feature = "video")]
fn truncated_video_keeps_what_was_processed_and_reports_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 60, 10, 160, 120);
    let video = work.path().join("clip.mp4");
    encode_video(&dataset, &video);
    let bytes = std::fs::read(&video).expect("read");
    let cut = work.path().join("cut.mp4");
    // Lossless H.264 puts the index at the end: move it to the front first so that a cut file
    // still opens and announces all frames.
    let faststart = work.path().join("fast.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&video)
        .args(["-c", "copy", "-movflags", "+faststart"])
        .arg(&faststart)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    let fast = std::fs::read(&faststart).expect("read");
    assert!(fast.len() >= bytes.len() - 64, "remux keeps the data");
    std::fs::write(&cut, &fast[..fast.len() * 3 / 4]).expect("cut");
    let out = work.path().join("out");
    let output = vggtd()
        .args(["run", "--predictor", "simulated", "--input"])
        .arg(&cut)
        .arg("--sim-dataset")
        .arg(&dataset)
        .arg("--output")
        .arg(&out)
        .output()
        .expect("runs");
    assert!(!output.status.success(), "a truncated input is an error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("truncated video"), "{stderr}");
    let summary = summary(&out);
    assert!(
        summary["stream_error"]
            .as_str()
            .is_some_and(|e| e.contains("truncated")),
        "{summary}"
    );
    let frames = summary["frames"].as_u64().expect("frames");
    assert!(
        frames > 20 && frames < 60,
        "{frames} frames decoded before the cut"
    );
    assert!(
        !read_tum(&out.join("trajectory.txt")).is_empty(),
        "what was processed is kept"
    );
}

#[test]
fn a_malformed_ground_truth_is_a_warning_when_the_run_does_not_need_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, 40, 10, 128, 96);
    // The input: a copy with a broken groundtruth.txt; the simulation answers from the original.
    let input = work.path().join("input");
    std::fs::create_dir_all(input.join("rgb")).expect("mkdir");
    for entry in std::fs::read_dir(dataset.join("rgb"))
        .expect("ls")
        .filter_map(Result::ok)
    {
        std::fs::copy(entry.path(), input.join("rgb").join(entry.file_name())).expect("copy");
    }
    std::fs::copy(dataset.join("rgb.txt"), input.join("rgb.txt")).expect("copy");
    std::fs::write(input.join("groundtruth.txt"), "1.0 0 0 not-a-number\n").expect("write");
    let out = work.path().join("out");
    let output = run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--input"])
            .arg(&input)
            .arg("--sim-dataset")
            .arg(&dataset)
            .arg("--output")
            .arg(&out),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ground truth ignored") && stderr.contains("groundtruth.txt:1"),
        "{stderr}"
    );
    assert!(!read_tum(&out.join("trajectory.txt")).is_empty());
}
