//! Covisibility graph over keyframes (petgraph).
//!
//! Nodes are keyframes in insertion (time) order. Edges come from temporal adjacency, from
//! global-descriptor similarity (cosine; each new keyframe links to its `k` most similar
//! predecessors above a threshold) and from verified loop closures. Every new keyframe is linked
//! to at least one predecessor, so the graph is always connected.
//!
//! The graph answers "which frames should attend to which": [`CovisGraph::neighbours`] and
//! [`CovisGraph::neighbours_within`] give per-frame lists, self first, at most `k` others.

use std::collections::HashMap;

use petgraph::graph::{NodeIndex, UnGraph};
use serde::{Deserialize, Serialize};

/// Graph construction settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CovisConfig {
    /// Similarity edges per new keyframe. Default 4.
    pub k: usize,
    /// Minimum cosine similarity of a similarity edge. Default 0.6.
    pub min_similarity: f32,
    /// Link consecutive keyframes. Default true.
    pub temporal_edges: bool,
}

impl Default for CovisConfig {
    fn default() -> Self {
        Self {
            k: 4,
            min_similarity: 0.6,
            temporal_edges: true,
        }
    }
}

/// Why an edge exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeKind {
    /// Consecutive keyframes.
    Temporal,
    /// Descriptor similarity above the threshold (or the best one, to keep connectivity).
    Similarity,
    /// A verified loop closure.
    Loop,
}

/// Edge payload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CovisEdge {
    /// Why the edge exists.
    pub kind: EdgeKind,
    /// Cosine similarity of the two descriptors.
    pub similarity: f32,
}

/// Error of the covisibility graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CovisError {
    /// Descriptor length differs from the first one.
    #[error("descriptor of frame {frame_id} has {got} values, expected {expected}")]
    DescriptorLength {
        /// Offending frame.
        frame_id: u64,
        /// Expected length.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// Empty, zero or non-finite descriptor.
    #[error("descriptor of frame {frame_id} is empty, zero or not finite")]
    BadDescriptor {
        /// Offending frame.
        frame_id: u64,
    },
    /// Frame id added twice.
    #[error("frame {frame_id} is already in the graph")]
    Duplicate {
        /// Offending frame.
        frame_id: u64,
    },
    /// Frame id not in the graph.
    #[error("frame {frame_id} is not in the graph")]
    Unknown {
        /// Offending frame.
        frame_id: u64,
    },
}

/// The covisibility graph.
#[derive(Debug, Clone, Default)]
pub struct CovisGraph {
    config: CovisConfig,
    graph: UnGraph<u64, CovisEdge>,
    descriptors: Vec<Vec<f32>>,
    /// Length of every descriptor (the first one's), kept when descriptors are forgotten.
    descriptor_len: Option<usize>,
    index_of: HashMap<u64, usize>,
    /// The retrieval to answer as each keyframe joins ([`CovisGraph::prepare_retrieval`]).
    retrieval: Option<Retrieval>,
    /// The answers for the most recent keyframes, oldest first.
    prepared: std::collections::VecDeque<Prepared>,
    /// Descriptors forgotten so far (an answer prepared before one was forgotten is stale).
    forgotten: u64,
}

/// The settings of a [`CovisGraph::retrieve`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Retrieval {
    min_gap: usize,
    min_similarity: f32,
    max_results: usize,
}

/// A retrieval answered when its keyframe joined.
#[derive(Debug, Clone)]
struct Prepared {
    /// The keyframe's insertion index.
    at: usize,
    /// Descriptors forgotten by then.
    forgotten: u64,
    /// The answer with [`SPARE`] more, best first.
    found: Vec<(usize, f32)>,
    /// Whether more keyframes passed the threshold than `found` holds.
    truncated: bool,
}

/// Keyframes whose prepared retrieval is kept: a keyframe is retrieved when its window is
/// integrated, a few windows after it joined.
const PREPARED: usize = 256;

/// Answers prepared with this many more than asked for, to stand in for keyframes forgotten
/// before the retrieval (under the memory bound those are often the revisited places a new
/// keyframe finds).
const SPARE: usize = 8;

