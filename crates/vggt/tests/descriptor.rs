//! Frame neighbours from VGGT's own DINO features (`vggt::descriptor`).
//!
//! * Descriptors come from the real (tiny fixture) DINO: identical frames give equal, unit-length
//!   descriptors; different frames do not.
//! * Neighbour lists: self included, symmetric, temporal band always in, at most
//!   1 + 2r + k frames when the window is connected anyway, mutual k-nearest, components joined
//!   through their most similar pair (two adversarial clusters), dense when k and the threshold
//!   allow everything, and always accepted by the aggregator's validation.

use std::collections::BTreeSet;

use burn::tensor::Tensor;
use vggt::aggregator::{validate_neighbours, AggregatorOptions};
use vggt::descriptor::{
    cosine_similarity, frame_descriptors, neighbours_from_descriptors, DescriptorError,
};

mod common;
use common::{images, load_aggregator};

/// Deterministic pseudo-random vector of `len` values in [-1, 1).
fn noise(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Self included, symmetric, sorted, valid for the aggregator.
fn check_lists(lists: &[Vec<usize>]) {
    validate_neighbours(lists, lists.len()).expect("valid neighbour lists");
    for (i, list) in lists.iter().enumerate() {
        assert!(list.contains(&i), "frame {i} lacks itself");
        assert!(list.windows(2).all(|w| w[0] < w[1]), "list {i} not sorted");
        for &j in list {
            assert!(
                lists[j].contains(&i),
                "{j} in list {i} but not {i} in list {j}"
            );
        }
    }
}

fn connected(lists: &[Vec<usize>]) -> bool {
    let mut seen = BTreeSet::from([0]);
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        for &j in &lists[i] {
            if seen.insert(j) {
                stack.push(j);
            }
        }
    }
    seen.len() == lists.len()
}

#[test]
fn descriptors_come_from_dino_tokens() {
    let aggregator = load_aggregator();
    let images = images("tiny_a");
    // Frames: 0, 1, 2, then frame 0 again.
    let images = Tensor::cat(vec![images.clone(), images.narrow(1, 0, 1)], 1);
    let embedded = aggregator.embed(images, false).expect("embed");
    let descriptors = frame_descriptors(embedded.patch_tokens().clone());
    assert_eq!(descriptors.len(), 4);
    for descriptor in &descriptors {
        assert_eq!(descriptor.len(), 64);
        let norm = descriptor.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() <= 1e-5, "norm {norm}");
    }
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(max_diff(&descriptors[0], &descriptors[3]) <= 1e-6);
    assert!(max_diff(&descriptors[0], &descriptors[1]) > 1e-3);
    let same = cosine_similarity(&descriptors[0], &descriptors[3]);
    let other = cosine_similarity(&descriptors[0], &descriptors[1]);
    println!("cosine: identical frames {same:.6}, different frames {other:.6}");
    assert!(same > other);
    // With no temporal band and k = 1, frame 0's only mutual nearest frame is its copy.
    let lists = neighbours_from_descriptors(&descriptors, 1, -1.0, 0).expect("lists");
    check_lists(&lists);
    assert!(lists[0].contains(&3) && lists[3].contains(&0));
}

#[test]
fn lists_are_bounded_symmetric_and_mutual() {
    let (frames, k, radius) = (16, 3, 1);
    let descriptors: Vec<Vec<f32>> = (0..frames).map(|i| noise(i as u64, 8)).collect();
    let lists = neighbours_from_descriptors(&descriptors, k, -1.0, radius).expect("lists");
    check_lists(&lists);
    let similar_first = |i: usize| {
        let mut others: Vec<usize> = (0..frames).filter(|&j| j != i).collect();
        others.sort_by(|&a, &b| {
            cosine_similarity(&descriptors[i], &descriptors[b])
                .total_cmp(&cosine_similarity(&descriptors[i], &descriptors[a]))
        });
        others.truncate(k);
        others
    };
    let mut similarity_edges = 0;
    for (i, list) in lists.iter().enumerate() {
        // The temporal chain connects the window, so no joining pairs are needed.
        assert!(list.len() <= 1 + 2 * radius + k, "frame {i}: {list:?}");
        for &j in list {
            if i.abs_diff(j) > radius {
                similarity_edges += 1;
                assert!(
                    similar_first(i).contains(&j) && similar_first(j).contains(&i),
                    "{i} and {j} are not mutual {k}-nearest"
                );
            }
        }
    }
    assert!(
        similarity_edges > 0,
        "random descriptors gave no similarity edge"
    );
}

#[test]
fn temporal_band_is_always_in() {
    let descriptors: Vec<Vec<f32>> = (0..7).map(|i| noise(100 + i, 5)).collect();
    // A threshold above any cosine admits no similarity edge: exactly the band remains.
    let lists = neighbours_from_descriptors(&descriptors, 4, 1.5, 2).expect("lists");
    check_lists(&lists);
    for (i, list) in lists.iter().enumerate() {
        let band: Vec<usize> = (i.saturating_sub(2)..=(i + 2).min(6)).collect();
        assert_eq!(list, &band, "frame {i}");
    }
}

