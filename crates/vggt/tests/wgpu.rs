//! The whole model on burn's wgpu backend (Vulkan/Metal; Mesa's lavapipe in CI): parity with the
//! upstream reference fixtures, dense == sparse-complete global attention, device memory back to
//! its baseline after every window, the planner against measured device peaks, and the
//! precisions the adapter can or cannot run.
//!
//! Built with `--features wgpu` only. Without a usable adapter the tests print why and pass,
//! unless `VGGT_EXPECT_WGPU=1` says the GPU path must run (CI sets it, with lavapipe installed):
//! then a missing adapter fails them. A software adapter is used when it is the only one.
//! The device's memory pools are shared by the whole process, so the tests take [`LOCK`].
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::{backend::Backend, ElementConversion, Tensor, TensorData};
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::memory::{device_probe, release_device_memory, DeviceMemory, PhaseRecorder};
use vggt::parity::{fixture_tolerance, report, run_fixture, TensorParity, Tolerance};
use vggt::planner::{plan_with, PlanOptions};
use vggt::tensor_io::{compare, HostTensor};
use vggt::{DeviceError, DeviceInfo, ForwardOptions, OnBackend, Precision, Vggt, VggtConfig};

static LOCK: Mutex<()> = Mutex::new(());

const MIB: usize = 1024 * 1024;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn expected() -> bool {
    std::env::var("VGGT_EXPECT_WGPU").is_ok_and(|v| v == "1")
}

/// Runs `body` on the best wgpu adapter (a software one when it is the only one), or skips.
fn on_wgpu<F: OnBackend<Output = ()>>(precision: Precision, body: F) {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let device = match vggt::device::best_wgpu_adapter() {
        Ok(device) => device,
        Err(e) if expected() => panic!("VGGT_EXPECT_WGPU=1 but no wgpu adapter: {e}"),
        Err(e) => {
            eprintln!("skipped: no usable wgpu adapter ({e})");
            return;
        }
    };
    if let Err(e) = vggt::dispatch(device, precision, body) {
        panic!("{device} was listed but does not open: {e}");
    }
}

/// Declares an [`OnBackend`] body that calls the generic test function `$f::<B>(&device)`.
macro_rules! body {
    ($f:ident) => {{
        struct Body;
        impl OnBackend for Body {
            type Output = ();
            fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) {
                println!("device {}", info.name);
                for line in &info.details {
                    println!("  {line}");
                }
                $f::<B>(&device);
            }
        }
        Body
    }};
}

/// The per-tensor bound on this backend: the fixtures' README tolerance (float32, summation
/// order only), which the wgpu kernels meet as they are.
fn wgpu_tolerance(name: &str) -> Tolerance {
    fixture_tolerance(name)
}

fn check_parity(rows: &[TensorParity]) {
    print!("{}", report(rows));
    let over: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passes())
        .map(|r| r.name.as_str())
        .collect();
    assert!(over.is_empty(), "over tolerance: {over:?}");
}

fn parity_tiny_a<B: Backend>(device: &B::Device) {
    let rows = run_fixture::<B>(
        &fixtures().join("tiny_a"),
        &fixtures().join("tiny_a/weights.safetensors"),
        "outputs.safetensors",
        device,
        Precision::F32,
        wgpu_tolerance,
    )
    .expect("tiny_a runs");
    // Cameras (3), intrinsics, depth (2), points (2), points from depth, 4 layers, DINO tokens.
    assert_eq!(rows.len(), 14, "{rows:?}");
    check_parity(&rows);
}

fn parity_tiny_masked<B: Backend>(device: &B::Device) {
    for outputs in ["outputs.safetensors", "outputs_unmasked.safetensors"] {
        let rows = run_fixture::<B>(
            &fixtures().join("tiny_masked"),
            &fixtures().join("tiny_a/weights.safetensors"),
            outputs,
            device,
            Precision::F32,
            wgpu_tolerance,
        )
        .expect("tiny_masked runs");
        println!("tiny_masked {outputs}:");
        assert!(rows.iter().any(|r| r.name == "depth"), "{rows:?}");
        check_parity(&rows);
    }
}

#[test]
fn tiny_a_matches_the_reference_on_wgpu() {
    on_wgpu(Precision::F32, body!(parity_tiny_a));
}

#[test]
fn tiny_masked_matches_the_reference_on_wgpu() {
    on_wgpu(Precision::F32, body!(parity_tiny_masked));
}

fn tiny_model<B: Backend>(device: &B::Device, precision: Precision) -> Vggt<B> {
    let config =
        VggtConfig::from_json_file(fixtures().join("tiny_a/config.json")).expect("tiny_a config");
    load_into(
        Vggt::<B>::new(&config, device),
        &fixtures().join("tiny_a/weights.safetensors"),
        &LoadOptions::for_precision(precision),
    )
    .expect("tiny_a weights")
}

