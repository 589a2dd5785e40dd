//! Frame neighbours from VGGT's own features, for sparse global attention over one window.
//!
//! No extra network: a frame's global descriptor is its DINO patch tokens (the final-normed
//! tokens the aggregator starts from, [`crate::aggregator::Embedded::patch_tokens`]) averaged over
//! the h*w patches and L2-normalised, so that the dot product of two descriptors is their cosine
//! similarity. Mean pooling rather than GeM: the tokens leave a LayerNorm and are signed, and
//! GeM's p-th power needs non-negative inputs.
//!
//! [`neighbours_from_descriptors`] turns descriptors into the per-frame lists that
//! [`crate::aggregator::AggregatorOptions::neighbours`] takes:
//! * each frame lists itself and the frames within `temporal_radius` of it;
//! * frames i and j are neighbours when each is among the other's `k` most similar frames and
//!   their cosine similarity is at least `min_similarity` (mutual k-nearest neighbours: lists are
//!   symmetric and no frame becomes a hub that everyone attends);
//! * if the frames still fall into several connected components, components are joined through
//!   their most similar pair of frames, most similar first (Kruskal over all pairs), so that
//!   information can flow between any two frames of the window.
//!
//! A list therefore holds at most `1 + 2 * temporal_radius + k` frames plus the joining pairs
//! (at most components - 1 pairs in the whole window). This crate has no graph library: the
//! window-level graph here is small (S frames) and lives only for one forward pass; the back-end's
//! covisibility graph is elsewhere.

use std::collections::BTreeSet;

use burn::tensor::{backend::Backend, Tensor};

/// Invalid descriptors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorError {
    /// Descriptors of different lengths.
    #[error("descriptor of frame {frame} has {got} values, frame 0's has {expected}")]
    LengthMismatch {
        /// Offending frame.
        frame: usize,
        /// Length of frame 0's descriptor.
        expected: usize,
        /// Length of this frame's.
        got: usize,
    },
}

/// One global descriptor per frame: patch tokens `[N, h*w, C]` (N = B*S frames) averaged over
/// the patches and L2-normalised. Returns N vectors of C values (a frame whose mean is zero keeps
/// a zero descriptor, similar to nothing).
pub fn frame_descriptors<B: Backend>(patch_tokens: Tensor<B, 3>) -> Vec<Vec<f32>> {
    let [frames, _, channels] = patch_tokens.dims();
    let pooled: Vec<f32> = patch_tokens
        .mean_dim(1)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("converted to f32");
    pooled
        .chunks(channels.max(1))
        .take(frames)
        .map(|mean| {
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                mean.iter().map(|v| v / norm).collect()
            } else {
                vec![0.0; mean.len()]
            }
        })
        .collect()
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator > 0.0 {
        dot / denominator
    } else {
        0.0
    }
}

/// Per-frame neighbour lists from frame descriptors (see the module doc): mutual `k` nearest by
/// cosine similarity at or above `min_similarity`, plus the frames within `temporal_radius`, plus
/// the pairs that join disconnected components. Lists are sorted, contain their own frame and are
/// symmetric (j in list i iff i in list j).
pub fn neighbours_from_descriptors(
    descriptors: &[Vec<f32>],
    k: usize,
    min_similarity: f32,
    temporal_radius: usize,
) -> Result<Vec<Vec<usize>>, DescriptorError> {
    let frames = descriptors.len();
    if let Some(first) = descriptors.first() {
        for (frame, descriptor) in descriptors.iter().enumerate() {
            if descriptor.len() != first.len() {
                return Err(DescriptorError::LengthMismatch {
                    frame,
                    expected: first.len(),
                    got: descriptor.len(),
                });
            }
        }
    }
    // similarity[i * frames + j]; NaN (from NaN features) counts as least similar.
    let similarity: Vec<f32> = (0..frames * frames)
        .map(|ij| {
            let s = cosine_similarity(&descriptors[ij / frames], &descriptors[ij % frames]);
            if s.is_nan() {
                f32::NEG_INFINITY
            } else {
                s
            }
        })
        .collect();
    let sim = |i: usize, j: usize| similarity[i * frames + j];

    // The k most similar other frames of each frame, ties broken by index.
    let nearest: Vec<BTreeSet<usize>> = (0..frames)
        .map(|i| {
            let mut others: Vec<usize> = (0..frames).filter(|&j| j != i).collect();
            others.sort_by(|&a, &b| sim(i, b).total_cmp(&sim(i, a)).then(a.cmp(&b)));
            others.into_iter().take(k).collect()
        })
        .collect();

    let mut lists: Vec<BTreeSet<usize>> = (0..frames)
        .map(|i| {
            let low = i.saturating_sub(temporal_radius);
            let high = i.saturating_add(temporal_radius).min(frames - 1);
            (low..=high).collect()
        })
        .collect();
    for i in 0..frames {
        for &j in &nearest[i] {
            if nearest[j].contains(&i) && sim(i, j) >= min_similarity {
                lists[i].insert(j);
                lists[j].insert(i);
            }
        }
    }
    connect_components(&mut lists, &sim);
    Ok(lists
        .into_iter()
        .map(|list| list.into_iter().collect())
        .collect())
}

/// Adds the most similar cross-component pairs, most similar first, until the symmetric graph
/// `lists` is connected.
fn connect_components(lists: &mut [BTreeSet<usize>], sim: &dyn Fn(usize, usize) -> f32) {
    let frames = lists.len();
    let mut components = DisjointSets::new(frames);
    for (i, list) in lists.iter().enumerate() {
        for &j in list {
            components.union(i, j);
        }
    }
    if components.count == 1 || frames == 0 {
        return;
    }
    let mut pairs: Vec<(usize, usize)> = (0..frames)
        .flat_map(|i| (i + 1..frames).map(move |j| (i, j)))
        .collect();
    pairs.sort_by(|&(a, b), &(c, d)| sim(c, d).total_cmp(&sim(a, b)).then((a, b).cmp(&(c, d))));
    for (i, j) in pairs {
        if components.union(i, j) {
            lists[i].insert(j);
            lists[j].insert(i);
            if components.count == 1 {
                break;
            }
        }
    }
}

/// Union-find over frame indices.
struct DisjointSets {
    parent: Vec<usize>,
    count: usize,
}

impl DisjointSets {
    fn new(len: usize) -> Self {
        Self {
            parent: (0..len).collect(),
            count: len,
        }
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    /// Joins the sets of a and b; true when they were apart.
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (a, b) = (self.root(a), self.root(b));
        if a == b {
            return false;
        }
        self.parent[a] = b;
        self.count -= 1;
        true
    }
}
