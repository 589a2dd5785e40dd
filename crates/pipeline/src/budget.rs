//! Memory budget: `model.max_memory_gb` turns into a window size and a DPT frame chunk through
//! `vggt::planner`, before any frame is read.
//!
//! The planner's formula (weights + inputs + outputs + DINO + kept aggregator layers + the largest
//! head's working set, see `vggt::planner`) is evaluated in the configured `model.precision`
//! (half-precision aggregator, float32 heads), with the configured device's attention kind and
//! memory-pool slack, for the model input of the real frames: the input's frame size (first
//! frame of a file source, the capture size of a camera) through crop-mode preprocessing at
//! `model.image_width` (518 x 392 for 640 x 480 frames at 518). When the size cannot be read
//! beforehand, a square `image_width x image_width` input is planned: crop-mode preprocessing
//! never produces a taller image, so every real input fits. The configured `window.size` is an
//! upper bound; the planner may only lower it.

use std::path::Path;

use vggt::planner::{plan_with, Plan, PlanError, PlanOptions};
use vggt::VggtConfig;

use crate::config::{DaemonConfig, PredictorKind};
use crate::source::{InputKind, SourceOptions};

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The model config file is unreadable or invalid.
    #[error("model config {path}: {source}")]
    ModelConfig {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: vggt::config::ConfigError,
    },
    /// The planner found no window that fits.
    #[error("model.max_memory_gb = {budget_gb}: {source}")]
    Plan {
        /// The configured budget.
        budget_gb: f64,
        /// The planner's reason.
        source: PlanError,
    },
    /// The budget fits fewer frames than windows must share with each other.
    #[error(
        "model.max_memory_gb = {budget_gb} fits windows of {fits} frames, but window.overlap is {overlap}; \
         raise the budget or lower window.overlap"
    )]
    TooSmallForOverlap {
        /// The configured budget.
        budget_gb: f64,
        /// Largest window that fits.
        fits: usize,
        /// Configured overlap.
        overlap: usize,
    },
}

/// Width and height of the input's frames, when they can be known before the run: the first
/// readable frame of a file source (opened and closed again), the capture size of a camera.
pub fn input_frame_size(kind: &InputKind, config: &DaemonConfig) -> Option<(u32, u32)> {
    match kind {
        // The remote camera's size is known with its first image.
        InputKind::Ros2(_) => return None,
        InputKind::Camera(_) => {
            return Some((config.input.camera_width, config.input.camera_height))
        }
        _ => {}
    }
    let options = SourceOptions {
        folder_fps: config.input.folder_fps,
        camera_width: config.input.camera_width,
        camera_height: config.input.camera_height,
        camera_fps: config.input.camera_fps,
        with_depth: false,
        backoff: config.input.reconnect_backoff(),
        topic: config.input.topic.clone(),
        ros2: config.ros2.clone(),
        stop: Default::default(),
    };
    let mut source = crate::source::open_source(kind, &options).ok()?;
    // A few corrupt frames at the start do not hide the size of the first good one.
    (0..8)
        .map_while(|_| source.next_frame())
        .find_map(Result::ok)
        .map(|frame| frame.image.dimensions())
}

/// The model input (height, width) for frames of `frame_size` at `image_width`, or the square
/// worst case when the size is unknown.
pub fn model_input_hw(frame_size: Option<(u32, u32)>, image_width: u32) -> (usize, usize) {
    let (width, height) = frame_size.map_or((image_width, image_width), |(w, h)| {
        vggt::preprocess::output_size_to(w, h, vggt::preprocess::PreprocessMode::Crop, image_width)
    });
    (height as usize, width as usize)
}

