//! `vggtd fetch-weights`: HTTP download of the checkpoint into a cache directory, resumable
//! (HTTP `Range` on a `.part` file) and verified by SHA-256.
//!
//! The expected digest is the one given by the caller, else the server's `X-Linked-Etag` /
//! `ETag` when that is a 64-digit hex SHA-256 (as the Hugging Face hub sends for large files).
//! A file whose digest cannot be checked is kept, with a warning.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Where VGGT-1B lives on the Hugging Face hub.
pub const VGGT_1B_URL: &str =
    "https://huggingface.co/facebook/VGGT-1B/resolve/main/model.safetensors";

/// Error of a download.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed.
    #[error("download of {url} failed: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// Transport error or HTTP status.
        reason: String,
    },
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The downloaded bytes do not hash to the expected digest; the partial file is removed.
    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Expected hex digest.
        expected: String,
        /// Actual hex digest.
        actual: String,
    },
}

/// What a finished download produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The final file.
    pub path: PathBuf,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Whether the digest was checked against an expected value.
    pub verified: bool,
    /// Bytes transferred in this call (less than the size when resumed).
    pub downloaded_bytes: u64,
    /// Whether an earlier partial download was continued.
    pub resumed: bool,
}

/// The default cache directory: `$VGGTD_CACHE`, else `$XDG_CACHE_HOME/vggtd`, else
/// `$HOME/.cache/vggtd`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VGGTD_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("vggtd");
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".vggtd-cache"),
        |home| PathBuf::from(home).join(".cache/vggtd"),
    )
}

fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Downloads `url` to `dir/file_name`, resuming `dir/file_name.part` when present.
/// An existing final file with the expected digest is returned without a request.
pub fn fetch(
    url: &str,
    dir: &Path,
    file_name: &str,
    expected_sha256: Option<&str>,
) -> Result<Fetched, FetchError> {
    fetch_with_progress(url, dir, file_name, expected_sha256, &mut |_| {})
}

/// How far a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes in the part file, the resumed part included.
    pub bytes: u64,
    /// The whole file's size, when the server said it.
    pub total: Option<u64>,
}

/// [`fetch`], calling `progress` as bytes arrive (after the response headers, then every 64 KiB).
pub fn fetch_with_progress(
    url: &str,
    dir: &Path,
    file_name: &str,
    expected_sha256: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fetched, FetchError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let final_path = dir.join(file_name);
    let part_path = dir.join(format!("{file_name}.part"));
    let expected = expected_sha256.map(str::to_ascii_lowercase);

    if let (Some(expected), true) = (&expected, final_path.exists()) {
        let actual = sha256_file(&final_path)?;
        if &actual == expected {
            return Ok(Fetched {
                path: final_path,
                sha256: actual,
                verified: true,
                downloaded_bytes: 0,
                resumed: false,
            });
        }
    }

    let have = std::fs::metadata(&part_path).map(|m| m.len()).unwrap_or(0);
    let http_err = |reason: String| FetchError::Http {
        url: url.to_owned(),
        reason,
    };
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(response) => response,
        // The part file already holds everything.
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            return finish(&part_path, &final_path, expected, None, 0, true)
        }
        Err(e) => return Err(http_err(e.to_string())),
    };
    let resumed = have > 0 && response.status() == 206;
    let server_digest = ["x-linked-etag", "etag"]
        .iter()
        .filter_map(|h| response.header(h))
        .map(|v| v.trim_matches('"').to_ascii_lowercase())
        .find(|v| is_sha256_hex(v));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part_path)
        .map_err(io(&part_path))?;
    let start = if resumed { have } else { 0 };
    let total = response
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|n| n + start);
    progress(Progress {
        bytes: start,
        total,
    });
    let mut reader = response.into_reader();
    let mut buffer = vec![0u8; 1 << 16];
    let mut downloaded = 0u64;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| http_err(format!("after {downloaded} bytes: {e}")))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).map_err(io(&part_path))?;
        downloaded += n as u64;
        progress(Progress {
            bytes: start + downloaded,
            total,
        });
    }
    file.sync_all().map_err(io(&part_path))?;
    drop(file);
    finish(
        &part_path,
        &final_path,
        expected,
        server_digest,
        downloaded,
        resumed,
    )
}

