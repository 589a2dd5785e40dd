//! Sparse (neighbour-restricted) global attention of the aggregator.
//!
//! * With every frame neighbouring every frame it must equal dense attention up to float rounding.
//! * `fixtures/tiny_masked` (upstream reference with a boolean [S*P, S*P] attention mask built from
//!   a frame covisibility matrix, torch CPU float32; see its README) must be reproduced within the
//!   README's atol 5e-5.
//! * Frames outside a frame's neighbour list must have no influence on it.
//! * Malformed neighbour lists are rejected with errors naming the fault.
//! * The staged forward (DINO once, then the blocks) equals the one-shot forward and reports its
//!   stage boundaries in order.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use vggt::aggregator::{
    validate_neighbours, Aggregator, AggregatorOptions, AggregatorStage, ModelError,
};
use vggt::layers::{Attention, BlockConfig};
use vggt::rope::{frame_positions, RopeTables};
use vggt::tensor_io::{compare, read_tensors, HostTensor};

mod common;
use common::{config, images, load_aggregator, B, FIXTURES};

/// README tolerance for aggregator layers.
const ATOL: f32 = 5e-5;
/// Sparse-complete vs dense: only the summation order of the softmax/value products differs.
const ROUNDING_ATOL: f32 = 1e-5;

fn all_frames(frames: usize) -> Vec<Vec<usize>> {
    vec![(0..frames).collect(); frames]
}

fn max_abs_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    let (a, b) = (
        HostTensor::from_burn(a).to_f32_vec(),
        HostTensor::from_burn(b).to_f32_vec(),
    );
    compare(&a, &b, 1.0, 0.0).0
}

fn layers(
    aggregator: &Aggregator<B>,
    images: Tensor<B, 5>,
    neighbours: Option<Vec<Vec<usize>>>,
) -> BTreeMap<usize, Tensor<B, 4>> {
    let options = AggregatorOptions {
        neighbours,
        ..Default::default()
    };
    aggregator
        .forward(images, &options)
        .expect("forward")
        .layers
}

#[test]
fn complete_neighbours_equal_dense() {
    let aggregator = load_aggregator();
    let images = images("tiny_a");
    let frames = images.dims()[1];
    let dense = layers(&aggregator, images.clone(), None);
    let sparse = layers(&aggregator, images, Some(all_frames(frames)));
    assert_eq!(dense.len(), sparse.len());
    for (index, dense_layer) in dense {
        let diff = max_abs_diff(dense_layer, sparse[&index].clone());
        println!("layer {index}: dense vs sparse-complete max abs diff {diff:.3e}");
        assert!(diff <= ROUNDING_ATOL, "layer {index}: {diff:e}");
    }
}

#[test]
fn masked_fixture_matches_reference() {
    let inputs =
        read_tensors(format!("{FIXTURES}/tiny_masked/inputs.safetensors")).expect("inputs");
    let mask = &inputs["frame_mask"];
    let frames = mask.shape[0];
    let mask = mask.to_i64_vec();
    let neighbours: Vec<Vec<usize>> = (0..frames)
        .map(|i| (0..frames).filter(|&j| mask[i * frames + j] != 0).collect())
        .collect();
    assert!(
        neighbours.iter().any(|list| list.len() < frames),
        "the fixture mask must be sparse"
    );

    let aggregator = load_aggregator();
    let got = layers(&aggregator, images("tiny_masked"), Some(neighbours));
    let reference =
        read_tensors(format!("{FIXTURES}/tiny_masked/outputs.safetensors")).expect("outputs");
    let names: Vec<&String> = reference
        .keys()
        .filter(|k| k.starts_with("aggregator.layer_"))
        .collect();
    assert_eq!(names.len(), got.len());
    for name in names {
        let index: usize = name["aggregator.layer_".len()..]
            .parse()
            .expect("layer index");
        let got = HostTensor::from_burn(got[&index].clone());
        assert_eq!(got.shape, reference[name].shape, "{name}");
        let (max_abs, ratio) = compare(&got.to_f32_vec(), &reference[name].to_f32_vec(), ATOL, 0.0);
        println!("{name} (masked) max abs diff {max_abs:.3e}");
        assert!(ratio <= 1.0, "{name}: {max_abs:e} exceeds {ATOL:e}");
    }

    // The mask must matter: the unmasked reference is far from the masked output.
    let unmasked = read_tensors(format!(
        "{FIXTURES}/tiny_masked/outputs_unmasked.safetensors"
    ))
    .expect("unmasked");
    let last = got.keys().copied().max().expect("layers");
    let name = format!("aggregator.layer_{last:02}");
    let (gap, _) = compare(
        &HostTensor::from_burn(got[&last].clone()).to_f32_vec(),
        &unmasked[&name].to_f32_vec(),
        1.0,
        0.0,
    );
    assert!(
        gap > 1e-2,
        "masked output is only {gap:e} from the unmasked reference"
    );
}

