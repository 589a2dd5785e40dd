//! `vggtd fetch-weights` against a loopback HTTP server serving the tiny fixture checkpoint:
//! full download, resume of a partial download with `Range`, and checksum rejection.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

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
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        printed.trim(),
        dir.path().join("vggt-1b.safetensors").display().to_string()
    );
}
