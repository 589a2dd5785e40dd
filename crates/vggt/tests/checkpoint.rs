//! Checkpoint loading: key mapping, layouts, both file formats, dtype conversion and every kind of
//! bad file, on a small module tree that mimics the upstream key layout
//! (`fixtures/checkpoint/toy.safetensors`, `toy.pt`; see `fixtures/checkpoint/README.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{backend::Backend, DType, Tensor};
use vggt::checkpoint::{
    check_compatible, checkpoint_keys, detect_format, expected_checkpoint_keys, load_into,
    module_params, CheckpointError, CheckpointFormat, LoadOptions,
};
use vggt::tensor_io::{read_tensors, write_tensors, HostTensor};

type B = Flex;

// Counts host allocations, for the one-copy check (measured in a child process, see below).
#[global_allocator]
static ALLOCATOR: vggt::memory::CountingAllocator = vggt::memory::CountingAllocator;

const D: usize = 8;

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/checkpoint"
    ))
    .join(name)
}

#[derive(Module, Debug)]
struct Attn<B: Backend> {
    qkv: Linear<B>,
}

#[derive(Module, Debug)]
struct LayerScale<B: Backend> {
    gamma: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    attn: Attn<B>,
    ls1: LayerScale<B>,
}

#[derive(Module, Debug)]
struct CameraHead<B: Backend> {
    pose_ln_modulation: Linear<B>,
}

#[derive(Module, Debug)]
struct ResidualUnit<B: Backend> {
    conv1: Conv2d<B>,
}

#[derive(Module, Debug)]
struct Refine<B: Backend> {
    res_conf_unit1: ResidualUnit<B>,
}

#[derive(Module, Debug)]
struct Scratch<B: Backend> {
    layer1_rn: Conv2d<B>,
    refinenet1: Refine<B>,
    output_conv2_0: Conv2d<B>,
    output_conv2_2: Conv2d<B>,
}

#[derive(Module, Debug)]
struct Head<B: Backend> {
    resize_layer0: ConvTranspose2d<B>,
    resize_layer1: ConvTranspose2d<B>,
    resize_layer3: Conv2d<B>,
    scratch: Scratch<B>,
}

/// Mirrors `make_toy.py`'s key layout.
#[derive(Module, Debug)]
struct Toy<B: Backend> {
    camera_token: Param<Tensor<B, 4>>,
    blocks: Vec<Block<B>>,
    camera_head: CameraHead<B>,
    depth_head: Head<B>,
}

impl<B: Backend> Toy<B> {
    fn new(device: &B::Device) -> Self {
        let block = || Block {
            norm1: LayerNormConfig::new(D).init(device),
            attn: Attn {
                qkv: LinearConfig::new(D, 3 * D).init(device),
            },
            // An eagerly initialised parameter next to the lazy ones.
            ls1: LayerScale {
                gamma: Param::from_tensor(Tensor::ones([D], device)),
            },
        };
        Self {
            camera_token: Initializer::Zeros.init([1, 2, 1, D], device),
            blocks: vec![block(), block()],
            camera_head: CameraHead {
                pose_ln_modulation: LinearConfig::new(D, 3 * D).init(device),
            },
            depth_head: Head {
                resize_layer0: ConvTranspose2dConfig::new([D, 4], [4, 4])
                    .with_stride([4, 4])
                    .init(device),
                resize_layer1: ConvTranspose2dConfig::new([D, D], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                resize_layer3: Conv2dConfig::new([D, D], [3, 3]).init(device),
                scratch: Scratch {
                    layer1_rn: Conv2dConfig::new([D, 4], [3, 3])
                        .with_bias(false)
                        .init(device),
                    refinenet1: Refine {
                        res_conf_unit1: ResidualUnit {
                            conv1: Conv2dConfig::new([4, 4], [3, 3]).init(device),
                        },
                    },
                    output_conv2_0: Conv2dConfig::new([4, 2], [3, 3]).init(device),
                    output_conv2_2: Conv2dConfig::new([2, 1], [1, 1]).init(device),
                },
            },
        }
    }
}

/// Host values of every parameter, keyed by burn path.
fn params_of<M: Module<B>>(module: &M) -> BTreeMap<String, HostTensor> {
    #[derive(Default)]
    struct Grab {
        path: Vec<String>,
        out: BTreeMap<String, HostTensor>,
    }
    impl burn::module::ModuleVisitor<B> for Grab {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const N: usize>(&mut self, param: &Param<Tensor<B, N>>) {
            self.out
                .insert(self.path.join("."), HostTensor::from_burn(param.val()));
        }
    }
    let mut grab = Grab::default();
    module.visit(&mut grab);
    grab.out
}

fn transpose_2d(t: &HostTensor) -> HostTensor {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    let v = t.to_f32_vec();
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    HostTensor::f32(vec![cols, rows], out)
}

fn load_toy(path: &Path, options: &LoadOptions) -> Result<Toy<B>, CheckpointError> {
    load_into(Toy::<B>::new(&Default::default()), path, options)
}

#[test]
fn formats_are_recognised_by_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Swapped extensions: the content decides.
    let st_named_pt = dir.path().join("weights.pt");
    let pt_named_st = dir.path().join("weights.safetensors");
    std::fs::copy(fixture("toy.safetensors"), &st_named_pt).expect("copy");
    std::fs::copy(fixture("toy.pt"), &pt_named_st).expect("copy");
    assert_eq!(
        detect_format(&st_named_pt).expect("safetensors"),
        CheckpointFormat::Safetensors
    );
    assert_eq!(
        detect_format(&pt_named_st).expect("zip"),
        CheckpointFormat::PytorchZip
    );
    let a = params_of(
        &load_toy(&st_named_pt, &LoadOptions::default()).expect("load safetensors named .pt"),
    );
    let b = params_of(
        &load_toy(&pt_named_st, &LoadOptions::default()).expect("load .pt named .safetensors"),
    );
    assert_eq!(a, b);
}