/// With each frame its own only neighbour, changing frames 1.. must leave frame 0 untouched.
#[test]
fn frames_outside_the_neighbourhood_have_no_influence() {
    let aggregator = load_aggregator();
    let images = images("tiny_a");
    let [batch, frames, channels, height, width] = images.dims();
    let isolated: Vec<Vec<usize>> = (0..frames).map(|i| vec![i]).collect();
    let changed = Tensor::cat(
        vec![
            images.clone().narrow(1, 0, 1),
            images.clone().narrow(1, 1, frames - 1).flip([3]),
        ],
        1,
    );
    assert_eq!(changed.dims(), [batch, frames, channels, height, width]);
    let a = layers(&aggregator, images, Some(isolated.clone()));
    let b = layers(&aggregator, changed, Some(isolated));
    for (index, layer) in a {
        let frame0 = |t: Tensor<B, 4>| t.narrow(1, 0, 1);
        let others = |t: Tensor<B, 4>| t.narrow(1, 1, frames - 1);
        assert_eq!(
            max_abs_diff(frame0(layer.clone()), frame0(b[&index].clone())),
            0.0,
            "layer {index}: frame 0 changed"
        );
        assert!(
            max_abs_diff(others(layer), others(b[&index].clone())) > 1e-3,
            "layer {index}: frames 1.. unchanged"
        );
    }
}

/// Sparse attention with mixed neighbourhood sizes equals dense attention restricted frame by
/// frame: for each frame, attention over just its neighbours' tokens, computed densely.
#[test]
fn sparse_attention_equals_per_frame_dense_attention() {
    let device = Default::default();
    let block = BlockConfig {
        dim: 32,
        num_heads: 2,
        mlp_ratio: 4.0,
        ln_eps: 1e-5,
        qk_norm_eps: Some(1e-5),
    };
    let attention = Attention::<B>::new(&block, &device);
    let (batch, frames, grid) = (2, 6, (2, 3));
    let positions = frame_positions(grid.0, grid.1, 2);
    let tokens = positions.len();
    let frame_rope = RopeTables::<B>::new(&positions, block.head_dim(), 100.0, &device);
    let values: Vec<f32> = (0..batch * frames * tokens * block.dim)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Tensor::<B, 3>::from_data(
        TensorData::new(values, [batch, frames * tokens, block.dim]),
        &device,
    );
    // Frames 0, 1 share a set and so do 4, 5 (one batched class of two sets); 2 and 3 have sets
    // of their own; lists are unsorted.
    let neighbours = vec![
        vec![1, 0],
        vec![0, 1],
        vec![2, 0, 1],
        vec![3],
        vec![5, 4],
        vec![4, 5],
    ];
    let sparse = attention.forward_sparse(
        x.clone(),
        frames,
        Some(&frame_rope.repeat(frames)),
        &neighbours,
    );

    for (frame, list) in neighbours.iter().enumerate() {
        let mut order = vec![frame];
        order.extend(list.iter().copied().filter(|&j| j != frame));
        let gathered = Tensor::cat(
            order
                .iter()
                .map(|&j| x.clone().narrow(1, j * tokens, tokens))
                .collect(),
            1,
        );
        let dense = attention
            .forward(gathered, Some(&frame_rope.repeat(order.len())))
            .narrow(1, 0, tokens);
        let got = sparse.clone().narrow(1, frame * tokens, tokens);
        let diff = max_abs_diff(got.unsqueeze_dim(0), dense.unsqueeze_dim(0));
        assert!(diff <= ROUNDING_ATOL, "frame {frame}: {diff:e}");
    }
}

