//! Memory budget: `model.max_memory_gb` turns into a window size and a DPT frame chunk through
//! `vggt::planner`, before any frame is read.
//!
//! The planner's formula (weights + inputs + outputs + DINO + kept aggregator layers + the largest
//! head's working set, see `vggt::planner`) is evaluated for a square `image_width x image_width`
//! input: crop-mode preprocessing never produces a taller image, so every real input fits. The
//! configured `window.size` is an upper bound; the planner may only lower it.

use std::path::Path;

use vggt::planner::{plan_with, Plan, PlanError, PlanOptions, Precision};
use vggt::VggtConfig;

use crate::config::{DaemonConfig, PredictorKind};

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

/// The plan for `config`, or `None` when no budget is set or the predictor is not VGGT.
pub fn plan_for(config: &DaemonConfig) -> Result<Option<Plan>, BudgetError> {
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
    let side = model.image_width as usize;
    let options = PlanOptions {
        max_window: config.window.size,
        neighbours: model.attention_k,
        skip_point_head: !model.point_head,
        ..PlanOptions::default()
    };
    let budget_bytes = (budget_gb * f64::from(1u32 << 30)) as usize;
    let plan = plan_with(
        budget_bytes,
        (side, side),
        Precision::F32,
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

    #[test]
    fn no_budget_means_no_plan() {
        assert!(plan_for(&vggt_config(None)).expect("no error").is_none());
    }

    #[test]
    fn smaller_budgets_give_smaller_windows_and_the_config_is_capped() {
        // VGGT-1B at 518 x 518 in float32: the weights alone are ~4.4 GiB.
        let large = plan_for(&vggt_config(Some(24.0)))
            .expect("fits")
            .expect("plan");
        let small = plan_for(&vggt_config(Some(8.0)))
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
        let err = plan_for(&vggt_config(Some(1.0))).expect_err("1 GiB cannot hold VGGT-1B");
        assert!(err.to_string().contains("max_memory_gb = 1"), "{err}");
    }
}
