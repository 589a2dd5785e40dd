//! Parity of the DINO patch embedding and the aggregator with the PyTorch reference.
//!
//! Reference: `fixtures/tiny_a` (upstream facebookresearch/vggt at 44b3afb, torch CPU float32; see
//! its README). Tolerance: the README's atol 5e-5 for DINO tokens and aggregator layers; the max
//! abs differences reached are printed (`cargo test -- --nocapture`).

use std::collections::BTreeMap;

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use burn_store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use vggt::aggregator::{Aggregator, AggregatorOptions};
use vggt::tensor_io::{compare, read_tensors, HostTensor};
use vggt::VggtConfig;

type B = Flex;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_a");
const ATOL: f32 = 5e-5;
/// Tighter bound on the aggregator layers, as the README suggests: a LayerNorm eps of 1e-6
/// instead of 1e-5 moves them by ~1.6e-5 and would pass `ATOL` unnoticed.
const AGGREGATOR_ATOL: f32 = 8e-6;

/// Aggregator of the fixture config with the fixture weights (`aggregator.` prefix stripped).
/// Every aggregator parameter must be found, and every aggregator key but `mask_token` used.
/// (burn-store lists LayerNorm `weight`/`bias` as unused even when they were applied under
/// burn's `gamma`/`beta` names, so those count as used when their counterpart was applied.)
fn load_aggregator(config: &VggtConfig) -> Aggregator<B> {
    let mut aggregator = Aggregator::<B>::new(config, &Default::default());
    let mut store = SafetensorsStore::from_file(format!("{FIXTURE}/weights.safetensors"))
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_key_remapping(r"^aggregator\.", "");
    let result = aggregator
        .load_from(&mut store)
        .expect("fixture weights load");
    assert!(result.errors.is_empty(), "load errors: {:?}", result.errors);
    assert!(result.missing.is_empty(), "missing: {:?}", result.missing);
    let applied_as = |key: &str| {
        let burn_name = key.strip_suffix(".weight").map(|k| format!("{k}.gamma"));
        let burn_name =
            burn_name.or_else(|| key.strip_suffix(".bias").map(|k| format!("{k}.beta")));
        burn_name.is_some_and(|name| result.applied.contains(&name))
    };
    let unused_aggregator_keys: Vec<&String> = result
        .unused
        .iter()
        .filter(|k| {
            !["camera_head.", "depth_head.", "point_head.", "track_head."]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .filter(|k| !applied_as(k))
        .collect();
    assert_eq!(
        unused_aggregator_keys,
        ["patch_embed.mask_token"],
        "unexpected unused keys"
    );
    aggregator
}

fn run_tiny_a(
    options: &AggregatorOptions,
) -> (
    vggt::aggregator::AggregatorOutput<B>,
    BTreeMap<String, HostTensor>,
) {
    let config = VggtConfig::from_json_file(format!("{FIXTURE}/config.json")).expect("config");
    let aggregator = load_aggregator(&config);
    let inputs = read_tensors(format!("{FIXTURE}/inputs.safetensors")).expect("inputs");
    let images: Tensor<B, 4> = inputs["images"].to_burn(&Default::default());
    let output = aggregator
        .forward(images.unsqueeze_dim(0), options)
        .expect("forward");
    let reference = read_tensors(format!("{FIXTURE}/outputs.safetensors")).expect("outputs");
    (output, reference)
}

/// Compares and returns the max abs difference, failing beyond `ATOL`.
fn check<const D: usize>(name: &str, got: Tensor<B, D>, want: &HostTensor) -> f32 {
    let got = HostTensor::from_burn(got);
    assert_eq!(got.shape, want.shape, "{name}: shape");
    let (max_abs, ratio) = compare(&got.to_f32_vec(), &want.to_f32_vec(), ATOL, 0.0);
    println!("{name:<28} max abs diff {max_abs:.3e}");
    assert!(
        ratio <= 1.0,
        "{name}: max abs diff {max_abs:e} exceeds {ATOL:e}"
    );
    max_abs
}

#[test]
fn dino_and_aggregator_match_reference() {
    let options = AggregatorOptions {
        record_intermediates: true,
        ..Default::default()
    };
    let (output, reference) = run_tiny_a(&options);
    for name in [
        "dino.pos_embed_interp",
        "dino.tokens_in",
        "dino.x_prenorm",
        "aggregator.tokens_in",
        "aggregator.pos",
    ] {
        let got = output
            .intermediates
            .get(name)
            .unwrap_or_else(|| panic!("intermediate {name} not recorded"));
        check(name, got.clone(), &reference[name]);
    }
    check(
        "dino.patch_tokens",
        output.patch_tokens.clone(),
        &reference["dino.patch_tokens"],
    );
    assert_eq!(output.patch_start_idx, 5);

    let layer_names: Vec<&String> = reference
        .keys()
        .filter(|k| k.starts_with("aggregator.layer_"))
        .collect();
    assert_eq!(
        layer_names.len(),
        output.layers.len(),
        "all layers kept by default"
    );
    let mut worst = 0.0f32;
    for name in layer_names {
        let index: usize = name["aggregator.layer_".len()..]
            .parse()
            .expect("layer index");
        worst = worst.max(check(name, output.layers[&index].clone(), &reference[name]));
    }
    println!("aggregator worst max abs diff {worst:.3e}");
    assert!(
        worst <= AGGREGATOR_ATOL,
        "aggregator max abs diff {worst:e} exceeds {AGGREGATOR_ATOL:e}"
    );
}

#[test]
fn kept_layers_match_full_run() {
    let options = AggregatorOptions {
        keep_layers: Some(vec![1]),
        ..Default::default()
    };
    let (output, reference) = run_tiny_a(&options);
    assert_eq!(output.layers.keys().copied().collect::<Vec<_>>(), [1]);
    assert!(
        output.intermediates.is_empty(),
        "intermediates only on request"
    );
    check(
        "aggregator.layer_01 (kept)",
        output.layers[&1].clone(),
        &reference["aggregator.layer_01"],
    );
}

/// Records every parameter as (upstream key, upstream shape) without materialising it:
/// LayerNorm `gamma`/`beta` become `weight`/`bias` and Linear weights `[in, out]` become
/// `[out, in]`.
#[derive(Default)]
struct UpstreamKeys {
    path: Vec<(String, String)>,
    keys: Vec<(String, Vec<usize>)>,
}

impl<Bk: Backend> ModuleVisitor<Bk> for UpstreamKeys {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let (name, container) = self
            .path
            .last()
            .cloned()
            .expect("parameters live in modules");
        let parents: Vec<&str> = self.path[..self.path.len() - 1]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let mut shape = param.lazy_shape().to_vec();
        let name = match (container.as_str(), name.as_str()) {
            ("Struct:LayerNorm", "gamma") => "weight".to_string(),
            ("Struct:LayerNorm", "beta") => "bias".to_string(),
            ("Struct:Linear", "weight") => {
                shape.reverse();
                name
            }
            _ => name,
        };
        let key = parents
            .iter()
            .copied()
            .chain([name.as_str()])
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>();
        self.keys
            .push((format!("aggregator.{}", key.join(".")), shape));
    }
}

/// The VGGT-1B aggregator's parameters spell exactly the checkpoint's `aggregator.*` keys and
/// shapes (except the unused `mask_token`). Parameters are visited, never materialised.
#[test]
fn module_paths_spell_vggt1b_aggregator_keys() {
    let listing = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/vggt1b_keys.txt"
    ))
    .expect("key listing");
    let mut want: Vec<(String, Vec<usize>)> = listing
        .lines()
        .filter(|line| {
            line.starts_with("aggregator.")
                && !line.starts_with("aggregator.patch_embed.mask_token")
        })
        .map(|line| {
            let mut fields = line.split('\t');
            let key = fields.next().expect("key").to_string();
            let shape = fields.next().expect("shape");
            let dims = shape
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|d| d.trim().parse().expect("dim"));
            (key, dims.collect())
        })
        .collect();
    let aggregator = Aggregator::<B>::new(&VggtConfig::vggt_1b(), &Default::default());
    let mut visitor = UpstreamKeys::default();
    aggregator.visit(&mut visitor);
    let mut got = visitor.keys;
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "parameter count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}
