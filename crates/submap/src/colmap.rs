//! A binary COLMAP model of the map, for Gaussian-splatting and photogrammetry tools:
//! `DIR/sparse/0/{cameras,images,points3D}.bin` and the keyframe images in `DIR/images/`.
//!
//! - One PINHOLE camera per group of keyframes with the same image size and intrinsics.
//! - Every keyframe an image, named `kf_<frame id>.png`, with COLMAP's camera-from-world pose
//!   (`qw qx qy qz`, `tx ty tz`: `x_cam = R x_world + t`).
//! - The map's points with their colours, each observed by the keyframe pixel it came from
//!   (track length 1; the reprojection error is 0 by construction and written as such).
//!
//! Conventions: vggtd's intrinsics put pixel centres at integer coordinates, COLMAP's at
//! `i + 0.5`, so `cx` and `cy` are written half a pixel larger, and so are the 2-D points.
//! Every file is written atomically.

use std::path::{Path, PathBuf};

use nalgebra::Point3;

use crate::backend::KeyframeCamera;
use crate::map::GlobalMap;

/// COLMAP's model id of `PINHOLE` (`fx fy cx cy`).
const PINHOLE: i32 = 1;

/// Error writing a COLMAP model.
#[derive(Debug, thiserror::Error)]
pub enum ColmapError {
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The encoder error.
        source: image::ImageError,
    },
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ColmapSummary {
    /// Cameras (intrinsics groups).
    pub cameras: usize,
    /// Images (keyframes).
    pub images: usize,
    /// 3-D points.
    pub points: usize,
}

/// A growable little-endian buffer.
#[derive(Default)]
struct Le(Vec<u8>);