/// A global descriptor from pixels: a 16x12 grayscale thumbnail with its mean removed, so cosine
/// similarity is normalised cross-correlation.
pub fn thumbnail_descriptor(img: &image::RgbImage) -> Vec<f32> {
    const TW: usize = 16;
    const TH: usize = 12;
    let (tw, th) = (TW, TH);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; tw * th];
    // Each cell's pixel columns are one run of a row (column x falls in cell x * tw / w), so a
    // row is summed run by run; every cell still adds its pixels in row-major order.
    let cell_of = |i: usize, n: usize, cells: usize| i * cells / n.max(1);
    let mut runs: Vec<(usize, std::ops::Range<usize>)> = Vec::with_capacity(tw);
    for x in 0..w {
        let cx = cell_of(x, w, tw);
        match runs.last_mut() {
            Some((c, range)) if *c == cx => range.end = x + 1,
            _ => runs.push((cx, x..x + 1)),
        }
    }
    let mut rows_in_cell = [0usize; TH];
    for (y, row) in img.as_raw().chunks_exact(3 * w.max(1)).take(h).enumerate() {
        let cy = cell_of(y, h, th);
        rows_in_cell[cy] += 1;
        for (cx, range) in &runs {
            let cell = &mut out[cy * tw + cx];
            for p in row[3 * range.start..3 * range.end].chunks_exact(3) {
                *cell +=
                    0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
            }
        }
    }
    let mut columns_in_cell = [0usize; TW];
    for (cx, range) in &runs {
        columns_in_cell[*cx] += range.len();
    }
    for (i, o) in out.iter_mut().enumerate() {
        let count = rows_in_cell[i / tw] * columns_in_cell[i % tw];
        *o /= (count as f32).max(1.0);
    }
    let mean = out.iter().sum::<f32>() / out.len() as f32;
    out.iter_mut().for_each(|v| *v -= mean);
    out
}

