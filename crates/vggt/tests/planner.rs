//! Budget planner: exact parameter counts, monotone sane plans, and the measured host peak of a
//! forward with the planned sizes stays within the budget.
//!
//! The counting allocator is process-wide: every test takes [`LOCK`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use vggt::checkpoint::{checkpoint_keys, is_ignored_key, load_into, LoadOptions};
use vggt::memory::{host_memory, reset_peak, CountingAllocator};
use vggt::planner::{estimate, parameter_count, plan, plan_with, PlanError, PlanOptions};
use vggt::Precision;
use vggt::{ForwardOptions, Vggt, VggtConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

static LOCK: Mutex<()> = Mutex::new(());

type B = Flex;
const MIB: usize = 1024 * 1024;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tiny_config() -> VggtConfig {
    VggtConfig::from_json_file(fixtures().join("tiny_a/config.json")).expect("tiny_a config")
}

/// Elements of the non-track, non-ignored tensors listed in `keys` (key -> shape).
fn ported_elements<'a>(keys: impl Iterator<Item = (&'a str, Vec<usize>)>) -> usize {
    keys.filter(|(key, _)| !key.starts_with("track_head.") && !is_ignored_key(key))
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum()
}

#[test]
fn parameter_count_matches_the_checkpoints() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let tiny = checkpoint_keys(&fixtures().join("tiny_a/weights.safetensors")).expect("keys");
    assert_eq!(
        parameter_count(&tiny_config()),
        ported_elements(tiny.iter().map(|(k, s)| (k.as_str(), s.clone())))
    );

    // `fixtures/vggt1b_keys.txt`: key<TAB>shape<TAB>dtype lines of the real checkpoint.
    let listing = std::fs::read_to_string(fixtures().join("vggt1b_keys.txt")).expect("key list");
    let keys: Vec<(String, Vec<usize>)> = listing
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let key = fields.next().expect("key").to_string();
            let shape = fields
                .next()
                .expect("shape")
                .trim_matches(|c| c == '[' || c == ']' || c == '(' || c == ')')
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse::<usize>().expect("dimension"))
                .collect();
            (key, shape)
        })
        .collect();
    let expected = ported_elements(keys.iter().map(|(k, s)| (k.as_str(), s.clone())));
    let counted = parameter_count(&VggtConfig::vggt_1b());
    assert_eq!(counted, expected);
    assert!(
        counted > 1_100_000_000,
        "VGGT-1B without track head: {counted}"
    );
}

#[test]
fn plans_grow_with_the_budget_and_shrink_with_the_image() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let config = VggtConfig::vggt_1b();
    let gib = 1024 * MIB;
    let hw = (392, 518);
    let small = plan(8 * gib, hw, Precision::Bf16, &config).expect("8 GiB bf16 fits some frames");
    let large = plan(12 * gib, hw, Precision::Bf16, &config).expect("12 GiB plan");
    println!("8 GiB bf16: {small:?}\n12 GiB bf16: {large:?}");
    assert!(small.window_size >= 1);
    assert!(large.window_size > small.window_size);
    assert!(small.estimate.total_bytes <= 8 * gib);
    assert!(large.estimate.total_bytes <= 12 * gib);

    // f32 weights alone (4.4 GiB) leave less room than bf16 ones.
    let f32_plan = plan(12 * gib, hw, Precision::F32, &config).expect("12 GiB f32 plan");
    assert!(f32_plan.window_size < large.window_size);
    // f32 weights do not fit in 4 GiB at all.
    assert!(matches!(
        plan(4 * gib, hw, Precision::F32, &config),
        Err(PlanError::BudgetTooSmall { .. })
    ));
    // Bigger images leave fewer frames.
    let big_images = plan(12 * gib, (518, 518), Precision::Bf16, &config).expect("plan");
    assert!(big_images.window_size < large.window_size);
    // Sparse global attention (k = 8) saves time, not memory: with fused attention dense
    // attention holds no score matrix either, and sparse gathers copies of keys and values.
    let sparse_options = PlanOptions {
        neighbours: Some(8),
        ..Default::default()
    };
    let sparse =
        plan_with(12 * gib, hw, Precision::Bf16, &config, &sparse_options).expect("sparse plan");
    assert!(sparse.window_size >= 1 && sparse.estimate.total_bytes <= 12 * gib);
    // In float32 on the CPU kernels the neighbours stream through the attention kernel: sparse
    // attention costs no more than dense; gathered (the GPU backends) it costs more.
    let at = |options: &PlanOptions| estimate(&config, hw, Precision::F32, 32, 1, options);
    let dense = at(&PlanOptions::default());
    let streamed = at(&sparse_options);
    let gathered = at(&PlanOptions {
        streamed_neighbours: false,
        ..sparse_options.clone()
    });
    assert!(streamed.aggregator_bytes <= dense.aggregator_bytes);
    assert!(gathered.aggregator_bytes > streamed.aggregator_bytes);
    // Without a fused attention kernel the score matrices cost memory: shorter windows where
    // the aggregator is the largest phase (float32; in bf16 the float32 heads are).
    let unfused = plan_with(
        12 * gib,
        hw,
        Precision::F32,
        &config,
        &PlanOptions {
            fused_attention: false,
            ..Default::default()
        },
    )
    .expect("unfused plan");
    assert!(unfused.window_size < f32_plan.window_size);
    // Half-precision aggregator, float32 heads: the heads' weights and working sets are counted
    // in four bytes, so a bf16 plan holds more than f32 weights alone would explain but less
    // than an all-bf16 model.
    let bf16_estimate = estimate(&config, hw, Precision::Bf16, 8, 1, &PlanOptions::default());
    let f32_estimate = estimate(&config, hw, Precision::F32, 8, 1, &PlanOptions::default());
    assert!(bf16_estimate.weights_bytes * 2 > f32_estimate.weights_bytes);
    assert!(bf16_estimate.weights_bytes < f32_estimate.weights_bytes);
    assert_eq!(bf16_estimate.outputs_bytes, f32_estimate.outputs_bytes);
    assert!(bf16_estimate.aggregator_bytes * 2 <= f32_estimate.aggregator_bytes + 1);
    // The chosen window is the largest that fits.
    let next = estimate(
        &config,
        hw,
        Precision::Bf16,
        large.window_size + 1,
        1,
        &PlanOptions::default(),
    );
    assert!(next.total_bytes > 12 * gib);
    assert!(matches!(
        plan(gib, (390, 518), Precision::Bf16, &config),
        Err(PlanError::ImageSize { .. })
    ));
}