/// Deterministic images `[1, S, 3, H, W]` in [0, 1], different for each `seed`.
fn images<B: Backend>(
    frames: usize,
    (height, width): (usize, usize),
    seed: usize,
    device: &B::Device,
) -> Tensor<B, 5> {
    let count = frames * 3 * height * width;
    let values: Vec<f32> = (0..count)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 999.0)
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, frames, 3, height, width]),
        device,
    )
}

/// Sparse-complete vs dense: only the summation order of the softmax/value products differs.
const ROUNDING_ATOL: f32 = 1e-5;

fn dense_equals_sparse_complete<B: Backend>(device: &B::Device) {
    let model = tiny_model::<B>(device, Precision::F32);
    // The fixture's shapes (3 frames of 56 x 84): the kernels compiled for the parity tests
    // are reused (a software adapter compiles shaders slowly).
    let frames = 3;
    let input = images::<B>(frames, (56, 84), 1, device);
    let run = |neighbours: Option<Vec<Vec<usize>>>| {
        let options = ForwardOptions {
            neighbours,
            record_intermediates: true,
            ..Default::default()
        };
        model.forward(input.clone(), &options).expect("forward")
    };
    let dense = run(None);
    let sparse = run(Some(vec![(0..frames).collect(); frames]));
    let mut compared = 0;
    for (name, dense_layer) in &dense.intermediates {
        if !name.starts_with("aggregator.layer_") {
            continue;
        }
        let (diff, _) = compare(
            &sparse.intermediates[name].to_f32_vec(),
            &dense_layer.to_f32_vec(),
            1.0,
            0.0,
        );
        println!("{name}: dense vs sparse-complete max abs diff {diff:.3e}");
        assert!(diff <= ROUNDING_ATOL, "{name}: {diff:e}");
        compared += 1;
    }
    assert_eq!(compared, 4, "every aggregator layer");
    let (depth_diff, _) = compare(
        &HostTensor::from_burn(sparse.depth).to_f32_vec(),
        &HostTensor::from_burn(dense.depth).to_f32_vec(),
        1.0,
        0.0,
    );
    println!("depth: dense vs sparse-complete max abs diff {depth_diff:.3e}");
    assert!(depth_diff <= 1e-4, "depth: {depth_diff:e}");
}

#[test]
fn sparse_complete_equals_dense_on_wgpu() {
    on_wgpu(Precision::F32, body!(dense_equals_sparse_complete));
}

fn device_now<B: Backend>(device: &B::Device) -> DeviceMemory {
    B::sync(device).expect("sync");
    device_probe(device).expect("wgpu has a memory probe")().expect("memory usage")
}

fn memory_back_to_baseline<B: Backend>(device: &B::Device) {
    let model = tiny_model::<B>(device, Precision::F32);
    let run = |seed: usize, recorder: &mut PhaseRecorder| {
        let out = model
            .forward_profiled(
                images::<B>(3, (56, 84), seed, device),
                &ForwardOptions::default(),
                recorder,
            )
            .expect("forward");
        let depth_sum: f32 = out.depth.clone().sum().into_scalar().elem();
        assert!(depth_sum.is_finite());
        drop(out);
    };
    // Window 0 compiles and autotunes the kernels; the baseline is taken after it.
    run(0, &mut PhaseRecorder::new());
    release_device_memory(device);
    let baseline = device_now::<B>(device);
    println!("baseline: {baseline:?}");
    for window in 1..6 {
        let mut recorder =
            PhaseRecorder::new().with_device_probe(device_probe(device).expect("probe"));
        run(window, &mut recorder);
        let after = device_now::<B>(device);
        let peak_in_use = recorder.device_peak_in_use_bytes().expect("device rows");
        print!("{}", recorder.report());
        println!("window {window}: after {after:?}, peak in use {peak_in_use} B");
        assert!(
            peak_in_use > baseline.in_use_bytes,
            "a window's activations must show in the pools"
        );
        assert_eq!(
            after.in_use_bytes, baseline.in_use_bytes,
            "window {window}: device bytes in use did not return to the baseline"
        );
    }
}

#[test]
fn device_memory_returns_to_baseline_after_every_window() {
    on_wgpu(Precision::F32, body!(memory_back_to_baseline));
}

/// Temporal band of `k` neighbours per frame.
fn band_neighbours(frames: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.min(frames);
    (0..frames)
        .map(|i| {
            let start = i.saturating_sub(k / 2).min(frames - k);
            (start..start + k).collect()
        })
        .collect()
}