fn normalised(v: &[f32]) -> Option<Vec<f32>> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (n.is_finite() && n > 0.0).then(|| v.iter().map(|x| x / n).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Keeps the `n` most similar of `(index, similarity)` pairs, most similar first and equal ones
/// by index (the order a stable sort by similarity leaves), without sorting the rest.
fn keep_most_similar(pairs: &mut Vec<(usize, f32)>, n: usize) {
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if pairs.len() > n {
        if n == 0 {
            pairs.clear();
            return;
        }
        pairs.select_nth_unstable_by(n - 1, order);
        pairs.truncate(n);
    }
    pairs.sort_by(order);
}

/// [`dot`] of `d` with each of `others`, bit for bit, eight at a time: each sum still adds its
/// products in order, but the eight sums are independent chains the processor overlaps.
fn dots(d: &[f32], others: &[Vec<f32>]) -> Vec<f32> {
    const LANES: usize = 8;
    let mut out = Vec::with_capacity(others.len());
    for block in others.chunks(LANES) {
        // A block of fixed size (the compiler unrolls the eight sums); a short last block, or
        // one holding a forgotten (empty) descriptor, goes one at a time.
        match <&[Vec<f32>; LANES]>::try_from(block) {
            Ok(block) if block.iter().all(|o| o.len() == d.len()) => {
                // The same start as `Sum for f32`.
                let mut sums = [-0.0f32; LANES];
                for (i, x) in d.iter().enumerate() {
                    for (sum, o) in sums.iter_mut().zip(block) {
                        *sum += x * o[i];
                    }
                }
                out.extend(sums);
            }
            _ => out.extend(block.iter().map(|o| dot(d, o))),
        }
    }
    out
}

impl CovisGraph {
    /// An empty graph.
    pub fn new(config: CovisConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Builds the graph from descriptors given in time order.
    pub fn build(
        frame_ids: &[u64],
        descriptors: &[Vec<f32>],
        config: CovisConfig,
    ) -> Result<Self, CovisError> {
        let mut g = Self::new(config);
        for (id, d) in frame_ids.iter().zip(descriptors) {
            g.add_keyframe(*id, d)?;
        }
        Ok(g)
    }

    /// Number of keyframes.
    pub fn len(&self) -> usize {
        self.descriptors.len()
    }

    /// True when no keyframe was added.
    pub fn is_empty(&self) -> bool {
        self.descriptors.is_empty()
    }

    /// The underlying petgraph graph (node weight: frame id; node index = insertion order).
    pub fn graph(&self) -> &UnGraph<u64, CovisEdge> {
        &self.graph
    }

    /// Insertion index of a frame.
    pub fn index_of(&self, frame_id: u64) -> Option<usize> {
        self.index_of.get(&frame_id).copied()
    }

    /// Frame id at insertion index `i`.
    pub fn frame_id(&self, i: usize) -> Option<u64> {
        self.graph.node_weight(NodeIndex::new(i)).copied()
    }

    /// Cosine similarity of two keyframes by insertion index.
    pub fn similarity(&self, a: usize, b: usize) -> f32 {
        dot(&self.descriptors[a], &self.descriptors[b])
    }

    /// Drops a keyframe's descriptor (a keyframe the back-end no longer keeps for loops): it
    /// keeps its node and edges, and is similar to nothing from now on.
    pub fn forget_descriptor(&mut self, frame_id: u64) {
        if let Some(&i) = self.index_of.get(&frame_id) {
            self.descriptors[i] = Vec::new();
            self.forgotten += 1;
        }
    }

    /// Answers [`CovisGraph::retrieve`] with these settings for each keyframe as it joins, from
    /// the similarities its joining computes anyway; `retrieve` then reads the answer instead of
    /// comparing the keyframe with every earlier one again (the same answer: the keyframes it
    /// may return all came before it).
    pub fn prepare_retrieval(&mut self, min_gap: usize, min_similarity: f32, max_results: usize) {
        self.retrieval = Some(Retrieval {
            min_gap,
            min_similarity,
            max_results,
        });
        self.prepared.clear();
    }

    /// Adds a keyframe and its edges; returns its insertion index.
    pub fn add_keyframe(&mut self, frame_id: u64, descriptor: &[f32]) -> Result<usize, CovisError> {
        if self.index_of.contains_key(&frame_id) {
            return Err(CovisError::Duplicate { frame_id });
        }
        if let Some(expected) = self.descriptor_len {
            if expected != descriptor.len() {
                return Err(CovisError::DescriptorLength {
                    frame_id,
                    expected,
                    got: descriptor.len(),
                });
            }
        }
        let d = normalised(descriptor).ok_or(CovisError::BadDescriptor { frame_id })?;
        let i = self.descriptors.len();
        let similarities = dots(&d, &self.descriptors);
        if let Some(r) = self.retrieval {
            let with_spares = Retrieval {
                max_results: r.max_results + SPARE,
                ..r
            };
            let (found, passed) = most_similar_before(&similarities, i, with_spares);
            if self.prepared.len() == PREPARED {
                self.prepared.pop_front();
            }
            self.prepared.push_back(Prepared {
                at: i,
                forgotten: self.forgotten,
                truncated: passed > found.len(),
                found,
            });
        }
        let mut ranked: Vec<(usize, f32)> = similarities.into_iter().enumerate().collect();
        // Only the `k` most similar are used (the first for a repair link).
        keep_most_similar(&mut ranked, self.config.k.max(1));
        self.descriptor_len = Some(d.len());
        self.descriptors.push(d);
        let node = self.graph.add_node(frame_id);
        self.index_of.insert(frame_id, i);
        if i == 0 {
            return Ok(i);
        }
        if self.config.temporal_edges {
            let sim = self.similarity(i - 1, i);
            self.graph.add_edge(
                NodeIndex::new(i - 1),
                node,
                CovisEdge {
                    kind: EdgeKind::Temporal,
                    similarity: sim,
                },
            );
        }
        let mut linked = self.config.temporal_edges;
        for &(j, sim) in ranked.iter().take(self.config.k) {
            if sim < self.config.min_similarity || (self.config.temporal_edges && j == i - 1) {
                continue;
            }
            self.graph.add_edge(
                NodeIndex::new(j),
                node,
                CovisEdge {
                    kind: EdgeKind::Similarity,
                    similarity: sim,
                },
            );
            linked = true;
        }
        if !linked {
            // Connectivity repair: link to the most similar predecessor even below threshold.
            let (j, sim) = ranked[0];
            self.graph.add_edge(
                NodeIndex::new(j),
                node,
                CovisEdge {
                    kind: EdgeKind::Similarity,
                    similarity: sim,
                },
            );
        }
        Ok(i)
    }

    /// Records a verified loop between two keyframes.
    pub fn add_loop_edge(&mut self, a: u64, b: u64) -> Result<(), CovisError> {
        let ia = self
            .index_of(a)
            .ok_or(CovisError::Unknown { frame_id: a })?;
        let ib = self
            .index_of(b)
            .ok_or(CovisError::Unknown { frame_id: b })?;
        let sim = self.similarity(ia, ib);
        self.graph.add_edge(
            NodeIndex::new(ia),
            NodeIndex::new(ib),
            CovisEdge {
                kind: EdgeKind::Loop,
                similarity: sim,
            },
        );
        Ok(())
    }

    /// True when every keyframe is reachable from every other.
    pub fn is_connected(&self) -> bool {
        petgraph::algo::connected_components(&self.graph) <= 1
    }

    /// Per-keyframe attention lists over the whole graph: self first, then the temporal
    /// predecessor and successor, then graph neighbours by decreasing similarity, at most `k`
    /// others. With `k >= 1` the lists keep all keyframes connected.
    pub fn neighbours(&self, k: usize) -> Vec<Vec<usize>> {
        let n = self.len();
        (0..n)
            .map(|i| {
                let mut others: Vec<(usize, f32)> = self
                    .graph
                    .neighbors(NodeIndex::new(i))
                    .map(|nb| (nb.index(), self.similarity(i, nb.index())))
                    .collect();
                others.sort_by(|a, b| b.1.total_cmp(&a.1));
                let ranked = others.into_iter().map(|(j, _)| j);
                attention_list(i, n, k, ranked)
            })
            .collect()
    }

    /// Attention lists for a window of keyframes, as indices into `frame_ids`: self first, then
    /// the window's temporal neighbours, then frames joined to it by a verified loop, then the
    /// others by decreasing descriptor similarity, at most `k` others. Frames unknown to the
    /// graph are ranked by time only.
    pub fn neighbours_within(&self, frame_ids: &[u64], k: usize) -> Vec<Vec<usize>> {
        let n = frame_ids.len();
        (0..n)
            .map(|i| {
                let gi = self.index_of(frame_ids[i]);
                let mut others: Vec<(usize, f32)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        let sim = match (gi, self.index_of(frame_ids[j])) {
                            (Some(a), Some(b)) => {
                                // Cosine similarity is at most 1: loop partners rank above all.
                                let looped = self
                                    .graph
                                    .edges_connecting(NodeIndex::new(a), NodeIndex::new(b))
                                    .any(|e| e.weight().kind == EdgeKind::Loop);
                                self.similarity(a, b) + if looped { 2.0 } else { 0.0 }
                            }
                            _ => -1.0 - (i as f32 - j as f32).abs(),
                        };
                        (j, sim)
                    })
                    .collect();
                others.sort_by(|a, b| b.1.total_cmp(&a.1));
                attention_list(i, n, k, others.into_iter().map(|(j, _)| j))
            })
            .collect()
    }

    /// Older keyframes similar to `frame_id`: at least `min_gap` keyframes earlier, similarity
    /// at least `min_similarity`, best first, at most `max_results`.
    pub fn retrieve(
        &self,
        frame_id: u64,
        min_gap: usize,
        min_similarity: f32,
        max_results: usize,
    ) -> Result<Vec<(u64, f32)>, CovisError> {
        let i = self
            .index_of(frame_id)
            .ok_or(CovisError::Unknown { frame_id })?;
        let r = Retrieval {
            min_gap,
            min_similarity,
            max_results,
        };
        let found = self.prepared_answer(i, r).unwrap_or_else(|| {
            let older = older_than_gap(i, min_gap);
            let similarities = dots(&self.descriptors[i], &self.descriptors[..older]);
            most_similar_before(&similarities, i, r).0
        });
        Ok(found
            .into_iter()
            .map(|(j, s)| (self.frame_id(j).unwrap_or_default(), s))
            .collect())
    }
}

