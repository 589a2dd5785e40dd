//! Host memory of repeated forward passes: the per-phase report is complete and consistent, and
//! live memory returns to its baseline after every window (no leak).
//!
//! The counting allocator is process-wide, so every test here takes [`LOCK`] and the counters only
//! ever see one forward at a time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::memory::{host_memory, CountingAllocator, PhaseRecorder};
use vggt::Precision;
use vggt::{ForwardOptions, Vggt, VggtConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

static LOCK: Mutex<()> = Mutex::new(());

type B = Flex;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tiny_model() -> Vggt<B> {
    tiny_model_in(Precision::F32)
}

fn tiny_model_in(precision: Precision) -> Vggt<B> {
    let config =
        VggtConfig::from_json_file(fixtures().join("tiny_a/config.json")).expect("tiny_a config");
    let model = Vggt::<B>::new(&config, &Default::default());
    load_into(
        model,
        &fixtures().join("tiny_a/weights.safetensors"),
        &LoadOptions::for_precision(precision),
    )
    .expect("tiny_a weights")
}

/// Expected profile rows: `patch_embed`, one `aggregator.layer_NN` per layer, then the heads.
fn expected_rows(model: &Vggt<B>, heads: &[&str]) -> Vec<String> {
    let layers = (0..model.aggregator.depth()).map(|i| format!("aggregator.layer_{i:02}"));
    std::iter::once("patch_embed".to_string())
        .chain(layers)
        .chain(heads.iter().map(|h| h.to_string()))
        .collect()
}

/// Deterministic images `[1, S, 3, H, W]` in [0, 1], different for each `seed`.
fn images(frames: usize, (height, width): (usize, usize), seed: usize) -> Tensor<B, 5> {
    let count = frames * 3 * height * width;
    let values: Vec<f32> = (0..count)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 999.0)
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, frames, 3, height, width]),
        &Default::default(),
    )
}

fn live_bytes() -> usize {
    host_memory()
        .expect("the counting allocator is installed")
        .live_bytes
}

/// The first matrix product a thread runs on the backend's portable `gemm` allocates that
/// crate's 1 MiB thread-local packing buffer, kept for the thread's life. Which pool thread
/// first runs one is up to the scheduler (most products go to BLAS when it is installed), so
/// every thread runs one, in f32 and bf16, before a baseline is taken.
fn warm_every_thread() {
    rayon::broadcast(|_| {
        let device = Default::default();
        for dtype in [DType::F32, DType::BF16] {
            let a = Tensor::<B, 2>::ones([64, 64], &device).cast(dtype);
            let _ = a.clone().matmul(a).into_data();
        }
    });
}

/// Allocator caches that may legitimately persist after the first window: thread-local buffers
/// of the worker pool and lazily built backend tables are created during window 1 and reused,
/// so the baseline is taken after it. Later windows may still differ by a few small buffers
/// (a thread's scratch being resized); 256 KiB is far below one window's activations
/// (several MiB here), so any per-window leak of a tensor shows.
const SLACK_BYTES: usize = 256 * 1024;

#[test]
fn live_memory_returns_to_baseline_after_every_window() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let model = tiny_model();
    let run = |seed: usize, frames: usize| {
        let out = model
            .forward(images(frames, (56, 84), seed), &ForwardOptions::default())
            .expect("forward");
        // Read something so that lazy backends must have computed the outputs.
        let depth_sum: f32 = out.depth.clone().sum().into_scalar();
        assert!(depth_sum.is_finite());
        drop(out);
    };
    run(0, 4);
    let baseline = live_bytes();
    let mut lives = Vec::new();
    for window in 1..6 {
        vggt::memory::reset_peak();
        run(window, 4);
        let peak = host_memory().expect("installed").peak_bytes;
        let live = live_bytes();
        lives.push(live);
        println!("window {window}: live {live} B (baseline {baseline} B), peak {peak} B");
        assert!(
            peak > baseline + 4 * SLACK_BYTES,
            "a window's activations ({} B) should dwarf the slack",
            peak - baseline
        );
        assert!(
            live <= baseline + SLACK_BYTES,
            "window {window}: live {live} B exceeds baseline {baseline} B + {SLACK_BYTES} B"
        );
    }
}

#[test]
fn profiled_forward_reports_every_phase_and_matches_forward() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let model = tiny_model();
    let input = images(3, (56, 84), 7);
    let plain = model
        .forward(input.clone(), &ForwardOptions::default())
        .expect("forward");

    let before = live_bytes();
    let mut recorder = PhaseRecorder::new();
    let profiled = model
        .forward_profiled(input, &ForwardOptions::default(), &mut recorder)
        .expect("profiled forward");
    let names: Vec<&str> = recorder.phases.iter().map(|p| p.phase.as_str()).collect();
    print!("{}", recorder.report());
    assert_eq!(
        names,
        expected_rows(&model, &["camera_head", "depth_head", "point_head"])
    );
    assert!(names.len() > 4, "one row per aggregator layer");

    for (a, b) in [
        (plain.depth.clone(), profiled.depth.clone()),
        (
            plain.world_points.clone().expect("points"),
            profiled.world_points.clone().expect("points"),
        ),
    ] {
        assert!(
            a.equal(b).all().into_scalar(),
            "profiling changed an output"
        );
    }
    assert!(plain
        .pose_enc
        .clone()
        .equal(profiled.pose_enc.clone())
        .all()
        .into_scalar());

    // Each phase's peak is at least what is live at its end; the outputs are live after the
    // point head and gone once dropped.
    for phase in &recorder.phases {
        assert!(phase.peak_bytes >= phase.live_bytes, "{phase:?}");
    }
    let last = recorder.phases.last().expect("rows");
    assert!(
        last.live_bytes > before,
        "outputs must be live at the end: {} <= {before}",
        last.live_bytes
    );
    drop(profiled);
    assert!(live_bytes() <= before + SLACK_BYTES);
    assert!(recorder.peak_bytes() > before);
    assert!(
        recorder.device_peak_bytes().is_none(),
        "no device probe on the CPU"
    );
}