/// The plan for `config` on `input`, or `None` when no budget is set or the predictor is not
/// VGGT.
pub fn plan_for(config: &DaemonConfig, input: &InputKind) -> Result<Option<Plan>, BudgetError> {
    let model = &config.model;
    if model.max_memory_gb.is_none() || model.predictor != PredictorKind::Vggt {
        return Ok(None);
    }
    let frame_size = input_frame_size(input, config);
    if frame_size.is_none() {
        tracing::warn!(
            "frame size of the input unknown before the run: planning for square {0}x{0} model inputs",
            model.image_width
        );
    }
    plan_for_input(config, model_input_hw(frame_size, model.image_width))
}

/// The plan for `config` with model inputs of `image_hw` (height, width), or `None` when no
/// budget is set or the predictor is not VGGT.
pub fn plan_for_input(
    config: &DaemonConfig,
    image_hw: (usize, usize),
) -> Result<Option<Plan>, BudgetError> {
    let model = &config.model;
    let Some(budget_gb) = model.max_memory_gb else {
        return Ok(None);
    };
    if model.predictor != PredictorKind::Vggt {
        return Ok(None);
    }
    let vggt_config = match model.model_config.as_deref() {
        Some(path) => read_model_config(path)?,
        None => VggtConfig::vggt_1b(),
    };
    let budget_bytes = (budget_gb * f64::from(1u32 << 30)) as usize;
    let options = PlanOptions {
        max_window: config.window.size,
        neighbours: model.attention_k,
        skip_point_head: !model.point_head,
        ..PlanOptions::for_device(model.device, budget_bytes)
    };
    let plan = plan_with(
        budget_bytes,
        image_hw,
        model.precision,
        &vggt_config,
        &options,
    )
    .map_err(|source| BudgetError::Plan { budget_gb, source })?;
    if plan.window_size <= config.window.overlap {
        return Err(BudgetError::TooSmallForOverlap {
            budget_gb,
            fits: plan.window_size,
            overlap: config.window.overlap,
        });
    }
    Ok(Some(plan))
}

/// Lowers `config.window.size` to what the plan fits, logging the decision.
pub fn apply(config: &mut DaemonConfig, plan: &Plan) {
    tracing::info!(
        window_size = plan.window_size,
        dpt_frames_chunk = plan.dpt_frames_chunk,
        image_hw = ?plan.image_hw,
        precision = %config.model.precision,
        device = %config.model.device,
        estimate_gib = plan.estimate.total_bytes as f64 / f64::from(1u32 << 30),
        "memory budget planned"
    );
    if plan.window_size < config.window.size {
        tracing::warn!(
            configured = config.window.size,
            planned = plan.window_size,
            "window.size lowered to fit model.max_memory_gb"
        );
        config.window.size = plan.window_size;
    }
}