/// Two tight clusters, interleaved in time, with no temporal band: mutual kNN stays within each
/// cluster, and exactly one joining pair (the most similar cross-cluster pair) connects them.
#[test]
fn two_clusters_are_joined_through_their_most_similar_pair() {
    let frames = 10;
    let descriptors: Vec<Vec<f32>> = (0..frames)
        .map(|i| {
            let mut d = noise(i as u64 + 7, 6)
                .iter()
                .map(|v| 0.05 * v)
                .collect::<Vec<_>>();
            d[i % 2] += 1.0;
            d
        })
        .collect();
    // Frames 3 (cluster 1) and 4 (cluster 0) lean towards each other: the most similar pair
    // across clusters.
    let mut descriptors = descriptors;
    descriptors[3][0] += 0.3;
    descriptors[4][1] += 0.3;
    let lists = neighbours_from_descriptors(&descriptors, 2, 0.5, 0).expect("lists");
    check_lists(&lists);
    assert!(connected(&lists), "{lists:?}");
    let cross: Vec<(usize, usize)> = lists
        .iter()
        .enumerate()
        .flat_map(|(i, list)| list.iter().map(move |&j| (i, j)))
        .filter(|&(i, j)| i < j && i % 2 != j % 2)
        .collect();
    assert_eq!(cross, [(3, 4)], "{lists:?}");

    // Without the joining step the clusters would be apart: no list spans both before joining
    // except through (3, 4).
    for (i, list) in lists.iter().enumerate() {
        if i != 3 && i != 4 {
            assert!(list.iter().all(|&j| j % 2 == i % 2), "frame {i}: {list:?}");
        }
    }
}

#[test]
fn everything_allowed_gives_dense_lists() {
    let descriptors: Vec<Vec<f32>> = (0..6).map(|i| noise(50 + i, 4)).collect();
    let lists = neighbours_from_descriptors(&descriptors, 5, -1.0, 0).expect("lists");
    assert_eq!(lists, vec![(0..6).collect::<Vec<_>>(); 6]);
}

#[test]
fn degenerate_inputs() {
    assert_eq!(
        neighbours_from_descriptors(&[], 3, 0.0, 1).expect("empty"),
        Vec::<Vec<usize>>::new()
    );
    assert_eq!(
        neighbours_from_descriptors(&[vec![1.0, 0.0]], 3, 0.0, 1).expect("one"),
        [[0]]
    );
    // Zero and NaN descriptors are similar to nothing, yet still connected.
    let odd = vec![vec![0.0, 0.0], vec![f32::NAN, 1.0], vec![1.0, 0.0]];
    let lists = neighbours_from_descriptors(&odd, 1, 0.5, 0).expect("lists");
    check_lists(&lists);
    assert!(connected(&lists));
    assert_eq!(
        neighbours_from_descriptors(&[vec![1.0, 0.0], vec![1.0]], 1, 0.0, 0),
        Err(DescriptorError::LengthMismatch {
            frame: 1,
            expected: 2,
            got: 1
        })
    );
}

/// The whole path of one window: DINO once, neighbours from its tokens, sparse global attention
/// on the same embedding, identical to the one-shot forward with those lists.
#[test]
fn neighbours_from_embedding_drive_sparse_attention() {
    let aggregator = load_aggregator();
    let images = images("tiny_masked");
    let embedded = aggregator.embed(images.clone(), false).expect("embed");
    let descriptors = frame_descriptors(embedded.patch_tokens().clone());
    let lists = neighbours_from_descriptors(&descriptors, 1, 0.0, 0).expect("lists");
    check_lists(&lists);
    assert!(connected(&lists));
    println!("tiny_masked neighbours from DINO descriptors: {lists:?}");
    let options = AggregatorOptions {
        neighbours: Some(lists),
        ..Default::default()
    };
    let staged = aggregator
        .forward_embedded(embedded, &options)
        .expect("staged");
    let direct = aggregator.forward(images, &options).expect("direct");
    for (index, layer) in &direct.layers {
        let diff = (layer.clone() - staged.layers[index].clone())
            .abs()
            .max()
            .into_scalar();
        assert_eq!(diff, 0.0, "layer {index}");
    }
}

/// `ForwardOptions::feature_neighbours` picks the lists inside the model: the result equals a
/// forward with the same lists passed explicitly, and differs from dense attention.
#[test]
fn model_chooses_neighbours_from_its_own_features() {
    use vggt::checkpoint::{load_into, LoadOptions};
    use vggt::model::FeatureNeighbours;
    use vggt::tensor_io::HostTensor;
    use vggt::{ForwardOptions, Vggt};

    let weights = format!("{}/tiny_a/weights.safetensors", common::FIXTURES);
    let model = Vggt::<common::B>::new(&common::config(), &Default::default());
    let model = load_into(
        model,
        std::path::Path::new(&weights),
        &LoadOptions::default(),
    )
    .expect("tiny weights");
    let input = images("tiny_masked");
    let rule = FeatureNeighbours {
        k: 1,
        min_similarity: 0.0,
        temporal_radius: 0,
    };

    let embedded = load_aggregator()
        .embed(input.clone(), false)
        .expect("embed");
    let lists = neighbours_from_descriptors(
        &frame_descriptors(embedded.patch_tokens().clone()),
        1,
        0.0,
        0,
    )
    .expect("lists");
    assert!(
        lists.iter().any(|l| l.len() < 5),
        "k = 1 must leave some frame sparse: {lists:?}"
    );

    let depth = |options: ForwardOptions| {
        let out = model.forward(input.clone(), &options).expect("forward");
        HostTensor::from_burn(out.depth).to_f32_vec()
    };
    let chosen = depth(ForwardOptions {
        feature_neighbours: Some(rule),
        ..Default::default()
    });
    let explicit = depth(ForwardOptions {
        neighbours: Some(lists),
        ..Default::default()
    });
    let dense = depth(ForwardOptions::default());
    assert_eq!(
        chosen, explicit,
        "in-model choice must equal the same lists given explicitly"
    );
    let moved = chosen
        .iter()
        .zip(&dense)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-4,
        "sparse lists must change the result (max |diff| {moved})"
    );
}