impl CovisGraph {
    /// The answer prepared for keyframe `i` with settings `r`, when there is one and it still
    /// holds. A forgotten keyframe is similar to nothing (-0), every other similarity stays:
    /// above a positive threshold a forgotten keyframe can only leave an answer, and the spares
    /// behind it move up.
    fn prepared_answer(&self, i: usize, r: Retrieval) -> Option<Vec<(usize, f32)>> {
        if self.retrieval != Some(r) {
            return None;
        }
        let first = self.prepared.front()?.at;
        let p = self.prepared.get(i.checked_sub(first)?)?;
        if p.at != i {
            return None;
        }
        if p.forgotten == self.forgotten {
            return Some(p.found.iter().copied().take(r.max_results).collect());
        }
        if r.min_similarity <= 0.0 || r.min_similarity.is_nan() {
            return None;
        }
        let kept: Vec<(usize, f32)> = p
            .found
            .iter()
            .copied()
            .filter(|(j, _)| !self.descriptors[*j].is_empty())
            .take(r.max_results)
            .collect();
        (kept.len() == r.max_results || !p.truncated).then_some(kept)
    }
}

/// The keyframes a retrieval for keyframe `i` may return: those at least `min_gap` before it.
fn older_than_gap(i: usize, min_gap: usize) -> usize {
    (i + 1).saturating_sub(min_gap.max(1))
}

