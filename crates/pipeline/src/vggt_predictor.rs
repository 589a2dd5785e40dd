//! The real predictor: VGGT through `crates/vggt`.
//!
//! Each window's frames go through upstream's crop-mode preprocessing
//! ([`vggt::preprocess::preprocess_batch_to`]) with the target width taken from the config
//! (`model.image_width`, 518 for VGGT-1B): width W, height `round_half_even(h * W / w / 14) * 14`,
//! centre-cropped to at most W, Pillow-exact bicubic; at W = 518 the model input is exactly
//! upstream's `load_and_preprocess_images(..., mode="crop")` tensor.
//!
//! The model's extrinsics are `cam_from_window` (the window gauge is the first frame's camera).
//! Its intrinsics, depth and confidence live in the pixel frame of the preprocessed image (after
//! resize and crop). That preprocessed image is what the back-end receives as the frame's image,
//! so image, intrinsics and maps share one pixel frame and the crop offset needs no correction;
//! [`vggt::preprocess::InputGeometry`] relates that frame to the source frame when needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use nalgebra::{Isometry3, Matrix3, Rotation3, Translation3, UnitQuaternion};
use submap::prediction::{
    FramePrediction, Intrinsics, Map2, PredictError, Predictor, WindowFrame, WindowPrediction,
};
use vggt::memory::PhaseRecorder;
use vggt::{ForwardOptions, Vggt, VggtConfig};

/// Error while setting up the VGGT predictor (all before any frame is read).
#[derive(Debug, thiserror::Error)]
pub enum VggtSetupError {
    /// No weights were given anywhere.
    #[error("no VGGT weights: pass --weights FILE, set VGGTD_WEIGHTS, or set model.weights (`vggtd fetch-weights` downloads VGGT-1B)")]
    NoWeights,
    /// The model config file is unreadable or invalid.
    #[error("model config {path}: {source}")]
    ModelConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: vggt::config::ConfigError,
    },
    /// The checkpoint is missing, unreadable or does not match the model (names file and keys).
    #[error(transparent)]
    Checkpoint(#[from] vggt::checkpoint::CheckpointError),
    /// The input width does not suit the model.
    #[error("model.image_width {width} is not a positive multiple of the patch size {patch}")]
    BadWidth {
        /// Configured width.
        width: u32,
        /// Patch size of the model.
        patch: usize,
    },
    /// CUDA was asked for without the `cuda` feature.
    #[error("device cuda needs a build with `--features cuda`")]
    NoCuda,
}

/// VGGT on a burn backend.
#[derive(Debug)]
pub struct VggtPredictor<B: Backend> {
    model: Vggt<B>,
    device: B::Device,
    image_width: u32,
    point_head: bool,
    feature_neighbours: Option<vggt::model::FeatureNeighbours>,
}

