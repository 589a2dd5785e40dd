//! The real predictor: VGGT through `crates/vggt`.
//!
//! Each window's frames are resized like upstream's crop mode, with the target width taken
//! from the config (`model.image_width`, 518 for VGGT-1B): width W, height
//! `round_half_even(h * W / w / 14) * 14`, centre-cropped to at most W, Pillow-exact bicubic.
//! The model's extrinsics are `cam_from_window` (the window gauge is the first frame's camera),
//! its intrinsics are at the resized resolution, as are depth and confidence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use nalgebra::{Isometry3, Matrix3, Rotation3, Translation3, UnitQuaternion};
use submap::prediction::{
    FramePrediction, Intrinsics, Map2, PredictError, Predictor, WindowFrame, WindowPrediction,
};
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
}

impl<B: Backend> VggtPredictor<B> {
    /// Builds the model from `model_config` (VGGT-1B when `None`) and loads `weights` strictly.
    pub fn load(
        model_config: Option<&Path>,
        weights: &Path,
        image_width: u32,
        point_head: bool,
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
        let model =
            vggt::checkpoint::load_into(model, weights, &vggt::checkpoint::LoadOptions::default())?;
        Ok(Self {
            model,
            device,
            image_width,
            point_head,
        })
    }

    fn input_image(&self, image: &image::RgbImage) -> image::RgbImage {
        let width = self.image_width;
        let patch = vggt::preprocess::SIDE_MULTIPLE_PX;
        let ratio = f64::from(width) / f64::from(image.width().max(1));
        let patches = (f64::from(image.height()) * ratio / f64::from(patch))
            .round_ties_even()
            .max(1.0);
        let height = patches as u32 * patch;
        let resized = vggt::preprocess::resize_bicubic_pil(image, width, height);
        if height > width {
            let top = (height - width) / 2;
            image::imageops::crop_imm(&resized, 0, top, width, width).to_image()
        } else {
            resized
        }
    }
}

fn to_vec<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, PredictError> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| PredictError::Failed(format!("reading model output: {e:?}")))
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
        let inputs: Vec<image::RgbImage> =
            frames.iter().map(|f| self.input_image(&f.image)).collect();
        let (width, height) = inputs[0].dimensions();
        if inputs.iter().any(|i| i.dimensions() != (width, height)) {
            return Err(PredictError::BadWindow(
                "frames of one window differ in size".into(),
            ));
        }
        let (w, h, s) = (width as usize, height as usize, frames.len());
        let mut values = Vec::with_capacity(s * 3 * h * w);
        for image in &inputs {
            for c in 0..3 {
                values.extend(image.pixels().map(|p| f32::from(p.0[c]) / 255.0));
            }
        }
        // [B = 1, S, 3, H, W] in [0, 1].
        let images = Tensor::<B, 5>::from_data(
            burn::tensor::TensorData::new(values, [1, s, 3, h, w]),
            &self.device,
        );
        let options = ForwardOptions {
            neighbours: neighbours.map(<[Vec<usize>]>::to_vec),
            record_intermediates: false,
            skip_point_head: !self.point_head,
        };
        let output = self
            .model
            .forward(images, &options)
            .map_err(|e| PredictError::Failed(e.to_string()))?;
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
