//! Microsoft 7-Scenes layout: one folder per sequence (`seq-01/`) holding
//! `frame-000000.color.png`, `frame-000000.depth.png` (16-bit, millimetres, 65535 invalid) and
//! `frame-000000.pose.txt` (4x4 camera-to-world matrix, row-major, 4 lines). Frames are 30 Hz;
//! timestamps are `index / 30` s. Intrinsics are the dataset's nominal 585 px focal length with
//! the principal point at the centre of the 640x480 images.

use std::path::Path;

use nalgebra::{Isometry3, Matrix3, Matrix4, Translation3};
use submap::lie::nearest_rotation;
use submap::prediction::Intrinsics;

use crate::error::{io_err, DatasetError};
use crate::sequence::{folder_name, Sequence, SequenceFrame};

/// Frame rate used for timestamps.
pub const FRAME_RATE_HZ: f64 = 30.0;

/// Parses a 7-Scenes pose file (16 numbers, a rigid 4x4 matrix).
pub fn parse_pose(text: &str, path: &Path) -> Result<Isometry3<f64>, DatasetError> {
    let bad = |message: String| DatasetError::Parse {
        path: path.to_path_buf(),
        line: 0,
        message,
    };
    let values: Vec<f64> = text
        .split_whitespace()
        .map(|s| {
            s.parse::<f64>()
                .map_err(|_| bad(format!("{s:?} is not a number")))
        })
        .collect::<Result<_, _>>()?;
    if values.len() != 16 || values.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!(
            "expected 16 finite numbers (a 4x4 matrix), found {}",
            values.len()
        )));
    }
    let m = Matrix4::from_row_slice(&values);
    let r: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into();
    if (r.transpose() * r - Matrix3::identity()).abs().max() > 1e-2
        || (m.row(3) - nalgebra::RowVector4::new(0.0, 0.0, 0.0, 1.0))
            .abs()
            .max()
            > 1e-6
    {
        return Err(bad("matrix is not a rigid transform".into()));
    }
    Ok(Isometry3::from_parts(
        Translation3::new(m[(0, 3)], m[(1, 3)], m[(2, 3)]),
        nearest_rotation(&r),
    ))
}

/// Reads one 7-Scenes sequence folder.
pub fn read(dir: &Path) -> Result<Sequence, DatasetError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    let mut indices: Vec<(usize, String)> = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stem) = name
            .strip_prefix("frame-")
            .and_then(|s| s.strip_suffix(".color.png"))
        {
            let index = stem.parse::<usize>().map_err(|_| DatasetError::Parse {
                path: dir.join(&name),
                line: 0,
                message: format!("frame number {stem:?} is not an integer"),
            })?;
            indices.push((index, stem.to_string()));
        }
    }
    if indices.is_empty() {
        return Err(DatasetError::NoFrames {
            path: dir.to_path_buf(),
        });
    }
    indices.sort();
    let mut frames = Vec::with_capacity(indices.len());
    for (index, stem) in indices {
        let depth = dir.join(format!("frame-{stem}.depth.png"));
        let pose_path = dir.join(format!("frame-{stem}.pose.txt"));
        let world_from_cam = if pose_path.is_file() {
            Some(parse_pose(
                &std::fs::read_to_string(&pose_path).map_err(io_err(&pose_path))?,
                &pose_path,
            )?)
        } else {
            None
        };
        frames.push(SequenceFrame {
            timestamp_s: index as f64 / FRAME_RATE_HZ,
            rgb_path: dir.join(format!("frame-{stem}.color.png")),
            depth_path: depth.is_file().then_some(depth),
            world_from_cam,
        });
    }
    Ok(Sequence {
        name: folder_name(dir),
        frames,
        intrinsics: Some(Intrinsics {
            fx: 585.0,
            fy: 585.0,
            cx: 320.0,
            cy: 240.0,
        }),
        depth_units_per_m: 1000.0,
        depth_invalid: Some(65535),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENTITY_POSE: &str = "1 0 0 0.5\n0 1 0 0\n0 0 1 0\n0 0 0 1\n";

    #[test]
    fn reads_frames_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for i in [2, 0, 1] {
            std::fs::write(d.join(format!("frame-{i:06}.color.png")), b"").expect("write");
            std::fs::write(d.join(format!("frame-{i:06}.pose.txt")), IDENTITY_POSE).expect("write");
        }
        let seq = read(d).expect("read");
        assert_eq!(seq.frames.len(), 3);
        assert!((seq.frames[2].timestamp_s - 2.0 / 30.0).abs() < 1e-12);
        assert_eq!(
            seq.frames[1]
                .world_from_cam
                .expect("pose")
                .translation
                .vector
                .x,
            0.5
        );
        assert!(seq.frames[0].depth_path.is_none());
    }

    #[test]
    fn rejects_malformed_poses() {
        let p = Path::new("frame-000000.pose.txt");
        assert!(parse_pose("1 0 0\n", p)
            .expect_err("short")
            .to_string()
            .contains("16"));
        assert!(parse_pose("1 0 0 0\n0 1 0 0\n0 0 x 0\n0 0 0 1\n", p)
            .expect_err("text")
            .to_string()
            .contains("\"x\""));
        assert!(parse_pose("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", p)
            .expect_err("scaled")
            .to_string()
            .contains("rigid"));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read(dir.path()),
            Err(DatasetError::NoFrames { .. })
        ));
    }
}