#[test]
fn malformed_neighbour_lists_are_rejected() {
    // One case per rule; the frame count is 3.
    let cases = [
        (
            vec![vec![0], vec![1]],
            ModelError::NeighbourListCount {
                frames: 3,
                lists: 2,
            },
        ),
        (
            vec![vec![0], vec![1, 3], vec![2]],
            ModelError::NeighbourOutOfRange {
                frame: 1,
                neighbour: 3,
                frames: 3,
            },
        ),
        (
            vec![vec![0, 1], vec![0], vec![2]],
            ModelError::NeighbourMissingSelf { frame: 1 },
        ),
        (
            vec![vec![0], vec![1], vec![2, 0, 2]],
            ModelError::NeighbourDuplicate {
                frame: 2,
                neighbour: 2,
            },
        ),
    ];
    for (lists, want) in cases {
        assert_eq!(validate_neighbours(&lists, 3), Err(want), "{lists:?}");
    }
    assert_eq!(
        validate_neighbours(&[vec![0, 2], vec![1], vec![2, 0]], 3),
        Ok(())
    );

    // The aggregator checks its options before computing anything.
    let aggregator = Aggregator::<B>::new(&config(), &Default::default());
    let images = Tensor::<B, 5>::zeros([1, 3, 3, 28, 42], &Default::default());
    let options = AggregatorOptions {
        neighbours: Some(vec![vec![0], vec![1, 2], vec![1]]),
        ..Default::default()
    };
    let err = aggregator
        .forward(images.clone(), &options)
        .expect_err("frame 2 misses itself");
    assert_eq!(err, ModelError::NeighbourMissingSelf { frame: 2 });
    let options = AggregatorOptions {
        keep_layers: Some(vec![4]),
        ..Default::default()
    };
    let err = aggregator
        .forward(images, &options)
        .expect_err("layer 4 of 4");
    assert_eq!(err, ModelError::LayerOutOfRange { layer: 4, depth: 4 });
    let odd = Tensor::<B, 5>::zeros([1, 2, 3, 28, 40], &Default::default());
    let err = aggregator
        .forward(odd, &AggregatorOptions::default())
        .expect_err("40 px is not a multiple of 14");
    assert_eq!(
        err,
        ModelError::ImageSize {
            height_px: 28,
            width_px: 40,
            patch_size: 14
        }
    );
}

/// `embed` + `forward_embedded` is `forward`, dense and sparse, and intermediates survive the
/// split.
#[test]
fn staged_forward_equals_one_shot() {
    let aggregator = load_aggregator();
    let images = images("tiny_a");
    let frames = images.dims()[1];
    let band: Vec<Vec<usize>> = (0..frames)
        .map(|i| (i.saturating_sub(1)..=(i + 1).min(frames - 1)).collect())
        .collect();
    for neighbours in [None, Some(band)] {
        let options = AggregatorOptions {
            neighbours,
            record_intermediates: true,
            ..Default::default()
        };
        let direct = aggregator
            .forward(images.clone(), &options)
            .expect("direct");
        let embedded = aggregator.embed(images.clone(), true).expect("embed");
        assert_eq!(embedded.frames(), frames);
        assert_eq!(embedded.batch(), 1);
        assert_eq!(embedded.grid(), (4, 6));
        let staged = aggregator
            .forward_embedded(embedded, &options)
            .expect("staged");
        assert_eq!(
            direct.intermediates.keys().collect::<Vec<_>>(),
            staged.intermediates.keys().collect::<Vec<_>>()
        );
        assert!(direct.intermediates.contains_key("dino.x_prenorm"));
        for (index, layer) in &direct.layers {
            assert_eq!(
                max_abs_diff(layer.clone(), staged.layers[index].clone()),
                0.0,
                "layer {index}"
            );
        }
    }
}

/// The stage hook sees DINO, then each layer in order, up to the last kept layer only.
#[test]
fn stage_hook_reports_boundaries_in_order() {
    let aggregator = load_aggregator();
    let images = images("tiny_a");
    let mut seen = Vec::new();
    aggregator
        .forward_with(
            images.clone(),
            &AggregatorOptions::default(),
            &mut |stage| seen.push(stage),
        )
        .expect("forward");
    let mut want = vec![AggregatorStage::PatchEmbed];
    want.extend((0..aggregator.depth()).map(AggregatorStage::Layer));
    assert_eq!(seen, want);

    let options = AggregatorOptions {
        keep_layers: Some(vec![1]),
        ..Default::default()
    };
    let embedded = aggregator.embed(images, false).expect("embed");
    let mut seen = Vec::new();
    let output = aggregator
        .forward_embedded_with(embedded, &options, &mut |stage| seen.push(stage))
        .expect("forward");
    assert_eq!(seen, [AggregatorStage::Layer(0), AggregatorStage::Layer(1)]);
    assert_eq!(output.layers.keys().copied().collect::<Vec<_>>(), [1]);
}

/// Bad options are reported before DINO runs: no stage is reached.
#[test]
fn bad_options_fail_before_any_stage() {
    let aggregator = load_aggregator();
    let mut seen = Vec::new();
    let options = AggregatorOptions {
        neighbours: Some(vec![vec![0]]),
        ..Default::default()
    };
    let result = aggregator.forward_with(images("tiny_a"), &options, &mut |stage| seen.push(stage));
    assert_eq!(
        result.err(),
        Some(ModelError::NeighbourListCount {
            frames: 3,
            lists: 1
        })
    );
    assert!(seen.is_empty());
}
