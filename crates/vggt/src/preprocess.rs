//! Image preprocessing identical to upstream `vggt/utils/load_fn.py::load_and_preprocess_images`.
//!
//! Per image: RGBA is composited onto opaque white (Pillow's integer `alpha_composite`), other
//! modes are converted to RGB; the image is resized with Pillow's BICUBIC resampler (Keys cubic,
//! a = -0.5, support widened by the scale when downscaling, 22-bit fixed-point coefficients, a
//! horizontal then a vertical pass through a uint8 intermediate), reimplemented here bit for bit;
//! values become `u8 / 255` floats. Then, with the target side T (518 upstream, the `*_to`
//! functions take any positive multiple of 14):
//! * [`PreprocessMode::Crop`]: width T, height `round_half_even(h * T / w / 14) * 14`; heights
//!   above T are centre-cropped to T (`top = (h' - T) / 2`).
//! * [`PreprocessMode::Pad`]: the longer side T, the shorter rounded the same way; then padded
//!   to T x T with white (1.0), centred (`top = (T - h) / 2`).
//!
//! A batch whose images end with different sizes (crop mode, mixed aspect ratios) is padded with
//! white to the largest height and width, centred the same way.
//!
//! [`InputGeometry`] says where a source pixel lands in the model image (scale, then offset), so
//! that intrinsics predicted at the model resolution can be related to the source image.
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
    #[error(
        "image {index} ({width_px} x {height_px}) is too thin: its short side would round to 0 px"
    )]
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
    /// Packs uint8 images of one size into `[N, 3, H, W]` floats `u8 / 255`.
    ///
    /// # Panics
    /// When the images differ in size (a bug: batches are padded to one size first).
    pub fn from_images(images: &[RgbImage]) -> Self {
        let (w, h) = images.first().map_or((0, 0), RgbImage::dimensions);
        assert!(
            images.iter().all(|i| i.dimensions() == (w, h)),
            "images of one batch differ in size"
        );
        let (width, height) = (w as usize, h as usize);
        let mut values = Vec::with_capacity(images.len() * 3 * height * width);
        for image in images {
            for c in 0..3 {
                values.extend(image.pixels().map(|p| f32::from(p.0[c]) / 255.0));
            }
        }
        Self {
            shape: [images.len(), 3, height, width],
            values,
        }
    }

    /// As a host tensor `[N, 3, H, W]`.
    pub fn to_host(&self) -> HostTensor {
        HostTensor::f32(self.shape.to_vec(), self.values.clone())
    }

    /// Uploads as a burn tensor `[N, 3, H, W]`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(self.values.clone(), self.shape), device)
    }
}

/// Python's `round` (half to even) of `side * (target / reference) / 14`, times 14, in upstream's
/// operation order.
fn scaled_side(side_px: u32, reference_px: u32, target_px: u32) -> u32 {
    let ratio = f64::from(target_px) / f64::from(reference_px);
    let patches = (f64::from(side_px) * ratio / f64::from(SIDE_MULTIPLE_PX)).round_ties_even();
    patches as u32 * SIDE_MULTIPLE_PX
}

/// Size `(width, height)` an image of `width_px x height_px` is resized to, before crop / pad,
/// for the upstream target of 518.
pub fn resized_size(width_px: u32, height_px: u32, mode: PreprocessMode) -> (u32, u32) {
    resized_size_to(width_px, height_px, mode, TARGET_SIZE_PX)
}

/// Size `(width, height)` an image of `width_px x height_px` is resized to, before crop / pad,
/// for the target side `target_px`.
pub fn resized_size_to(
    width_px: u32,
    height_px: u32,
    mode: PreprocessMode,
    target_px: u32,
) -> (u32, u32) {
    match mode {
        PreprocessMode::Pad if height_px > width_px => {
            (scaled_side(width_px, height_px, target_px), target_px)
        }
        _ => (target_px, scaled_side(height_px, width_px, target_px)),
    }
}

/// Size `(width, height)` of one preprocessed image (after crop / pad, before batch padding) at
/// the upstream target of 518.
pub fn output_size(width_px: u32, height_px: u32, mode: PreprocessMode) -> (u32, u32) {
    output_size_to(width_px, height_px, mode, TARGET_SIZE_PX)
}

/// Size `(width, height)` of one preprocessed image (after crop / pad, before batch padding) for
/// the target side `target_px`.
pub fn output_size_to(
    width_px: u32,
    height_px: u32,
    mode: PreprocessMode,
    target_px: u32,
) -> (u32, u32) {
    InputGeometry::new(width_px, height_px, mode, target_px).output_px
}

/// Where a source image lands in its preprocessed image: a source pixel coordinate `u` (pixel
/// centres at `i + 0.5`) maps to `u * scale.0 + offset_px.0` (and likewise for `v`), so source
/// intrinsics become `fx * scale.0`, `cx * scale.0 + offset_px.0`. Batch padding is not included
/// (see [`InputGeometry::with_batch_size`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputGeometry {
    /// Source size `(width, height)`.
    pub source_px: (u32, u32),
    /// Size after the bicubic resize `(width, height)`.
    pub resized_px: (u32, u32),
    /// Size of the preprocessed image `(width, height)`.
    pub output_px: (u32, u32),
    /// Resize factors `(x, y)`: resized size over source size.
    pub scale: (f64, f64),
    /// Position of the resized image's top-left corner in the output, in output pixels; negative
    /// when cropped (crop mode, tall images), positive when padded.
    pub offset_px: (f64, f64),
}

