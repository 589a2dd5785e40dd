//! TUM RGB-D layout: `rgb.txt` and `depth.txt` (`timestamp filename` per line, `#` comments),
//! `groundtruth.txt` (TUM trajectory), images under `rgb/` and `depth/` (16-bit PNG, 5000 per
//! metre). Depth and ground truth are associated to each RGB frame by nearest timestamp within
//! 0.02 s, as the benchmark's `associate.py` does. Intrinsics come from `intrinsics.txt`
//! (`fx fy cx cy`, written by [`crate::synth`]) or from the `freiburg1/2/3` calibration named in
//! the folder.

use std::path::{Path, PathBuf};

use submap::prediction::Intrinsics;

use crate::error::{io_err, DatasetError};
use crate::sequence::{folder_name, NearestIndex, Sequence, SequenceFrame};

/// Association tolerance between RGB, depth and ground-truth stamps, seconds.
pub const MAX_ASSOCIATION_DIFF_S: f64 = 0.02;

/// Parses a `timestamp filename` list.
pub fn parse_file_list(text: &str, path: &Path) -> Result<Vec<(f64, String)>, DatasetError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let bad = |message: String| DatasetError::Parse {
            path: path.to_path_buf(),
            line: n + 1,
            message,
        };
        let (Some(t), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!(
                "expected `timestamp filename`, found {line:?}"
            )));
        };
        let t: f64 = t
            .parse()
            .map_err(|_| bad(format!("timestamp {t:?} is not a number")))?;
        if !t.is_finite() {
            return Err(bad(format!("timestamp {t} is not finite")));
        }
        out.push((t, name.to_string()));
    }
    Ok(out)
}

