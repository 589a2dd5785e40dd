//! Image preprocessing identical to upstream `vggt/utils/load_fn.py::load_and_preprocess_images`.
//!
//! Per image: RGBA is composited onto opaque white (Pillow's integer `alpha_composite`), other
//! modes are converted to RGB; the image is resized with Pillow's BICUBIC resampler (Keys cubic,
//! a = -0.5, support widened by the scale when downscaling, 22-bit fixed-point coefficients, a
//! horizontal then a vertical pass through a uint8 intermediate), reimplemented here bit for bit;
//! values become `u8 / 255` floats. Then:
//! * [`PreprocessMode::Crop`]: width 518, height `round_half_even(h * 518 / w / 14) * 14`; heights
//!   above 518 are centre-cropped to 518.
//! * [`PreprocessMode::Pad`]: the longer side 518, the shorter rounded the same way; then padded
//!   to 518 x 518 with white (1.0), centred (`top = (518 - h) / 2`).
//!
//! A batch whose images end with different sizes (crop mode, mixed aspect ratios) is padded with
//! white to the largest height and width, centred the same way.
//!
//! Known differences from upstream: image decoding is the `image` crate's, not Pillow's. PNG is
//! lossless, so PNGs decode identically and their preprocessing is bit-exact. JPEG decoders differ
//! (Pillow uses libjpeg-turbo, the `image` crate zune-jpeg): on a 700x500 quality-90 JPEG of a
//! synthetic pattern, 23% of decoded values differed, by 0.31 grey levels on average and 13 at
//! most; after preprocessing the largest difference was 9 levels. 16-bit PNGs are scaled to 8 bits
//! by the `image` crate's rounding where Pillow has its own 16-bit modes. Palette images with
//! transparency are composited here (the `image` crate expands them to RGBA), while Pillow's
//! `convert("RGB")` drops their alpha.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use image::{DynamicImage, Rgb, RgbImage, RgbaImage};

use crate::tensor_io::HostTensor;

/// Side length upstream resizes to (518 = 37 patches of 14 pixels).
pub const TARGET_SIZE_PX: u32 = 518;

/// Both output sides are multiples of this (the patch size).
pub const SIDE_MULTIPLE_PX: u32 = 14;

/// Error while preprocessing images.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// No image was given.
    #[error("no images to preprocess")]
    NoImages,
    /// An image file could not be opened or decoded.
    #[error("cannot load image {path}: {source}")]
    Load {
        /// File that failed.
        path: PathBuf,
        /// Decoder or IO error.
        source: image::ImageError,
    },
    /// An image is so thin that its short side would round to zero pixels.
    #[error("image {index} ({width_px} x {height_px}) is too thin: its short side would round to 0 px at 518")]
    TooThin {
        /// Position of the image in the batch.
        index: usize,
        /// Width of the image.
        width_px: u32,
        /// Height of the image.
        height_px: u32,
    },
}

/// How images are fitted to 518 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreprocessMode {
    /// Width 518, height keeps the aspect ratio (rounded to 14), centre-cropped to at most 518.
    #[default]
    Crop,
    /// Longer side 518, shorter keeps the aspect ratio (rounded to 14), white-padded to 518 x 518.
    Pad,
}

/// A preprocessed batch: `[N, 3, H, W]` float32 RGB in `[0, 1]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessed {
    /// `[N, 3, H, W]`.
    pub shape: [usize; 4],
    /// Values, `N * 3 * H * W` of them.
    pub values: Vec<f32>,
}

impl Preprocessed {
    /// As a host tensor `[N, 3, H, W]`.
    pub fn to_host(&self) -> HostTensor {
        HostTensor::f32(self.shape.to_vec(), self.values.clone())
    }

    /// Uploads as a burn tensor `[N, 3, H, W]`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device)
    }
}

/// Python's `round` (half to even) of `side * (518 / reference) / 14`, times 14, in upstream's
/// operation order.
fn scaled_side(side_px: u32, reference_px: u32) -> u32 {
    let ratio = f64::from(TARGET_SIZE_PX) / f64::from(reference_px);
    let patches = (f64::from(side_px) * ratio / f64::from(SIDE_MULTIPLE_PX)).round_ties_even();
    patches as u32 * SIDE_MULTIPLE_PX
}

/// Size `(width, height)` an image of `width_px x height_px` is resized to, before crop / pad.
pub fn resized_size(width_px: u32, height_px: u32, mode: PreprocessMode) -> (u32, u32) {
    match mode {
        PreprocessMode::Pad if height_px > width_px => {
            (scaled_side(width_px, height_px), TARGET_SIZE_PX)
        }
        _ => (TARGET_SIZE_PX, scaled_side(height_px, width_px)),
    }
}