impl Le {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

/// The image file name of a keyframe.
pub fn image_name(frame_id: u64) -> String {
    format!("kf_{frame_id:06}.png")
}

/// Writes the model into `dir` (created if needed): `sparse/0/*.bin` and `images/*.png`.
/// `sources[i]` is the `(frame id, u, v)` pixel map point `i` comes from
/// ([`crate::backend::Backend::map_with_sources`]).
pub fn write_model(
    dir: &Path,
    keyframes: &[KeyframeCamera],
    map: &GlobalMap,
    sources: &[(u64, f64, f64)],
) -> Result<ColmapSummary, ColmapError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ColmapError::Io { path, source }
    };
    let sparse = dir.join("sparse").join("0");
    let images_dir = dir.join("images");
    for d in [&sparse, &images_dir] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }

    // Cameras: one per (size, intrinsics) group, ids from 1 in first-seen order.
    let mut groups: Vec<([u32; 2], [f64; 4])> = Vec::new();
    let camera_of: Vec<u32> = keyframes
        .iter()
        .map(|k| {
            let size = [k.image.width(), k.image.height()];
            let params = [
                k.intrinsics.fx,
                k.intrinsics.fy,
                k.intrinsics.cx + 0.5,
                k.intrinsics.cy + 0.5,
            ];
            let same = |(s, p): &([u32; 2], [f64; 4])| {
                *s == size && p.iter().zip(&params).all(|(a, b)| (a - b).abs() < 1e-9)
            };
            let index = groups.iter().position(same).unwrap_or_else(|| {
                groups.push((size, params));
                groups.len() - 1
            });
            index as u32 + 1
        })
        .collect();
    let mut cameras = Le::default();
    cameras.u64(groups.len() as u64);
    for (i, (size, params)) in groups.iter().enumerate() {
        cameras.u32(i as u32 + 1);
        cameras.i32(PINHOLE);
        cameras.u64(u64::from(size[0]));
        cameras.u64(u64::from(size[1]));
        for p in params {
            cameras.f64(*p);
        }
    }

    // 2-D observations per keyframe, and the tracks of the points.
    let image_id_of = |frame_id: u64| {
        keyframes
            .binary_search_by_key(&frame_id, |k| k.frame_id)
            .ok()
            .map(|i| i as u32 + 1)
    };
    let mut observations: Vec<Vec<(f64, f64, i64)>> = vec![Vec::new(); keyframes.len()];
    let mut tracks: Vec<Option<(u32, u32)>> = Vec::with_capacity(sources.len());
    for (point_index, &(frame_id, u, v)) in sources.iter().enumerate() {
        let track = image_id_of(frame_id).map(|image_id| {
            let obs = &mut observations[image_id as usize - 1];
            obs.push((u + 0.5, v + 0.5, point_index as i64 + 1));
            (image_id, obs.len() as u32 - 1)
        });
        tracks.push(track);
    }

    let mut images = Le::default();
    images.u64(keyframes.len() as u64);
    for (i, k) in keyframes.iter().enumerate() {
        let cam_from_world = k.world_from_cam.inverse();
        let q = cam_from_world.rotation.into_inner();
        let t = cam_from_world.translation.vector;
        images.u32(i as u32 + 1);
        for v in [q.w, q.i, q.j, q.k, t.x, t.y, t.z] {
            images.f64(v);
        }
        images.u32(camera_of[i]);
        images
            .0
            .extend_from_slice(image_name(k.frame_id).as_bytes());
        images.u8(0);
        images.u64(observations[i].len() as u64);
        for &(x, y, id) in &observations[i] {
            images.f64(x);
            images.f64(y);
            images.i64(id);
        }
    }

    let mut points = Le::default();
    points.u64(map.points_in_world.len() as u64);
    for (i, (p, c)) in map.points_in_world.iter().zip(&map.colors).enumerate() {
        let p: Point3<f64> = p.cast();
        points.u64(i as u64 + 1);
        for v in [p.x, p.y, p.z] {
            points.f64(v);
        }
        for v in c {
            points.u8(*v);
        }
        points.f64(0.0);
        match tracks.get(i).copied().flatten() {
            Some((image_id, point2d)) => {
                points.u64(1);
                points.u32(image_id);
                points.u32(point2d);
            }
            None => points.u64(0),
        }
    }

    for k in keyframes {
        let path = images_dir.join(image_name(k.frame_id));
        let mut bytes = std::io::Cursor::new(Vec::new());
        k.image
            .write_to(&mut bytes, image::ImageFormat::Png)
            .map_err(|source| ColmapError::Image {
                path: path.clone(),
                source,
            })?;
        crate::io::write_atomic(&path, bytes.get_ref()).map_err(io(&path))?;
    }
    for (name, bytes) in [
        ("cameras.bin", &cameras.0),
        ("images.bin", &images.0),
        ("points3D.bin", &points.0),
    ] {
        let path = sparse.join(name);
        crate::io::write_atomic(&path, bytes).map_err(io(&path))?;
    }
    Ok(ColmapSummary {
        cameras: groups.len(),
        images: keyframes.len(),
        points: map.points_in_world.len(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nalgebra::{Isometry3, Translation3, UnitQuaternion, Vector3};

    use super::*;
    use crate::prediction::Intrinsics;

    fn read_u64(b: &[u8], at: &mut usize) -> u64 {
        let v = u64::from_le_bytes(b[*at..*at + 8].try_into().expect("8 bytes"));
        *at += 8;
        v
    }

    fn read_f64(b: &[u8], at: &mut usize) -> f64 {
        let v = f64::from_le_bytes(b[*at..*at + 8].try_into().expect("8 bytes"));
        *at += 8;
        v
    }

    #[test]
    fn model_files_hold_cameras_images_and_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = Intrinsics {
            fx: 50.0,
            fy: 51.0,
            cx: 19.5,
            cy: 14.5,
        };
        let image = Arc::new(image::RgbImage::from_pixel(
            40,
            30,
            image::Rgb([9, 99, 199]),
        ));
        let pose = Isometry3::from_parts(
            Translation3::new(1.0, 2.0, 3.0),
            UnitQuaternion::from_euler_angles(0.1, 0.2, 0.3),
        );
        let keyframes: Vec<KeyframeCamera> = [3u64, 8]
            .iter()
            .map(|&frame_id| KeyframeCamera {
                frame_id,
                timestamp_s: frame_id as f64,
                world_from_cam: pose,
                intrinsics: k,
                image: Arc::clone(&image),
            })
            .collect();
        let map = GlobalMap {
            points_in_world: vec![Point3::new(0.5, -0.5, 4.0), Point3::new(1.0, 1.0, 5.0)],
            colors: vec![[1, 2, 3], [4, 5, 6]],
            voxel_size: 0.0,
        };
        let sources = [(8, 10.0, 12.0), (3, 0.0, 0.0)];
        let summary = write_model(dir.path(), &keyframes, &map, &sources).expect("writes");
        assert_eq!(
            summary,
            ColmapSummary {
                cameras: 1,
                images: 2,
                points: 2
            }
        );
        let cams = std::fs::read(dir.path().join("sparse/0/cameras.bin")).expect("cameras");
        let mut at = 0;
        assert_eq!(read_u64(&cams, &mut at), 1);
        at += 8; // id and model
        assert_eq!(
            (read_u64(&cams, &mut at), read_u64(&cams, &mut at)),
            (40, 30)
        );
        let params: Vec<f64> = (0..4).map(|_| read_f64(&cams, &mut at)).collect();
        assert_eq!(
            params,
            [50.0, 51.0, 20.0, 15.0],
            "principal point moved half a pixel"
        );
        assert_eq!(at, cams.len());
        let imgs = std::fs::read(dir.path().join("sparse/0/images.bin")).expect("images");
        let mut at = 0;
        assert_eq!(read_u64(&imgs, &mut at), 2);
        at += 4;
        let q: Vec<f64> = (0..7).map(|_| read_f64(&imgs, &mut at)).collect();
        let cam_from_world = pose.inverse();
        let expected = cam_from_world.rotation.into_inner();
        assert!((q[0] - expected.w).abs() < 1e-12 && (q[1] - expected.i).abs() < 1e-12);
        let t: Vector3<f64> = cam_from_world.translation.vector;
        assert!((q[4] - t.x).abs() < 1e-12 && (q[6] - t.z).abs() < 1e-12);
        assert!(dir.path().join("images/kf_000003.png").is_file());
        assert!(dir.path().join("images/kf_000008.png").is_file());
        let pts = std::fs::read(dir.path().join("sparse/0/points3D.bin")).expect("points");
        // count + 2 x (id, xyz, rgb, error, track length 1, one element).
        assert_eq!(pts.len(), 8 + 2 * (8 + 24 + 3 + 8 + 8 + 8));
    }
}
