//! Global point map: per-keyframe points in the world frame, confidence-filtered and
//! voxel-downsampled, exported as binary little-endian PLY with colours.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use nalgebra::Point3;
use serde::{Deserialize, Serialize};

use crate::prediction::FramePrediction;

/// Map building settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    /// Take every `pixel_stride`-th pixel along both axes. Default 2.
    pub pixel_stride: usize,
    /// Drop each frame's pixels whose confidence is below this quantile of the frame's
    /// confidences (0 keeps all valid pixels). Default 0.3.
    pub conf_quantile: f64,
    /// Voxel edge as a fraction of the first keyframe's median depth (the world has no fixed
    /// unit). 0 disables downsampling. Default 0.01.
    pub voxel_rel: f64,
    /// Bound on what the back-end keeps per keyframe for the map and for loop checks (its
    /// depth, confidence and point maps and its pixels), MiB; 0: no bound. Over it, keyframes
    /// whose place a kept keyframe already covers give up their maps first (a revisit), then
    /// the oldest ones: they stay in the trajectory and the pose graph, but leave the map and
    /// can no longer close a loop. Default 2048.
    pub max_retained_mib: f64,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self {
            pixel_stride: 2,
            conf_quantile: 0.3,
            voxel_rel: 0.01,
            max_retained_mib: 2048.0,
        }
    }
}

/// Coloured points in the world frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GlobalMap {
    /// Point positions in the world frame.
    pub points_in_world: Vec<Point3<f32>>,
    /// RGB colour per point.
    pub colors: Vec<[u8; 3]>,
    /// Voxel edge used, world units (0 when not downsampled).
    pub voxel_size: f64,
}

/// Error writing a map.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Valid, confident pixels of a frame as `(u, v, depth, confidence)`, `stride` apart.
pub fn confident_pixels(
    frame: &FramePrediction,
    stride: usize,
    conf_quantile: f64,
) -> Vec<(usize, usize, f64, f64)> {
    let stride = stride.max(1);
    let (w, h) = (frame.depth.width, frame.depth.height);
    if frame.depth.data.len() != w * h || frame.depth_conf.data.len() != w * h {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(w.div_ceil(stride) * h.div_ceil(stride));
    for v in (0..h).step_by(stride) {
        for u in (0..w).step_by(stride) {
            let d = f64::from(frame.depth.at(u, v));
            let c = f64::from(frame.depth_conf.at(u, v));
            if d > 0.0 && d.is_finite() && c > 0.0 && c.is_finite() {
                out.push((u, v, d, c));
            }
        }
    }
    if conf_quantile > 0.0 && !out.is_empty() {
        let mut confs: Vec<f64> = out.iter().map(|p| p.3).collect();
        let k = ((confs.len() as f64 * conf_quantile.min(1.0)) as usize).min(confs.len() - 1);
        // The k-th smallest by selection, in linear time (every window's viewer cloud takes
        // this path for each of its frames).
        let (_, &mut threshold, _) = confs.select_nth_unstable_by(k, f64::total_cmp);
        out.retain(|p| p.3 >= threshold);
    }
    out
}

/// Colour of pixel `(u, v)` of a depth map, sampled from the frame's image even when the image
/// has another resolution.
pub fn pixel_color(frame: &FramePrediction, u: usize, v: usize) -> [u8; 3] {
    let (iw, ih) = (frame.image.width() as usize, frame.image.height() as usize);
    if iw == 0 || ih == 0 {
        return [255, 255, 255];
    }
    let x = (u * iw / frame.depth.width.max(1)).min(iw - 1);
    let y = (v * ih / frame.depth.height.max(1)).min(ih - 1);
    frame.image.get_pixel(x as u32, y as u32).0
}

/// Averages points (and colours) falling in the same voxel of edge `voxel`; order follows the
/// first point of each voxel.
pub fn voxel_downsample(
    points: &[Point3<f32>],
    colors: &[[u8; 3]],
    voxel: f64,
) -> (Vec<Point3<f32>>, Vec<[u8; 3]>) {
    let mut grid = VoxelGrid::new(voxel);
    for (p, c) in points.iter().zip(colors) {
        grid.insert(p, *c, ());
    }
    let (points, colors, _) = grid.finish();
    (points, colors)
}

/// Hashes a voxel's three cell coordinates with one multiply-rotate round each: the keys are
/// not chosen by an adversary, and SipHash took most of the downsampling's time.
#[derive(Debug, Default, Clone, Copy)]
struct VoxelHash;

impl std::hash::BuildHasher for VoxelHash {
    type Hasher = VoxelHasher;
    fn build_hasher(&self) -> VoxelHasher {
        VoxelHasher(0)
    }
}

/// The hasher of [`VoxelHash`].
#[derive(Debug, Clone, Copy)]
struct VoxelHasher(u64);

impl std::hash::Hasher for VoxelHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, v: u64) {
        // Odd constant from the golden ratio; the rotate spreads high bits into the low ones
        // that hashbrown uses for buckets.
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// Averages points (and colours) per voxel of edge `voxel` as they arrive, keeping one record per
/// voxel and the `S` of its first point: a map of millions of pixels is thinned without first
/// holding every pixel. An edge that is not positive and finite keeps every point.
#[derive(Debug, Clone)]
pub struct VoxelGrid<S> {
    /// The edge, when it thins at all.
    voxel: Option<f64>,
    slots: HashMap<[i64; 3], usize, VoxelHash>,
    cells: Vec<VoxelCell<S>>,
}

/// Sums of one voxel.
#[derive(Debug, Clone)]
struct VoxelCell<S> {
    position: [f64; 3],
    color: [u32; 3],
    count: u32,
    first: S,
}

impl<S> VoxelGrid<S> {
    /// An empty grid of edge `voxel`.
    pub fn new(voxel: f64) -> Self {
        Self {
            voxel: (voxel > 0.0 && voxel.is_finite()).then_some(voxel),
            slots: HashMap::default(),
            cells: Vec::new(),
        }
    }