/// Size `(width, height)` of one preprocessed image (after crop / pad, before batch padding).
pub fn output_size(width_px: u32, height_px: u32, mode: PreprocessMode) -> (u32, u32) {
    let (w, h) = resized_size(width_px, height_px, mode);
    match mode {
        PreprocessMode::Crop => (w, h.min(TARGET_SIZE_PX)),
        PreprocessMode::Pad => (TARGET_SIZE_PX, TARGET_SIZE_PX),
    }
}

/// Pillow's `Image.alpha_composite(white, image)` then `convert("RGB")`, in its integer arithmetic.
pub fn composite_on_white(image: &RgbaImage) -> RgbImage {
    const PRECISION_BITS: u32 = 7;
    let div255 = |a: u32| ((a >> 8) + a) >> 8;
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b, a] = image.get_pixel(x, y).0.map(u32::from);
        if a == 0 {
            return Rgb([255, 255, 255]);
        }
        // Background alpha is 255, so the output alpha is 255 and these are Pillow's coefficients.
        let out_a255 = a * 255 + 255 * (255 - a);
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        let blend = |src: u32| {
            let tmp = src * coef1 + 255 * coef2;
            (div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
        };
        Rgb([blend(r), blend(g), blend(b)])
    })
}

/// Pillow's `convert("RGB")` of a decoded image; RGBA is first composited onto white as upstream
/// does. Grey + alpha drops the alpha, like Pillow's `LA -> RGB`.
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgba8(rgba) => composite_on_white(rgba),
        DynamicImage::ImageRgba16(_) | DynamicImage::ImageRgba32F(_) => {
            composite_on_white(&image.to_rgba8())
        }
        other => other.to_rgb8(),
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output index: first input index and fixed-point weights (Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn resample_coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    const SUPPORT: f64 = 2.0;
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    let inv_scale = 1.0 / filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            // C `(int)` truncation, then clamping, as Pillow.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let weights: Vec<f64> = (lo..hi)
                .map(|j| bicubic_kernel((j as f64 - center + 0.5) * inv_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((width, height), Image.Resampling.BICUBIC)` on an RGB image, bit-exact:
/// horizontal pass, then vertical pass, each rounding to uint8 (a pass is skipped when that side
/// keeps its size).
pub fn resize_bicubic_pil(image: &RgbImage, width_px: u32, height_px: u32) -> RgbImage {
    let mut current = image.clone();
    if width_px != image.width() {
        let coeffs = resample_coefficients(image.width(), width_px);
        current = RgbImage::from_fn(width_px, image.height(), |x, y| {
            let (lo, weights) = &coeffs[x as usize];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &w) in weights.iter().enumerate() {
                let px = image.get_pixel((lo + k) as u32, y).0;
                for c in 0..3 {
                    acc[c] += i64::from(px[c]) * i64::from(w);
                }
            }
            Rgb(acc.map(clip8))
        });
    }
    if height_px != image.height() {
        let coeffs = resample_coefficients(image.height(), height_px);
        let source = current;
        current = RgbImage::from_fn(source.width(), height_px, |x, y| {
            let (lo, weights) = &coeffs[y as usize];
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (k, &w) in weights.iter().enumerate() {
                let px = source.get_pixel(x, (lo + k) as u32).0;
                for c in 0..3 {
                    acc[c] += i64::from(px[c]) * i64::from(w);
                }
            }
            Rgb(acc.map(clip8))
        });
    }
    current
}

/// Pastes `image` centred (`left = (width - w) / 2`, `top = (height - h) / 2`) on white.
fn pad_white(image: &RgbImage, width_px: u32, height_px: u32) -> RgbImage {
    let left = (width_px - image.width()) / 2;
    let top = (height_px - image.height()) / 2;
    let mut canvas = RgbImage::from_pixel(width_px, height_px, Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, image, i64::from(left), i64::from(top));
    canvas
}

/// One image through the upstream recipe, as uint8 RGB (the float values are `u8 / 255`).
pub fn preprocess_one(image: &RgbImage, mode: PreprocessMode) -> RgbImage {
    let (new_w, new_h) = resized_size(image.width(), image.height(), mode);
    let resized = resize_bicubic_pil(image, new_w, new_h);
    match mode {
        PreprocessMode::Crop if new_h > TARGET_SIZE_PX => {
            let top = (new_h - TARGET_SIZE_PX) / 2;
            image::imageops::crop_imm(&resized, 0, top, new_w, TARGET_SIZE_PX).to_image()
        }
        PreprocessMode::Crop => resized,
        PreprocessMode::Pad => pad_white(&resized, TARGET_SIZE_PX, TARGET_SIZE_PX),
    }
}

/// Preprocesses in-memory RGB images into one `[N, 3, H, W]` batch.
pub fn preprocess_rgb(
    images: &[RgbImage],
    mode: PreprocessMode,
) -> Result<Preprocessed, PreprocessError> {
    if images.is_empty() {
        return Err(PreprocessError::NoImages);
    }
    let mut processed = Vec::with_capacity(images.len());
    for (index, image) in images.iter().enumerate() {
        let (w, h) = resized_size(image.width(), image.height(), mode);
        if w == 0 || h == 0 || image.width() == 0 || image.height() == 0 {
            return Err(PreprocessError::TooThin {
                index,
                width_px: image.width(),
                height_px: image.height(),
            });
        }
        processed.push(preprocess_one(image, mode));
    }
    let max_w = processed.iter().map(RgbImage::width).max().unwrap_or(0);
    let max_h = processed.iter().map(RgbImage::height).max().unwrap_or(0);
    let (width, height) = (max_w as usize, max_h as usize);
    let mut values = Vec::with_capacity(processed.len() * 3 * height * width);
    for image in &processed {
        let image = if image.dimensions() == (max_w, max_h) {
            image.clone()
        } else {
            pad_white(image, max_w, max_h)
        };
        for c in 0..3 {
            values.extend(image.pixels().map(|p| f32::from(p.0[c]) / 255.0));
        }
    }
    Ok(Preprocessed {
        shape: [processed.len(), 3, height, width],
        values,
    })
}

/// Preprocesses decoded images of any colour type (RGBA composited onto white).
pub fn preprocess_images(
    images: &[DynamicImage],
    mode: PreprocessMode,
) -> Result<Preprocessed, PreprocessError> {
    let rgb: Vec<RgbImage> = images.iter().map(to_rgb).collect();
    preprocess_rgb(&rgb, mode)
}

/// Upstream `load_and_preprocess_images(paths, mode)`: opens, converts and preprocesses image files.
pub fn load_and_preprocess_images(
    paths: &[impl AsRef<Path>],
    mode: PreprocessMode,
) -> Result<Preprocessed, PreprocessError> {
    let rgb = paths
        .iter()
        .map(|path| {
            let path = path.as_ref();
            image::open(path)
                .map(|image| to_rgb(&image))
                .map_err(|source| PreprocessError::Load {
                    path: path.to_path_buf(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    preprocess_rgb(&rgb, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_matches_keys_cubic() {
        assert_eq!(bicubic_kernel(0.0), 1.0);
        assert_eq!(bicubic_kernel(1.0), 0.0);
        assert_eq!(bicubic_kernel(2.0), 0.0);
        // a = -0.5 at 0.5: (1.5 * 0.5 - 2.5) * 0.25 + 1 = 0.5625; at 1.5: -0.0625.
        assert!((bicubic_kernel(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic_kernel(-1.5) + 0.0625).abs() < 1e-12);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (n_in, n_out) in [(1920, 518), (480, 392), (23, 50), (5, 5)] {
            for (_, w) in resample_coefficients(n_in, n_out) {
                let total: i32 = w.iter().sum();
                assert!(
                    (total - (1 << PRECISION_BITS)).abs() <= w.len() as i32,
                    "{n_in}->{n_out}: {total}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let image = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 30) as u8, (y * 50) as u8, 7]));
        assert_eq!(resize_bicubic_pil(&image, 7, 5), image);
    }

    #[test]
    fn white_composite_extremes() {
        let image = RgbaImage::from_fn(3, 1, |x, _| {
            image::Rgba([10, 200, 90, [0, 255, 128][x as usize]])
        });
        let out = composite_on_white(&image);
        assert_eq!(
            out.get_pixel(0, 0).0,
            [255, 255, 255],
            "transparent -> white"
        );
        assert_eq!(out.get_pixel(1, 0).0, [10, 200, 90], "opaque -> unchanged");
        // Half alpha: about the mean of the colour and white.
        let half = out.get_pixel(2, 0).0;
        for (got, src) in half.iter().zip([10u8, 200, 90]) {
            let want = (f32::from(src) * 128.0 + 255.0 * 127.0) / 255.0;
            assert!((f32::from(*got) - want).abs() <= 1.0, "{got} vs {want}");
        }
    }
}