/// A retrieval's answer for keyframe `i` from its similarities to (at least) every keyframe
/// before it: the most similar of those old enough and similar enough, best first; and how
/// many passed the threshold.
fn most_similar_before(similarities: &[f32], i: usize, r: Retrieval) -> (Vec<(usize, f32)>, usize) {
    let older = older_than_gap(i, r.min_gap).min(similarities.len());
    let mut found: Vec<(usize, f32)> = similarities[..older]
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| *s >= r.min_similarity)
        .collect();
    let passed = found.len();
    keep_most_similar(&mut found, r.max_results);
    (found, passed)
}

/// Self, temporal neighbours, then ranked others, deduplicated, at most `k` others.
fn attention_list(i: usize, n: usize, k: usize, ranked: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut list = vec![i];
    let temporal = [i.checked_sub(1), (i + 1 < n).then_some(i + 1)];
    for j in temporal.into_iter().flatten().chain(ranked) {
        if list.len() > k {
            break;
        }
        if !list.contains(&j) {
            list.push(j);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn dots_eight_at_a_time_are_the_plain_dots_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(5);
        let d: Vec<f32> = (0..192).map(|_| rng.random_range(-1.0..1.0)).collect();
        // 21 descriptors: two full blocks of eight with a forgotten (empty) one in the second,
        // and a short block.
        let others: Vec<Vec<f32>> = (0..21)
            .map(|j| match j {
                11 => Vec::new(),
                _ => (0..192).map(|_| rng.random_range(-1.0..1.0)).collect(),
            })
            .collect();
        let got = dots(&d, &others);
        assert_eq!(got.len(), others.len());
        for (g, o) in got.iter().zip(&others) {
            assert_eq!(g.to_bits(), dot(&d, o).to_bits());
        }
    }

    #[test]
    fn thumbnails_average_each_cell_of_pixels() {
        // 37 x 23 does not divide into 16 x 12 cells: cells get 1 to 3 columns, 1 or 2 rows;
        // 10 x 5 leaves cells with no pixel at all (their mean is 0).
        for (w, h) in [(37u32, 23u32), (10, 5), (320, 240)] {
            thumbnail_matches_cell_means(w, h);
        }
    }

    fn thumbnail_matches_cell_means(w: u32, h: u32) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y) as u8, (y * 11) as u8, (x * y % 251) as u8])
        });
        let mut sums = vec![(0.0f64, 0usize); 16 * 12];
        for (x, y, p) in img.enumerate_pixels() {
            let cell = &mut sums[((y * 12 / h) * 16 + x * 16 / w) as usize];
            cell.0 += 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
            cell.1 += 1;
        }
        let means: Vec<f64> = sums.iter().map(|(s, n)| s / (*n).max(1) as f64).collect();
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        let got = thumbnail_descriptor(&img);
        assert_eq!(got.len(), means.len());
        for (g, m) in got.iter().zip(&means) {
            assert!(
                (f64::from(*g) - (m - mean)).abs() < 1e-3,
                "{w}x{h}: {g} vs {}",
                m - mean
            );
        }
    }

    /// Descriptors of a trajectory that returns to where it started: frames 0-4 and 15-19 see
    /// the same place.
    fn loop_descriptors() -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(3);
        let places: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..32).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        (0..20)
            .map(|i| {
                let place = match i {
                    0..=4 | 15..=19 => 0,
                    5..=9 => 1,
                    _ => 2,
                };
                places[place]
                    .iter()
                    .map(|v| v + rng.random_range(-0.1..0.1))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn connected_and_k_bounded() {
        let ids: Vec<u64> = (100..120).collect();
        for temporal_edges in [true, false] {
            let config = CovisConfig {
                k: 3,
                min_similarity: 0.9,
                temporal_edges,
            };
            let g = CovisGraph::build(&ids, &loop_descriptors(), config).expect("build");
            assert!(g.is_connected(), "temporal_edges {temporal_edges}");
            for k in 1..5 {
                let lists = g.neighbours(k);
                assert_eq!(lists.len(), 20);
                let mut adjacency = UnGraph::<(), ()>::new_undirected();
                let nodes: Vec<_> = (0..20).map(|_| adjacency.add_node(())).collect();
                for (i, l) in lists.iter().enumerate() {
                    assert_eq!(l[0], i, "self first");
                    assert!(
                        l.len() <= k + 1,
                        "list {i} has {} entries for k {k}",
                        l.len()
                    );
                    for &j in &l[1..] {
                        adjacency.add_edge(nodes[i], nodes[j], ());
                    }
                }
                assert_eq!(petgraph::algo::connected_components(&adjacency), 1, "k {k}");
            }
        }
    }

    #[test]
    fn retrieval_finds_the_revisit_with_a_gap() {
        let ids: Vec<u64> = (0..20).collect();
        let g =
            CovisGraph::build(&ids, &loop_descriptors(), CovisConfig::default()).expect("build");
        let hits = g.retrieve(17, 8, 0.8, 3).expect("known frame");
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|(id, _)| *id <= 4), "{hits:?}");
        // Within the minimum gap nothing is returned even though 15-16 are similar.
        let near = g.retrieve(17, 8, 0.8, 10).expect("known frame");
        assert!(near.iter().all(|(id, _)| 17 - id >= 8));
        // Similar frames got similarity edges across time.
        assert!(g
            .graph()
            .edge_weights()
            .any(|e| e.kind == EdgeKind::Similarity));
    }

    #[test]
    fn retrieval_prepared_as_keyframes_join_answers_what_comparing_again_would() {
        // 300 random descriptors (more than the prepared answers kept), some alike; one graph
        // prepares the retrievals, the other compares at retrieval time. At a threshold of 0 a
        // forgotten keyframe (similar to nothing) can enter an answer; above it, only leave one.
        for min_similarity in [0.5, 0.0] {
            let mut rng = StdRng::seed_from_u64(3);
            let places: Vec<Vec<f32>> = (0..12)
                .map(|_| (0..48).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            let descriptors: Vec<Vec<f32>> = (0..300)
                .map(|i| {
                    let place = &places[(i * 7) % places.len()];
                    place
                        .iter()
                        .map(|x| x + rng.random_range(-0.3..0.3))
                        .collect()
                })
                .collect();
            let mut prepared = CovisGraph::new(CovisConfig::default());
            prepared.prepare_retrieval(16, min_similarity, 3);
            let mut plain = CovisGraph::new(CovisConfig::default());
            let same = |a: &CovisGraph, b: &CovisGraph, id: u64| {
                let x = a.retrieve(id, 16, min_similarity, 3);
                assert_eq!(x, b.retrieve(id, 16, min_similarity, 3), "keyframe {id}");
                x.expect("known").len()
            };
            let mut found = 0;
            for (i, d) in descriptors.iter().enumerate() {
                let id = 1000 + i as u64;
                prepared.add_keyframe(id, d).expect("joins");
                plain.add_keyframe(id, d).expect("joins");
                found += same(&prepared, &plain, id);
                // Other settings are compared again, and give the plain answer too.
                assert_eq!(
                    prepared.retrieve(id, 4, 0.2, 5),
                    plain.retrieve(id, 4, 0.2, 5)
                );
                if i % 25 == 24 {
                    // Keyframes are forgotten while later ones wait for retrieval, among them
                    // ones their prepared answers hold.
                    for old in [i.saturating_sub(40), i - 24, i - 23].map(|k| 1000 + k as u64) {
                        prepared.forget_descriptor(old);
                        plain.forget_descriptor(old);
                    }
                    for back in 0..20 {
                        same(&prepared, &plain, id - back);
                    }
                }
            }
            assert!(found > 300, "{found} retrieved");
            assert_eq!(
                prepared.prepared.len(),
                PREPARED,
                "answers prepared and kept"
            );
            // A keyframe from before the kept answers is compared again.
            same(&prepared, &plain, 1003);
        }
    }

    #[test]
    fn at_a_threshold_of_zero_a_forgotten_keyframe_enters_a_prepared_answer() {
        // q is opposite a (-1) and orthogonal to b (0): at a threshold of 0 its answer is b.
        // Forgotten, a is similar to nothing (-0), which passes the threshold: the answer
        // prepared when q joined no longer holds.
        let mut g = CovisGraph::new(CovisConfig::default());
        g.prepare_retrieval(1, 0.0, 3);
        g.add_keyframe(1, &[-1.0, 0.0, 0.0]).expect("a");
        g.add_keyframe(2, &[0.0, 0.0, 1.0]).expect("b");
        g.add_keyframe(3, &[1.0, 0.0, 0.0]).expect("q");
        assert_eq!(g.retrieve(3, 1, 0.0, 3).expect("known"), [(2, 0.0)]);
        g.forget_descriptor(1);
        let after = g.retrieve(3, 1, 0.0, 3).expect("known");
        assert_eq!(after.iter().map(|h| h.0).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn a_prepared_answer_whose_spares_ran_out_is_compared_again() {
        // Keyframes 1..=14 ever less like q; the ten most alike are forgotten before q is
        // retrieved: of the answer prepared with spares one is left, so q is compared again.
        let (mut prepared, mut plain) = (
            CovisGraph::new(CovisConfig::default()),
            CovisGraph::new(CovisConfig::default()),
        );
        prepared.prepare_retrieval(1, 0.5, 3);
        for g in [&mut prepared, &mut plain] {
            for k in 1..=14u64 {
                g.add_keyframe(k, &[1.0, 0.01 * k as f32, 0.0])
                    .expect("joins");
            }
            g.add_keyframe(100, &[1.0, 0.0, 0.0]).expect("q");
            for k in 1..=10 {
                g.forget_descriptor(k);
            }
        }
        let answer = prepared.retrieve(100, 1, 0.5, 3).expect("known");
        assert_eq!(answer, plain.retrieve(100, 1, 0.5, 3).expect("known"));
        assert_eq!(answer.iter().map(|h| h.0).collect::<Vec<_>>(), [11, 12, 13]);
    }

    #[test]
    fn rejects_bad_descriptors() {
        let mut g = CovisGraph::new(CovisConfig::default());
        g.add_keyframe(1, &[1.0, 0.0]).expect("ok");
        assert!(matches!(
            g.add_keyframe(2, &[1.0]),
            Err(CovisError::DescriptorLength { .. })
        ));
        assert!(matches!(
            g.add_keyframe(3, &[0.0, 0.0]),
            Err(CovisError::BadDescriptor { .. })
        ));
        assert!(matches!(
            g.add_keyframe(1, &[0.0, 1.0]),
            Err(CovisError::Duplicate { .. })
        ));
        let w = g.neighbours_within(&[1, 9, 10], 1);
        assert_eq!(w, vec![vec![0, 1], vec![1, 0], vec![2, 1]]);
    }
}