    /// Voxels so far (points, when the edge keeps every point).
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True before the first point.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Adds a point with its colour; `first` is kept when it opens a voxel.
    pub fn insert(&mut self, p: &Point3<f32>, c: [u8; 3], first: S) {
        let open = VoxelCell {
            position: [0.0; 3],
            color: [0; 3],
            count: 0,
            first,
        };
        let slot = if let Some(voxel) = self.voxel {
            let key = [
                (f64::from(p.x) / voxel).floor() as i64,
                (f64::from(p.y) / voxel).floor() as i64,
                (f64::from(p.z) / voxel).floor() as i64,
            ];
            let cells = &mut self.cells;
            *self.slots.entry(key).or_insert_with(|| {
                cells.push(open);
                cells.len() - 1
            })
        } else {
            self.cells.push(open);
            self.cells.len() - 1
        };
        let cell = &mut self.cells[slot];
        for k in 0..3 {
            cell.position[k] += f64::from(p[k]);
            cell.color[k] += u32::from(c[k]);
        }
        cell.count += 1;
    }

    /// The voxels' mean points and colours, with each one's `first`, in the order the voxels
    /// were opened.
    pub fn finish(self) -> (Vec<Point3<f32>>, Vec<[u8; 3]>, Vec<S>) {
        let n = self.cells.len();
        let mut points = Vec::with_capacity(n);
        let mut colors = Vec::with_capacity(n);
        let mut first = Vec::with_capacity(n);
        drop(self.slots);
        for cell in self.cells {
            let (p, c, count) = (cell.position, cell.color, cell.count);
            let nf = f64::from(count);
            points.push(Point3::new(
                (p[0] / nf) as f32,
                (p[1] / nf) as f32,
                (p[2] / nf) as f32,
            ));
            colors.push([
                (c[0] / count) as u8,
                (c[1] / count) as u8,
                (c[2] / count) as u8,
            ]);
            first.push(cell.first);
        }
        (points, colors, first)
    }
}

/// Binary little-endian PLY bytes: `float x y z`, `uchar red green blue` per vertex.
pub fn ply_bytes(map: &GlobalMap) -> Vec<u8> {
    let n = map.points_in_world.len().min(map.colors.len());
    let mut header = String::new();
    let _ = write!(
        header,
        "ply\nformat binary_little_endian 1.0\ncomment vggtd global map\nelement vertex {n}\n\
         property float x\nproperty float y\nproperty float z\n\
         property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    );
    let mut bytes = header.into_bytes();
    bytes.reserve(n * 15);
    for (p, c) in map.points_in_world.iter().zip(&map.colors) {
        for v in [p.x, p.y, p.z] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(c);
    }
    bytes
}

/// Writes the map as binary PLY, atomically (temporary file, then rename).
pub fn write_ply(path: &Path, map: &GlobalMap) -> Result<(), MapError> {
    crate::io::write_atomic(path, &ply_bytes(map)).map_err(|source| MapError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voxel_downsample_merges_close_points() {
        let pts = vec![
            Point3::new(0.01f32, 0.01, 0.01),
            Point3::new(0.03, 0.02, 0.04),
            Point3::new(0.51, 0.0, 0.0),
        ];
        let cols = vec![[0, 0, 0], [100, 200, 50], [1, 2, 3]];
        let (p, c) = voxel_downsample(&pts, &cols, 0.1);
        assert_eq!(p.len(), 2);
        assert!((p[0].x - 0.02).abs() < 1e-6 && (p[0].z - 0.025).abs() < 1e-6);
        assert_eq!(c[0], [50, 100, 25]);
        assert_eq!(c[1], [1, 2, 3]);
    }

    #[test]
    fn a_voxel_grid_keeps_each_voxels_first_tag_and_an_edge_of_zero_keeps_every_point() {
        let pts = [
            Point3::new(0.01f32, 0.01, 0.01),
            Point3::new(0.51, 0.0, 0.0),
            Point3::new(0.03, 0.02, 0.04),
            Point3::new(-0.01, 0.0, 0.0),
        ];
        let mut grid = VoxelGrid::new(0.1);
        for (i, p) in pts.iter().enumerate() {
            grid.insert(p, [10 * i as u8; 3], ("tag", i));
        }
        assert_eq!(grid.len(), 3);
        let (p, c, first) = grid.finish();
        assert_eq!(first, [("tag", 0), ("tag", 1), ("tag", 3)]);
        assert!((p[0].x - 0.02).abs() < 1e-6 && c[0] == [10; 3]);
        assert_eq!(p[2], pts[3], "-0.01 is in the voxel below zero");
        let mut every = VoxelGrid::new(0.0);
        for (i, p) in pts.iter().enumerate() {
            every.insert(p, [0; 3], i);
        }
        let (all, _, order) = every.finish();
        assert_eq!(all, pts);
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn ply_is_well_formed_and_written_atomically() {
        let map = GlobalMap {
            points_in_world: vec![Point3::new(1.0, 2.0, 3.0), Point3::new(-1.5, 0.25, 8.0)],
            colors: vec![[255, 0, 10], [1, 2, 3]],
            voxel_size: 0.0,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("map.ply");
        write_ply(&path, &map).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let end = b"end_header\n";
        let pos = bytes
            .windows(end.len())
            .position(|w| w == end)
            .expect("header end")
            + end.len();
        let header = std::str::from_utf8(&bytes[..pos]).expect("ascii header");
        assert!(header.starts_with("ply\nformat binary_little_endian 1.0\n"));
        assert!(header.contains("element vertex 2\n"));
        let body = &bytes[pos..];
        assert_eq!(body.len(), 2 * 15);
        let f = |o: usize| f32::from_le_bytes([body[o], body[o + 1], body[o + 2], body[o + 3]]);
        assert_eq!((f(15), f(19), f(23)), (-1.5, 0.25, 8.0));
        assert_eq!(&body[27..30], &[1, 2, 3]);
        // Only the final file remains.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }
}