/// Plans for several budgets, image sizes and options with the tiny model, runs two windows
/// with the planned sizes, and checks the device pools' high-water mark (reserved bytes,
/// weights included, pools released before the windows) against the budget.
fn planned_windows_stay_within_budget<B: Backend>(device: &B::Device) {
    let config =
        VggtConfig::from_json_file(fixtures().join("tiny_a/config.json")).expect("tiny_a config");
    let page = vggt::memory::device_max_page_bytes(device).expect("a wgpu device");
    let wgpu = PlanOptions {
        fused_attention: false,
        device_pool_bytes: vggt::planner::subslice_pool_bytes(page),
        streamed_neighbours: false,
        ..PlanOptions::default()
    };
    let pools = wgpu.device_pool_bytes;
    println!("largest pool page {page} B: pool slack {pools} B");
    // Budgets a little above the pools' slack keep the windows short (S = 20-50 on 56 x 84):
    // lavapipe runs every frame on the CPU, and the page-sized reservations make the check as
    // tight as with longer windows.
    let cases = [
        (pools + 24 * MIB, (56, 84), wgpu.clone()),
        (
            pools + 24 * MIB,
            (56, 84),
            PlanOptions {
                neighbours: Some(4),
                ..wgpu.clone()
            },
        ),
        (
            pools + 48 * MIB,
            (112, 168),
            PlanOptions {
                skip_point_head: true,
                ..wgpu.clone()
            },
        ),
    ];
    for (budget, hw, options) in cases {
        let planned = plan_with(budget, hw, Precision::F32, &config, &options).expect("plan");
        let frames = planned.window_size;
        assert!(frames >= 2, "budget {budget} gives only {frames} frame(s)");
        let mut model = tiny_model::<B>(device, Precision::F32);
        model.set_dpt_frames_chunk(planned.dpt_frames_chunk);
        let forward_options = ForwardOptions {
            neighbours: options.neighbours.map(|k| band_neighbours(frames, k)),
            skip_point_head: options.skip_point_head,
            ..Default::default()
        };
        let input = images::<B>(frames, hw, 3, device);
        // Warm-up (kernel compilation and autotuning), then the pools are released.
        let out = model
            .forward(input.clone(), &forward_options)
            .expect("forward");
        drop(out);
        release_device_memory(device);
        let mut peak = 0u64;
        for _ in 0..2 {
            let mut recorder =
                PhaseRecorder::new().with_device_probe(device_probe(device).expect("probe"));
            let out = model
                .forward_profiled(input.clone(), &forward_options, &mut recorder)
                .expect("forward");
            let depth_sum: f32 = out.depth.clone().sum().into_scalar().elem();
            assert!(depth_sum.is_finite());
            drop(out);
            peak = peak
                .max(recorder.device_peak_bytes().expect("device rows"))
                .max(device_now::<B>(device).reserved_bytes);
        }
        drop(model);
        println!(
            "budget {:6.1} MiB {hw:?} {options:?}: S = {frames}, DPT chunk {}, predicted {:6.1} MiB, \
             measured device peak {:6.1} MiB ({:.0}% of budget)",
            budget as f64 / MIB as f64,
            planned.dpt_frames_chunk,
            planned.estimate.total_bytes as f64 / MIB as f64,
            peak as f64 / MIB as f64,
            100.0 * peak as f64 / budget as f64
        );
        assert!(
            peak as usize <= budget,
            "measured device peak {peak} B exceeds the budget {budget} B ({planned:?})"
        );
    }
}

#[test]
fn planned_windows_stay_within_their_device_budget() {
    on_wgpu(Precision::F32, body!(planned_windows_stay_within_budget));
}

/// f16 where the adapter has 16-bit shader floats (close to f32), a clear error where not;
/// bf16 is always a clear error (WGSL has no bfloat16).
#[test]
fn half_precisions_run_or_are_refused_clearly() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let device = match vggt::device::best_wgpu_adapter() {
        Ok(device) => device,
        Err(e) if expected() => panic!("VGGT_EXPECT_WGPU=1 but no wgpu adapter: {e}"),
        Err(e) => {
            eprintln!("skipped: no usable wgpu adapter ({e})");
            return;
        }
    };
    struct Depth(Precision);
    impl OnBackend for Depth {
        type Output = Vec<f32>;
        fn run<B: Backend>(self, device: B::Device, _info: &DeviceInfo) -> Vec<f32> {
            let model = tiny_model::<B>(&device, self.0);
            let out = model
                .forward(
                    images::<B>(3, (56, 84), 2, &device),
                    &ForwardOptions::default(),
                )
                .expect("forward");
            HostTensor::from_burn(out.depth).to_f32_vec()
        }
    }
    let f32_depth = vggt::dispatch(device, Precision::F32, Depth(Precision::F32)).expect("f32");
    match vggt::dispatch(device, Precision::F16, Depth(Precision::F16)) {
        Ok(f16_depth) => {
            let (diff, worst) = compare(&f16_depth, &f32_depth, 0.0, 0.05);
            println!("f16 vs f32 depth: max abs diff {diff:.3e}, worst/5% {worst:.3}");
            assert!(worst <= 1.0, "f16 depth more than 5 % from f32");
        }
        Err(e) => {
            println!("f16 refused: {e}");
            assert!(matches!(e, DeviceError::UnsupportedPrecision { .. }), "{e}");
            assert!(e.to_string().contains("f32"), "{e}");
        }
    }
    let bf16 = vggt::dispatch(device, Precision::Bf16, Depth(Precision::Bf16)).unwrap_err();
    println!("bf16 refused: {bf16}");
    assert!(
        matches!(bf16, DeviceError::UnsupportedPrecision { .. }),
        "{bf16}"
    );
    assert!(bf16.to_string().contains("bf16"), "{bf16}");
}
