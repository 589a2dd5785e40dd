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
use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use nalgebra::{Isometry3, Matrix3, Rotation3, Translation3, UnitQuaternion};
use submap::prediction::{
    FramePrediction, Intrinsics, Map2, PredictError, Predictor, WindowFrame, WindowPrediction,
};
use vggt::memory::{DeviceMemory, PhaseRecorder};
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
    /// The checkpoint does not match VGGT-1B, and no model config was given.
    #[error("{source}\n  hint: this is not a VGGT-1B checkpoint; for a model of other dimensions pass --model-config CONFIG.json (model.model_config)")]
    NotVggt1b {
        /// The mismatch, with every key.
        source: vggt::checkpoint::CheckpointError,
    },
    /// The input width does not suit the model.
    #[error("model.image_width {width} is not a positive multiple of the patch size {patch}")]
    BadWidth {
        /// Configured width.
        width: u32,
        /// Patch size of the model.
        patch: usize,
    },
    /// The device cannot be used: backend not built, driver or adapter missing, precision
    /// unsupported (the message names what to install or change).
    #[error(transparent)]
    Device(vggt::DeviceError),
}

/// The model's device memory over a run (cubecl's memory pools on `cuda` / `wgpu`), shared
/// between the predictor, which records every window, and `summary.json`. Empty on the CPU.
///
/// cubecl keeps one set of pools per stream and one stream per thread: the weights live in the
/// pools of the thread that loaded them, a window's tensors in those of the inference thread.
/// Totals here are the loading thread's bytes (read once, after loading: nothing else is
/// allocated there) plus the inference thread's, read at every phase boundary; "back to the
/// baseline" compares the inference thread's bytes in use after a window with those before the
/// first one.
#[derive(Debug, Clone, Default)]
pub struct ModelMemory(Arc<Mutex<ModelMemoryState>>);

#[derive(Debug, Default)]
struct ModelMemoryState {
    summary: Option<DeviceMemorySummary>,
    planned_bytes: Option<u64>,
    /// The loading thread's pools (the weights).
    weights: DeviceMemory,
    /// The inference thread's bytes in use before its first window.
    run_baseline: Option<u64>,
}

/// Device memory of the model, as `summary.json` reports it (`device_memory`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DeviceMemorySummary {
    /// The device (`wgpu:0: llvmpipe (...)`).
    pub device: String,
    /// Bytes in use with the weights loaded, before the first window.
    pub baseline_in_use_bytes: u64,
    /// Bytes reserved by the pools with the weights loaded.
    pub baseline_reserved_bytes: u64,
    /// Highest bytes in use seen at a phase boundary.
    pub peak_in_use_bytes: u64,
    /// Highest bytes reserved by the pools (their high-water mark).
    pub peak_reserved_bytes: u64,
    /// Highest padding bytes seen at a phase boundary.
    pub peak_padding_bytes: u64,
    /// The memory planner's estimate when `model.max_memory_gb` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned_bytes: Option<u64>,
    /// Windows run.
    pub windows: u64,
    /// Windows after which more bytes were in use than at the baseline (a leak; should be 0).
    pub windows_above_baseline: u64,
    /// Bytes in use after the last window.
    pub last_in_use_bytes: u64,
}