/// Deterministic images `[1, S, 3, H, W]` in [0, 1].
fn images(frames: usize, (height, width): (usize, usize)) -> Tensor<B, 5> {
    let count = frames * 3 * height * width;
    let values: Vec<f32> = (0..count)
        .map(|i| ((i * 7919) % 1000) as f32 / 999.0)
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, frames, 3, height, width]),
        &Default::default(),
    )
}

/// Plans for several budgets and image sizes with the tiny model, runs a forward with the planned
/// window and DPT chunk, and checks the counting allocator's peak (weights and inputs included,
/// measured from before the model was loaded) against the budget.
#[test]
fn measured_peak_of_planned_forward_stays_within_budget() {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let config = tiny_config();
    let cases = [
        (24 * MIB, (56, 84), PlanOptions::default()),
        (64 * MIB, (56, 84), PlanOptions::default()),
        (48 * MIB, (112, 168), PlanOptions::default()),
        (
            64 * MIB,
            (56, 84),
            PlanOptions {
                neighbours: Some(4),
                ..Default::default()
            },
        ),
        (
            96 * MIB,
            (112, 168),
            PlanOptions {
                skip_point_head: true,
                ..Default::default()
            },
        ),
    ];
    for (budget, hw, options) in cases {
        let planned = plan_with(budget, hw, Precision::F32, &config, &options).expect("plan");
        let frames = planned.window_size;
        assert!(frames >= 2, "budget {budget} gives only {frames} frame(s)");

        let before = host_memory().expect("installed").live_bytes;
        reset_peak();
        let mut model = Vggt::<B>::new(&config, &Default::default());
        model = load_into(
            model,
            &fixtures().join("tiny_a/weights.safetensors"),
            &LoadOptions::default(),
        )
        .expect("weights");
        model.set_dpt_frames_chunk(planned.dpt_frames_chunk);
        let neighbours = options.neighbours.map(|k| band_neighbours(frames, k));
        let forward_options = ForwardOptions {
            neighbours,
            skip_point_head: options.skip_point_head,
            ..Default::default()
        };
        let out = model
            .forward(images(frames, hw), &forward_options)
            .expect("forward");
        let depth_sum: f32 = out.depth.clone().sum().into_scalar();
        assert!(depth_sum.is_finite());
        let peak = host_memory().expect("installed").peak_bytes - before;
        drop(out);
        drop(model);
        println!(
            "budget {:6.1} MiB {hw:?} {options:?}: S = {frames}, DPT chunk {}, predicted {:6.1} MiB, \
             measured peak {:6.1} MiB ({:.0}% of budget)",
            budget as f64 / MIB as f64,
            planned.dpt_frames_chunk,
            planned.estimate.total_bytes as f64 / MIB as f64,
            peak as f64 / MIB as f64,
            100.0 * peak as f64 / budget as f64
        );
        assert!(
            peak <= budget,
            "measured peak {peak} B exceeds the budget {budget} B ({planned:?})"
        );
        // The plan is not needlessly timid: the next window up would not fit the estimate, and
        // the measurement uses a real share of the budget.
        assert!(
            peak * 4 >= budget,
            "peak {peak} B is under a quarter of {budget} B"
        );
    }
}

/// Temporal band of `k` neighbours: frames i-k/2 .. i+k/2 clipped to the sequence and shifted to
/// keep `k` members (fewer only when S < k).
fn band_neighbours(frames: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.min(frames);
    (0..frames)
        .map(|i| {
            let start = i.saturating_sub(k / 2).min(frames - k);
            (start..start + k).collect()
        })
        .collect()
}