#[test]
fn safetensors_load_maps_every_key_with_burn_layouts() {
    let file = read_tensors(fixture("toy.safetensors")).expect("read toy");
    let toy = load_toy(&fixture("toy.safetensors"), &LoadOptions::default()).expect("load toy");
    let loaded = params_of(&toy);

    let expect = |burn: &str, upstream: &str| {
        assert_eq!(
            loaded[burn], file[upstream],
            "{burn} must hold {upstream} unchanged"
        );
    };
    expect("camera_token", "camera_token");
    expect("blocks.1.norm1.gamma", "blocks.1.norm1.weight");
    expect("blocks.1.norm1.beta", "blocks.1.norm1.bias");
    expect("blocks.0.ls1.gamma", "blocks.0.ls1.gamma");
    expect("blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.bias");
    expect(
        "depth_head.resize_layer0.weight",
        "depth_head.resize_layers.0.weight",
    );
    expect(
        "depth_head.resize_layer3.weight",
        "depth_head.resize_layers.3.weight",
    );
    expect(
        "depth_head.scratch.output_conv2_2.weight",
        "depth_head.scratch.output_conv2.2.weight",
    );
    expect(
        "depth_head.scratch.refinenet1.res_conf_unit1.conv1.weight",
        "depth_head.scratch.refinenet1.resConfUnit1.conv1.weight",
    );
    // Linear weights are [out, in] upstream and [in, out] in burn.
    for (burn, upstream) in [
        ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.weight"),
        (
            "camera_head.pose_ln_modulation.weight",
            "camera_head.poseLN_modulation.1.weight",
        ),
    ] {
        assert_eq!(loaded[burn].shape, vec![D, 3 * D]);
        assert_eq!(
            loaded[burn],
            transpose_2d(&file[upstream]),
            "{burn} must be the transpose of {upstream}"
        );
    }
    // Every parameter was loaded: the file holds all the module's values, minus the two ignored keys.
    assert_eq!(loaded.len(), file.len() - 2);
}

#[test]
fn loaded_weights_drive_the_forward_pass() {
    // The Linear's forward must reproduce x W^T + b with upstream's [out, in] matrix.
    let file = read_tensors(fixture("toy.safetensors")).expect("read toy");
    let toy = load_toy(&fixture("toy.safetensors"), &LoadOptions::default()).expect("load toy");
    let x: Vec<f32> = (0..D).map(|i| i as f32 * 0.25 - 1.0).collect();
    let y = toy.blocks[0].attn.qkv.forward(Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(x.clone(), [1, D]),
        &Default::default(),
    ));
    let y = HostTensor::from_burn(y).to_f32_vec();
    let w = file["blocks.0.attn.qkv.weight"].to_f32_vec();
    let b = file["blocks.0.attn.qkv.bias"].to_f32_vec();
    for (row, got) in y.iter().enumerate() {
        let want: f32 = b[row] + (0..D).map(|c| w[row * D + c] * x[c]).sum::<f32>();
        assert!((got - want).abs() < 1e-5, "row {row}: {got} vs {want}");
    }
}

