//! Keyframe selection on real pixels.
//!
//! Each frame is reduced to a small grayscale image (about [`KeyframeConfig::work_width`]
//! pixels wide). A frame becomes a keyframe when the median patch displacement since the last
//! keyframe, found by coarse-to-fine block matching on a two-level pyramid, exceeds
//! [`KeyframeConfig::min_flow_frac`] of the image width, or when [`KeyframeConfig::max_gap`]
//! has passed. Frames closer than [`KeyframeConfig::min_gap`] are skipped, blurred frames
//! (variance of the Laplacian well below its running level) and near-duplicates too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Thresholds of the [`KeyframeSelector`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyframeConfig {
    /// Median displacement since the last keyframe, as a fraction of the image width, that
    /// makes a new keyframe. Default 0.06.
    pub min_flow_frac: f64,
    /// Frames closer than this to the last keyframe are skipped. Default 0 s (seconds in TOML).
    #[serde(with = "crate::serde_secs")]
    pub min_gap: Duration,
    /// A keyframe is forced after this long without one (unless blurred or duplicate).
    /// Default 2 s (seconds in TOML).
    #[serde(with = "crate::serde_secs")]
    pub max_gap: Duration,
    /// A frame is blurred when its Laplacian variance is below this fraction of the running
    /// level of accepted frames. Default 0.35.
    pub blur_rel_threshold: f64,
    /// Mean absolute grey-level difference (0-255) to the last keyframe under which a frame is
    /// a duplicate. Default 1.0.
    pub duplicate_mean_abs_diff: f64,
    /// Width of the working image in pixels. Default 80.
    pub work_width: usize,
}

impl Default for KeyframeConfig {
    fn default() -> Self {
        Self {
            min_flow_frac: 0.06,
            min_gap: Duration::ZERO,
            max_gap: Duration::from_secs(2),
            blur_rel_threshold: 0.35,
            duplicate_mean_abs_diff: 1.0,
            work_width: 80,
        }
    }
}

/// Why a frame was not made a keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// Not enough motion (or time) since the last keyframe.
    TooClose,
    /// Blurred compared with recent frames.
    Blurry,
    /// Nearly identical to the last keyframe.
    Duplicate,
}

/// The selector's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyframeDecision {
    /// Keep the frame as a keyframe.
    Keyframe,
    /// Drop the frame.
    Skip(SkipReason),
}

/// What was measured on the last frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameMeasure {
    /// Median displacement since the last keyframe as a fraction of the width.
    pub flow_frac: f64,
    /// Variance of the Laplacian of the working image.
    pub sharpness: f64,
    /// Mean absolute difference to the last keyframe (0-255).
    pub mean_abs_diff: f64,
}

