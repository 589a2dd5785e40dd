//! Execution schedule of the aggregator: frame-attention chunking (exact) and the early
//! global-to-frame swap (approximate, off by default).
//!
//! * Chunking frame attention over frames leaves every output layer unchanged.
//! * The swap is off by default; with one frame per sequence it is exact (global attention over a
//!   single frame is frame attention); with several frames it changes the outputs, and the test
//!   `swap_accuracy_cost_on_fixtures` prints by how much (run it with `--nocapture`). These are
//!   tiny random-weight fixtures: the figures say nothing about the real VGGT-1B.
//! * Chunking lowers the host peak of the blocks (counting allocator; the tests of this binary run
//!   one at a time so that the counters see one forward pass).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use burn::tensor::Tensor;
use vggt::aggregator::{Aggregator, AggregatorOptions, AttentionSchedule};
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::memory::{host_memory, reset_peak, CountingAllocator};
use vggt::tensor_io::HostTensor;
use vggt::{ForwardOptions, Vggt};

mod common;
use common::{config, images, load_aggregator, B, FIXTURES};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Held by every test: the allocator counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Chunked vs unchunked frame attention: the same arithmetic on fewer rows. Equal to 1e-7 with
/// the portable matrix products (`.ci/run` runs this file with `VGGT_BLAS=portable` too). A BLAS
/// library may pick other kernels for other row counts (OpenBLAS does for small products): a
/// product then moves by an ulp, which the following layers carry on (measured: 2.5 ulp of the
/// layer's largest value by layer 3 of tiny_a), so 8 ulp of that value is allowed.
fn chunk_tolerance(scale: f32) -> f32 {
    match cpu_kernels::provider() {
        cpu_kernels::Provider::Portable { .. } => 1e-7,
        cpu_kernels::Provider::Blas(_) => 8.0 * f32::EPSILON * scale,
    }
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    HostTensor::from_burn(t).to_f32_vec()
}

/// Max abs difference and max abs of `reference`.
fn change<const D: usize>(reference: Tensor<B, D>, other: Tensor<B, D>) -> (f32, f32) {
    let (a, b) = (host(reference), host(other));
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    (diff, scale)
}

fn run(
    aggregator: &Aggregator<B>,
    images: Tensor<B, 5>,
    schedule: AttentionSchedule,
    neighbours: Option<Vec<Vec<usize>>>,
) -> BTreeMap<usize, Tensor<B, 4>> {
    let options = AggregatorOptions {
        neighbours,
        ..Default::default()
    };
    let embedded = aggregator.embed(images, false).expect("embed");
    aggregator
        .forward_scheduled(embedded, &options, &schedule, &mut |_| {})
        .expect("forward")
        .layers
}

#[test]
fn default_schedule_is_exact_and_unchanged() {
    let _serial = serial();
    let mut aggregator = load_aggregator();
    assert_eq!(aggregator.schedule(), AttentionSchedule::default());
    assert_eq!(AttentionSchedule::default().global_as_frame_blocks, 0);
    assert_eq!(AttentionSchedule::default().frame_chunk, None);
    let images = images("tiny_a");
    let plain = aggregator
        .forward(images.clone(), &AggregatorOptions::default())
        .expect("forward")
        .layers;
    let explicit = run(
        &aggregator,
        images.clone(),
        AttentionSchedule::default(),
        None,
    );
    for (index, layer) in &plain {
        assert_eq!(
            change(layer.clone(), explicit[index].clone()).0,
            0.0,
            "layer {index}"
        );
    }
    // The module's schedule is what `forward` follows.
    aggregator.set_schedule(AttentionSchedule {
        global_as_frame_blocks: 1,
        frame_chunk: None,
    });
    let swapped = aggregator
        .forward(images, &AggregatorOptions::default())
        .expect("forward")
        .layers;
    assert!(change(plain[&0].clone(), swapped[&0].clone()).0 > 1e-3);
}