#[test]
fn pytorch_zip_loads_identically_to_safetensors() {
    let from_st =
        params_of(&load_toy(&fixture("toy.safetensors"), &LoadOptions::default()).expect("st"));
    let from_pt = params_of(&load_toy(&fixture("toy.pt"), &LoadOptions::default()).expect("pt"));
    assert_eq!(from_st, from_pt);
    assert_eq!(
        checkpoint_keys(&fixture("toy.pt")).expect("pt keys"),
        checkpoint_keys(&fixture("toy.safetensors")).expect("st keys")
    );
}

#[test]
fn tiny_a_pt_has_the_same_tensors_as_its_safetensors() {
    // The full tiny_a weights through the PyTorch reader: every key, shape and value.
    let pt = fixture("tiny_a_weights.pt");
    let st = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/tiny_a/weights.safetensors"
    ));
    assert_eq!(
        checkpoint_keys(&pt).expect("pt keys"),
        checkpoint_keys(st).expect("st keys")
    );
}

#[test]
fn shapes_are_read_without_initialising_lazy_parameters() {
    let toy = Toy::<B>::new(&Default::default());
    let params = module_params(&toy);
    assert_eq!(params.len(), 26);
    assert!(
        !toy.blocks[0].attn.qkv.weight.is_initialized(),
        "listing shapes must not initialise"
    );
    assert!(!toy.camera_token.is_initialized());
    let expected = expected_checkpoint_keys(&toy);
    let in_file = checkpoint_keys(&fixture("toy.safetensors")).expect("keys");
    let in_file: BTreeMap<_, _> = in_file
        .into_iter()
        .filter(|(k, _)| !vggt::checkpoint::is_ignored_key(k))
        .collect();
    assert_eq!(expected, in_file);
    check_compatible(&toy, &fixture("toy.pt")).expect("toy.pt matches the toy module");
}

#[test]
fn bf16_conversion_while_loading() {
    let file = read_tensors(fixture("toy.safetensors")).expect("read toy");
    let toy = load_toy(
        &fixture("toy.safetensors"),
        &LoadOptions {
            dtype: Some(DType::BF16),
            ..Default::default()
        },
    )
    .expect("bf16");
    let gamma = toy.blocks[0].norm1.gamma.val();
    assert_eq!(gamma.dtype(), DType::BF16);
    let got = HostTensor::from_burn(gamma).to_f32_vec();
    for (g, w) in got.iter().zip(file["blocks.0.norm1.weight"].to_f32_vec()) {
        assert_eq!(*g, half::bf16::from_f32(w).to_f32(), "bf16 rounding of {w}");
        assert!((g - w).abs() <= w.abs() / 128.0, "{g} too far from {w}");
    }
    assert!(matches!(
        load_toy(
            &fixture("toy.safetensors"),
            &LoadOptions {
                dtype: Some(DType::I32),
                ..Default::default()
            }
        ),
        Err(CheckpointError::UnsupportedDtype(DType::I32))
    ));
}

/// Rewrites toy.safetensors through `edit` into a temp file.
fn edited_toy(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, HostTensor>)) -> PathBuf {
    let mut tensors = read_tensors(fixture("toy.safetensors")).expect("read toy");
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    write_tensors(&path, tensors.iter().map(|(k, v)| (k.as_str(), v))).expect("write");
    path
}

