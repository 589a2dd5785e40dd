//! End-to-end parity of the whole model with the upstream PyTorch reference.
//!
//! Fixtures: `fixtures/tiny_a` and `fixtures/tiny_masked`, generated from upstream VGGT at commit
//! 44b3afb on CPU float32 (see their READMEs). Weights go through the production checkpoint loader
//! and images through `Vggt::forward`, exactly as `vggt-run` and the daemon use them.
//! Tolerances are the fixture README's suggestions for a float32 port.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::geometry::unproject_depth_map_to_point_map;
use vggt::tensor_io::{compare, read_tensors, HostTensor};
use vggt::{ForwardOptions, Vggt, VggtConfig};

type B = Flex;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load_model(config: &VggtConfig) -> Vggt<B> {
    let device = Default::default();
    let model = Vggt::<B>::new(config, &device);
    load_into(
        model,
        &fixtures().join("tiny_a/weights.safetensors"),
        &LoadOptions::default(),
    )
    .expect("tiny_a weights load strictly")
}

fn neighbours_from_mask(mask: &HostTensor) -> Vec<Vec<usize>> {
    let s = mask.shape[0];
    let values = mask.to_i64_vec();
    (0..s)
        .map(|i| (0..s).filter(|&j| values[i * s + j] != 0).collect())
        .collect()
}

/// Checks `got` against the fixture tensor `name` and returns the max abs difference.
fn check(name: &str, got: &HostTensor, want: &HostTensor, atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    let (max_abs, worst) = compare(&got.to_f32_vec(), &want.to_f32_vec(), atol, rtol);
    println!("{name:28} max|diff| = {max_abs:.2e} (worst/tol = {worst:.3})");
    assert!(
        worst <= 1.0,
        "{name}: max|diff| {max_abs:e} exceeds atol {atol:e} + rtol {rtol:e}"
    );
    max_abs
}

/// Runs one fixture and returns the names of the tensors that were compared.
fn run_fixture(name: &str, outputs_file: &str) -> Vec<String> {
    let dir = fixtures().join(name);
    let config = VggtConfig::from_json_file(dir.join("config.json")).expect("config");
    let model = load_model(&config);
    let inputs = read_tensors(dir.join("inputs.safetensors")).expect("inputs");
    let want = read_tensors(dir.join(outputs_file)).expect("outputs");
    let device = Default::default();

    let images = &inputs["images"];
    let [s, c, h, w] = [
        images.shape[0],
        images.shape[1],
        images.shape[2],
        images.shape[3],
    ];
    let images = images.to_burn::<B, 4>(&device).reshape([1, s, c, h, w]);
    let neighbours = (outputs_file == "outputs.safetensors")
        .then(|| inputs.get("frame_mask").map(neighbours_from_mask))
        .flatten();
    let options = ForwardOptions {
        neighbours,
        record_intermediates: true,
        ..Default::default()
    };
    let out = model.forward(images, &options).expect("forward");

    let points = out.world_points.clone().expect("point head ran");
    let points_conf = out.world_points_conf.clone().expect("point head ran");
    let stacked_poses = burn::tensor::Tensor::stack::<4>(out.pose_enc_list.clone(), 0);
    let mut checked = Vec::new();
    for (key, got, atol, rtol) in [
        (
            "pose_enc",
            HostTensor::from_burn(out.pose_enc.clone()),
            1e-5,
            0.0,
        ),
        (
            "pose_enc_list",
            HostTensor::from_burn(stacked_poses),
            1e-5,
            0.0,
        ),
        (
            "extrinsic",
            HostTensor::from_burn(out.extrinsic.clone()),
            1e-5,
            0.0,
        ),
        (
            "intrinsic",
            HostTensor::from_burn(out.intrinsic.clone()),
            1e-5,
            1e-5,
        ),
        (
            "depth",
            HostTensor::from_burn(out.depth.clone()),
            1e-5,
            1e-5,
        ),
        (
            "depth_conf",
            HostTensor::from_burn(out.depth_conf.clone()),
            1e-5,
            2e-5,
        ),
        ("world_points", HostTensor::from_burn(points), 1e-5, 1e-5),
        (
            "world_points_conf",
            HostTensor::from_burn(points_conf),
            1e-5,
            2e-5,
        ),
    ] {
        // `outputs_unmasked.safetensors` holds a subset of the outputs.
        if let Some(reference) = want.get(key) {
            check(key, &got, reference, atol, rtol);
            checked.push(key.to_string());
        }
    }
    if let Some(reference) = want.get("world_points_from_depth") {
        let depth = HostTensor::from_burn(out.depth.clone()).to_f32_vec();
        let extrinsic = HostTensor::from_burn(out.extrinsic.clone()).to_f32_vec();
        let intrinsic = HostTensor::from_burn(out.intrinsic.clone()).to_f32_vec();
        let unprojected = unproject_depth_map_to_point_map(&depth, &extrinsic, &intrinsic, s, h, w);
        let got = HostTensor::f32(vec![s, h, w, 3], unprojected);
        check("world_points_from_depth", &got, reference, 1e-5, 1e-5);
        checked.push("world_points_from_depth".to_string());
    }
    for (key, tensor) in &want {
        let aggregator_layer = key.starts_with("aggregator.layer_");
        if aggregator_layer || key == "dino.patch_tokens" {
            let got = out
                .intermediates
                .get(key)
                .unwrap_or_else(|| panic!("{key} not recorded"));
            check(key, got, tensor, 5e-5, 0.0);
            checked.push(key.to_string());
        }
    }
    checked
}

#[test]
fn tiny_a_whole_model_matches_reference() {
    let checked = run_fixture("tiny_a", "outputs.safetensors");
    // pose_enc(+list), extrinsic, intrinsic, depth(+conf), points(+conf), points from depth,
    // 4 aggregator layers and the DINO tokens.
    assert_eq!(checked.len(), 14, "compared: {checked:?}");
}

#[test]
fn tiny_masked_whole_model_matches_reference() {
    let checked = run_fixture("tiny_masked", "outputs.safetensors");
    assert!(checked.len() >= 10, "compared: {checked:?}");
}

#[test]
fn tiny_masked_without_mask_matches_unmasked_reference() {
    let checked = run_fixture("tiny_masked", "outputs_unmasked.safetensors");
    assert!(
        checked.iter().any(|k| k == "depth") && checked.iter().any(|k| k == "pose_enc"),
        "compared: {checked:?}"
    );
}

#[test]
fn skipping_point_head_keeps_depth_and_cameras() {
    let dir = fixtures().join("tiny_a");
    let config = VggtConfig::from_json_file(dir.join("config.json")).expect("config");
    let model = load_model(&config);
    let inputs = read_tensors(dir.join("inputs.safetensors")).expect("inputs");
    let images = &inputs["images"];
    let shape = [
        1,
        images.shape[0],
        images.shape[1],
        images.shape[2],
        images.shape[3],
    ];
    let images = images.to_burn::<B, 4>(&Default::default()).reshape(shape);

    let full = model
        .forward(images.clone(), &ForwardOptions::default())
        .expect("full");
    let lean_options = ForwardOptions {
        skip_point_head: true,
        ..Default::default()
    };
    let lean = model.forward(images, &lean_options).expect("lean");
    assert!(lean.world_points.is_none() && lean.intermediates.is_empty());
    let full_depth = HostTensor::from_burn(full.depth).to_f32_vec();
    let lean_depth = HostTensor::from_burn(lean.depth).to_f32_vec();
    assert_eq!(
        full_depth, lean_depth,
        "depth must not depend on the point head"
    );
}