#[test]
fn frame_chunks_do_not_change_outputs() {
    let _serial = serial();
    let aggregator = load_aggregator();
    let one = images("tiny_a");
    // B = 2 sequences of S = 3: 6 frame rows, chunks of 4 leave a remainder of 2.
    let two = Tensor::cat(vec![one.clone(), one.clone().flip([4])], 0);
    for images in [one, two] {
        let frames = images.dims()[1];
        for swap in [0, 2] {
            for neighbours in [None, Some((0..frames).map(|i| vec![i]).collect())] {
                let schedule = |frame_chunk| AttentionSchedule {
                    global_as_frame_blocks: swap,
                    frame_chunk,
                };
                let whole = run(
                    &aggregator,
                    images.clone(),
                    schedule(None),
                    neighbours.clone(),
                );
                for chunk in [0, 1, 2, 4] {
                    let chunked = run(
                        &aggregator,
                        images.clone(),
                        schedule(Some(chunk)),
                        neighbours.clone(),
                    );
                    assert_eq!(whole.len(), chunked.len());
                    for (index, layer) in &whole {
                        let (diff, scale) = change(layer.clone(), chunked[index].clone());
                        assert!(
                            diff <= chunk_tolerance(scale),
                            "B {}, swap {swap}, chunk {chunk}, layer {index}: {diff:e} (max |value| {scale:e})",
                            images.dims()[0]
                        );
                    }
                }
            }
        }
    }
}

/// With a single frame, global attention is frame attention: the swap is exact.
#[test]
fn swap_is_exact_for_a_single_frame() {
    let _serial = serial();
    let aggregator = load_aggregator();
    let single = images("tiny_a").narrow(1, 0, 1);
    let dense = run(
        &aggregator,
        single.clone(),
        AttentionSchedule::default(),
        None,
    );
    let swapped = run(
        &aggregator,
        single,
        AttentionSchedule {
            global_as_frame_blocks: aggregator.depth(),
            frame_chunk: None,
        },
        None,
    );
    for (index, layer) in dense {
        let (diff, _) = change(layer, swapped[&index].clone());
        assert!(diff <= 1e-5, "layer {index}: {diff:e}");
    }
}

/// Swapping the first L global blocks leaves frame block 0's output (the first half of layer 0's
/// channels) alone and changes the global half; with L = 1 the layers up to the swap boundary
/// equal isolated-frame sparse attention in those blocks.
#[test]
fn swap_changes_global_blocks_only_from_the_swapped_ones() {
    let _serial = serial();
    let aggregator = load_aggregator();
    let images = images("tiny_a");
    let frames = images.dims()[1];
    let c = config().aggregator.embed_dim;
    let dense = run(
        &aggregator,
        images.clone(),
        AttentionSchedule::default(),
        None,
    );
    let swap = AttentionSchedule {
        global_as_frame_blocks: 1,
        frame_chunk: None,
    };
    let swapped = run(&aggregator, images.clone(), swap, None);
    let half = |t: &Tensor<B, 4>, start: usize| t.clone().narrow(3, start, c);
    assert_eq!(change(half(&dense[&0], 0), half(&swapped[&0], 0)).0, 0.0);
    assert!(change(half(&dense[&0], c), half(&swapped[&0], c)).0 > 1e-3);
    // Global block 0 as frame attention = global block 0 with each frame its only neighbour.
    let isolated: Vec<Vec<usize>> = (0..frames).map(|i| vec![i]).collect();
    let sparse = run(
        &aggregator,
        images,
        AttentionSchedule::default(),
        Some(isolated),
    );
    let (diff, _) = change(sparse[&0].clone(), swapped[&0].clone());
    assert!(diff <= 1e-5, "layer 0: swap vs isolated sparse {diff:e}");
}

