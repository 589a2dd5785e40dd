//! EuRoC MAV layout (ASL format): `mav0/cam0/data.csv` (`timestamp_ns,filename`), images under
//! `mav0/cam0/data/`, `mav0/cam0/sensor.yaml` (`intrinsics: [fu, fv, cu, cv]` and the
//! body-from-camera extrinsic `T_BS`), and optional ground truth
//! `mav0/state_groundtruth_estimate0/data.csv` (`timestamp_ns, p_x, p_y, p_z, q_w, q_x, q_y,
//! q_z, ...`, world-from-body). Camera poses are `world_from_body · body_from_cam`, associated
//! by nearest stamp within 5 ms. EuRoC has no depth.

use std::path::{Path, PathBuf};

use nalgebra::{Isometry3, Matrix3, Matrix4, Quaternion, Translation3, UnitQuaternion};
use submap::lie::nearest_rotation;
use submap::prediction::Intrinsics;

use crate::error::{io_err, DatasetError};
use crate::sequence::{folder_name, NearestIndex, Sequence, SequenceFrame};

/// Ground-truth association tolerance, seconds.
pub const MAX_GT_DIFF_S: f64 = 0.005;

fn numbers(line: &str) -> Result<Vec<f64>, String> {
    line.split(',')
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("{:?} is not a number", s.trim()))
        })
        .collect()
}

/// Parses `cam0/data.csv` into `(timestamp_s, filename)`.
pub fn parse_image_list(text: &str, path: &Path) -> Result<Vec<(f64, String)>, DatasetError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| DatasetError::Parse {
            path: path.to_path_buf(),
            line: n + 1,
            message,
        };
        let (Some(t), Some(file)) = line
            .split_once(',')
            .map_or((None, None), |(a, b)| (Some(a.trim()), Some(b.trim())))
        else {
            return Err(bad(format!(
                "expected `timestamp_ns,filename`, found {line:?}"
            )));
        };
        let ns: u64 = t.parse().map_err(|_| {
            bad(format!(
                "timestamp {t:?} is not an integer number of nanoseconds"
            ))
        })?;
        if file.is_empty() {
            return Err(bad("empty file name".into()));
        }
        out.push((ns as f64 * 1e-9, file.to_string()));
    }
    Ok(out)
}

/// Parses the ground-truth CSV into world-from-body poses.
pub fn parse_ground_truth(
    text: &str,
    path: &Path,
) -> Result<Vec<(f64, Isometry3<f64>)>, DatasetError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| DatasetError::Parse {
            path: path.to_path_buf(),
            line: n + 1,
            message,
        };
        let v = numbers(line).map_err(bad)?;
        if v.len() < 8 {
            return Err(bad(format!(
                "expected at least 8 values (timestamp, position, quaternion wxyz), found {}",
                v.len()
            )));
        }
        let q = Quaternion::new(v[4], v[5], v[6], v[7]);
        if q.norm().is_nan() || q.norm() <= 1e-9 {
            return Err(bad("quaternion of zero norm".into()));
        }
        out.push((
            v[0] * 1e-9,
            Isometry3::from_parts(
                Translation3::new(v[1], v[2], v[3]),
                UnitQuaternion::from_quaternion(q),
            ),
        ));
    }
    Ok(out)
}

/// Numbers inside the `[...]` that follows `key` in a YAML file (possibly across lines).
fn yaml_list(text: &str, key: &str) -> Option<Vec<f64>> {
    let start = text.find(key)?;
    let rest = &text[start..];
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    rest[open + 1..close]
        .split(',')
        .map(|s| s.trim().parse::<f64>().ok())
        .collect()
}

/// Parses `sensor.yaml`: intrinsics and `body_from_cam`.
pub fn parse_sensor_yaml(
    text: &str,
    path: &Path,
) -> Result<(Intrinsics, Isometry3<f64>), DatasetError> {
    let bad = |message: &str| DatasetError::Parse {
        path: path.to_path_buf(),
        line: 0,
        message: message.to_string(),
    };
    let k =
        yaml_list(text, "intrinsics:").ok_or_else(|| bad("no `intrinsics: [fu, fv, cu, cv]`"))?;
    if k.len() != 4 || k[0] <= 0.0 || k[1] <= 0.0 {
        return Err(bad(
            "`intrinsics` must hold 4 numbers with positive focal lengths",
        ));
    }
    let t = yaml_list(text, "T_BS:")
        .ok_or_else(|| bad("no `T_BS` matrix with `data: [16 numbers]`"))?;
    if t.len() != 16 {
        return Err(bad("`T_BS` data must hold 16 numbers"));
    }
    let m = Matrix4::from_row_slice(&t);
    let r: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into();
    let body_from_cam = Isometry3::from_parts(
        Translation3::new(m[(0, 3)], m[(1, 3)], m[(2, 3)]),
        nearest_rotation(&r),
    );
    Ok((
        Intrinsics {
            fx: k[0],
            fy: k[1],
            cx: k[2],
            cy: k[3],
        },
        body_from_cam,
    ))
}