#[test]
fn wrong_key_names_missing_and_unexpected_keys_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = edited_toy(dir.path(), |t| {
        let v = t.remove("blocks.1.norm1.weight").expect("present");
        t.insert("blocks.1.norm_1.weight".into(), v);
        t.remove("depth_head.scratch.output_conv2.0.bias");
    });
    let err = load_toy(&path, &LoadOptions::default()).expect_err("must fail");
    let message = err.to_string();
    match err {
        CheckpointError::Incompatible { file, report } => {
            assert_eq!(file, path);
            assert_eq!(
                report.missing,
                vec![
                    "blocks.1.norm1.weight",
                    "depth_head.scratch.output_conv2.0.bias"
                ]
            );
            assert_eq!(report.unexpected, vec!["blocks.1.norm_1.weight"]);
            assert!(report.shape_mismatches.is_empty());
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert!(
        message.contains("edited.safetensors") && message.contains("blocks.1.norm_1.weight"),
        "{message}"
    );
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = edited_toy(dir.path(), |t| {
        // A Linear weight stored [in, out] (burn layout) instead of upstream's [out, in].
        let w = t.get("blocks.0.attn.qkv.weight").expect("present");
        let transposed = transpose_2d(w);
        t.insert("blocks.0.attn.qkv.weight".into(), transposed);
        t.insert(
            "camera_token".into(),
            HostTensor::f32(vec![1, 1, 1, D], vec![0.0; D]),
        );
    });
    match load_toy(&path, &LoadOptions::default()).expect_err("must fail") {
        CheckpointError::Incompatible { report, .. } => {
            assert!(report.missing.is_empty() && report.unexpected.is_empty());
            let got: Vec<_> = report
                .shape_mismatches
                .iter()
                .map(|m| (m.key.as_str(), m.expected.clone(), m.got.clone()))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("blocks.0.attn.qkv.weight", vec![3 * D, D], vec![D, 3 * D]),
                    ("camera_token", vec![1, 2, 1, D], vec![1, 1, 1, D]),
                ]
            );
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
}

#[test]
fn truncated_files_are_reported_as_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["toy.safetensors", "toy.pt"] {
        let bytes = std::fs::read(fixture(name)).expect("read");
        for keep in [bytes.len() - 1, bytes.len() / 2, 100] {
            let path = dir.path().join(format!("cut_{keep}_{name}"));
            std::fs::write(&path, &bytes[..keep]).expect("write");
            match load_toy(&path, &LoadOptions::default()) {
                Err(CheckpointError::Truncated {
                    file,
                    actual_bytes,
                    expected_bytes,
                    ..
                }) => {
                    assert_eq!(file, path);
                    assert_eq!(actual_bytes, keep as u64);
                    assert!(expected_bytes > actual_bytes);
                }
                other => panic!("{name} cut to {keep} bytes: expected Truncated, got {other:?}"),
            }
        }
    }
}

#[test]
fn non_checkpoints_and_absent_files_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "this is a text file, not weights\n").expect("write");
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").expect("write");
    let config = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/tiny_a/config.json"
    ));
    for path in [text.as_path(), empty.as_path(), config] {
        match load_toy(path, &LoadOptions::default()) {
            Err(CheckpointError::NotACheckpoint { file, .. }) => assert_eq!(file, path),
            other => panic!("{}: expected NotACheckpoint, got {other:?}", path.display()),
        }
    }
    let absent = dir.path().join("absent.safetensors");
    assert!(matches!(
        load_toy(&absent, &LoadOptions::default()),
        Err(CheckpointError::NotFound { file }) if file == absent
    ));
}

#[test]
fn many_problems_are_listed_up_to_twenty_plus_a_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = edited_toy(dir.path(), |t| {
        let keys: Vec<String> = t.keys().cloned().collect();
        for key in keys {
            let v = t.remove(&key).expect("present");
            t.insert(format!("renamed.{key}"), v);
        }
    });
    let err = load_toy(&path, &LoadOptions::default()).expect_err("must fail");
    let message = err.to_string();
    assert!(message.contains("26 missing key(s)"), "{message}");
    assert!(message.contains("... and 6 more"), "{message}");
    assert!(message.contains("28 unexpected key(s)"), "{message}");
}

// ---- The real model tree -------------------------------------------------------------------

mod full_model {
    use super::*;
    use std::process::Command;
    use vggt::model::Vggt;
    use vggt::tensor_io::compare;
    use vggt::VggtConfig;