/// Accuracy cost of the swap against dense on both fixtures, for L = 1, 2: every aggregator layer
/// (all four feed the depth head in the tiny config) and the depth map through the full model.
#[test]
fn swap_accuracy_cost_on_fixtures() {
    let _serial = serial();
    let config = config();
    let device = Default::default();
    let model = Vggt::<B>::new(&config, &device);
    let mut model = load_into(
        model,
        Path::new(&format!("{FIXTURES}/tiny_a/weights.safetensors")),
        &LoadOptions::default(),
    )
    .expect("tiny weights load");
    let depth_layers = config.depth_head.intermediate_layer_idx;
    println!("early global-to-frame swap vs dense (tiny random-weight fixtures, Flex f32)");
    for fixture in ["tiny_a", "tiny_masked"] {
        let images = images(fixture);
        model.aggregator.set_schedule(AttentionSchedule::default());
        let dense_layers = run(
            &model.aggregator,
            images.clone(),
            AttentionSchedule::default(),
            None,
        );
        let dense_depth = model
            .forward(images.clone(), &ForwardOptions::default())
            .expect("forward")
            .depth;
        for swap in [1, 2] {
            let schedule = AttentionSchedule {
                global_as_frame_blocks: swap,
                frame_chunk: None,
            };
            let layers = run(&model.aggregator, images.clone(), schedule, None);
            for &index in &depth_layers {
                let (diff, scale) = change(dense_layers[&index].clone(), layers[&index].clone());
                println!(
                    "{fixture:11} S={} L={swap} aggregator.layer_{index:02}: max|diff| {diff:.3e}, \
                     max|dense| {scale:.3e}, relative {:.3e}",
                    images.dims()[1],
                    diff / scale
                );
                assert!(
                    diff.is_finite() && diff > 0.0,
                    "the swap must change layer {index}"
                );
            }
            model.aggregator.set_schedule(schedule);
            let depth = model
                .forward(images.clone(), &ForwardOptions::default())
                .expect("forward")
                .depth;
            let (diff, scale) = change(dense_depth.clone(), depth);
            println!(
                "{fixture:11} S={} L={swap} depth: max|diff| {diff:.3e}, max|dense| {scale:.3e}, \
                 relative {:.3e}",
                images.dims()[1],
                diff / scale
            );
            assert!(diff.is_finite() && diff > 0.0, "the swap must change depth");
        }
    }
}

/// Chunks of 4 of 48 frames lower the host peak of the blocks with every global block swapped to
/// frame attention (every block fully chunked), and do not raise it with dense global blocks
/// (feed-forward chunked). Only the last layer is kept, so the outputs held are the same.
#[test]
fn frame_chunks_lower_the_peak() {
    let _serial = serial();
    let aggregator = load_aggregator();
    let frames = 48;
    let images = images("tiny_a").narrow(1, 0, 1).repeat_dim(1, frames);
    let options = AggregatorOptions {
        keep_layers: Some(vec![aggregator.depth() - 1]),
        ..Default::default()
    };
    let peak = |global_as_frame_blocks, frame_chunk| {
        let schedule = AttentionSchedule {
            global_as_frame_blocks,
            frame_chunk,
        };
        let embedded = aggregator.embed(images.clone(), false).expect("embed");
        let before = host_memory().expect("counting allocator installed");
        reset_peak();
        let output = aggregator
            .forward_scheduled(embedded, &options, &schedule, &mut |_| {})
            .expect("forward");
        let after = host_memory().expect("counting allocator installed");
        drop(output);
        after.peak_bytes - before.live_bytes
    };
    let depth = aggregator.depth();
    let whole = peak(depth, None);
    let chunked = peak(depth, Some(4));
    println!(
        "S={frames}, all blocks frame attention: peak above baseline {whole} B unchunked, \
         {chunked} B with chunks of 4"
    );
    assert!(chunked < whole, "chunked {chunked} B, unchunked {whole} B");
    // Dense global blocks: their attention sees all tokens, their feed-forward is chunked. At
    // this width the attention half holds about as much as the feed-forward half (q, k, v,
    // their fused projection and the output, ~8 C per token, against x and a 4 C hidden layer
    // and its GELU), so chunking may only remove the feed-forward's share: never raise the peak.
    let (whole, chunked) = (peak(0, None), peak(0, Some(4)));
    println!(
        "S={frames}, dense global blocks: peak above baseline {whole} B unchunked, {chunked} B \
         with chunks of 4"
    );
    assert!(chunked <= whole, "chunked {chunked} B, unchunked {whole} B");
}
