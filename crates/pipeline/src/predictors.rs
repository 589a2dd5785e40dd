//! Building the predictor, the keyframe selector, the window gate and the back-end from the
//! configuration.

use submap::prediction::{Predictor, WindowFrame};

use crate::config::{DaemonConfig, PredictorKind};
use crate::source::InputKind;
use crate::vggt_predictor::ModelMemory;

/// Error while building a predictor.
#[derive(Debug, thiserror::Error)]
pub enum PredictorError {
    /// Replay directory problems.
    #[error(transparent)]
    Replay(#[from] crate::record::RecordError),
    /// VGGT could not be set up (weights, model config, device).
    #[error(transparent)]
    Vggt(#[from] crate::vggt_predictor::VggtSetupError),
    /// The simulated predictor has no dataset to answer from.
    #[error("the simulated predictor needs a dataset with depth and ground truth: {0}")]
    Simulation(String),
}

/// Builds the configured predictor; weights are loaded and checked here, before any frame.
/// With a memory `plan`, the VGGT predictor runs its DPT heads in the planned frame chunks.
/// The VGGT predictor reports its device memory into `memory` (for `summary.json`).
pub fn build(
    config: &DaemonConfig,
    input: &InputKind,
    plan: Option<&vggt::planner::Plan>,
    memory: &ModelMemory,
) -> Result<Box<dyn Predictor>, PredictorError> {
    match &config.model.predictor {
        PredictorKind::Replay => {
            let dir = config.model.replay_dir.clone().unwrap_or_default();
            Ok(Box::new(crate::record::ReplayPredictor::open(&dir)?))
        }
        PredictorKind::Vggt => {
            if let Some(plan) = plan {
                memory.set_planned_bytes(plan.estimate.total_bytes as u64);
            }
            build_vggt(config, plan.map(|p| p.dpt_frames_chunk), memory)
        }
        PredictorKind::Simulated => build_simulated(config, input),
    }
}

/// Builds the keyframe selector: `true` for frames to keep.
pub fn build_keyframe_selector(
    config: &DaemonConfig,
) -> impl FnMut(&WindowFrame) -> bool + Send + 'static {
    let mut selector = submap::keyframe::KeyframeSelector::new(config.keyframes.clone());
    move |frame| match selector.push(&frame.image, frame.timestamp_s) {
        submap::keyframe::KeyframeDecision::Keyframe => true,
        submap::keyframe::KeyframeDecision::Skip(reason) => {
            tracing::trace!(frame_id = frame.frame_id, ?reason, "not a keyframe");
            false
        }
    }
}

fn build_vggt(
    config: &DaemonConfig,
    dpt_frames_chunk: Option<usize>,
    memory: &ModelMemory,
) -> Result<Box<dyn Predictor>, PredictorError> {
    use crate::vggt_predictor::VggtSetupError;
    let model = &config.model;
    if model.weights.is_none() {
        return Err(VggtSetupError::NoWeights.into());
    }
    let body = LoadVggt {
        config,
        dpt_frames_chunk,
        memory,
    };
    vggt::dispatch(model.device, model.precision, body).map_err(VggtSetupError::Device)?
}

/// Loads the VGGT predictor on the backend [`vggt::dispatch`] chose.
struct LoadVggt<'a> {
    config: &'a DaemonConfig,
    dpt_frames_chunk: Option<usize>,
    memory: &'a ModelMemory,
}

impl vggt::OnBackend for LoadVggt<'_> {
    type Output = Result<Box<dyn Predictor>, PredictorError>;

    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: B::Device,
        info: &vggt::DeviceInfo,
    ) -> Self::Output {
        use crate::vggt_predictor::{VggtPredictor, VggtSetupError};
        tracing::info!("device {}", info.name);
        for line in &info.details {
            tracing::info!("  {line}");
        }
        if info.software {
            tracing::warn!("software adapter: correct results, but far slower than any GPU");
        }
        if self.config.model.device == vggt::Device::Cpu && !vggt::cpu::uses_blas() {
            tracing::warn!(
                "no BLAS library found: the CPU runs the slower portable matrix products"
            );
        }
        let model = &self.config.model;
        let weights = model.weights.as_deref().ok_or(VggtSetupError::NoWeights)?;
        let predictor = VggtPredictor::<B>::load(
            model.model_config.as_deref(),
            weights,
            model.image_width,
            model.point_head,
            model.precision,
            device,
        )?
        .with_dpt_frames_chunk(self.dpt_frames_chunk)
        .with_feature_neighbours(feature_neighbours(model))
        .with_memory_report(self.memory.clone(), &info.name);
        Ok(Box::new(predictor))
    }
}

/// The model-side neighbour rule when `model.neighbours = "features"`: the adjacent frames, plus
/// the mutual `attention_k` most similar frames.
fn feature_neighbours(
    model: &crate::config::ModelConfig,
) -> Option<vggt::model::FeatureNeighbours> {
    let k = model.attention_k?;
    (model.neighbours == crate::config::NeighbourSource::Features).then_some(
        vggt::model::FeatureNeighbours {
            k,
            min_similarity: 0.0,
            temporal_radius: 1,
        },
    )
}

/// The simulation answers from `model.sim_dataset`, else from the input when it is a dataset.
fn build_simulated(
    config: &DaemonConfig,
    input: &InputKind,
) -> Result<Box<dyn Predictor>, PredictorError> {
    let (dir, kind) = match (&config.model.sim_dataset, input) {
        (Some(dir), _) => {
            let kind = crate::source::detect_dataset(dir).ok_or_else(|| {
                PredictorError::Simulation(format!("{} is not a TUM, 7-Scenes or EuRoC folder", dir.display()))
            })?;
            (dir.clone(), kind)
        }
        (None, InputKind::Dataset(dir, kind)) => (dir.clone(), *kind),
        (None, _) => {
            return Err(PredictorError::Simulation(
                "the input is not a dataset: pass --sim-dataset DIR (e.g. the folder `vggtd simulate` wrote)".into(),
            ))
        }
    };
    let sequence = crate::source::read_sequence(&dir, kind)
        .map_err(|e| PredictorError::Simulation(e.to_string()))?;
    let predictor = datasets::sim::SimulatedPredictor::new(sequence, config.sim.clone())
        .map_err(|e| PredictorError::Simulation(e.to_string()))?;
    Ok(Box::new(predictor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NeighbourSource;

    #[test]
    fn feature_neighbours_only_with_features_source_and_k() {
        let mut config = DaemonConfig::default();
        assert_eq!(feature_neighbours(&config.model), None, "dense by default");
        config.model.attention_k = Some(3);
        assert_eq!(
            feature_neighbours(&config.model),
            None,
            "covisibility chooses"
        );
        config.model.neighbours = NeighbourSource::Features;
        let rule = feature_neighbours(&config.model).expect("model chooses");
        assert_eq!(rule.k, 3);
        config.model.attention_k = None;
        assert_eq!(feature_neighbours(&config.model), None, "no k: dense");
    }
}