    fn repo(path: &str) -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(path)
    }

    /// Counts parameters whose values exist (lazy ones that were never touched do not).
    fn initialised_elements<M: Module<B>>(module: &M) -> usize {
        struct Count(usize);
        impl burn::module::ModuleVisitor<B> for Count {
            fn visit_float<const N: usize>(&mut self, param: &Param<Tensor<B, N>>) {
                if param.is_initialized() {
                    self.0 += param.lazy_shape().num_elements();
                }
            }
        }
        let mut count = Count(0);
        module.visit(&mut count);
        count.0
    }

    #[test]
    fn vggt_1b_module_tree_spells_every_checkpoint_key() {
        let listing = std::fs::read_to_string(repo("fixtures/vggt1b_keys.txt")).expect("key list");
        let mut in_checkpoint = BTreeMap::new();
        let mut ignored = 0;
        for line in listing
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut fields = line.split('\t');
            let key = fields.next().expect("key");
            let shape: Vec<usize> =
                serde_json::from_str(fields.next().expect("shape")).expect("shape list");
            if vggt::checkpoint::is_ignored_key(key) {
                ignored += 1;
            } else {
                in_checkpoint.insert(key.to_string(), shape);
            }
        }
        assert_eq!(
            in_checkpoint.len() + ignored,
            1797,
            "the listing has all 1797 state_dict tensors"
        );

        let model = Vggt::<B>::new(&VggtConfig::vggt_1b(), &Default::default());
        let expected = expected_checkpoint_keys(&model);
        let missing: Vec<_> = in_checkpoint
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        let extra: Vec<_> = expected
            .keys()
            .filter(|k| !in_checkpoint.contains_key(*k))
            .collect();
        let mut wrong_shape = Vec::new();
        for (key, shape) in &in_checkpoint {
            if let Some(ours) = expected.get(key).filter(|ours| *ours != shape) {
                wrong_shape.push(format!("{key}: checkpoint {shape:?}, module {ours:?}"));
            }
        }
        assert!(
            missing.is_empty() && extra.is_empty() && wrong_shape.is_empty(),
            "checkpoint keys without a parameter: {missing:?}\nparameters without a key: {extra:?}\nshapes: {wrong_shape:?}"
        );
        let elements: usize = expected.values().map(|s| s.iter().product::<usize>()).sum();
        // 1,256,537,516 in the state_dict, minus the track head (65,941,396) and mask_token (1024).
        assert_eq!(elements, 1_256_537_516 - 65_941_396 - 1024);
        // Reading the tree must not have materialised the 4.8 GB of weights.
        let touched = initialised_elements(&model);
        assert!(
            touched < 10_000_000,
            "{touched} parameter elements were initialised"
        );
    }

    #[test]
    fn tiny_a_loads_identically_from_pt_and_safetensors() {
        let config =
            VggtConfig::from_json_file(repo("fixtures/tiny_a/config.json")).expect("config");
        let load = |path: PathBuf| {
            let model = Vggt::<B>::new(&config, &Default::default());
            params_of(&load_into(model, &path, &LoadOptions::default()).expect("load tiny_a"))
        };
        let from_st = load(repo("fixtures/tiny_a/weights.safetensors"));
        let from_pt = load(fixture("tiny_a_weights.pt"));
        assert!(!from_st.is_empty());
        assert_eq!(from_st, from_pt);
    }

    fn vggt_run(args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_vggt-run"))
            .args(args)
            .output()
            .expect("spawn vggt-run")
    }

    fn run_fixture(
        dir: &str,
        weights: &Path,
        out: &Path,
        extra: &[&str],
    ) -> BTreeMap<String, HostTensor> {
        let config = repo(&format!("fixtures/{dir}/config.json"));
        let inputs = repo(&format!("fixtures/{dir}/inputs.safetensors"));
        let mut args = vec![
            "--config",
            config.to_str().expect("utf-8"),
            "--weights",
            weights.to_str().expect("utf-8"),
            "--inputs",
            inputs.to_str().expect("utf-8"),
            "--output",
            out.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let result = vggt_run(&args);
        assert!(
            result.status.success(),
            "vggt-run failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        read_tensors(out).expect("read outputs")
    }

    /// Tolerances of the fixtures' README (float32 port): name, atol, rtol.
    const TOLERANCES: &[(&str, f32, f32)] = &[
        ("aggregator.layer_03", 5e-5, 0.0),
        ("dino.patch_tokens", 5e-5, 0.0),
        ("pose_enc", 1e-5, 0.0),
        ("pose_enc_list", 1e-5, 0.0),
        ("extrinsic", 1e-5, 0.0),
        ("intrinsic", 0.0, 1e-5),
        ("depth", 1e-5, 1e-5),
        ("world_points", 1e-5, 1e-5),
        ("depth_conf", 1e-5, 2e-5),
        ("world_points_conf", 1e-5, 2e-5),
    ];

    fn check_against(
        got: &BTreeMap<String, HostTensor>,
        want: &BTreeMap<String, HostTensor>,
        extra: &[(&str, f32, f32)],
    ) {
        for &(name, atol, rtol) in TOLERANCES.iter().chain(extra) {
            let (g, w) = (&got[name], &want[name]);
            assert_eq!(g.shape, w.shape, "{name} shape");
            let (max_abs, worst) = compare(&g.to_f32_vec(), &w.to_f32_vec(), atol, rtol);
            assert!(
                worst <= 1.0,
                "{name}: max abs diff {max_abs:e} exceeds atol {atol:e} / rtol {rtol:e}"
            );
        }
    }

    #[test]
    fn vggt_run_pt_and_safetensors_give_identical_outputs_matching_the_reference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from_st = run_fixture(
            "tiny_a",
            &repo("fixtures/tiny_a/weights.safetensors"),
            &dir.path().join("st.safetensors"),
            &[],
        );
        let from_pt = run_fixture(
            "tiny_a",
            &fixture("tiny_a_weights.pt"),
            &dir.path().join("pt.safetensors"),
            &[],
        );
        assert_eq!(
            from_st, from_pt,
            "same weights in two formats must give identical outputs"
        );
        let want = read_tensors(repo("fixtures/tiny_a/outputs.safetensors")).expect("reference");
        check_against(&from_st, &want, &[("world_points_from_depth", 1e-5, 1e-5)]);
    }

    #[test]
    fn vggt_run_applies_the_frame_mask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let got = run_fixture(
            "tiny_masked",
            &repo("fixtures/tiny_a/weights.safetensors"),
            &dir.path().join("m.safetensors"),
            &[],
        );
        let want =
            read_tensors(repo("fixtures/tiny_masked/outputs.safetensors")).expect("reference");
        check_against(&got, &want, &[]);
    }

    /// Relative errors of `got` against `want`: (relative L2 = ||got - want||_2 / ||want||_2,
    /// relative max = max |got - want| / max |want|).
    fn relative_errors(got: &HostTensor, want: &HostTensor) -> (f64, f64) {
        let (a, b) = (got.to_f32_vec(), want.to_f32_vec());
        assert_eq!(a.len(), b.len());
        let diff_sq: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum();
        let norm_sq: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        let diff_max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from((x - y).abs()))
            .fold(0.0, f64::max);
        let max = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
        ((diff_sq / norm_sq).sqrt(), diff_max / max)
    }

    /// The acceptance test: a bf16 run of tiny_a (aggregator in bf16, heads in float32,
    /// as upstream's autocast) agrees with float32 within 2e-2 relative on depth and world points,
    /// in both relative L2 and relative max error. f16 is held to the same bound.
    #[test]
    fn vggt_run_half_precision_agrees_with_f32_on_depth_and_points() {
        let dir = tempfile::tempdir().expect("tempdir");
        let weights = repo("fixtures/tiny_a/weights.safetensors");
        let f32_run = run_fixture("tiny_a", &weights, &dir.path().join("f32.safetensors"), &[]);
        for dtype in ["bf16", "f16"] {
            let half_run = run_fixture(
                "tiny_a",
                &weights,
                &dir.path().join(format!("{dtype}.safetensors")),
                &["--dtype", dtype],
            );
            for name in ["depth", "world_points", "pose_enc"] {
                let (rel_l2, rel_max) = relative_errors(&half_run[name], &f32_run[name]);
                eprintln!("{dtype} {name}: relative L2 {rel_l2:.3e}, relative max {rel_max:.3e}");
                // A real half-precision run differs from float32, but not by much.
                assert!(
                    rel_l2 > 1e-5 && rel_l2 <= 2e-2 && rel_max <= 2e-2,
                    "{dtype} {name}: relative L2 {rel_l2:e}, relative max {rel_max:e}"
                );
            }
        }
    }

    /// Mixed precision: the aggregator's parameters and layers are bf16, the heads' parameters and
    /// every output float32, and the device's default dtype is left alone.
    #[test]
    fn bf16_mixed_loads_a_bf16_aggregator_and_float32_heads() {
        use vggt::ForwardOptions;
        use vggt::Precision;
        let config =
            VggtConfig::from_json_file(repo("fixtures/tiny_a/config.json")).expect("config");
        let device = Default::default();
        let model = load_into(
            Vggt::<B>::new(&config, &device),
            &repo("fixtures/tiny_a/weights.safetensors"),
            &LoadOptions::for_precision(Precision::Bf16),
        )
        .expect("load mixed");
        assert_eq!(model.aggregator.dtype(), DType::BF16);
        assert_eq!(
            model.aggregator.frame_blocks[0]
                .attn
                .qkv
                .weight
                .val()
                .dtype(),
            DType::BF16
        );
        assert_eq!(
            model.aggregator.patch_embed.pos_embed.val().dtype(),
            DType::BF16
        );
        assert_eq!(model.heads_dtype(), DType::F32);
        assert_eq!(
            model.depth_head.scratch.output_conv2_2.weight.val().dtype(),
            DType::F32
        );
        assert_eq!(
            model.point_head.scratch.output_conv2_2.weight.val().dtype(),
            DType::F32
        );

        // 2 frames at 28 x 42 (2 x 3 patches, not the pos-embed's native grid: interpolated).
        let values: Vec<f32> = (0..2 * 3 * 28 * 42)
            .map(|i| (i % 23) as f32 / 22.0)
            .collect();
        let images = Tensor::<B, 5>::from_data(
            burn::tensor::TensorData::new(values, [1, 2, 3, 28, 42]),
            &device,
        );
        assert_eq!(images.dtype(), DType::F32, "device default untouched");
        let out = model
            .forward(
                images,
                &ForwardOptions {
                    record_intermediates: true,
                    ..Default::default()
                },
            )
            .expect("mixed forward");
        assert_eq!(out.depth.dtype(), DType::F32);
        assert_eq!(out.depth_conf.dtype(), DType::F32);
        assert_eq!(out.pose_enc.dtype(), DType::F32);
        assert_eq!(out.extrinsic.dtype(), DType::F32);
        let points = out.world_points.expect("points");
        assert_eq!(points.dtype(), DType::F32);
        let finite = |v: Vec<f32>| v.iter().all(|x| x.is_finite());
        assert!(finite(HostTensor::from_burn(out.depth).to_f32_vec()));
        assert!(finite(HostTensor::from_burn(points).to_f32_vec()));
        assert!(out.intermediates.contains_key("aggregator.layer_00"));
    }

    #[test]
    fn load_options_per_precision() {
        use vggt::Precision;
        assert_eq!(
            LoadOptions::for_precision(Precision::F32),
            LoadOptions::default()
        );
        assert_eq!(
            LoadOptions::for_precision(Precision::Bf16),
            LoadOptions {
                dtype: Some(DType::BF16),
                heads_dtype: Some(DType::F32),
            }
        );
        assert_eq!(
            LoadOptions::for_precision(Precision::F16),
            LoadOptions {
                dtype: Some(DType::F16),
                heads_dtype: Some(DType::F32),
            }
        );
    }

    #[test]
    fn vggt_run_reports_bad_arguments_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cut = dir.path().join("cut.pt");
        let bytes = std::fs::read(fixture("tiny_a_weights.pt")).expect("read");
        std::fs::write(&cut, &bytes[..bytes.len() / 3]).expect("write");
        let config = repo("fixtures/tiny_a/config.json");
        let inputs = repo("fixtures/tiny_a/inputs.safetensors");
        let out = dir.path().join("out.safetensors");
        let base = |weights: &Path| {
            vec![
                "--config".to_string(),
                config.display().to_string(),
                "--weights".to_string(),
                weights.display().to_string(),
                "--inputs".to_string(),
                inputs.display().to_string(),
                "--output".to_string(),
                out.display().to_string(),
            ]
        };
        let stderr_of = |args: Vec<String>| {
            let result = vggt_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(!result.status.success(), "{args:?} must fail");
            String::from_utf8_lossy(&result.stderr).into_owned()
        };
        let message = stderr_of(base(&cut));
        assert!(
            message.contains("truncated") && message.contains("cut.pt"),
            "{message}"
        );
        let mut args = base(&fixture("toy.safetensors"));
        let message = stderr_of(args.clone());
        assert!(
            message.contains("missing key") && message.contains("toy.safetensors"),
            "{message}"
        );
        args.extend(["--dtype".into(), "f64".into()]);
        assert!(stderr_of(args).contains("f64"));
        let mut args = base(&repo("fixtures/tiny_a/weights.safetensors"));
        args[5] = config.display().to_string(); // inputs = a JSON file
        let message = stderr_of(args);
        assert!(message.contains("config.json"), "{message}");
        assert!(!out.exists(), "no output after a failure");
    }

    /// Child-process half of `loading_holds_one_copy_of_the_weights`: loads the file named by
    /// `VGGT_MEMORY_PROBE` alone in its process and prints the allocator counters.
    #[test]
    #[ignore = "helper: run in a child process by loading_holds_one_copy_of_the_weights"]
    fn memory_probe() {
        let Ok(weights) = std::env::var("VGGT_MEMORY_PROBE") else {
            return;
        };
        let config =
            VggtConfig::from_json_file(repo("fixtures/tiny_a/config.json")).expect("config");
        let model = Vggt::<B>::new(&config, &Default::default());
        let before = vggt::memory::host_memory()
            .expect("counting allocator")
            .live_bytes;
        vggt::memory::reset_peak();
        // The tensor index alone (names, shapes, parsed pickle), without any tensor data.
        let keys = checkpoint_keys(Path::new(&weights)).expect("index");
        let index_peak = vggt::memory::host_memory().expect("allocator").peak_bytes - before;
        drop(keys);
        vggt::memory::reset_peak();
        let model = load_into(model, Path::new(&weights), &LoadOptions::default()).expect("load");
        let after = vggt::memory::host_memory().expect("counting allocator");
        let largest = module_params(&model)
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .max();
        println!(
            "\nPROBE {} {} {} {}",
            after.peak_bytes - before,
            after.live_bytes.saturating_sub(before),
            largest.unwrap_or(0) * 4,
            index_peak
        );
        drop(model);
    }

    #[test]
    fn loading_holds_one_copy_of_the_weights() {
        let weight_bytes = 4 * read_tensors(repo("fixtures/tiny_a/weights.safetensors"))
            .expect("read")
            .iter()
            .filter(|(k, _)| !vggt::checkpoint::is_ignored_key(k))
            .map(|(_, t)| t.shape.iter().product::<usize>())
            .sum::<usize>();
        for weights in [
            repo("fixtures/tiny_a/weights.safetensors"),
            fixture("tiny_a_weights.pt"),
        ] {
            let output = Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--ignored",
                    "--exact",
                    "full_model::memory_probe",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("VGGT_MEMORY_PROBE", &weights)
                .output()
                .expect("spawn probe");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix("PROBE "))
                .unwrap_or_else(|| {
                    panic!(
                        "probe printed nothing: {stdout}\n{}",
                        String::from_utf8_lossy(&output.stderr)
                    )
                });
            let [peak, live, largest, index]: [usize; 4] = line
                .split(' ')
                .map(|v| v.parse().expect("number"))
                .collect::<Vec<_>>()
                .try_into()
                .expect("four numbers");
            let name = weights.display();
            // The loaded parameters are the weights, once (parameters created eagerly by `new`
            // were already counted before loading and are replaced, hence the lower margin).
            assert!(
                live > weight_bytes * 9 / 10 && live < weight_bytes * 11 / 10,
                "{name}: live {live} B vs weights {weight_bytes} B"
            );
            // While loading, the tensor index and a few tensors are in flight on top of the
            // parameters: never a second copy of the weights.
            let in_flight = peak - live;
            assert!(
                in_flight < index + 4 * largest + 256 * 1024,
                "{name}: {in_flight} B in flight (index {index} B, largest tensor {largest} B)"
            );
            eprintln!("{name}: weights {weight_bytes} B, in flight {in_flight} B, index {index} B");
        }
    }

    #[test]
    #[ignore = "needs the 5 GB facebook/VGGT-1B checkpoint: set VGGT_1B_CHECKPOINT to model.pt or model.safetensors"]
    fn real_vggt_1b_checkpoint_loads() {
        let path = PathBuf::from(std::env::var("VGGT_1B_CHECKPOINT").expect("VGGT_1B_CHECKPOINT"));
        let model = Vggt::<B>::new(&VggtConfig::vggt_1b(), &Default::default());
        check_compatible(&model, &path).expect("keys and shapes match");
        let model = load_into(
            model,
            &path,
            &LoadOptions {
                dtype: Some(DType::BF16),
                ..Default::default()
            },
        )
        .expect("load as bf16");
        assert_eq!(
            model.camera_head.embed_pose.weight.val().dtype(),
            DType::BF16
        );
    }
}