fn read_text(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Intrinsics of the TUM Freiburg cameras (ROS default calibration), by folder name.
pub fn freiburg_intrinsics(name: &str) -> Option<Intrinsics> {
    let (fx, fy, cx, cy) = if name.contains("freiburg1") {
        (517.3, 516.5, 318.6, 255.3)
    } else if name.contains("freiburg2") {
        (520.9, 521.0, 325.1, 249.7)
    } else if name.contains("freiburg3") {
        (535.4, 539.2, 320.1, 247.6)
    } else {
        return None;
    };
    Some(Intrinsics { fx, fy, cx, cy })
}

/// Parses `intrinsics.txt`: the first non-comment line holds `fx fy cx cy`.
pub fn parse_intrinsics(text: &str, path: &Path) -> Result<Intrinsics, DatasetError> {
    let (n, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .ok_or(DatasetError::Parse {
            path: path.to_path_buf(),
            line: 0,
            message: "no `fx fy cx cy` line".into(),
        })?;
    let values: Vec<f64> = line
        .split_whitespace()
        .take(4)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| DatasetError::Parse {
            path: path.to_path_buf(),
            line: n + 1,
            message: format!("expected `fx fy cx cy`, found {:?}", line.trim()),
        })?;
    if values.len() != 4
        || values.iter().any(|v| !v.is_finite())
        || values[0] <= 0.0
        || values[1] <= 0.0
    {
        return Err(DatasetError::Parse {
            path: path.to_path_buf(),
            line: n + 1,
            message: format!(
                "expected 4 finite numbers with positive focal lengths, found {:?}",
                line.trim()
            ),
        });
    }
    Ok(Intrinsics {
        fx: values[0],
        fy: values[1],
        cx: values[2],
        cy: values[3],
    })
}

/// Reads a TUM RGB-D sequence folder; a malformed `groundtruth.txt` is an error.
pub fn read(dir: &Path) -> Result<Sequence, DatasetError> {
    match read_lenient(dir)? {
        (_, Some(ground_truth_error)) => Err(ground_truth_error),
        (sequence, None) => Ok(sequence),
    }
}

/// Reads a TUM RGB-D sequence folder for a use that does not need ground truth: a malformed
/// `groundtruth.txt` leaves the frames without poses and comes back beside the sequence.
pub fn read_lenient(dir: &Path) -> Result<(Sequence, Option<DatasetError>), DatasetError> {
    let rgb_list = dir.join("rgb.txt");
    if !rgb_list.is_file() {
        return Err(DatasetError::Missing {
            path: rgb_list,
            what: "the TUM `rgb.txt` list",
        });
    }
    let rgb = parse_file_list(&read_text(&rgb_list)?, &rgb_list)?;
    if rgb.is_empty() {
        return Err(DatasetError::NoFrames { path: rgb_list });
    }
    let depth_list = dir.join("depth.txt");
    let depth = if depth_list.is_file() {
        parse_file_list(&read_text(&depth_list)?, &depth_list)?
    } else {
        Vec::new()
    };
    let gt_path = dir.join("groundtruth.txt");
    let (gt, gt_error) = if gt_path.is_file() {
        match submap::tum::read_trajectory(&gt_path) {
            Ok(gt) => (gt, None),
            Err(e) => (Vec::new(), Some(DatasetError::from(e))),
        }
    } else {
        (Vec::new(), None)
    };
    let intr_path = dir.join("intrinsics.txt");
    let name = folder_name(dir);
    let intrinsics = if intr_path.is_file() {
        Some(parse_intrinsics(&read_text(&intr_path)?, &intr_path)?)
    } else {
        freiburg_intrinsics(&name)
    };
    let depth_index = NearestIndex::new(depth.iter().map(|d| d.0));
    let gt_index = NearestIndex::new(gt.iter().map(|g| g.timestamp_s));
    let frames = rgb
        .iter()
        .map(|(t, file)| {
            let depth_path: Option<PathBuf> = depth_index
                .nearest(*t, MAX_ASSOCIATION_DIFF_S)
                .map(|i| dir.join(&depth[i].1));
            let world_from_cam = gt_index
                .nearest(*t, MAX_ASSOCIATION_DIFF_S)
                .map(|i| gt[i].world_from_cam);
            SequenceFrame {
                timestamp_s: *t,
                rgb_path: dir.join(file),
                depth_path,
                world_from_cam,
            }
        })
        .collect();
    let sequence = Sequence {
        name,
        frames,
        intrinsics,
        depth_units_per_m: 5000.0,
        depth_invalid: None,
    };
    Ok((sequence, gt_error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_minimal_sequence_and_associates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("rgbd_dataset_freiburg1_test");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(
            d.join("rgb.txt"),
            "# color images\n1.000 rgb/1.png\n1.033 rgb/2.png\n",
        )
        .expect("write");
        std::fs::write(
            d.join("depth.txt"),
            "1.010 depth/1.png\n1.500 depth/2.png\n",
        )
        .expect("write");
        std::fs::write(
            d.join("groundtruth.txt"),
            "1.001 0 0 0 0 0 0 1\n1.031 1 0 0 0 0 0 1\n",
        )
        .expect("write");
        let seq = read(&d).expect("read");
        assert_eq!(seq.frames.len(), 2);
        assert_eq!(seq.frames[0].depth_path, Some(d.join("depth/1.png")));
        assert_eq!(
            seq.frames[1].depth_path, None,
            "1.500 is too far from 1.033"
        );
        assert_eq!(
            seq.frames[1]
                .world_from_cam
                .expect("gt")
                .translation
                .vector
                .x,
            1.0
        );
        assert_eq!(seq.intrinsics.expect("freiburg1").fx, 517.3);
    }

    #[test]
    fn malformed_lists_are_rejected_with_line_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let err = read(d).expect_err("no rgb.txt");
        assert!(err.to_string().contains("rgb.txt"), "{err}");
        std::fs::write(d.join("rgb.txt"), "# x\n1.0 a.png\nabc b.png\n").expect("write");
        let err = read(d).expect_err("bad stamp");
        assert!(
            err.to_string().contains("rgb.txt:3") && err.to_string().contains("abc"),
            "{err}"
        );
        std::fs::write(d.join("rgb.txt"), "1.0\n").expect("write");
        assert!(read(d)
            .expect_err("one column")
            .to_string()
            .contains("rgb.txt:1"));
        std::fs::write(d.join("rgb.txt"), "# only comments\n").expect("write");
        assert!(matches!(read(d), Err(DatasetError::NoFrames { .. })));
        std::fs::write(d.join("rgb.txt"), "1.0 a.png\n").expect("write");
        std::fs::write(d.join("groundtruth.txt"), "1.0 0 0 0 0 0 0\n").expect("write");
        let err = read(d).expect_err("short gt line");
        assert!(err.to_string().contains("groundtruth.txt:1"), "{err}");
        // Where ground truth is not needed, the frames come without poses and the error beside.
        let (sequence, gt_error) = read_lenient(d).expect("frames without ground truth");
        assert_eq!(sequence.frames.len(), 1);
        assert!(sequence.frames[0].world_from_cam.is_none());
        assert!(gt_error.is_some_and(|e| e.to_string().contains("groundtruth.txt:1")));
        std::fs::remove_file(d.join("groundtruth.txt")).expect("rm");
        std::fs::write(d.join("intrinsics.txt"), "500 -1 80 60\n").expect("write");
        assert!(read(d)
            .expect_err("negative focal")
            .to_string()
            .contains("intrinsics.txt:1"));
    }
}
