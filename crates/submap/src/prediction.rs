//! The contract between a predictor (VGGT, a simulation, a replay) and the back-end.
//!
//! A predictor sees a window of keyframes and answers in the window's own gauge: poses are
//! `cam_from_window` (OpenCV camera axes: x right, y down, z forward), the window frame is
//! arbitrary (VGGT puts the first camera at the origin) and its scale is unknown.

use std::sync::Arc;

use nalgebra::{Isometry3, Point3};

/// One input frame of a window: pixels plus identity.
#[derive(Debug, Clone)]
pub struct WindowFrame {
    /// Stream-wide frame index (monotonic, unique).
    pub frame_id: u64,
    /// Capture time in seconds (dataset or camera clock).
    pub timestamp_s: f64,
    /// RGB pixels, shared with the rest of the pipeline.
    pub image: Arc<image::RgbImage>,
    /// Metric depth from a depth sensor registered to `image` (metres, 0 = no reading), when
    /// the source has one and metric scale was asked for.
    pub depth_m: Option<Arc<Map2<f32>>>,
}

/// Pinhole intrinsics in pixels of the predicted maps' resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    /// Focal length along x, pixels.
    pub fx: f64,
    /// Focal length along y, pixels.
    pub fy: f64,
    /// Principal point x, pixels.
    pub cx: f64,
    /// Principal point y, pixels.
    pub cy: f64,
}

impl Intrinsics {
    /// Back-projects pixel (u, v) at depth `depth` into camera coordinates.
    pub fn unproject(&self, u: f64, v: f64, depth: f64) -> Point3<f64> {
        Point3::new(
            (u - self.cx) * depth / self.fx,
            (v - self.cy) * depth / self.fy,
            depth,
        )
    }

    /// Projects a camera-frame point to pixels; `None` behind the camera.
    pub fn project(&self, p: &Point3<f64>) -> Option<(f64, f64)> {
        (p.z > 1e-9).then(|| (self.fx * p.x / p.z + self.cx, self.fy * p.y / p.z + self.cy))
    }
}

/// A dense per-pixel map, row-major `[height][width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Map2<T> {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height * width` values, row-major.
    pub data: Vec<T>,
}

impl<T: Copy> Map2<T> {
    /// Value at column `u`, row `v`.
    pub fn at(&self, u: usize, v: usize) -> T {
        self.data[v * self.width + u]
    }
}

/// A point map in the window frame and its confidence, at the resolution of the depth.
pub type PointMaps = (Map2<[f32; 3]>, Map2<f32>);

/// What a predictor returns for one frame of a window.
#[derive(Debug, Clone)]
pub struct FramePrediction {
    /// Same id as the input frame.
    pub frame_id: u64,
    /// Capture time in seconds.
    pub timestamp_s: f64,
    /// Camera pose in the window gauge (camera-from-window, OpenCV axes).
    pub cam_from_window: Isometry3<f64>,
    /// Intrinsics at the resolution of `depth`.
    pub intrinsics: Intrinsics,
    /// Depth along the optical axis, window units.
    pub depth: Map2<f32>,
    /// Depth confidence (>= 1 for VGGT; higher is better).
    pub depth_conf: Map2<f32>,
    /// Optional point map in the window frame (VGGT's point head), with its confidence (boxed:
    /// the back-end keeps a record of every keyframe long after its maps are released, and a
    /// frame without point maps then costs one pointer for them, not two empty maps).
    pub points_in_window: Option<Box<PointMaps>>,
    /// The pixels the prediction was made from, at the resolution of `depth` (for colours).
    pub image: Arc<image::RgbImage>,
}

/// The prediction for a whole window, in its own gauge.
#[derive(Debug, Clone)]
pub struct WindowPrediction {
    /// Frames in the order they were given.
    pub frames: Vec<FramePrediction>,
    /// Optional extra projective distortion applied by a simulation (documentation only).
    pub label: String,
}

impl WindowPrediction {
    /// True when every number is finite (poses, intrinsics, depth, confidence).
    pub fn is_finite(&self) -> bool {
        self.frames.iter().all(|f| {
            let pose = f.cam_from_window.to_homogeneous();
            pose.iter().all(|v| v.is_finite())
                && [
                    f.intrinsics.fx,
                    f.intrinsics.fy,
                    f.intrinsics.cx,
                    f.intrinsics.cy,
                ]
                .iter()
                .all(|v| v.is_finite())
                && all_finite(&f.depth.data)
                && all_finite(&f.depth_conf.data)
        })
    }
}

/// True when every value is finite. Checked a block at a time without an early exit inside
/// it, so the compiler vectorises the test (a window holds millions of values).
fn all_finite(values: &[f32]) -> bool {
    values
        .chunks(256)
        .all(|block| block.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// Error of a predictor.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The window is not usable (too few frames, mismatched sizes...).
    #[error("bad window: {0}")]
    BadWindow(String),
    /// The predictor itself failed (model error, missing data...).
    #[error("predictor failed: {0}")]
    Failed(String),
}

/// Anything that turns a window of frames into a [`WindowPrediction`].
pub trait Predictor: Send {
    /// Predicts one window. `neighbours[i]` optionally restricts which frames frame `i` may
    /// attend to (indices into `frames`, always including `i`); `None` means all.
    fn predict(
        &mut self,
        frames: &[WindowFrame],
        neighbours: Option<&[Vec<usize>]>,
    ) -> Result<WindowPrediction, PredictError>;

    /// A short name for logs and summaries.
    fn name(&self) -> &str;
}
