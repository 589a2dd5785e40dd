//! `vggtd fetch-weights` against a loopback HTTP server serving the tiny fixture checkpoint:
//! full download, resume of a partial download with `Range`, and checksum rejection; and the
//! README's first command, whose `vggtd run` fetches its weights on first use.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/tiny_a/weights.safetensors"
);
/// From `fixtures/tiny_a/README.md`.
const FIXTURE_SHA256: &str = "681f18b5acb15d18ed6032e155bd82f98b36430775777deec7f4912bfff46dd2";

/// A minimal HTTP/1.1 server on 127.0.0.1 that serves `body` for a bounded number of requests,
/// honouring `Range: bytes=N-`, and records the Range header of each request.
fn serve(
    body: Vec<u8>,
    requests: usize,
    etag: Option<&'static str>,
) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!(
        "http://{}/weights.safetensors",
        listener.local_addr().expect("addr")
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_server = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(value.trim().trim_end_matches('-').to_owned());
                }
            }
            seen_by_server.lock().expect("lock").push(range.clone());
            let start: usize = range.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
            let etag_header = etag
                .map(|e| format!("ETag: \"{e}\"\r\n"))
                .unwrap_or_default();
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n{etag_header}Connection: close\r\n\r\n",
                    body.len() - start,
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{etag_header}Connection: close\r\n\r\n", body.len())
            };
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[start..]);
        }
    });
    (url, seen)
}

#[test]
fn downloads_and_verifies_against_the_servers_etag() {
    let body = std::fs::read(FIXTURE).expect("fixture");
    let (url, _) = serve(body.clone(), 1, Some(FIXTURE_SHA256));
    let dir = tempfile::tempdir().expect("tempdir");
    let fetched =
        pipeline::fetch::fetch(&url, dir.path(), "w.safetensors", None).expect("downloads");
    assert!(fetched.verified, "the ETag is a sha256 and must be checked");
    assert_eq!(fetched.sha256, FIXTURE_SHA256);
    assert_eq!(std::fs::read(&fetched.path).expect("read"), body);
    assert!(!dir.path().join("w.safetensors.part").exists());
}

#[test]
fn resumes_a_partial_download_with_range() {
    let body = std::fs::read(FIXTURE).expect("fixture");
    let half = body.len() / 2;
    let (url, seen) = serve(body.clone(), 1, None);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("w.safetensors.part"), &body[..half]).expect("partial");
    let fetched = pipeline::fetch::fetch(&url, dir.path(), "w.safetensors", Some(FIXTURE_SHA256))
        .expect("resumes");
    assert!(fetched.resumed);
    assert_eq!(
        fetched.downloaded_bytes,
        (body.len() - half) as u64,
        "only the missing half is transferred"
    );
    assert_eq!(
        seen.lock().expect("lock").as_slice(),
        [Some(half.to_string())]
    );
    assert_eq!(
        pipeline::fetch::sha256_file(&fetched.path).expect("hash"),
        FIXTURE_SHA256
    );
}

