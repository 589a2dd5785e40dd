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
    /// Voxels whose three cell coordinates fit [`pack_cell`]'s 21 bits each, by packed key: a
    /// table of 16-byte entries.
    slots: HashMap<u64, usize, VoxelHash>,
    /// The rare voxels further out.
    far: HashMap<[i64; 3], usize, VoxelHash>,
    /// The last voxel a point went to (neighbouring pixels often share one).
    last: Option<(u64, usize)>,
    cells: Vec<VoxelCell<S>>,
    /// Points inserted so far: the next point's number.
    points: u64,
}

/// Offset of a packed cell coordinate: coordinates in `[-2^20, 2^20)` pack.
const PACK_OFFSET: i64 = 1 << 20;

/// The three cell coordinates in one word, 21 bits each; `None` outside `[-2^20, 2^20)`.
fn pack_cell(key: [i64; 3]) -> Option<u64> {
    let mut packed = 0u64;
    for c in key {
        let shifted = c.checked_add(PACK_OFFSET)?;
        if !(0..2 * PACK_OFFSET).contains(&shifted) {
            return None;
        }
        packed = (packed << 21) | shifted as u64;
    }
    Some(packed)
}

/// The voxel of `p` for edge `voxel`.
fn cell_of(p: &Point3<f32>, voxel: f64) -> [i64; 3] {
    [
        (f64::from(p.x) / voxel).floor() as i64,
        (f64::from(p.y) / voxel).floor() as i64,
        (f64::from(p.z) / voxel).floor() as i64,
    ]
}

/// Sums of one voxel.
#[derive(Debug, Clone)]
struct VoxelCell<S> {
    position: [f64; 3],
    color: [u32; 3],
    count: u32,
    /// Number of the point that opened the voxel.
    opened_by: u64,
    first: S,
}

impl<S> VoxelCell<S> {
    /// The mean point and colour.
    fn mean(&self) -> (Point3<f32>, [u8; 3]) {
        let (p, c, count) = (self.position, self.color, self.count);
        let nf = f64::from(count);
        (
            Point3::new((p[0] / nf) as f32, (p[1] / nf) as f32, (p[2] / nf) as f32),
            [
                (c[0] / count) as u8,
                (c[1] / count) as u8,
                (c[2] / count) as u8,
            ],
        )
    }
}