/// Reads a EuRoC sequence (the folder holding `mav0/`, or `mav0/` itself).
pub fn read(dir: &Path) -> Result<Sequence, DatasetError> {
    let mav0: PathBuf = if dir.join("mav0").is_dir() {
        dir.join("mav0")
    } else {
        dir.to_path_buf()
    };
    let list = mav0.join("cam0/data.csv");
    if !list.is_file() {
        return Err(DatasetError::Missing {
            path: list,
            what: "the EuRoC `cam0/data.csv` image list",
        });
    }
    let images = parse_image_list(
        &std::fs::read_to_string(&list).map_err(io_err(&list))?,
        &list,
    )?;
    if images.is_empty() {
        return Err(DatasetError::NoFrames { path: list });
    }
    let yaml = mav0.join("cam0/sensor.yaml");
    let (intrinsics, body_from_cam) = if yaml.is_file() {
        let (k, b) = parse_sensor_yaml(
            &std::fs::read_to_string(&yaml).map_err(io_err(&yaml))?,
            &yaml,
        )?;
        (Some(k), b)
    } else {
        (None, Isometry3::identity())
    };
    let gt_path = mav0.join("state_groundtruth_estimate0/data.csv");
    let gt = if gt_path.is_file() {
        parse_ground_truth(
            &std::fs::read_to_string(&gt_path).map_err(io_err(&gt_path))?,
            &gt_path,
        )?
    } else {
        Vec::new()
    };
    let gt_index = NearestIndex::new(gt.iter().map(|g| g.0));
    let frames = images
        .into_iter()
        .map(|(t, file)| SequenceFrame {
            timestamp_s: t,
            rgb_path: mav0.join("cam0/data").join(file),
            depth_path: None,
            world_from_cam: gt_index
                .nearest(t, MAX_GT_DIFF_S)
                .map(|i| gt[i].1 * body_from_cam),
        })
        .collect();
    let name = folder_name(if mav0.ends_with("mav0") {
        mav0.parent().unwrap_or(dir)
    } else {
        dir
    });
    Ok(Sequence {
        name,
        frames,
        intrinsics,
        depth_units_per_m: 1.0,
        depth_invalid: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "sensor_type: camera\nT_BS:\n  cols: 4\n  rows: 4\n  data: [0.0, -1.0, 0.0, 0.1,\n         1.0, 0.0, 0.0, 0.0,\n         0.0, 0.0, 1.0, 0.0,\n         0.0, 0.0, 0.0, 1.0]\nintrinsics: [458.654, 457.296, 367.215, 248.375]\n";

    #[test]
    fn reads_layout_and_composes_extrinsics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cam = dir.path().join("mav0/cam0");
        std::fs::create_dir_all(&cam).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("mav0/state_groundtruth_estimate0"))
            .expect("mkdir");
        std::fs::write(
            cam.join("data.csv"),
            "#timestamp [ns],filename\n1403636579763555584,1403636579763555584.png\n",
        )
        .expect("write");
        std::fs::write(cam.join("sensor.yaml"), YAML).expect("write");
        std::fs::write(
            dir.path().join("mav0/state_groundtruth_estimate0/data.csv"),
            "#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z []\n1403636579763000000,1.0,2.0,3.0,1.0,0.0,0.0,0.0\n",
        )
        .expect("write");
        let seq = read(dir.path()).expect("read");
        assert_eq!(seq.frames.len(), 1);
        assert_eq!(seq.intrinsics.expect("intrinsics").cx, 367.215);
        let pose = seq.frames[0].world_from_cam.expect("gt within 5 ms");
        assert!((pose.translation.vector - nalgebra::Vector3::new(1.1, 2.0, 3.0)).norm() < 1e-12);
    }

    #[test]
    fn rejects_malformed_files() {
        let p = Path::new("data.csv");
        assert!(parse_image_list("123\n", p)
            .expect_err("no comma")
            .to_string()
            .contains("data.csv:1"));
        assert!(parse_image_list("12.5,a.png\n", p)
            .expect_err("float ns")
            .to_string()
            .contains("nanoseconds"));
        assert!(parse_ground_truth("1,2,3\n", p)
            .expect_err("short")
            .to_string()
            .contains("at least 8"));
        assert!(parse_ground_truth("1,2,3,4,0,0,0,0\n", p)
            .expect_err("zero quat")
            .to_string()
            .contains("zero norm"));
        assert!(parse_sensor_yaml("intrinsics: [1, 2]\n", p).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read(dir.path()),
            Err(DatasetError::Missing { .. })
        ));
    }
}