impl ModelMemory {
    /// The summary so far; `None` until a device with memory accounting recorded a baseline.
    pub fn summary(&self) -> Option<DeviceMemorySummary> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.summary.clone().map(|mut summary| {
            summary.planned_bytes = state.planned_bytes;
            summary
        })
    }

    /// Notes the planner's estimate.
    pub fn set_planned_bytes(&self, bytes: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .planned_bytes = Some(bytes);
    }

    /// The loading thread's pools after loading (the weights).
    fn start(&self, device: &str, weights: DeviceMemory) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.weights = weights;
        state.summary = Some(DeviceMemorySummary {
            device: device.to_owned(),
            baseline_in_use_bytes: weights.in_use_bytes,
            baseline_reserved_bytes: weights.reserved_bytes,
            peak_in_use_bytes: weights.in_use_bytes,
            peak_reserved_bytes: weights.reserved_bytes,
            peak_padding_bytes: weights.padding_bytes,
            last_in_use_bytes: weights.in_use_bytes,
            ..Default::default()
        });
    }

    /// Records one window from the inference thread's pools: before it, at its phase
    /// boundaries, after it. Returns the totals (weights included) of the baseline, the peak in
    /// use, the peak reserved and the bytes in use after the window.
    fn window(
        &self,
        before: DeviceMemory,
        rows: &[DeviceMemory],
        after: DeviceMemory,
    ) -> Option<[u64; 4]> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let weights = state.weights;
        let run_baseline = *state.run_baseline.get_or_insert(before.in_use_bytes);
        let summary = state.summary.as_mut()?;
        if summary.windows == 0 {
            summary.baseline_in_use_bytes = weights.in_use_bytes + run_baseline;
            summary.baseline_reserved_bytes = weights.reserved_bytes + before.reserved_bytes;
        }
        let (mut peak_in_use, mut peak_reserved) = (0, 0);
        for row in rows.iter().chain([&before, &after]) {
            peak_in_use = peak_in_use.max(weights.in_use_bytes + row.in_use_bytes);
            peak_reserved = peak_reserved.max(weights.reserved_bytes + row.reserved_bytes);
            summary.peak_padding_bytes = summary
                .peak_padding_bytes
                .max(weights.padding_bytes + row.padding_bytes);
        }
        summary.peak_in_use_bytes = summary.peak_in_use_bytes.max(peak_in_use);
        summary.peak_reserved_bytes = summary.peak_reserved_bytes.max(peak_reserved);
        summary.windows += 1;
        summary.last_in_use_bytes = weights.in_use_bytes + after.in_use_bytes;
        if after.in_use_bytes > run_baseline {
            summary.windows_above_baseline += 1;
        }
        Some([
            summary.baseline_in_use_bytes,
            peak_in_use,
            peak_reserved,
            summary.last_in_use_bytes,
        ])
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    fn memory(in_use: u64, reserved: u64) -> DeviceMemory {
        DeviceMemory {
            in_use_bytes: in_use,
            padding_bytes: 0,
            reserved_bytes: reserved,
        }
    }

    #[test]
    fn totals_add_the_weights_and_a_leak_is_counted() {
        let report = ModelMemory::default();
        assert!(
            report.summary().is_none(),
            "nothing before a device baseline"
        );
        report.start("wgpu:0", memory(100, 128));
        report.set_planned_bytes(1000);
        let rows = [memory(40, 64), memory(70, 64)];
        assert_eq!(
            report.window(memory(0, 0), &rows, memory(0, 64)),
            Some([100, 170, 192, 100])
        );
        // The second window leaves 5 bytes behind.
        report.window(memory(0, 64), &rows, memory(5, 64));
        let summary = report.summary().expect("summary");
        assert_eq!(summary.baseline_in_use_bytes, 100);
        assert_eq!(summary.peak_in_use_bytes, 170);
        assert_eq!(summary.peak_reserved_bytes, 192);
        assert_eq!(summary.windows, 2);
        assert_eq!(summary.windows_above_baseline, 1);
        assert_eq!(summary.last_in_use_bytes, 105);
        assert_eq!(summary.planned_bytes, Some(1000));
    }
}

/// VGGT on a burn backend.
#[derive(Debug)]
pub struct VggtPredictor<B: Backend> {
    model: Vggt<B>,
    device: B::Device,
    image_width: u32,
    point_head: bool,
    feature_neighbours: Option<vggt::model::FeatureNeighbours>,
    memory: Option<ModelMemory>,
}

