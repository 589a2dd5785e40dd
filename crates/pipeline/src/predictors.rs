//! Building the predictor, the keyframe selector, the window gate and the back-end from the
//! configuration.

use submap::prediction::{Predictor, WindowFrame};

use crate::config::{DaemonConfig, DeviceKind, PredictorKind};
use crate::source::InputKind;

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
pub fn build(
    config: &DaemonConfig,
    input: &InputKind,
    plan: Option<&vggt::planner::Plan>,
) -> Result<Box<dyn Predictor>, PredictorError> {
    match &config.model.predictor {
        PredictorKind::Replay => {
            let dir = config.model.replay_dir.clone().unwrap_or_default();
            Ok(Box::new(crate::record::ReplayPredictor::open(&dir)?))
        }
        PredictorKind::Vggt => build_vggt(config, plan.map(|p| p.dpt_frames_chunk)),
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
) -> Result<Box<dyn Predictor>, PredictorError> {
    match config.model.device {
        DeviceKind::Cpu => {
            let provider = vggt::cpu::matmul_provider();
            if vggt::cpu::uses_blas() {
                tracing::info!("CPU matrix products: {provider}");
            } else {
                tracing::warn!("CPU matrix products: {provider}");
            }
            load_vggt::<burn::backend::Flex>(config, dpt_frames_chunk)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => load_vggt::<burn::backend::Cuda>(config, dpt_frames_chunk),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(crate::vggt_predictor::VggtSetupError::NoCuda.into()),
    }
}

/// The VGGT predictor on backend `B`'s default device.
fn load_vggt<B: burn::tensor::backend::Backend>(
    config: &DaemonConfig,
    dpt_frames_chunk: Option<usize>,
) -> Result<Box<dyn Predictor>, PredictorError>
where
    B::Device: Send,
    vggt::Vggt<B>: Send,
{
    use crate::vggt_predictor::{VggtPredictor, VggtSetupError};
    let model = &config.model;
    let weights = model.weights.as_deref().ok_or(VggtSetupError::NoWeights)?;
    let predictor = VggtPredictor::<B>::load(
        model.model_config.as_deref(),
        weights,
        model.image_width,
        model.point_head,
        model.precision.to_vggt(),
        Default::default(),
    )?
    .with_dpt_frames_chunk(dpt_frames_chunk)
    .with_feature_neighbours(feature_neighbours(model));
    Ok(Box::new(predictor))
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
