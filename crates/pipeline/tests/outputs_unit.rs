//! A run's outputs are one unit: a run that fails, or ends before its first window, leaves the
//! previous run's files (recording included) byte for byte; a second stop signal leaves either
//! the old outputs or the new ones, never a mix; a run that succeeds replaces every file of the
//! previous one, so nothing of an older run stays beside the new results.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Every file under `dir` (recursively) with its bytes, by relative path; the hidden staging
/// folder a killed run leaves (removed by the next run in `dir`) is not an output.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("ls").filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".vggtd-staging-") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("inside").to_owned();
                out.insert(relative, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn names(snapshot: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<String> {
    snapshot.keys().map(|p| p.display().to_string()).collect()
}

/// Staging or set-aside folders in `dir`.
fn staging_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".vggtd-staging") || n.starts_with(".vggtd-previous"))
        .collect()
}

fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(".vggtd-run.json")).expect("manifest");
    serde_json::from_str(&text).expect("JSON")
}

struct Fixture {
    _work: tempfile::TempDir,
    work: PathBuf,
    dataset: PathBuf,
    out: PathBuf,
}

/// A finished run in `out`: outputs, COLMAP model and a recording inside the output folder.
fn fixture(frames: usize) -> Fixture {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    render(&dataset, frames, 10, 128, 96);
    let out = work.path().join("out");
    run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--colmap", "--input"])
            .arg(&dataset)
            .arg("--output")
            .arg(&out)
            .arg("--rrd")
            .arg(out.join("run.rrd")),
    );
    Fixture {
        work: work.path().to_owned(),
        _work: work,
        dataset,
        out,
    }
}

/// `vggtd run` on `input` into the fixture's output folder, recording to `rrd`.
fn run_into(f: &Fixture, input: &Path, rrd: &Path, colmap: bool) -> Command {
    let mut command = vggtd();
    command.args(["run", "--predictor", "simulated"]);
    if colmap {
        command.arg("--colmap");
    }
    command
        .arg("--input")
        .arg(input)
        .arg("--sim-dataset")
        .arg(&f.dataset)
        .arg("--output")
        .arg(&f.out)
        .arg("--rrd")
        .arg(rrd);
    command
}

/// `vggtd run` into the fixture's output folder with the same outputs, on `input`.
fn rerun_on(f: &Fixture, input: &Path) -> Command {
    run_into(f, input, &f.out.join("run.rrd"), true)
}

fn assert_fails_and_keeps(f: &Fixture, command: &mut Command, expected_message: &str) {
    let before = snapshot(&f.out);
    let output = command.output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must fail: {stderr}");
    assert!(stderr.contains(expected_message), "{stderr}");
    let after = snapshot(&f.out);
    assert_eq!(names(&before), names(&after), "{stderr}");
    assert!(before == after, "the previous outputs changed: {stderr}");
}

#[test]
fn a_run_that_fails_to_start_keeps_the_previous_outputs_byte_for_byte() {
    let f = fixture(40);
    let before = snapshot(&f.out);
    assert!(
        before.contains_key(Path::new("run.rrd")),
        "{:?}",
        names(&before)
    );
    assert!(
        before.keys().any(|p| p.starts_with("colmap")),
        "{:?}",
        names(&before)
    );

    // An empty folder.
    let empty = f.work.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert_fails_and_keeps(&f, &mut rerun_on(&f, &empty), "empty");
    // A missing input.
    assert_fails_and_keeps(
        &f,
        &mut rerun_on(&f, &f.work.join("missing.mp4")),
        "missing.mp4",
    );
    // A corrupt checkpoint for the real model stops the run before anything is written.
    let bad_weights = f.work.join("bad.safetensors");
    std::fs::write(&bad_weights, b"not a checkpoint").expect("write");
    let mut command = vggtd();
    command
        .args(["run", "--input"])
        .arg(&f.dataset)
        .arg("--weights")
        .arg(&bad_weights)
        .arg("--output")
        .arg(&f.out)
        .arg("--rrd")
        .arg(f.out.join("run.rrd"));
    assert_fails_and_keeps(&f, &mut command, "bad.safetensors");
    let left = staging_left(&f.out);
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
#[cfg(feature = "video")]
fn unreadable_and_truncated_videos_keep_the_previous_outputs() {
    let f = fixture(40);
    // Not a video at all.
    let garbage = f.work.join("garbage.mp4");
    std::fs::write(&garbage, vec![0x5au8; 64 * 1024]).expect("write");
    assert_fails_and_keeps(&f, &mut rerun_on(&f, &garbage), "garbage.mp4");
    // A video cut before its first window: only its first few kilobytes.
    let video = f.work.join("clip.mp4");
    encode_video(&f.dataset, &video);
    let bytes = std::fs::read(&video).expect("read");
    let cut = f.work.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len().min(4096)]).expect("write");
    assert_fails_and_keeps(&f, &mut rerun_on(&f, &cut), "cut.mp4");
}

/// Starts a paced run (8 s of input) and waits until its first pose is streamed.
fn start_paced_run(f: &Fixture, poses: &Path) -> std::process::Child {
    let _ = std::fs::remove_file(poses);
    let mut child = rerun_on(f, &f.dataset)
        .arg("--realtime")
        .arg("--pose-stream")
        .arg(poses)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(poses)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "no pose streamed in time");
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success());
}

