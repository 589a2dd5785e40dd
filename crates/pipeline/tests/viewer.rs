//! vggtd streaming to a real rerun viewer process (`rerun` 0.36.3, the viewer binary shipped in
//! the `rerun-sdk==0.36.3` wheel), in the three live modes: `connect` to a running viewer,
//! `spawn` one, and `serve` for a viewer that connects to vggtd. The viewer saves what it
//! receives (`--save`), and the entities it got must be those vggtd wrote to its own `.rrd`.
//!
//! The viewer binary is a 250 MB download, so these tests need `VGGTD_RERUN_BIN` to name it;
//! `.ci/run` installs it and sets the variable. Without it each test says so and returns.

mod common;

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{encode_video, render, run_ok, vggtd};

const FRAMES: usize = 40;

fn viewer_binary() -> Option<PathBuf> {
    match std::env::var_os("VGGTD_RERUN_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "VGGTD_RERUN_BIN={} is not a file",
                path.display()
            );
            Some(path)
        }
        None => {
            eprintln!("VGGTD_RERUN_BIN is not set: the real-viewer tests are skipped");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the process when dropped (a failed assertion must not leave a viewer running).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits up to `seconds` for the process to end on its own.
    fn wait_exit(&mut self, seconds: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

/// Ends a viewer that saves a stream it serves (`--save` without a URL runs until interrupted)
/// once its file holds `want`'s entities: it writes as data arrives, so the file is polled
/// (reads of a half-written file fail and are retried), then the viewer gets Ctrl-C and, if it
/// has not exited 30 s later, a kill. Returns the entities of the last good read.
fn stop_when_saved(pid: u32, saved: &Path, want: &BTreeSet<String>) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = BTreeSet::new();
    while Instant::now() < deadline {
        if let Ok(entities) = pipeline::viz::rrd_entity_paths(saved) {
            got = entities;
            if &got == want {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
    };
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if running(pid) {
        eprintln!("the viewer (pid {pid}) ignored Ctrl-C for 30 s: killed");
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    } else if let Ok(entities) = pipeline::viz::rrd_entity_paths(saved) {
        got = entities;
    }
    got
}

/// A short synthetic clip and the flags that run it with the simulated predictor.
struct Clip {
    _work: tempfile::TempDir,
    dir: PathBuf,
    video: PathBuf,
    dataset: PathBuf,
}

fn clip() -> Clip {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().to_path_buf();
    let dataset = dir.join("synth");
    render(&dataset, FRAMES, 10, 160, 120);
    let video = dir.join("clip.mp4");
    encode_video(&dataset, &video);
    Clip {
        _work: work,
        dir,
        video,
        dataset,
    }
}

impl Clip {
    /// `vggtd run` on the clip with the simulated predictor, writing its own `.rrd` too.
    fn command(&self, out: &Path) -> Command {
        let mut command = vggtd();
        command
            .args(["run", "--predictor", "simulated", "--input"])
            .arg(&self.video)
            .arg("--sim-dataset")
            .arg(&self.dataset)
            .arg("--output")
            .arg(out)
            .arg("--rrd")
            .arg(out.join("recording.rrd"));
        command
    }
}

fn entities(rrd: &Path) -> BTreeSet<String> {
    pipeline::viz::rrd_entity_paths(rrd)
        .unwrap_or_else(|e| panic!("{} does not read back: {e}", rrd.display()))
}

/// The entities of vggtd's own recording, checked to hold cameras and the map.
fn own_entities(own_rrd: &Path) -> BTreeSet<String> {
    let want = entities(own_rrd);
    assert!(
        want.iter().any(|e| e.contains("points")) && want.len() > 5,
        "vggtd's own recording is too thin: {want:?}"
    );
    want
}

/// The viewer's recording holds every entity of vggtd's own, camera images and the map included.
fn assert_same_entities(viewer_rrd: &Path, own_rrd: &Path) {
    let want = own_entities(own_rrd);
    assert_eq!(
        entities(viewer_rrd),
        want,
        "the viewer received other entities than vggtd logged"
    );
}

fn viewer(binary: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .env("RERUN_ANALYTICS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

#[test]
fn connect_streams_to_a_running_viewer() {
    let Some(binary) = viewer_binary() else {
        return;
    };
    let clip = clip();
    let port = free_port();
    let saved = clip.dir.join("viewer.rrd");
    let rerun = Guard(
        viewer(&binary)
            .args(["--port", &port.to_string(), "--save"])
            .arg(&saved)
            .spawn()
            .expect("start the viewer"),
    );
    wait_for_port(port, "the viewer");
    let out = clip.dir.join("out");
    run_ok(
        clip.command(&out)
            .arg("--viewer")
            .arg(format!("connect=rerun+http://127.0.0.1:{port}/proxy")),
    );
    let want = own_entities(&out.join("recording.rrd"));
    let got = stop_when_saved(rerun.0.id(), &saved, &want);
    assert_eq!(
        got, want,
        "the viewer received other entities than vggtd logged"
    );
}

#[test]
fn spawn_starts_a_viewer_from_path_and_streams_to_it() {
    let Some(binary) = viewer_binary() else {
        return;
    };
    let clip = clip();
    // `rerun` on PATH is the real viewer, started with --save (and no window) by a one-line
    // wrapper, which also records its process id so the test can stop it.
    let bin_dir = clip.dir.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    let saved = clip.dir.join("viewer.rrd");
    let pid_file = clip.dir.join("viewer.pid");
    let wrapper = bin_dir.join("rerun");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec '{}' --save '{}' \"$@\" > '{}' 2>&1\n",
            pid_file.display(),
            binary.display(),
            saved.display(),
            clip.dir.join("viewer.log").display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let path = std::env::join_paths(
        std::iter::once(bin_dir.clone()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )),
    )
    .expect("PATH");

    // rerun's spawn connects to whatever already listens on its port (9876) instead of
    // starting a viewer: that would not test spawning.
    assert!(
        TcpStream::connect(("127.0.0.1", 9876)).is_err(),
        "port 9876 is taken: stop the rerun viewer running on this machine"
    );
    let out = clip.dir.join("out");
    run_ok(
        clip.command(&out)
            .args(["--viewer", "spawn"])
            // VGGTD_RERUN_BIN would win over PATH: this test is about the viewer on PATH.
            .env_remove("VGGTD_RERUN_BIN")
            .env("PATH", path)
            .env("RERUN_ANALYTICS", "0"),
    );
    let pid = std::fs::read_to_string(&pid_file).expect("vggtd started the viewer");
    let pid: u32 = pid.trim().parse().expect("a process id");
    // The viewer outlives vggtd (it is not its child): stop it as a user would.
    let want = own_entities(&out.join("recording.rrd"));
    let got = stop_when_saved(pid, &saved, &want);
    assert_eq!(
        got, want,
        "the spawned viewer received other entities than vggtd logged"
    );
}

#[test]
fn serve_streams_to_a_viewer_that_connects() {
    let Some(binary) = viewer_binary() else {
        return;
    };
    let clip = clip();
    let port = free_port();
    let out = clip.dir.join("out");
    let mut daemon = Guard(
        clip.command(&out)
            .arg("--viewer")
            .arg(format!("serve={port}"))
            .arg("--realtime")
            .stdout(Stdio::null())
            .spawn()
            .expect("start vggtd"),
    );
    wait_for_port(port, "vggtd's gRPC server");
    let saved = clip.dir.join("viewer.rrd");
    let mut rerun = Guard(
        viewer(&binary)
            .arg(format!("rerun+http://127.0.0.1:{port}/proxy"))
            // A viewer hosts its own gRPC server too (9876 by default): keep it off the port
            // the spawn test needs.
            .args(["--port", &free_port().to_string(), "--save"])
            .arg(&saved)
            .spawn()
            .expect("start the viewer"),
    );
    assert!(daemon.wait_exit(180), "vggtd did not finish");
    // A viewer reading a URL stops by itself when the stream ends.
    assert!(
        rerun.wait_exit(120),
        "the viewer did not see the end of the stream"
    );
    assert_same_entities(&saved, &out.join("recording.rrd"));
}
