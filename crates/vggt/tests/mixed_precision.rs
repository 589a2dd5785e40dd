//! Mixed precision does not depend on the device's default float dtype: every tensor the
//! aggregator creates takes its parameters' dtype and every tensor the heads create theirs.
//!
//! burn lets the default dtype change only before a device's first tensor, so the run under a
//! bf16 default happens in a child process and is compared with one under the float32 default.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, IntDType, Tensor, TensorData};
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::tensor_io::{read_tensors, write_tensors, HostTensor};
use vggt::Precision;
use vggt::{ForwardOptions, Vggt, VggtConfig};

type B = Flex;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Loads tiny_a on backend M as bf16-mixed and runs it on fixed float32 images `[1, 3, 3, 28, 42]` (a 2 x 3
/// patch grid, so the position embedding is interpolated). Returns depth and world points.
fn mixed_run<M: Backend>(device: &M::Device) -> (HostTensor, HostTensor) {
    let config =
        VggtConfig::from_json_file(fixtures().join("tiny_a/config.json")).expect("tiny_a config");
    let model = load_into(
        Vggt::<M>::new(&config, device),
        &fixtures().join("tiny_a/weights.safetensors"),
        &LoadOptions::for_precision(Precision::Bf16),
    )
    .expect("tiny_a weights");
    let values: Vec<f32> = (0..3 * 3 * 28 * 42)
        .map(|i| ((i * 7919) % 1000) as f32 / 999.0)
        .collect();
    let images = Tensor::<M, 5>::from_data(
        TensorData::new(values, [1, 3, 3, 28, 42]),
        (device, DType::F32),
    );
    let out = model
        .forward(images, &ForwardOptions::default())
        .expect("mixed forward");
    assert_eq!(out.depth.dtype(), DType::F32);
    let points = out.world_points.expect("points");
    assert_eq!(points.dtype(), DType::F32);
    (
        HostTensor::from_burn(out.depth),
        HostTensor::from_burn(points),
    )
}

/// Child half of `bf16_mixed_ignores_the_default_float_dtype`: with the device's default float
/// dtype switched to bf16 before any tensor exists (burn allows it only then), runs the mixed
/// model and writes its outputs to the file named by `VGGT_BF16_DEFAULT_OUT`.
#[test]
#[ignore = "helper: run in a child process by bf16_mixed_ignores_the_default_float_dtype"]
fn bf16_default_child() {
    let Ok(out) = std::env::var("VGGT_BF16_DEFAULT_OUT") else {
        return;
    };
    let device = Default::default();
    burn::tensor::set_default_dtypes::<B>(&device, FloatDType::BF16, IntDType::I32)
        .expect("bf16 default before any tensor");
    let probe = Tensor::<B, 1>::zeros([1], &device);
    assert_eq!(probe.dtype(), DType::BF16, "the default did change");
    let (depth, points) = mixed_run::<B>(&device);
    write_tensors(&out, [("depth", &depth), ("world_points", &points)]).expect("write");
}

#[test]
fn bf16_mixed_ignores_the_default_float_dtype() {
    let device = Default::default();
    let (depth, points) = mixed_run::<B>(&device);
    assert!(depth.to_f32_vec().iter().all(|d| d.is_finite()));

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bf16_default.safetensors");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "bf16_default_child",
            "--test-threads=1",
        ])
        .env("VGGT_BF16_DEFAULT_OUT", &out)
        .output()
        .expect("spawn child");
    assert!(
        child.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&child.stdout)
    );
    let with_bf16_default = read_tensors(&out).expect("child outputs");
    assert_eq!(depth, with_bf16_default["depth"]);
    assert_eq!(points, with_bf16_default["world_points"]);
}