/// The output folder holds exactly one run: the manifest's files, the summary of that run.
fn assert_one_run(out: &Path) -> String {
    let manifest = manifest(out);
    let run_id = manifest["run_id"].as_str().expect("run id").to_owned();
    let mut listed: Vec<String> = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|v| v.as_str().expect("name").to_owned())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(out)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.contains(".failed-"))
        .collect();
    present.sort();
    assert_eq!(listed, present, "the folder holds one run's files");
    assert_eq!(summary(out)["run_id"], run_id.as_str());
    run_id
}

#[test]
fn a_double_signal_leaves_the_old_outputs_or_the_new_ones_never_a_mix() {
    let f = fixture(80);
    let old = snapshot(&f.out);
    let old_run = assert_one_run(&f.out);
    let poses = f.work.join("poses.jsonl");

    // Two signals at once: the run exits at once and the previous outputs stay.
    // (Two signals of one kind sent together can arrive as one: the second follows shortly.)
    let mut child = start_paced_run(&f, &poses);
    sigterm(child.id());
    std::thread::sleep(Duration::from_millis(30));
    sigterm(child.id());
    let status = child.wait().expect("wait");
    assert!(!status.success(), "a second signal exits at once: {status}");
    let after = snapshot(&f.out);
    assert!(after == old, "{:?} != {:?}", names(&after), names(&old));

    // The second signal at several points of the shutdown: old or new, whole.
    let mut seen_new = false;
    for delay_ms in [5u64, 60, 200, 600, 1500] {
        let before = snapshot(&f.out);
        let before_run = assert_one_run(&f.out);
        let mut child = start_paced_run(&f, &poses);
        sigterm(child.id());
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait");
        let run = assert_one_run(&f.out);
        if run == before_run {
            // Recordings of killed runs are kept beside, under failed names.
            let outputs = |snapshot: BTreeMap<PathBuf, Vec<u8>>| -> BTreeMap<PathBuf, Vec<u8>> {
                snapshot
                    .into_iter()
                    .filter(|(p, _)| !p.to_string_lossy().contains(".failed-"))
                    .collect()
            };
            let before = outputs(before);
            let kept = outputs(snapshot(&f.out));
            let changed: Vec<String> = kept
                .iter()
                .filter(|(p, bytes)| before.get(*p) != Some(*bytes))
                .map(|(p, _)| p.display().to_string())
                .chain(
                    before
                        .keys()
                        .filter(|p| !kept.contains_key(*p))
                        .map(|p| format!("-{}", p.display())),
                )
                .collect();
            assert!(
                changed.is_empty(),
                "after {delay_ms} ms: the old run changed: {changed:?}"
            );
        } else {
            seen_new = true;
            assert_ne!(run, old_run);
            assert!(!read_tum(&f.out.join("trajectory.txt")).is_empty());
            assert!(ply_vertex_count(&f.out.join("map.ply")) > 0);
        }
    }
    // The staging areas of killed runs are gone once the next run starts and ends.
    run_ok(&mut rerun_on(&f, &f.dataset));
    assert_one_run(&f.out);
    let stale = staging_left(&f.out);
    assert!(stale.is_empty(), "{stale:?}");
    eprintln!("a late second signal let the new run commit: {seen_new}");
}

#[test]
fn a_new_run_replaces_every_file_of_the_previous_one() {
    let f = fixture(40);
    let first = assert_one_run(&f.out);
    // Without --rrd and --colmap: the old recording and model go with the rest of the old run.
    run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--input"])
            .arg(&f.dataset)
            .arg("--output")
            .arg(&f.out),
    );
    let second = assert_one_run(&f.out);
    assert_ne!(first, second);
    assert!(!f.out.join("run.rrd").exists());
    assert!(!f.out.join("colmap").exists());
    let summary = summary(&f.out);
    assert_eq!(summary["input"], f.dataset.display().to_string().as_str());
    let started = summary["started_utc"].as_str().expect("start time");
    assert!(
        started.len() == 20 && started.ends_with('Z') && started.as_bytes()[10] == b'T',
        "{started}"
    );
    assert!(second.starts_with(&started[..4]), "{second} vs {started}");
}

#[test]
fn a_recording_elsewhere_is_replaced_only_by_a_finished_run() {
    let f = fixture(40);
    let elsewhere = f.work.join("recordings");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let rrd = elsewhere.join("session.rrd");
    let with_rrd = |input: &Path| run_into(&f, input, &rrd, false);
    run_ok(&mut with_rrd(&f.dataset));
    let recorded = std::fs::read(&rrd).expect("recording written");
    let contents = pipeline::viz::read_rrd(&rrd).expect("reads back");
    let run = assert_one_run(&f.out);
    assert_eq!(
        contents.recording_ids.iter().collect::<Vec<_>>(),
        [&run],
        "the recording id is the run id"
    );
    // A failing run leaves it as it was, and nothing beside it.
    let empty = f.work.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let output = with_rrd(&empty).output().expect("runs");
    assert!(!output.status.success());
    assert!(std::fs::read(&rrd).expect("still there") == recorded);
    let beside: Vec<String> = std::fs::read_dir(&elsewhere)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, ["session.rrd"]);
}