fn read_model_config(path: &Path) -> Result<VggtConfig, BudgetError> {
    VggtConfig::from_json_file(path).map_err(|source| BudgetError::ModelConfig {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vggt_config(budget_gb: Option<f64>) -> DaemonConfig {
        let mut config = DaemonConfig::default();
        config.model.predictor = PredictorKind::Vggt;
        config.model.max_memory_gb = budget_gb;
        config.window.size = 64;
        config
    }

    const SQUARE: (usize, usize) = (518, 518);

    #[test]
    fn no_budget_means_no_plan() {
        assert!(plan_for_input(&vggt_config(None), SQUARE)
            .expect("no error")
            .is_none());
    }

    #[test]
    fn smaller_budgets_give_smaller_windows_and_the_config_is_capped() {
        // VGGT-1B at 518 x 518 in float32: the weights alone are ~4.4 GiB.
        let large = plan_for_input(&vggt_config(Some(24.0)), SQUARE)
            .expect("fits")
            .expect("plan");
        let small = plan_for_input(&vggt_config(Some(8.0)), SQUARE)
            .expect("fits")
            .expect("plan");
        assert!(
            small.window_size < large.window_size,
            "{small:?} vs {large:?}"
        );
        assert!(large.window_size <= 64, "never above the configured size");
        let mut config = vggt_config(Some(8.0));
        apply(&mut config, &small);
        assert_eq!(config.window.size, small.window_size);
        assert!(small.estimate.total_bytes <= small.budget_bytes);
    }

    #[test]
    fn a_budget_below_the_weights_is_a_clear_error() {
        let err =
            plan_for_input(&vggt_config(Some(1.0)), SQUARE).expect_err("1 GiB cannot hold VGGT-1B");
        assert!(err.to_string().contains("max_memory_gb = 1"), "{err}");
    }

    #[test]
    fn the_configured_precision_and_the_real_aspect_are_planned() {
        let mut config = vggt_config(Some(8.0));
        config.window.size = 256;
        let f32_square = plan_for_input(&config, SQUARE)
            .expect("fits")
            .expect("plan");
        assert_eq!(f32_square.precision, vggt::Precision::F32);
        config.model.precision = vggt::Precision::Bf16;
        let bf16_square = plan_for_input(&config, SQUARE)
            .expect("fits")
            .expect("plan");
        assert_eq!(bf16_square.precision, vggt::Precision::Bf16);
        assert!(
            bf16_square.window_size > f32_square.window_size,
            "bf16 {bf16_square:?} vs f32 {f32_square:?}"
        );
        // 640 x 480 frames at 518 are 518 x 392 model inputs: more frames fit than square ones.
        let hw = model_input_hw(Some((640, 480)), 518);
        assert_eq!(hw, (392, 518));
        let bf16_landscape = plan_for_input(&config, hw).expect("fits").expect("plan");
        assert_eq!(bf16_landscape.image_hw, (392, 518));
        assert!(bf16_landscape.window_size > bf16_square.window_size);
        // Portrait frames are centre-cropped to square inputs; an unknown size plans square.
        assert_eq!(model_input_hw(Some((480, 640)), 518), SQUARE);
        assert_eq!(model_input_hw(None, 518), SQUARE);
    }

    #[test]
    fn a_gpu_device_plans_its_pool_slack_and_unfused_attention() {
        let mut config = vggt_config(Some(8.0));
        config.model.precision = vggt::Precision::Bf16;
        config.window.size = 256;
        let cpu = plan_for_input(&config, (392, 518))
            .expect("fits")
            .expect("plan");
        config.model.device = vggt::Device::Wgpu(None);
        let gpu = plan_for_input(&config, (392, 518))
            .expect("fits")
            .expect("plan");
        assert_eq!(cpu.estimate.pool_bytes, 0);
        assert_eq!(
            gpu.estimate.pool_bytes,
            vggt::planner::device_pool_bytes(vggt::Device::Wgpu(None), 8 << 30)
        );
        assert!(gpu.estimate.pool_bytes >= 8 << 20, "{gpu:?}");
        assert!(gpu.window_size < cpu.window_size, "{gpu:?} vs {cpu:?}");
        config.model.device = vggt::Device::Cuda(0);
        let cuda = plan_for_input(&config, (392, 518))
            .expect("fits")
            .expect("plan");
        // cubecl's CUDA pages are a quarter of the card: 2 GiB pages and their smaller pools.
        assert_eq!(
            cuda.estimate.pool_bytes,
            vggt::planner::subslice_pool_bytes(2 << 30)
        );
    }

    #[test]
    fn the_frame_size_of_an_image_folder_is_read_before_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..2 {
            image::RgbImage::new(64, 48)
                .save(dir.path().join(format!("{i:03}.png")))
                .expect("write frame");
        }
        let kind = InputKind::detect(dir.path()).expect("folder");
        assert_eq!(
            input_frame_size(&kind, &DaemonConfig::default()),
            Some((64, 48))
        );
        let camera = InputKind::Camera("/dev/video9".into());
        let config = DaemonConfig::default();
        assert_eq!(
            input_frame_size(&camera, &config),
            Some((config.input.camera_width, config.input.camera_height))
        );
    }
}