/// A grayscale image of `f32` values in 0-255, row-major `[height][width]`.
#[derive(Debug, Clone)]
struct Gray {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl Gray {
    fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// Box-filtered grayscale reduction of an RGB image by an integer factor.
    fn from_rgb(img: &image::RgbImage, work_width: usize) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let f = w.div_ceil(work_width.max(8)).max(1);
        let (width, height) = ((w / f).max(1), (h / f).max(1));
        let mut data = vec![0f32; width * height];
        let raw = img.as_raw();
        for y in 0..height {
            for x in 0..width {
                let mut acc = 0f32;
                let mut n = 0f32;
                for yy in y * f..((y + 1) * f).min(h) {
                    for xx in x * f..((x + 1) * f).min(w) {
                        let i = 3 * (yy * w + xx);
                        acc += 0.299 * f32::from(raw[i])
                            + 0.587 * f32::from(raw[i + 1])
                            + 0.114 * f32::from(raw[i + 2]);
                        n += 1.0;
                    }
                }
                data[y * width + x] = acc / n.max(1.0);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    fn half(&self) -> Self {
        let (width, height) = ((self.width / 2).max(1), (self.height / 2).max(1));
        let mut data = vec![0f32; width * height];
        for y in 0..height {
            for x in 0..width {
                let (x0, y0) = ((2 * x).min(self.width - 1), (2 * y).min(self.height - 1));
                let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
                data[y * width + x] =
                    0.25 * (self.at(x0, y0) + self.at(x1, y0) + self.at(x0, y1) + self.at(x1, y1));
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    fn laplacian_variance(&self) -> f64 {
        if self.width < 3 || self.height < 3 {
            return 0.0;
        }
        let mut vals = Vec::with_capacity(self.width * self.height);
        for y in 1..self.height - 1 {
            for x in 1..self.width - 1 {
                let l = 4.0 * self.at(x, y)
                    - self.at(x - 1, y)
                    - self.at(x + 1, y)
                    - self.at(x, y - 1)
                    - self.at(x, y + 1);
                vals.push(f64::from(l));
            }
        }
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64
    }

    fn mean_abs_diff(&self, other: &Gray) -> f64 {
        if self.width != other.width || self.height != other.height {
            return f64::INFINITY;
        }
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum::<f64>()
            / self.data.len().max(1) as f64
    }

    /// Sum of squared differences between the patch of `self` at `(x, y)` and the patch of
    /// `other` at `(x + dx, y + dy)`; `None` when out of bounds, or once the sum of the rows so
    /// far reaches `bound` (the sum only grows, so such a patch cannot be below it).
    fn ssd(
        &self,
        other: &Gray,
        (x, y): (i64, i64),
        (dx, dy): (i64, i64),
        r: i64,
        bound: f32,
    ) -> Option<f32> {
        let (w, h) = (self.width as i64, self.height as i64);
        if x - r < 0 || y - r < 0 || x + r >= w || y + r >= h {
            return None;
        }
        if x + dx - r < 0 || y + dy - r < 0 || x + dx + r >= w || y + dy + r >= h {
            return None;
        }
        // Row by row over slices (one bounds check a row, not one a pixel); the sum runs in the
        // same order as pixel by pixel.
        let side = (2 * r + 1) as usize;
        let mut acc = 0f32;
        for v in -r..=r {
            let ia = ((y + v) * w + x - r) as usize;
            let ib = ((y + dy + v) * w + x + dx - r) as usize;
            for (a, b) in self.data[ia..ia + side]
                .iter()
                .zip(&other.data[ib..ib + side])
            {
                acc += (a - b) * (a - b);
            }
            if acc >= bound {
                return None;
            }
        }
        Some(acc)
    }

    fn patch_variance(&self, x: usize, y: usize, r: usize) -> f32 {
        let mut s = 0f32;
        let mut s2 = 0f32;
        let mut n = 0f32;
        for yy in y - r..=y + r {
            for xx in x - r..=x + r {
                let v = self.at(xx, yy);
                s += v;
                s2 += v * v;
                n += 1.0;
            }
        }
        s2 / n - (s / n).powi(2)
    }
}

/// Best displacement of a patch within `±radius` around `(dx0, dy0)`.
fn search(
    a: &Gray,
    b: &Gray,
    (x, y): (i64, i64),
    (dx0, dy0): (i64, i64),
    radius: i64,
    r: i64,
) -> Option<(i64, i64)> {
    let mut best: Option<(f32, i64, i64)> = None;
    for dy in dy0 - radius..=dy0 + radius {
        for dx in dx0 - radius..=dx0 + radius {
            // Only a displacement strictly better than the best so far replaces it, so the
            // search stops summing one as soon as it cannot be.
            let bound = best.map_or(f32::INFINITY, |(bc, _, _)| bc);
            if let Some(c) = a.ssd(b, (x, y), (dx, dy), r, bound) {
                best = Some((c, dx, dy));
            }
        }
    }
    best.map(|(_, dx, dy)| (dx, dy))
}

/// Median displacement (working pixels) of textured patches from `a` to `b`, `None` when no
/// patch is textured enough to be tracked.
fn median_flow(a: &Gray, b: &Gray) -> Option<f64> {
    let (a1, b1) = (a.half(), b.half());
    let r = 3usize;
    let margin = 4 * r;
    if a.width <= 2 * margin || a.height <= 2 * margin {
        return None;
    }
    let mut flows = Vec::new();
    let (nx, ny) = (7usize, 5usize);
    for j in 0..ny {
        for i in 0..nx {
            let x = margin + i * (a.width - 2 * margin) / (nx - 1);
            let y = margin + j * (a.height - 2 * margin) / (ny - 1);
            if a.patch_variance(x, y, r) < 4.0 {
                continue;
            }
            let coarse_radius = (a1.width / 4).max(2) as i64;
            let coarse_at = ((x / 2) as i64, (y / 2) as i64);
            let Some((cdx, cdy)) = search(&a1, &b1, coarse_at, (0, 0), coarse_radius, 2) else {
                continue;
            };
            let fine_at = (x as i64, y as i64);
            if let Some((dx, dy)) = search(a, b, fine_at, (2 * cdx, 2 * cdy), 2, r as i64) {
                flows.push(((dx * dx + dy * dy) as f64).sqrt());
            }
        }
    }
    (!flows.is_empty()).then(|| crate::align::median_in_place(&mut flows))
}

struct LastKeyframe {
    gray: Gray,
    timestamp_s: f64,
}

/// Streaming keyframe selector; feed every frame in time order.
pub struct KeyframeSelector {
    config: KeyframeConfig,
    last: Option<LastKeyframe>,
    sharpness_level: Option<f64>,
    measure: FrameMeasure,
}

impl KeyframeSelector {
    /// A selector with the given thresholds.
    pub fn new(config: KeyframeConfig) -> Self {
        Self {
            config,
            last: None,
            sharpness_level: None,
            measure: FrameMeasure::default(),
        }
    }

    /// The thresholds in use.
    pub fn config(&self) -> &KeyframeConfig {
        &self.config
    }

    /// Measurements of the last frame passed to [`KeyframeSelector::push`].
    pub fn last_measure(&self) -> FrameMeasure {
        self.measure
    }

    /// Decides whether the frame captured at `timestamp_s` is a keyframe; when it is, it becomes
    /// the reference for the following frames.
    pub fn push(&mut self, image: &image::RgbImage, timestamp_s: f64) -> KeyframeDecision {
        let gray = Gray::from_rgb(image, self.config.work_width);
        let sharpness = gray.laplacian_variance();
        self.measure = FrameMeasure {
            flow_frac: 0.0,
            sharpness,
            mean_abs_diff: 0.0,
        };
        let Some(last) = &self.last else {
            self.sharpness_level = Some(sharpness);
            self.last = Some(LastKeyframe { gray, timestamp_s });
            return KeyframeDecision::Keyframe;
        };
        let gap_s = timestamp_s - last.timestamp_s;
        if gap_s < self.config.min_gap.as_secs_f64() {
            return KeyframeDecision::Skip(SkipReason::TooClose);
        }
        let level = self.sharpness_level.unwrap_or(sharpness);
        if sharpness < self.config.blur_rel_threshold * level {
            return KeyframeDecision::Skip(SkipReason::Blurry);
        }
        self.sharpness_level = Some(0.8 * level + 0.2 * sharpness);
        let mad = gray.mean_abs_diff(&last.gray);
        self.measure.mean_abs_diff = mad;
        if mad < self.config.duplicate_mean_abs_diff {
            return KeyframeDecision::Skip(SkipReason::Duplicate);
        }
        let flow_frac = median_flow(&last.gray, &gray).map_or(0.0, |f| f / gray.width as f64);
        self.measure.flow_frac = flow_frac;
        if flow_frac >= self.config.min_flow_frac || gap_s >= self.config.max_gap.as_secs_f64() {
            self.last = Some(LastKeyframe { gray, timestamp_s });
            KeyframeDecision::Keyframe
        } else {
            KeyframeDecision::Skip(SkipReason::TooClose)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured image shifted by `shift_px` pixels to the left, optionally box-blurred.
    fn texture(shift_px: u32, blur: u32) -> image::RgbImage {
        let img = image::RgbImage::from_fn(160, 120, |x, y| {
            // A random mosaic of 4-pixel cells: trackable and free of repetition.
            let (cx, cy) = (u64::from((x + shift_px) / 4), u64::from(y / 4));
            let h = (cx.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ cy.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
            .wrapping_mul(0x1656_67B1_9E37_79F9);
            let v = (h >> 56) as u8;
            image::Rgb([v, v / 2 + 40, 255 - v])
        });
        if blur == 0 {
            return img;
        }
        let r = blur as i64;
        image::RgbImage::from_fn(160, 120, |x, y| {
            let mut acc = [0u32; 3];
            let mut n = 0;
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (
                        (x as i64 + dx).clamp(0, 159) as u32,
                        (y as i64 + dy).clamp(0, 119) as u32,
                    );
                    let p = img.get_pixel(xx, yy);
                    for c in 0..3 {
                        acc[c] += u32::from(p[c]);
                    }
                    n += 1;
                }
            }
            image::Rgb([(acc[0] / n) as u8, (acc[1] / n) as u8, (acc[2] / n) as u8])
        })
    }

    #[test]
    fn flow_triggers_keyframes_and_small_motion_does_not() {
        let mut sel = KeyframeSelector::new(KeyframeConfig::default());
        assert_eq!(sel.push(&texture(0, 0), 0.0), KeyframeDecision::Keyframe);
        // 2 px at 160 px is 1.25 % of the width, well under 6 %.
        assert_eq!(
            sel.push(&texture(2, 0), 0.1),
            KeyframeDecision::Skip(SkipReason::TooClose)
        );
        let f = sel.last_measure().flow_frac;
        assert!(f > 0.0 && f < 0.03, "flow {f}");
        // 16 px is 10 %.
        assert_eq!(sel.push(&texture(16, 0), 0.2), KeyframeDecision::Keyframe);
        let f = sel.last_measure().flow_frac;
        assert!((f - 0.1).abs() < 0.02, "flow {f}");
    }

    #[test]
    fn duplicates_blur_and_gaps() {
        let config = KeyframeConfig {
            min_gap: Duration::from_millis(50),
            ..KeyframeConfig::default()
        };
        let mut sel = KeyframeSelector::new(config);
        assert_eq!(sel.push(&texture(0, 0), 0.0), KeyframeDecision::Keyframe);
        assert_eq!(
            sel.push(&texture(30, 0), 0.01),
            KeyframeDecision::Skip(SkipReason::TooClose)
        );
        assert_eq!(
            sel.push(&texture(0, 0), 0.5),
            KeyframeDecision::Skip(SkipReason::Duplicate)
        );
        assert_eq!(
            sel.push(&texture(30, 3), 0.6),
            KeyframeDecision::Skip(SkipReason::Blurry)
        );
        // Small motion but past the maximum gap.
        assert_eq!(sel.push(&texture(2, 0), 2.5), KeyframeDecision::Keyframe);
    }
}