#[test]
fn wrong_checksum_is_rejected_and_nothing_is_kept() {
    let body = std::fs::read(FIXTURE).expect("fixture");
    let (url, _) = serve(body, 1, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = "0".repeat(64);
    let err = pipeline::fetch::fetch(&url, dir.path(), "w.safetensors", Some(&wrong))
        .expect_err("mismatch");
    assert!(
        matches!(err, pipeline::fetch::FetchError::Checksum { .. }),
        "{err}"
    );
    assert!(!dir.path().join("w.safetensors").exists());
    assert!(!dir.path().join("w.safetensors.part").exists());
}

#[test]
fn cli_fetch_weights_prints_the_cached_path() {
    let body = std::fs::read(FIXTURE).expect("fixture");
    let (url, _) = serve(body, 1, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vggtd"))
        .args([
            "fetch-weights",
            "--url",
            &url,
            "--sha256",
            FIXTURE_SHA256,
            "--cache-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Named after the URL, as `vggtd run` looks for it in the cache.
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed.trim(),
        dir.path().join("weights.safetensors").display().to_string()
    );
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The arguments of `vggtd` in the README's first command (the first line of its first `sh`
/// block, after `--bin vggtd --`).
fn first_command_args() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let block = readme.split("```sh\n").nth(1).expect("an sh block");
    let line = block.lines().next().expect("a first line");
    let (_, args) = line
        .split_once("--bin vggtd --")
        .unwrap_or_else(|| panic!("the first command runs vggtd: {line}"));
    args.split_whitespace().map(str::to_owned).collect()
}

/// The README's arguments made runnable in a test: the input from the repository, outputs in
/// `work`, and the tiny fixture model (its config and 84-pixel images) in place of VGGT-1B. The
/// live viewer becomes a recording: `tests/viewer.rs` runs `--viewer spawn` against the real one.
fn first_command(work: &Path, output: &str, weights_url: &str, cache: &Path) -> Command {
    let args = first_command_args();
    assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
    assert!(
        !args.iter().any(|a| a == "--weights"),
        "the first command gives no weights: they are fetched on first use ({args:?})"
    );
    let mut command = vggtd();
    command.current_dir(work);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--input" => {
                let input = repo_root().join(args.next().expect("--input value"));
                assert!(
                    input.is_file(),
                    "the shipped clip {} exists",
                    input.display()
                );
                command.arg("--input").arg(input);
            }
            "--output" => {
                args.next();
                command.args(["--output", output]);
            }
            "--viewer" => {
                assert_eq!(args.next().as_deref(), Some("spawn"));
                command.args(["--viewer", "none", "--rrd", &format!("{output}/run.rrd")]);
            }
            _ => {
                command.arg(arg);
            }
        }
    }
    command
        .args(["--model-config", TINY_CONFIG, "--image-width", "84"])
        .env("VGGTD_WEIGHTS_URL", weights_url)
        .env("VGGTD_CACHE", cache)
        .env_remove("VGGTD_WEIGHTS")
        .env_remove("VGGTD_OFFLINE");
    command
}

/// Expects exit status 1 with one `Error:` line naming `needles`, no panic, no outputs.
fn fails_with(output: Output, out_dir: &Path, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "an error, not a panic: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    for needle in needles {
        assert!(errors[0].contains(needle), "{needle:?} in {}", errors[0]);
    }
    assert!(!out_dir.exists(), "no outputs after a failed start");
}

#[test]
fn the_readmes_first_command_fetches_weights_on_first_use_and_runs_the_shipped_clip() {
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("cache");
    let body = std::fs::read(FIXTURE).expect("fixture");
    let (url, seen) = serve(body, 1, Some(FIXTURE_SHA256));

    // First run: nothing in the cache, the checkpoint comes from the server once.
    let output = run_ok(&mut first_command(work.path(), "out", &url, &cache));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(seen.lock().expect("lock").len(), 1, "one request");
    let cached = cache.join("weights.safetensors");
    assert_eq!(
        pipeline::fetch::sha256_file(&cached).expect("cached weights"),
        FIXTURE_SHA256
    );
    assert!(
        stderr.contains("downloading the checkpoint once"),
        "{stderr}"
    );
    let out = work.path().join("out");
    let first = summary(&out);
    println!("first command: {first}");
    assert_eq!(first["predictor"], "vggt");
    assert_eq!(first["frames"], 90, "the whole clip: {first}");
    assert!(first["windows"].as_u64().is_some_and(|w| w >= 2), "{first}");
    assert!(read_tum(&out.join("trajectory.txt")).len() >= 10);
    assert!(ply_vertex_count(&out.join("map.ply")) > 1000);
    assert!(out.join("run.rrd").metadata().is_ok_and(|m| m.len() > 0));

    // Second run: the server is gone; the cached checkpoint is used without a request.
    let output = run_ok(&mut first_command(work.path(), "out2", &url, &cache));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("using the cached checkpoint"), "{stderr}");
    assert!(!stderr.contains("downloading"), "{stderr}");
    assert_eq!(summary(&work.path().join("out2"))["frames"], 90);

    // An empty cache and no server: one clear message, nothing written.
    let empty = work.path().join("empty-cache");
    let output = first_command(work.path(), "out3", &url, &empty)
        .output()
        .expect("runs");
    fails_with(
        output,
        &work.path().join("out3"),
        &[
            "downloading them failed",
            "--weights FILE",
            "--predictor simulated",
        ],
    );
    assert!(!empty.join("weights.safetensors").exists());

    // --offline never asks the network.
    let output = first_command(
        work.path(),
        "out4",
        "http://127.0.0.1:1/w.safetensors",
        &empty,
    )
    .arg("--offline")
    .output()
    .expect("runs");
    fails_with(
        output,
        &work.path().join("out4"),
        &["--offline", "fetch-weights", "--predictor simulated"],
    );
}