impl<S> VoxelGrid<S> {
    /// An empty grid of edge `voxel`.
    pub fn new(voxel: f64) -> Self {
        Self {
            voxel: (voxel > 0.0 && voxel.is_finite()).then_some(voxel),
            slots: HashMap::default(),
            far: HashMap::default(),
            last: None,
            cells: Vec::new(),
            points: 0,
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
        let number = self.points;
        let key = self.voxel.map(|voxel| cell_of(p, voxel));
        self.insert_numbered(number, key, p, c, first);
    }

    /// [`VoxelGrid::insert`] of the point numbered `number` in the whole stream (a shard of
    /// [`voxel_thin_parallel`] sees some of the points only), whose voxel `key` the caller
    /// found ([`cell_of`] with this grid's edge; `None` when the grid keeps every point).
    fn insert_numbered(
        &mut self,
        number: u64,
        key: Option<[i64; 3]>,
        p: &Point3<f32>,
        c: [u8; 3],
        first: S,
    ) {
        self.points = number + 1;
        let open = VoxelCell {
            position: [0.0; 3],
            color: [0; 3],
            count: 0,
            opened_by: number,
            first,
        };
        let slot = if let Some(key) = key {
            let cells = &mut self.cells;
            let open_slot = || {
                cells.push(open);
                cells.len() - 1
            };
            match pack_cell(key) {
                Some(packed) => match self.last {
                    Some((last, slot)) if last == packed => slot,
                    _ => {
                        let slot = *self.slots.entry(packed).or_insert_with(open_slot);
                        self.last = Some((packed, slot));
                        slot
                    }
                },
                None => *self.far.entry(key).or_insert_with(open_slot),
            }
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
        drop(self.slots);
        drop(self.far);
        means(self.cells)
    }
}

/// The cells' mean points and colours and their `first`s, in the cells' order.
fn means<S>(cells: Vec<VoxelCell<S>>) -> (Vec<Point3<f32>>, Vec<[u8; 3]>, Vec<S>) {
    let n = cells.len();
    let mut points = Vec::with_capacity(n);
    let mut colors = Vec::with_capacity(n);
    let mut first = Vec::with_capacity(n);
    for cell in cells {
        let (p, c) = cell.mean();
        points.push(p);
        colors.push(c);
        first.push(cell.first);
    }
    (points, colors, first)
}

/// What [`voxel_thin_parallel`] calls `scan` with: takes each point, its colour and its `S`.
pub type PointSink<'a, S> = dyn FnMut(&Point3<f32>, [u8; 3], S) + 'a;

/// [`VoxelGrid`] on up to `threads` threads, with the same result: `scan` feeds every point to
/// the sink it is given, the same points in the same order each time it is called. Each thread
/// calls it once and keeps the voxels of its share (by a hash of the voxel), so every voxel
/// sums the same points in the same order as one grid fed in scan order would; the voxels are
/// then put in the order their first points came. The scan is repeated per thread, so it should
/// be cheap next to the thinning (placing pixels is; the hash table's cache misses are not).
/// One thread, an edge that keeps every point, or a thread that cannot be started: one grid.
pub fn voxel_thin_parallel<S, F>(
    voxel: f64,
    threads: usize,
    scan: F,
) -> (Vec<Point3<f32>>, Vec<[u8; 3]>, Vec<S>)
where
    S: Send,
    F: Fn(&mut PointSink<'_, S>) + Sync,
{
    let serial = || {
        let mut grid = VoxelGrid::new(voxel);
        scan(&mut |p, c, s| grid.insert(p, c, s));
        grid.finish()
    };
    let thins = voxel > 0.0 && voxel.is_finite();
    if threads <= 1 || !thins {
        return serial();
    }
    let share = |key: [i64; 3]| -> usize {
        let h = (key[0].wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64)
            ^ key[1].wrapping_mul(0xc2b2_ae3d_27d4_eb4f_u64 as i64)
            ^ key[2].wrapping_mul(0x1656_67b1_9e37_79f9_u64 as i64)) as u64;
        ((h >> 32) % threads as u64) as usize
    };
    let shards: Option<Vec<Vec<VoxelCell<S>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let scan = &scan;
                std::thread::Builder::new()
                    .name(format!("voxels-{t}"))
                    .spawn_scoped(scope, move || {
                        let mut grid = VoxelGrid::new(voxel);
                        let mut number = 0u64;
                        scan(&mut |p, c, s| {
                            let key = cell_of(p, voxel);
                            if share(key) == t {
                                grid.insert_numbered(number, Some(key), p, c, s);
                            }
                            number += 1;
                        });
                        grid.cells
                    })
            })
            .collect();
        // Every thread that started is joined before the scope ends.
        let mut shards = Vec::with_capacity(threads);
        let mut complete = true;
        for handle in handles {
            match handle.map(|h| h.join()) {
                Ok(Ok(cells)) => shards.push(cells),
                _ => complete = false,
            }
        }
        complete.then_some(shards)
    });
    let Some(shards) = shards else {
        return serial();
    };
    let mut cells: Vec<VoxelCell<S>> = shards.into_iter().flatten().collect();
    cells.sort_unstable_by_key(|c| c.opened_by);
    means(cells)
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
    fn cells_pack_inside_their_range_only() {
        let edge = PACK_OFFSET;
        assert!(pack_cell([-edge, edge - 1, 0]).is_some());
        assert_eq!(pack_cell([edge, 0, 0]), None);
        assert_eq!(pack_cell([0, -edge - 1, 0]), None);
        assert_eq!(pack_cell([0, 0, i64::MIN]), None);
        assert_eq!(pack_cell([0, 0, i64::MAX]), None);
        assert_ne!(pack_cell([1, 0, 0]), pack_cell([0, 1, 0]));
        assert_ne!(pack_cell([0, 1, 0]), pack_cell([0, 0, 1]));
        assert_ne!(pack_cell([-1, 0, 0]), pack_cell([0, 0, 0]));
    }

    #[test]
    fn thinning_on_several_threads_gives_one_grids_result_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Clustered points (several to a voxel, in runs as a frame's pixels come), a few far
        // outside the packed range and a few exactly on voxel faces.
        let mut points = Vec::new();
        for _ in 0..4000 {
            let centre: [f32; 3] = [
                rng.random_range(-2.0..2.0),
                rng.random_range(-2.0..2.0),
                rng.random_range(0.5..4.0),
            ];
            for _ in 0..rng.random_range(1..8) {
                points.push(Point3::new(
                    centre[0] + rng.random_range(-0.01..0.01),
                    centre[1] + rng.random_range(-0.01..0.01),
                    centre[2] + rng.random_range(-0.01..0.01),
                ));
            }
        }
        points.push(Point3::new(3.0e7, -2.0e8, 1.0));
        points.push(Point3::new(3.0e7, -2.0e8, 1.0));
        points.push(Point3::new(0.05, -0.1, 0.15));
        let scan = |sink: &mut PointSink<'_, usize>| {
            for (i, p) in points.iter().enumerate() {
                sink(p, [(i % 251) as u8, (i % 13) as u8, 7], i);
            }
        };
        let bits = |r: &(Vec<Point3<f32>>, Vec<[u8; 3]>, Vec<usize>)| {
            let p: Vec<[u32; 3]> =
                r.0.iter()
                    .map(|p| [p.x, p.y, p.z].map(f32::to_bits))
                    .collect();
            (p, r.1.clone(), r.2.clone())
        };
        let voxel = 0.1;
        let mut grid = VoxelGrid::new(voxel);
        scan(&mut |p, c, s| grid.insert(p, c, s));
        let one = grid.finish();
        assert!(one.0.len() < points.len() / 2, "{} voxels", one.0.len());
        for threads in [1, 2, 3, 8] {
            let many = voxel_thin_parallel(voxel, threads, scan);
            assert_eq!(bits(&many), bits(&one), "{threads} threads");
        }
        // An edge that keeps every point keeps them in order.
        let all = voxel_thin_parallel(0.0, 4, scan);
        assert_eq!(all.2, (0..points.len()).collect::<Vec<_>>());
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