impl<B: Backend> VggtPredictor<B> {
    /// Builds the model from `model_config` (VGGT-1B when `None`) and loads `weights` strictly.
    pub fn load(
        model_config: Option<&Path>,
        weights: &Path,
        image_width: u32,
        point_head: bool,
        precision: vggt::Precision,
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
        )
        .map_err(|e| match e {
            e @ vggt::checkpoint::CheckpointError::Incompatible { .. }
                if model_config.is_none() =>
            {
                VggtSetupError::NotVggt1b { source: e }
            }
            e => VggtSetupError::Checkpoint(e),
        })?;
        Ok(Self {
            model,
            device,
            image_width,
            point_head,
            feature_neighbours: None,
            memory: None,
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

    /// Records the device memory of every window into `memory` (on devices with memory
    /// accounting: `cuda`, `wgpu`); the baseline is what is in use now, with the weights loaded.
    pub fn with_memory_report(mut self, memory: ModelMemory, device_name: &str) -> Self {
        let _ = B::sync(&self.device);
        if let Some(baseline) = vggt::memory::device_probe(&self.device).and_then(|mut p| p()) {
            tracing::info!(
                in_use_mib = mib(baseline.in_use_bytes),
                reserved_mib = mib(baseline.reserved_bytes),
                "device memory with the weights loaded"
            );
            memory.start(device_name, baseline);
            self.memory = Some(memory);
        }
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Logs the model's per-phase time and memory for one window (DEBUG; host bytes come from the
/// counting allocator `vggtd` installs, device bytes from the backend when it reports them:
/// in use, padding, reserved).
fn log_phases(recorder: &PhaseRecorder) {
    for row in &recorder.phases {
        tracing::debug!(
            phase = %row.phase,
            elapsed_ms = row.elapsed.as_secs_f64() * 1e3,
            host_live_mib = mib(row.live_bytes as u64),
            host_peak_mib = mib(row.peak_bytes as u64),
            device_in_use_mib = row.device.map(|d| mib(d.in_use_bytes)),
            device_padding_mib = row.device.map(|d| mib(d.padding_bytes)),
            device_reserved_mib = row.device.map(|d| mib(d.reserved_bytes)),
            "model phase"
        );
    }
}

impl<B: Backend> VggtPredictor<B> {
    /// After a window's outputs are on the host: the device's bytes in use against the
    /// baseline, and the window's peaks, into the run's [`ModelMemory`].
    fn record_window_memory(
        &self,
        before: Option<DeviceMemory>,
        recorder: &mut PhaseRecorder,
        frames: usize,
    ) {
        let (Some(memory), Some(before)) = (&self.memory, before) else {
            return;
        };
        let _ = B::sync(&self.device);
        let Some(after) = recorder.device_now() else {
            return;
        };
        let rows: Vec<DeviceMemory> = recorder.phases.iter().filter_map(|p| p.device).collect();
        let Some([baseline, peak_in_use, peak_reserved, after_in_use]) =
            memory.window(before, &rows, after)
        else {
            return;
        };
        tracing::info!(
            frames,
            peak_in_use_mib = mib(peak_in_use),
            peak_reserved_mib = mib(peak_reserved),
            after_in_use_mib = mib(after_in_use),
            baseline_in_use_mib = mib(baseline),
            "window device memory"
        );
        if after_in_use > baseline {
            tracing::warn!(
                above_baseline_bytes = after_in_use - baseline,
                "device memory in use did not return to its baseline after the window"
            );
        }
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
        // The inference thread's device memory before anything of this window exists.
        let before = match &self.memory {
            Some(_) => {
                let _ = B::sync(&self.device);
                vggt::memory::device_probe(&self.device).and_then(|mut probe| probe())
            }
            None => None,
        };
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
        if let (Some(_), Some(probe)) = (&self.memory, vggt::memory::device_probe(&self.device)) {
            recorder = recorder.with_device_probe(probe);
        }
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
        // Nothing of the window may stay on the device when its memory is read.
        drop((output.pose_enc, output.pose_enc_list, output.intermediates));
        self.record_window_memory(before, &mut recorder, s);
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
                    Box::new((
                        Map2 {
                            width: w,
                            height: h,
                            data: xyz,
                        },
                        map(c),
                    ))
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
            vggt::Precision::F32,
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
                vggt::Precision::F32,
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
