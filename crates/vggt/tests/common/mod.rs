//! Shared by the aggregator-level integration tests: the tiny fixture config, its weights loaded
//! into a bare `Aggregator`, and the fixture images.
#![allow(dead_code)]

use burn::backend::Flex;
use burn::tensor::Tensor;
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use vggt::aggregator::Aggregator;
use vggt::tensor_io::read_tensors;
use vggt::VggtConfig;

/// CPU backend of the tests.
pub type B = Flex;

/// The repository's `fixtures/` folder.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// The tiny model config shared by `tiny_a` and `tiny_masked`.
pub fn config() -> VggtConfig {
    VggtConfig::from_json_file(format!("{FIXTURES}/tiny_a/config.json")).expect("config")
}

/// Aggregator with the tiny weights shared by `tiny_a` and `tiny_masked` (only the
/// `aggregator.*` keys; the whole-model loader is tested in `checkpoint.rs`).
pub fn load_aggregator() -> Aggregator<B> {
    let mut aggregator = Aggregator::<B>::new(&config(), &Default::default());
    let mut store = SafetensorsStore::from_file(format!("{FIXTURES}/tiny_a/weights.safetensors"))
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_key_remapping(r"^aggregator\.", "");
    let result = aggregator
        .load_from(&mut store)
        .expect("fixture weights load");
    assert!(
        result.errors.is_empty() && result.missing.is_empty(),
        "{result}"
    );
    aggregator
}

/// Fixture images `[1, S, 3, H, W]`.
pub fn images(fixture: &str) -> Tensor<B, 5> {
    let inputs = read_tensors(format!("{FIXTURES}/{fixture}/inputs.safetensors")).expect("inputs");
    inputs["images"]
        .to_burn::<B, 4>(&Default::default())
        .unsqueeze_dim(0)
}
