//! `--pose-stream PATH|-`: one JSON line per keyframe pose, written as soon as the pose is known
//! and again whenever the pose graph moves it, for robotics consumers.
//!
//! Each line: `{"timestamp_s", "frame_id", "world_from_cam" (row-major 4x4, camera-to-world,
//! OpenCV camera axes), "submap", "revision"}`. The target is stdout (`-`), a listening Unix
//! socket (connected to as a client), or a plain file (appended).

use std::io::Write;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::outputs::KeyframePose;

/// Error of the pose stream.
#[derive(Debug, thiserror::Error)]
pub enum PoseStreamError {
    /// The target cannot be opened.
    #[error("cannot open pose stream {target}: {source}")]
    Open {
        /// The target.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A write failed (the consumer went away).
    #[error("pose stream {target} write failed: {source}")]
    Write {
        /// The target.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One line of the stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoseLine {
    /// Capture time, seconds.
    pub timestamp_s: f64,
    /// Stream-wide frame id.
    pub frame_id: u64,
    /// Camera-to-world, row-major 4x4.
    pub world_from_cam: [[f64; 4]; 4],
    /// Submap of the keyframe.
    pub submap: usize,
    /// 0 when first published, then +1 per move.
    pub revision: u64,
}

impl From<&KeyframePose> for PoseLine {
    fn from(pose: &KeyframePose) -> Self {
        let m = pose.world_from_cam.to_homogeneous();
        let mut rows = [[0.0; 4]; 4];
        for (r, row) in rows.iter_mut().enumerate() {
            for (c, value) in row.iter_mut().enumerate() {
                *value = m[(r, c)];
            }
        }
        Self {
            timestamp_s: pose.timestamp_s,
            frame_id: pose.frame_id,
            world_from_cam: rows,
            submap: pose.submap,
            revision: pose.revision,
        }
    }
}

/// An open pose stream.
pub struct PoseStream {
    target: String,
    writer: Box<dyn Write + Send>,
}

impl std::fmt::Debug for PoseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoseStream")
            .field("target", &self.target)
            .finish()
    }
}

impl PoseStream {
    /// Opens `-` (stdout), a Unix socket, or a file.
    pub fn open(target: &str) -> Result<Self, PoseStreamError> {
        let open_err = |source| PoseStreamError::Open {
            target: target.to_owned(),
            source,
        };
        let writer: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            let path = PathBuf::from(target);
            if is_socket(&path) {
                Box::new(std::os::unix::net::UnixStream::connect(&path).map_err(open_err)?)
            } else {
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(open_err)?,
                )
            }
        };
        Ok(Self {
            target: target.to_owned(),
            writer,
        })
    }

    /// Writes and flushes one line.
    pub fn send(&mut self, pose: &KeyframePose) -> Result<(), PoseStreamError> {
        let write_err = |source| PoseStreamError::Write {
            target: self.target.clone(),
            source,
        };
        let mut line =
            serde_json::to_vec(&PoseLine::from(pose)).map_err(|e| write_err(e.into()))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(write_err)?;
        self.writer.flush().map_err(write_err)
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use std::io::BufRead as _;

    use nalgebra::{Isometry3, Vector3};

    use super::*;

    #[test]
    fn lines_reach_a_unix_socket_listener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("poses.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let mut stream = PoseStream::open(socket.to_str().expect("utf-8")).expect("connects");
        let (conn, _) = listener.accept().expect("accept");
        let pose = KeyframePose {
            frame_id: 7,
            timestamp_s: 1.25,
            world_from_cam: Isometry3::new(Vector3::new(1.0, 2.0, 3.0), Vector3::zeros()),
            submap: 2,
            revision: 1,
        };
        stream.send(&pose).expect("send");
        let mut line = String::new();
        std::io::BufReader::new(conn)
            .read_line(&mut line)
            .expect("read");
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["frame_id"], 7);
        assert_eq!(value["revision"], 1);
        assert_eq!(value["world_from_cam"][1][3], 2.0);
    }
}