impl InputGeometry {
    /// Geometry of one image of `width_px x height_px` preprocessed for `target_px`.
    pub fn new(width_px: u32, height_px: u32, mode: PreprocessMode, target_px: u32) -> Self {
        let (w, h) = resized_size_to(width_px, height_px, mode, target_px);
        let (output_px, offset_px) = match mode {
            PreprocessMode::Crop if h > target_px => {
                ((w, target_px), (0.0, -f64::from((h - target_px) / 2)))
            }
            PreprocessMode::Crop => ((w, h), (0.0, 0.0)),
            PreprocessMode::Pad => (
                (target_px, target_px),
                (
                    f64::from(target_px.saturating_sub(w) / 2),
                    f64::from(target_px.saturating_sub(h) / 2),
                ),
            ),
        };
        Self {
            source_px: (width_px, height_px),
            resized_px: (w, h),
            output_px,
            scale: (
                f64::from(w) / f64::from(width_px.max(1)),
                f64::from(h) / f64::from(height_px.max(1)),
            ),
            offset_px,
        }
    }

    /// The same image after centred white padding to a batch of `width_px x height_px`.
    pub fn with_batch_size(self, width_px: u32, height_px: u32) -> Self {
        let left = f64::from(width_px.saturating_sub(self.output_px.0) / 2);
        let top = f64::from(height_px.saturating_sub(self.output_px.1) / 2);
        Self {
            output_px: (width_px, height_px),
            offset_px: (self.offset_px.0 + left, self.offset_px.1 + top),
            ..self
        }
    }

    /// Maps a source pixel coordinate to the output image.
    pub fn source_to_output(&self, u_px: f64, v_px: f64) -> (f64, f64) {
        (
            u_px * self.scale.0 + self.offset_px.0,
            v_px * self.scale.1 + self.offset_px.1,
        )
    }

    /// Maps an output pixel coordinate back to the source image.
    pub fn output_to_source(&self, u_px: f64, v_px: f64) -> (f64, f64) {
        (
            (u_px - self.offset_px.0) / self.scale.0,
            (v_px - self.offset_px.1) / self.scale.1,
        )
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

/// One image through the upstream recipe at 518, as uint8 RGB (the float values are `u8 / 255`).
pub fn preprocess_one(image: &RgbImage, mode: PreprocessMode) -> RgbImage {
    preprocess_one_to(image, mode, TARGET_SIZE_PX)
}

/// One image through the upstream recipe for the target side `target_px`, as uint8 RGB.
pub fn preprocess_one_to(image: &RgbImage, mode: PreprocessMode, target_px: u32) -> RgbImage {
    let (new_w, new_h) = resized_size_to(image.width(), image.height(), mode, target_px);
    let resized = resize_bicubic_pil(image, new_w, new_h);
    match mode {
        PreprocessMode::Crop if new_h > target_px => {
            let top = (new_h - target_px) / 2;
            image::imageops::crop_imm(&resized, 0, top, new_w, target_px).to_image()
        }
        PreprocessMode::Crop => resized,
        PreprocessMode::Pad => pad_white(&resized, target_px, target_px),
    }
}

/// Preprocesses in-memory RGB images into one `[N, 3, H, W]` batch at 518.
pub fn preprocess_rgb(
    images: &[RgbImage],
    mode: PreprocessMode,
) -> Result<Preprocessed, PreprocessError> {
    preprocess_rgb_to(images, mode, TARGET_SIZE_PX)
}

/// Preprocesses in-memory RGB images into one `[N, 3, H, W]` batch for the target side
/// `target_px` (a positive multiple of 14 for the model).
pub fn preprocess_rgb_to(
    images: &[RgbImage],
    mode: PreprocessMode,
    target_px: u32,
) -> Result<Preprocessed, PreprocessError> {
    Ok(Preprocessed::from_images(&preprocess_batch_to(
        images, mode, target_px,
    )?))
}

/// The uint8 images of [`preprocess_rgb_to`]'s batch, every one at the batch size (mixed sizes
/// padded with white, centred).
pub fn preprocess_batch_to(
    images: &[RgbImage],
    mode: PreprocessMode,
    target_px: u32,
) -> Result<Vec<RgbImage>, PreprocessError> {
    if images.is_empty() {
        return Err(PreprocessError::NoImages);
    }
    let mut processed = Vec::with_capacity(images.len());
    for (index, image) in images.iter().enumerate() {
        let (w, h) = resized_size_to(image.width(), image.height(), mode, target_px);
        if w == 0 || h == 0 || image.width() == 0 || image.height() == 0 {
            return Err(PreprocessError::TooThin {
                index,
                width_px: image.width(),
                height_px: image.height(),
            });
        }
        processed.push(preprocess_one_to(image, mode, target_px));
    }
    let max_w = processed.iter().map(RgbImage::width).max().unwrap_or(0);
    let max_h = processed.iter().map(RgbImage::height).max().unwrap_or(0);
    Ok(processed
        .into_iter()
        .map(|image| {
            if image.dimensions() == (max_w, max_h) {
                image
            } else {
                pad_white(&image, max_w, max_h)
            }
        })
        .collect())
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
