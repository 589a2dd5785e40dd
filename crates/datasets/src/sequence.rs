//! The common form of every dataset: timestamped frames with image paths, optional depth and
//! ground truth, and intrinsics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nalgebra::Isometry3;
use submap::prediction::{Intrinsics, Map2, WindowFrame};

use crate::error::DatasetError;

/// One frame of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceFrame {
    /// Capture time, seconds.
    pub timestamp_s: f64,
    /// Colour (or grey) image file.
    pub rgb_path: PathBuf,
    /// 16-bit depth image file, when the dataset has one for this frame.
    pub depth_path: Option<PathBuf>,
    /// Ground-truth camera-to-world pose, when known.
    pub world_from_cam: Option<Isometry3<f64>>,
}

/// A dataset sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Human-readable name (folder name).
    pub name: String,
    /// Frames in time order.
    pub frames: Vec<SequenceFrame>,
    /// Pinhole intrinsics of the images, when known.
    pub intrinsics: Option<Intrinsics>,
    /// Depth image value per metre (5000 for TUM, 1000 for 7-Scenes).
    pub depth_units_per_m: f64,
    /// Depth value that marks an invalid pixel besides 0 (65535 for 7-Scenes).
    pub depth_invalid: Option<u16>,
}

impl Sequence {
    /// Loads frame `i`'s image as RGB.
    pub fn load_rgb(&self, i: usize) -> Result<image::RgbImage, DatasetError> {
        let path = &self.frames[i].rgb_path;
        Ok(image::open(path)
            .map_err(|source| DatasetError::Image {
                path: path.clone(),
                source,
            })?
            .to_rgb8())
    }

    /// Loads frame `i`'s depth in metres (0 marks invalid pixels); `None` without depth.
    pub fn load_depth_m(&self, i: usize) -> Result<Option<Map2<f32>>, DatasetError> {
        let Some(path) = &self.frames[i].depth_path else {
            return Ok(None);
        };
        let img = image::open(path).map_err(|source| DatasetError::Image {
            path: path.clone(),
            source,
        })?;
        let depth = img.to_luma16();
        let scale = 1.0 / self.depth_units_per_m;
        let data = depth
            .as_raw()
            .iter()
            .map(|&v| {
                if v == 0 || Some(v) == self.depth_invalid {
                    0.0
                } else {
                    (f64::from(v) * scale) as f32
                }
            })
            .collect();
        Ok(Some(Map2 {
            width: depth.width() as usize,
            height: depth.height() as usize,
            data,
        }))
    }

    /// Frame `i` as input to the pipeline (`frame_id = i`).
    pub fn window_frame(&self, i: usize) -> Result<WindowFrame, DatasetError> {
        Ok(WindowFrame {
            frame_id: i as u64,
            timestamp_s: self.frames[i].timestamp_s,
            image: Arc::new(self.load_rgb(i)?),
            depth_m: None,
        })
    }

    /// Frame `i` with its sensor depth attached (for metric scale); a frame without depth, or
    /// whose depth file cannot be read, comes without (the reason is returned beside it).
    pub fn window_frame_with_depth(
        &self,
        i: usize,
    ) -> Result<(WindowFrame, Option<DatasetError>), DatasetError> {
        let mut frame = self.window_frame(i)?;
        match self.load_depth_m(i) {
            Ok(depth) => {
                frame.depth_m = depth.map(Arc::new);
                Ok((frame, None))
            }
            Err(e) => Ok((frame, Some(e))),
        }
    }

    /// Index of the frame nearest to `timestamp_s`, if within `tolerance_s`.
    pub fn nearest(&self, timestamp_s: f64, tolerance_s: f64) -> Option<usize> {
        nearest_index(
            self.frames.iter().map(|f| f.timestamp_s),
            timestamp_s,
            tolerance_s,
        )
    }

    /// The ground-truth trajectory (frames that have one).
    pub fn ground_truth(&self) -> Vec<submap::tum::StampedPose> {
        self.frames
            .iter()
            .filter_map(|f| {
                f.world_from_cam.map(|p| submap::tum::StampedPose {
                    timestamp_s: f.timestamp_s,
                    world_from_cam: p,
                })
            })
            .collect()
    }
}

/// Index of the value nearest to `t` within `tolerance` (first one on ties).
pub(crate) fn nearest_index(
    values: impl Iterator<Item = f64>,
    t: f64,
    tolerance: f64,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in values.enumerate() {
        let d = (v - t).abs();
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((i, d));
        }
    }
    best.filter(|(_, d)| *d <= tolerance).map(|(i, _)| i)
}

/// [`nearest_index`] for many queries against the same values: sorted once, each query a
/// binary search (the association of a long sequence's files would otherwise be quadratic).
pub(crate) struct NearestIndex {
    /// `(value, original index)`, by value then index.
    sorted: Vec<(f64, usize)>,
}

impl NearestIndex {
    /// Indexes `values` (NaNs are never nearest).
    pub(crate) fn new(values: impl Iterator<Item = f64>) -> Self {
        let mut sorted: Vec<(f64, usize)> = values
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, v)| (v, i))
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Self { sorted }
    }

    /// Same answer as [`nearest_index`] over the indexed values.
    pub(crate) fn nearest(&self, t: f64, tolerance: f64) -> Option<usize> {
        let p = self.sorted.partition_point(|(v, _)| *v < t);
        // The nearest value is the first at or above `t`, or the last below it; among equal
        // values and equal distances the lowest index wins, as in a scan.
        let mut best: Option<(f64, usize)> = None;
        let mut consider = |value: f64| {
            let d = (value - t).abs();
            // Sorted by value then index: the run of `value` starts with its lowest index.
            let index = self.sorted[self.sorted.partition_point(|(v, _)| *v < value)].1;
            best = match best {
                Some((bd, bi)) if bd < d || (bd == d && bi < index) => Some((bd, bi)),
                _ => Some((d, index)),
            };
        };
        if let Some(&(v, _)) = self.sorted.get(p) {
            consider(v);
        }
        if p > 0 {
            consider(self.sorted[p - 1].0);
        }
        best.filter(|(d, _)| *d <= tolerance).map(|(_, i)| i)
    }
}

/// Name of a folder for labels.
pub(crate) fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sequence")
        .to_string()
}

#[cfg(test)]
mod nearest_tests {
    use super::*;

    #[test]
    fn the_index_answers_as_the_scan_does() {
        let values = [0.3, 0.1, 0.2, 0.2, 0.5, f64::NAN, 0.45, 0.1];
        let index = NearestIndex::new(values.iter().copied());
        for i in 0..70 {
            let t = -0.1 + i as f64 * 0.01;
            for tolerance in [0.0, 0.02, 1.0] {
                assert_eq!(
                    index.nearest(t, tolerance),
                    nearest_index(values.iter().copied(), t, tolerance),
                    "t {t}, tolerance {tolerance}"
                );
            }
        }
    }
}
