//! TUM RGB-D trajectory files: one pose per line, `timestamp tx ty tz qx qy qz qw`, `#` starts a
//! comment. Poses are camera-to-world (`world_from_cam`), metres and seconds.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nalgebra::{Isometry3, Quaternion, Translation3, UnitQuaternion};

/// One timestamped camera pose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StampedPose {
    /// Time in seconds.
    pub timestamp_s: f64,
    /// Camera-to-world pose.
    pub world_from_cam: Isometry3<f64>,
}

/// Error reading or writing a TUM trajectory.
#[derive(Debug, thiserror::Error)]
pub enum TumError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line does not hold 8 numbers.
    #[error("{path}:{line}: expected 8 numbers `timestamp tx ty tz qx qy qz qw`, found {found:?}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending text.
        found: String,
    },
    /// A quaternion of zero (or non-finite) norm.
    #[error("{path}:{line}: quaternion has norm {norm}, cannot be a rotation")]
    BadQuaternion {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Its norm.
        norm: f64,
    },
    /// The file holds no pose at all.
    #[error("{path}: no poses")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Parses TUM trajectory text; `path` only labels errors.
pub fn parse_trajectory(text: &str, path: &Path) -> Result<Vec<StampedPose>, TumError> {
    let mut poses = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || TumError::BadLine {
            path: path.to_path_buf(),
            line: n + 1,
            found: line.to_string(),
        };
        let values: Vec<f64> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        if values.len() != 8 || values.iter().any(|v| !v.is_finite()) {
            return Err(bad());
        }
        let q = Quaternion::new(values[7], values[4], values[5], values[6]);
        let norm = q.norm();
        if norm.is_nan() || norm <= 1e-9 {
            return Err(TumError::BadQuaternion {
                path: path.to_path_buf(),
                line: n + 1,
                norm,
            });
        }
        poses.push(StampedPose {
            timestamp_s: values[0],
            world_from_cam: Isometry3::from_parts(
                Translation3::new(values[1], values[2], values[3]),
                UnitQuaternion::from_quaternion(q),
            ),
        });
    }
    Ok(poses)
}

/// Reads a TUM trajectory file; an empty file is an error.
pub fn read_trajectory(path: &Path) -> Result<Vec<StampedPose>, TumError> {
    let text = std::fs::read_to_string(path).map_err(|source| TumError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let poses = parse_trajectory(&text, path)?;
    if poses.is_empty() {
        return Err(TumError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(poses)
}

/// Formats poses as TUM text (9 decimals), with a header comment.
pub fn format_trajectory(poses: &[StampedPose]) -> String {
    let mut out = String::from("# timestamp tx ty tz qx qy qz qw\n");
    for p in poses {
        let t = p.world_from_cam.translation.vector;
        let q = p.world_from_cam.rotation.quaternion();
        let _ = writeln!(
            out,
            "{:.6} {:.9} {:.9} {:.9} {:.9} {:.9} {:.9} {:.9}",
            p.timestamp_s, t.x, t.y, t.z, q.i, q.j, q.k, q.w
        );
    }
    out
}

/// Writes a TUM trajectory file atomically (temporary file in the same folder, then rename).
pub fn write_trajectory(path: &Path, poses: &[StampedPose]) -> Result<(), TumError> {
    crate::io::write_atomic(path, format_trajectory(poses).as_bytes()).map_err(|source| {
        TumError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let text = "# c\n1.5 1 2 3 0 0 0 1\n\n2.5, 0.1, 0.2, 0.3, 0.0, 0.7071068, 0.0, 0.7071068\n";
        let poses = parse_trajectory(text, Path::new("t.txt")).expect("parse");
        assert_eq!(poses.len(), 2);
        let again =
            parse_trajectory(&format_trajectory(&poses), Path::new("t.txt")).expect("parse");
        for (a, b) in poses.iter().zip(&again) {
            assert!((a.timestamp_s - b.timestamp_s).abs() < 1e-6);
            assert!(
                (a.world_from_cam.to_homogeneous() - b.world_from_cam.to_homogeneous())
                    .abs()
                    .max()
                    < 1e-8
            );
        }
    }

    #[test]
    fn malformed_lines_are_reported_with_line_numbers() {
        let err = parse_trajectory("1 2 3\n", Path::new("x.txt")).expect_err("short line");
        assert!(err.to_string().contains("x.txt:1"), "{err}");
        let err =
            parse_trajectory("# h\n1 2 3 4 5 6 7 abc\n", Path::new("x.txt")).expect_err("text");
        assert!(err.to_string().contains("x.txt:2"), "{err}");
        let err = parse_trajectory("1 2 3 4 0 0 0 0\n", Path::new("x.txt")).expect_err("zero quat");
        assert!(
            matches!(err, TumError::BadQuaternion { line: 1, .. }),
            "{err}"
        );
        let err = parse_trajectory("1 2 3 4 0 0 0 NaN\n", Path::new("x.txt")).expect_err("nan");
        assert!(matches!(err, TumError::BadLine { .. }));
    }
}