#[test]
fn skipping_the_point_head_skips_its_phase_and_lowers_the_peak() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let model = tiny_model();
    let input = images(6, (56, 84), 3);
    let _ = model
        .forward(input.clone(), &ForwardOptions::default())
        .expect("warm-up");

    let mut full = PhaseRecorder::new();
    drop(
        model
            .forward_profiled(input.clone(), &ForwardOptions::default(), &mut full)
            .expect("forward"),
    );
    let mut depth_only = PhaseRecorder::new();
    let options = ForwardOptions {
        skip_point_head: true,
        ..Default::default()
    };
    let out = model
        .forward_profiled(input, &options, &mut depth_only)
        .expect("forward");
    assert!(out.world_points.is_none());
    let names: Vec<&str> = depth_only.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(names, expected_rows(&model, &["camera_head", "depth_head"]));
    assert!(
        depth_only.peak_bytes() < full.peak_bytes(),
        "depth only {} B, full {} B",
        depth_only.peak_bytes(),
        full.peak_bytes()
    );
}

/// Live bytes above `before` at the end of each `aggregator.layer_NN` row.
fn aggregator_live(recorder: &PhaseRecorder, before: usize) -> Vec<usize> {
    recorder
        .phases
        .iter()
        .filter(|p| p.phase.starts_with("aggregator.layer_"))
        .map(|p| p.live_bytes.saturating_sub(before))
        .collect()
}

/// With a bf16 aggregator the kept layers and the token stream take half the bytes: at the end of
/// every layer row, what is live above the pre-forward baseline (weights, input) is at most 60 %
/// of float32's. The rows are the same in both precisions. (Peaks are not compared: on the CPU
/// backend bf16 kernels work through float32 temporaries.)
#[test]
fn bf16_mixed_halves_the_live_aggregator_layers() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let input = images(6, (56, 84), 5);
    let mut lives = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let model = tiny_model_in(precision);
        let _ = model
            .forward(input.clone(), &ForwardOptions::default())
            .expect("warm-up");
        warm_every_thread();
        let before = live_bytes();
        let mut recorder = PhaseRecorder::new();
        let out = model
            .forward_profiled(input.clone(), &ForwardOptions::default(), &mut recorder)
            .expect("forward");
        drop(out);
        let names: Vec<&str> = recorder.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(
            names,
            expected_rows(&model, &["camera_head", "depth_head", "point_head"])
        );
        let live = aggregator_live(&recorder, before);
        println!("{precision:?}: live above baseline per layer row {live:?} B");
        print!("{}", recorder.report());
        lives.push(live);
    }
    for (layer, (f32_live, bf16_live)) in lives[0].iter().zip(&lives[1]).enumerate() {
        assert!(
            *bf16_live * 10 <= *f32_live * 6 && *bf16_live > 0,
            "layer {layer}: bf16-mixed {bf16_live} B live, float32 {f32_live} B"
        );
    }
}

/// The floor is the lowest live size between two reads: a buffer allocated and freed in between
/// does not lower or raise it, a buffer that grows (`realloc`) is never counted as freed on the
/// way, and a buffer freed for good lowers it. The buffers are 256 MiB (zeroed, so never touched)
/// so that the other tests of this binary, allocating a few MiB at a time, cannot blur them.
#[test]
fn the_floor_is_what_stayed_allocated_between_two_reads() {
    const BIG: usize = 256 << 20;
    const SLACK: usize = 64 << 20;
    let held = vec![0u8; BIG];
    let mut grown = vec![0u8; BIG];
    let start = vggt::memory::take_floor()
        .expect("the counting allocator is installed")
        .live_bytes;
    drop(std::hint::black_box(vec![0u8; BIG]));
    grown.reserve_exact(2 * BIG);
    std::hint::black_box(&grown);
    let during = host_memory().expect("installed");
    assert!(
        during.floor_bytes + SLACK >= start,
        "floor {} fell below the {start} bytes held throughout",
        during.floor_bytes
    );
    assert!(during.live_bytes >= start + 2 * BIG - SLACK, "{during:?}");
    drop(grown);
    drop(held);
    let freed = vggt::memory::take_floor().expect("installed");
    assert!(
        freed.floor_bytes + 2 * BIG <= start + SLACK,
        "floor {} after freeing {} of {start} bytes",
        freed.floor_bytes,
        2 * BIG
    );
    let next = host_memory().expect("installed");
    assert!(
        next.floor_bytes + SLACK >= freed.live_bytes,
        "a new floor starts at the live size: {next:?} after {freed:?}"
    );
}