fn finish(
    part_path: &Path,
    final_path: &Path,
    expected: Option<String>,
    server_digest: Option<String>,
    downloaded_bytes: u64,
    resumed: bool,
) -> Result<Fetched, FetchError> {
    let actual = sha256_file(part_path)?;
    let expected = expected.or(server_digest);
    if let Some(expected) = &expected {
        if &actual != expected {
            let _ = std::fs::remove_file(part_path);
            return Err(FetchError::Checksum {
                path: final_path.to_owned(),
                expected: expected.clone(),
                actual,
            });
        }
    } else {
        tracing::warn!(path = %final_path.display(), sha256 = %actual, "no expected checksum: download not verified");
    }
    std::fs::rename(part_path, final_path).map_err(|source| FetchError::Io {
        path: final_path.to_owned(),
        source,
    })?;
    Ok(Fetched {
        path: final_path.to_owned(),
        sha256: actual,
        verified: expected.is_some(),
        downloaded_bytes,
        resumed,
    })
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let io = |source| FetchError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Why a run has no weights: none were given, and the cache has none and could not get them.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// `--offline` (or `VGGTD_OFFLINE`) forbids the download.
    #[error("no VGGT weights: none given, none in the cache ({cached}), and --offline forbids downloading them. {HOW_TO_GET}")]
    Offline {
        /// Where the cache would hold them.
        cached: PathBuf,
    },
    /// The download failed (no network, server error, checksum).
    #[error("no VGGT weights: none given, none in the cache, and downloading them failed: {source}. {HOW_TO_GET}")]
    Download {
        /// What failed.
        source: FetchError,
    },
}

/// The way out, said with every [`WeightsError`].
const HOW_TO_GET: &str = "Pass --weights FILE (or set VGGTD_WEIGHTS) with a downloaded model.safetensors (https://huggingface.co/facebook/VGGT-1B), run `vggtd fetch-weights` where there is a network, or run without weights with --predictor simulated";

/// The checkpoint file name in the cache for `url`: its last path segment.
pub fn cache_file_name(url: &str) -> String {
    url.split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|name| !name.is_empty() && *name != "." && *name != "..")
        .unwrap_or("model.safetensors")
        .to_owned()
}

/// The weights of a run that was given none: the cached checkpoint for `url` when it is there
/// (checked when it was downloaded), else downloaded into `cache_dir` now unless `offline`.
pub fn weights_for_run(
    url: &str,
    cache_dir: &Path,
    offline: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, WeightsError> {
    let name = cache_file_name(url);
    let cached = cache_dir.join(&name);
    // `fetch-weights` before it named the file after the URL saved VGGT-1B as this.
    let earlier = (url == VGGT_1B_URL).then(|| cache_dir.join("vggt-1b.safetensors"));
    if let Some(found) = std::iter::once(&cached)
        .chain(earlier.as_ref())
        .find(|p| p.is_file())
    {
        tracing::info!(weights = %found.display(), "using the cached checkpoint");
        return Ok(found.clone());
    }
    if offline {
        return Err(WeightsError::Offline { cached });
    }
    tracing::info!(%url, cache = %cache_dir.display(), "no weights given: downloading the checkpoint once into the cache");
    let fetched = fetch_with_progress(url, cache_dir, &name, None, progress)
        .map_err(|source| WeightsError::Download { source })?;
    Ok(fetched.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_come_from_the_url() {
        assert_eq!(cache_file_name(VGGT_1B_URL), "model.safetensors");
        assert_eq!(
            cache_file_name("http://127.0.0.1:1/a/tiny.safetensors?download=true"),
            "tiny.safetensors"
        );
        assert_eq!(cache_file_name("http://127.0.0.1:1/"), "model.safetensors");
    }

    #[test]
    fn offline_without_a_cached_file_says_how_to_get_weights() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = weights_for_run(VGGT_1B_URL, dir.path(), true, &mut |_| {})
            .expect_err("offline, empty cache");
        let text = err.to_string();
        assert!(text.contains("--offline"), "{text}");
        assert!(text.contains("--predictor simulated"), "{text}");
        assert!(text.contains("--weights FILE"), "{text}");
    }

    #[test]
    fn a_cached_file_is_used_without_a_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("model.safetensors"), b"x").unwrap();
        // Port 1 on loopback refuses: a request would fail.
        let path = weights_for_run(
            "http://127.0.0.1:1/model.safetensors",
            dir.path(),
            false,
            &mut |_| {},
        )
        .expect("cached");
        assert_eq!(path, dir.path().join("model.safetensors"));
    }
}