impl<B: Backend> VggtPredictor<B> {
    /// Builds the model from `model_config` (VGGT-1B when `None`) and loads `weights` strictly.
    pub fn load(
        model_config: Option<&Path>,
        weights: &Path,
        image_width: u32,
        point_head: bool,
        precision: vggt::checkpoint::Precision,
        device: B::Device,
    ) -> Result<Self, VggtSetupError> {
        let config = match model_config {
            Some(path) => {
                VggtConfig::from_json_file(path).map_err(|source| VggtSetupError::ModelConfig {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => VggtConfig::vggt_1b(),
        };
        let patch = config.patch_size;
        if image_width == 0 || !(image_width as usize).is_multiple_of(patch) {
            return Err(VggtSetupError::BadWidth {
                width: image_width,
                patch,
            });
        }
        let model = Vggt::<B>::new(&config, &device);
        let model = vggt::checkpoint::load_into(
            model,
            weights,
            &vggt::checkpoint::LoadOptions::for_precision(precision),
        )?;
        Ok(Self {
            model,
            device,
            image_width,
            point_head,
            feature_neighbours: None,
        })
    }
}

impl<B: Backend> VggtPredictor<B> {
    /// Lets the model choose sparse-attention neighbours from each window's DINO tokens when
    /// the window comes without neighbour lists.
    pub fn with_feature_neighbours(mut self, rule: Option<vggt::model::FeatureNeighbours>) -> Self {
        self.feature_neighbours = rule;
        self
    }

    /// Runs the DPT heads over chunks of this many frames (from the memory planner); `None`
    /// keeps the model config's chunk.
    pub fn with_dpt_frames_chunk(mut self, chunk: Option<usize>) -> Self {
        if let Some(chunk) = chunk {
            self.model.set_dpt_frames_chunk(chunk);
        }
        self
    }
}

/// The model input of a window at `image_width`: the preprocessed uint8 images (one size, what
/// the back-end receives) and the `[S, 3, H, W]` batch of `u8 / 255` values built from them.
pub fn model_input(
    frames: &[WindowFrame],
    image_width: u32,
) -> Result<(Vec<image::RgbImage>, vggt::preprocess::Preprocessed), PredictError> {
    let images: Vec<image::RgbImage> = frames.iter().map(|f| f.image.as_ref().clone()).collect();
    let inputs = vggt::preprocess::preprocess_batch_to(
        &images,
        vggt::preprocess::PreprocessMode::Crop,
        image_width,
    )
    .map_err(|e| PredictError::BadWindow(e.to_string()))?;
    let batch = vggt::preprocess::Preprocessed::from_images(&inputs);
    Ok((inputs, batch))
}

fn to_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, PredictError> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| PredictError::Failed(format!("reading model output: {e:?}")))
}

/// Logs the model's per-phase time and memory for one window (DEBUG; host bytes come from the
/// counting allocator `vggtd` installs, device bytes from the backend when it reports them).
fn log_phases(recorder: &PhaseRecorder) {
    const MIB: f64 = 1024.0 * 1024.0;
    for row in &recorder.phases {
        tracing::debug!(
            phase = %row.phase,
            elapsed_ms = row.elapsed.as_secs_f64() * 1e3,
            host_live_mib = row.live_bytes as f64 / MIB,
            host_peak_mib = row.peak_bytes as f64 / MIB,
            device_in_use_mib = row.device.map(|d| d.in_use_bytes as f64 / MIB),
            "model phase"
        );
    }
}

impl<B: Backend> Predictor for VggtPredictor<B>
where
    B::Device: Send,
    Vggt<B>: Send,
{
    fn predict(
        &mut self,
        frames: &[WindowFrame],
        neighbours: Option<&[Vec<usize>]>,
    ) -> Result<WindowPrediction, PredictError> {
        if frames.is_empty() {
            return Err(PredictError::BadWindow("empty window".into()));
        }
        let (inputs, batch) = model_input(frames, self.image_width)?;
        let [s, _, h, w] = batch.shape;
        // [B = 1, S, 3, H, W] in [0, 1].
        let images = Tensor::<B, 5>::from_data(
            burn::tensor::TensorData::new(batch.values, [1, s, 3, h, w]),
            &self.device,
        );
        let options = ForwardOptions {
            neighbours: neighbours.map(<[Vec<usize>]>::to_vec),
            record_intermediates: false,
            skip_point_head: !self.point_head,
            feature_neighbours: self.feature_neighbours,
        };
        let mut recorder = PhaseRecorder::new();
        let output = self
            .model
            .forward_profiled(images, &options, &mut recorder)
            .map_err(|e| PredictError::Failed(e.to_string()))?;
        log_phases(&recorder);
        let extrinsic = to_vec(output.extrinsic)?; // [1, S, 3, 4]
        let intrinsic = to_vec(output.intrinsic)?; // [1, S, 3, 3]
        let depth = to_vec(output.depth)?; // [1, S, H, W, 1]
        let depth_conf = to_vec(output.depth_conf)?; // [1, S, H, W]
        let points = match (output.world_points, output.world_points_conf) {
            (Some(p), Some(c)) => Some((to_vec(p)?, to_vec(c)?)), // [1, S, H, W, 3], [1, S, H, W]
            _ => None,
        };
        let pixels = h * w;
        let frames = frames
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (frame, input))| {
                let e = &extrinsic[i * 12..(i + 1) * 12];
                let rotation = Matrix3::new(
                    f64::from(e[0]),
                    f64::from(e[1]),
                    f64::from(e[2]),
                    f64::from(e[4]),
                    f64::from(e[5]),
                    f64::from(e[6]),
                    f64::from(e[8]),
                    f64::from(e[9]),
                    f64::from(e[10]),
                );
                let cam_from_window = Isometry3::from_parts(
                    Translation3::new(f64::from(e[3]), f64::from(e[7]), f64::from(e[11])),
                    UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix(&rotation)),
                );
                let k = &intrinsic[i * 9..(i + 1) * 9];
                let map = |data: &[f32]| Map2 {
                    width: w,
                    height: h,
                    data: data[i * pixels..(i + 1) * pixels].to_vec(),
                };
                let points_in_window = points.as_ref().map(|(p, c)| {
                    let xyz = p[i * pixels * 3..(i + 1) * pixels * 3]
                        .chunks_exact(3)
                        .map(|v| [v[0], v[1], v[2]])
                        .collect();
                    (
                        Map2 {
                            width: w,
                            height: h,
                            data: xyz,
                        },
                        map(c),
                    )
                });
                FramePrediction {
                    frame_id: frame.frame_id,
                    timestamp_s: frame.timestamp_s,
                    cam_from_window,
                    intrinsics: Intrinsics {
                        fx: f64::from(k[0]),
                        fy: f64::from(k[4]),
                        cx: f64::from(k[2]),
                        cy: f64::from(k[5]),
                    },
                    depth: map(&depth),
                    depth_conf: map(&depth_conf),
                    points_in_window,
                    image: Arc::new(input),
                }
            })
            .collect();
        Ok(WindowPrediction {
            frames,
            label: "vggt".into(),
        })
    }

    fn name(&self) -> &str {
        "vggt"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(width: u32, height: u32, seed: u32) -> image::RgbImage {
        image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([0u32, 1, 2].map(|c| ((x * 7 + y * 3 + c * 50 + seed * 11) % 256) as u8))
        })
    }

    fn frames(width: u32, height: u32) -> Vec<WindowFrame> {
        (0..3)
            .map(|i| WindowFrame {
                frame_id: u64::from(i),
                timestamp_s: f64::from(i),
                image: Arc::new(pattern(width, height, i)),
                depth_m: None,
            })
            .collect()
    }

    #[test]
    fn input_at_518_is_the_upstream_crop_tensor() {
        for (width, height) in [(640, 480), (480, 640), (518, 392)] {
            let frames = frames(width, height);
            let (inputs, batch) = model_input(&frames, 518).expect("input");
            let images: Vec<image::RgbImage> =
                frames.iter().map(|f| f.image.as_ref().clone()).collect();
            let upstream =
                vggt::preprocess::preprocess_rgb(&images, vggt::preprocess::PreprocessMode::Crop)
                    .expect("upstream");
            assert_eq!(batch, upstream, "{width}x{height}");
            let [_, _, h, w] = batch.shape;
            assert!(inputs
                .iter()
                .all(|i| i.dimensions() == (w as u32, h as u32)));
        }
    }

    #[test]
    fn tall_frames_are_centre_cropped_at_any_width() {
        let frames = frames(480, 640);
        let (inputs, batch) = model_input(&frames, 84).expect("input");
        // 480x640 at 84: 84 x round(112 / 14) * 14 = 112, cropped to 84 rows from row 14.
        assert_eq!(batch.shape, [3, 3, 84, 84]);
        let resized = vggt::preprocess::resize_bicubic_pil(&frames[1].image, 84, 112);
        let cropped = image::imageops::crop_imm(&resized, 0, 14, 84, 84).to_image();
        assert_eq!(inputs[1], cropped);
    }

    #[test]
    fn predictions_share_the_pixel_frame_of_the_image_the_backend_gets() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_a");
        let mut predictor = VggtPredictor::<burn::backend::Flex>::load(
            Some(&Path::new(fixtures).join("config.json")),
            &Path::new(fixtures).join("weights.safetensors"),
            84,
            false,
            vggt::checkpoint::Precision::F32,
            Default::default(),
        )
        .expect("tiny model");
        // Portrait frames: resized to 84 x 112, centre-cropped to 84 x 84.
        let prediction = predictor.predict(&frames(480, 640), None).expect("predict");
        for frame in &prediction.frames {
            assert_eq!(frame.image.dimensions(), (84, 84));
            assert_eq!((frame.depth.width, frame.depth.height), (84, 84));
            assert_eq!((frame.depth_conf.width, frame.depth_conf.height), (84, 84));
            // VGGT puts the principal point at the centre of its input image, i.e. of the crop.
            assert!(
                (frame.intrinsics.cx - 42.0).abs() < 1e-4,
                "{:?}",
                frame.intrinsics
            );
            assert!(
                (frame.intrinsics.cy - 42.0).abs() < 1e-4,
                "{:?}",
                frame.intrinsics
            );
        }
    }

    #[test]
    fn pytorch_checkpoints_load_whatever_their_extension() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
        let config = Path::new(fixtures).join("tiny_a/config.json");
        let work = tempfile::tempdir().expect("tempdir");
        let renamed = work.path().join("weights.bin");
        std::fs::copy(
            Path::new(fixtures).join("checkpoint/tiny_a_weights.pt"),
            &renamed,
        )
        .expect("copy");
        let load = |weights: &Path| {
            VggtPredictor::<burn::backend::Flex>::load(
                Some(&config),
                weights,
                84,
                false,
                vggt::checkpoint::Precision::F32,
                Default::default(),
            )
            .expect("tiny model")
        };
        let window = frames(640, 480);
        let from_pt = load(&renamed).predict(&window, None).expect("predict");
        let from_safetensors = load(&Path::new(fixtures).join("tiny_a/weights.safetensors"))
            .predict(&window, None)
            .expect("predict");
        for (a, b) in from_pt.frames.iter().zip(&from_safetensors.frames) {
            assert_eq!(a.depth.data, b.depth.data);
            assert_eq!(a.intrinsics, b.intrinsics);
        }
    }
}
