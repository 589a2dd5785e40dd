//! Single-precision CPU kernels for the two operations that dominate a VGGT forward pass on the
//! CPU: the Linear layers' matrix products and scaled dot-product attention.
//!
//! Both work on plain row-major `f32` slices and split their work over rayon's thread pool.
//! Matrix products go to the process-wide [`sgemm::provider`]: a CBLAS library opened at run
//! time (OpenBLAS, MKL, BLIS; `VGGT_BLAS` names another or turns it off) or the portable `gemm`
//! crate. The `vggt` crate calls these on its CPU backend and burn's own ops elsewhere.

pub mod conv;
pub mod resize;
pub mod sgemm;
pub mod softmax;

use rayon::prelude::*;

pub use sgemm::{provider, Provider};

/// Rows of a product handed to one thread at least; products with fewer rows per thread are
/// split by weight columns instead (at least this many per thread) or run on one thread.
const MIN_ROWS_PER_TASK: usize = 32;
const MIN_COLUMNS_PER_TASK: usize = 64;

/// `x w + bias` for x `[m, k]` row-major and w `[k, n]`, stored row-major or, when
/// `w_transposed`, as its `[n, k]` transpose (PyTorch's layout). Returns `[m, n]`.
///
/// # Panics
/// When a slice's length does not match the dimensions.
pub fn linear(
    x: &[f32],
    (m, k, n): (usize, usize, usize),
    w: &[f32],
    w_transposed: bool,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: input is not {m}x{k}");
    assert_eq!(w.len(), k * n, "linear: weight is not {k}x{n}");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "linear: bias is not {n} long");
    }
    let mut out = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        if let Some(bias) = bias {
            out.chunks_exact_mut(n)
                .for_each(|row| row.copy_from_slice(bias));
        }
        return out;
    }
    let threads = rayon::current_num_threads().max(1);
    let ldw = if w_transposed { k } else { n };
    let provider = provider();
    if m < MIN_ROWS_PER_TASK * threads && n >= MIN_COLUMNS_PER_TASK * threads {
        // Few rows (a camera token per frame): split the weight's columns instead, so every
        // thread reads its share of the weights, which is what such a product costs.
        let columns = n.div_ceil(threads);
        let blocks: Vec<(usize, Vec<f32>)> = (0..n)
            .into_par_iter()
            .step_by(columns)
            .map(|first| {
                let width = columns.min(n - first);
                let weight = if w_transposed {
                    &w[first * k..]
                } else {
                    &w[first..]
                };
                let mut block = match bias {
                    Some(bias) => bias[first..first + width].repeat(m),
                    None => vec![0.0f32; m * width],
                };
                let beta = if bias.is_some() { 1.0 } else { 0.0 };
                provider.sgemm(
                    (m, width, k),
                    1.0,
                    (x, k, false),
                    (weight, ldw, w_transposed),
                    beta,
                    (&mut block, width),
                );
                (first, block)
            })
            .collect();
        for (first, block) in blocks {
            let width = block.len() / m;
            for (row, values) in out.chunks_exact_mut(n).zip(block.chunks_exact(width)) {
                row[first..first + width].copy_from_slice(values);
            }
        }
        return out;
    }
    let rows = m.div_ceil(threads).max(MIN_ROWS_PER_TASK);
    out.par_chunks_mut(rows * n)
        .zip(x.par_chunks(rows * k))
        .for_each(|(out, x)| {
            let block = out.len() / n;
            let beta = match bias {
                Some(bias) => {
                    for row in out.chunks_exact_mut(n) {
                        row.copy_from_slice(bias);
                    }
                    1.0
                }
                None => 0.0,
            };
            provider.sgemm(
                (block, n, k),
                1.0,
                (x, k, false),
                (w, ldw, w_transposed),
                beta,
                (out, n),
            );
        });
    out
}

/// Values one thread of [`gelu`] takes at a time.
const GELU_CHUNK: usize = 1 << 14;

/// The exact (erf) GELU in place, `x * (1 + erf(x / sqrt(2))) / 2`, erf to 1.5e-7 absolute.
pub fn gelu(values: &mut [f32]) {
    values
        .par_chunks_mut(GELU_CHUNK)
        .for_each(softmax::gelu_in_place);
}

/// Scores one task computes at most (rows x keys): 512 KiB, about a core's L2 cache. Measured
/// at VGGT-1B's 1041 keys, 62 to 1041 rows per tile change the time by less than 10 %.
const SCORE_TILE: usize = 1 << 17;

/// `softmax(scale * q k^T) v` for `batch` independent sequences: q `[batch, lq, d]`, k and v
/// `[batch, lk, d]`, all contiguous. Returns `[batch, lq, d]`.
///
/// Exact softmax (not online): each task takes a block of query rows, computes their scores
/// against all keys, exponentiates them and multiplies by v, so memory beyond the output is one
/// `rows x lk` tile per thread.
///
/// # Panics
/// When a slice's length does not match the dimensions, or `lk` is 0.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (batch, lq, lk, d): (usize, usize, usize, usize),
    scale: f32,
) -> Vec<f32> {
    assert_eq!(
        q.len(),
        batch * lq * d,
        "attention: q is not {batch}x{lq}x{d}"
    );
    assert_eq!(
        k.len(),
        batch * lk * d,
        "attention: k is not {batch}x{lk}x{d}"
    );
    assert_eq!(
        v.len(),
        batch * lk * d,
        "attention: v is not {batch}x{lk}x{d}"
    );
    assert!(lk > 0, "attention over zero keys");
    let mut out = vec![0.0f32; batch * lq * d];
    if batch == 0 || lq == 0 || d == 0 {
        return out;
    }
    let rows = (SCORE_TILE / lk).clamp(8, 256).min(lq);
    let provider = provider();
    out.par_chunks_mut(lq * d)
        .enumerate()
        .for_each(|(sequence, out)| {
            let q = &q[sequence * lq * d..(sequence + 1) * lq * d];
            let k = &k[sequence * lk * d..(sequence + 1) * lk * d];
            let v = &v[sequence * lk * d..(sequence + 1) * lk * d];
            // One scratch tile per rayon job (a job takes many blocks), not per block.
            let scratch = || (vec![0.0f32; rows * lk], vec![0.0f32; rows]);
            out.par_chunks_mut(rows * d).enumerate().for_each_init(
                scratch,
                |(scores, inverse), (block, out)| {
                    let count = out.len() / d;
                    let q = &q[block * rows * d..][..count * d];
                    let (scores, inverse) = (&mut scores[..count * lk], &mut inverse[..count]);
                    provider.sgemm(
                        (count, lk, d),
                        scale,
                        (q, d, false),
                        (k, d, true),
                        0.0,
                        (&mut *scores, lk),
                    );
                    softmax::softmax_rows_unnormalised(scores, lk, inverse);
                    provider.sgemm(
                        (count, d, lk),
                        1.0,
                        (&*scores, lk, false),
                        (v, d, false),
                        0.0,
                        (out, d),
                    );
                    for (row, inverse) in out.chunks_exact_mut(d).zip(inverse.iter()) {
                        for value in row {
                            *value *= inverse;
                        }
                    }
                },
            );
        });
    out
}

/// Attention over a sequence of `frames` frames of `p` tokens each, in which the queries of frame
/// `i` see only the keys and values of the frames `neighbours[i]`: q, k, v `[batch, frames * p,
/// d]`, contiguous. Returns `[batch, frames * p, d]`.
///
/// The neighbours' keys and values are read where they lie, one frame block at a time, into the
/// score tile of [`attention`] and out of it again: nothing is gathered, so memory beyond the
/// output is one `rows x (k * p)` tile per thread, however many frames there are. With every
/// frame in every list this is [`attention`] over the whole sequence (the keys in list order).
///
/// # Panics
/// When a slice's length does not match the dimensions, there is not one list per frame, a list
/// is empty or names a frame past the last.
pub fn frame_sparse_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (batch, frames, p, d): (usize, usize, usize, usize),
    neighbours: &[Vec<usize>],
    scale: f32,
) -> Vec<f32> {
    let l = frames * p;
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        assert_eq!(
            t.len(),
            batch * l * d,
            "frame_sparse_attention: {name} is not {batch}x{l}x{d}"
        );
    }
    assert_eq!(neighbours.len(), frames, "one neighbour list per frame");
    for (frame, list) in neighbours.iter().enumerate() {
        assert!(!list.is_empty(), "frame {frame} attends no frame");
        assert!(
            list.iter().all(|&j| j < frames),
            "frame {frame} lists a frame past {frames}: {list:?}"
        );
    }
    let mut out = vec![0.0f32; batch * l * d];
    if batch == 0 || l == 0 || d == 0 {
        return out;
    }
    let widest = neighbours.iter().map(Vec::len).max().unwrap_or(1) * p;
    let rows = (SCORE_TILE / widest).clamp(8, 256).min(p);
    let provider = provider();
    out.par_chunks_mut(p * d)
        .enumerate()
        .for_each(|(index, out)| {
            let (sequence, frame) = (index / frames, index % frames);
            let list = &neighbours[frame];
            let keys = list.len() * p;
            let base = sequence * l * d;
            // Where frame j's rows lie in q, k and v.
            let span = |j: usize| base + j * p * d..base + (j + 1) * p * d;
            let q = &q[span(frame)];
            let scratch = || (vec![0.0f32; rows * widest], vec![0.0f32; rows]);
            out.par_chunks_mut(rows * d).enumerate().for_each_init(
                scratch,
                |(scores, inverse), (block, out)| {
                    let count = out.len() / d;
                    let q = &q[block * rows * d..][..count * d];
                    let (scores, inverse) = (&mut scores[..count * keys], &mut inverse[..count]);
                    // Scores against each neighbour's keys, side by side in one row.
                    for (slot, &j) in list.iter().enumerate() {
                        provider.sgemm(
                            (count, p, d),
                            scale,
                            (q, d, false),
                            (&k[span(j)], d, true),
                            0.0,
                            (&mut scores[slot * p..], keys),
                        );
                    }
                    softmax::softmax_rows_unnormalised(scores, keys, inverse);
                    // The weighted values, summed over the neighbours.
                    for (slot, &j) in list.iter().enumerate() {
                        provider.sgemm(
                            (count, d, p),
                            1.0,
                            (&scores[slot * p..], keys, false),
                            (&v[span(j)], d, false),
                            if slot == 0 { 0.0 } else { 1.0 },
                            (&mut *out, d),
                        );
                    }
                    for (row, inverse) in out.chunks_exact_mut(d).zip(inverse.iter()) {
                        for value in row {
                            *value *= inverse;
                        }
                    }
                },
            );
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn linear_matches_a_float64_product_in_both_weight_layouts() {
        let mut rng = StdRng::seed_from_u64(3);
        // m not a multiple of the per-thread block, so the last block is short; and few rows
        // with many columns (split by columns).
        for (m, k, n) in [(133, 48, 70), (3, 40, 300)] {
            check_linear(&mut rng, m, k, n);
        }
    }

    fn check_linear(rng: &mut StdRng, m: usize, k: usize, n: usize) {
        let x = random(m * k, rng);
        let w = random(k * n, rng);
        let bias = random(n, rng);
        let w_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        for (weight, transposed, bias) in [
            (&w, false, Some(bias.as_slice())),
            (&w_t, true, Some(bias.as_slice())),
            (&w, false, None),
        ] {
            let got = linear(&x, (m, k, n), weight, transposed, bias);
            for i in 0..m {
                for j in 0..n {
                    let mut want = bias.map_or(0.0, |b| b[j] as f64);
                    for p in 0..k {
                        want += x[i * k + p] as f64 * w[p * n + j] as f64;
                    }
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "[{i},{j}] {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_matches_a_float64_softmax_attention() {
        let mut rng = StdRng::seed_from_u64(5);
        // Many key rows so that the query axis is split into several tiles, plus a short case.
        for &(batch, lq, lk, d) in &[(3, 300, 700, 16), (2, 5, 3, 8)] {
            let q: Vec<f32> = random(batch * lq * d, &mut rng)
                .iter()
                .map(|x| x * 4.0)
                .collect();
            let k = random(batch * lk * d, &mut rng);
            let v = random(batch * lk * d, &mut rng);
            let scale = 1.0 / (d as f32).sqrt();
            let got = attention(&q, &k, &v, (batch, lq, lk, d), scale);
            for b in 0..batch {
                for i in (0..lq).step_by(7) {
                    let scores: Vec<f64> = (0..lk)
                        .map(|j| {
                            (0..d)
                                .map(|c| {
                                    q[(b * lq + i) * d + c] as f64 * k[(b * lk + j) * d + c] as f64
                                })
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..lk)
                            .map(|j| weights[j] * v[(b * lk + j) * d + c] as f64)
                            .sum::<f64>()
                            / total;
                        let g = got[(b * lq + i) * d + c] as f64;
                        assert!((g - want).abs() < 2e-6, "[{b},{i},{c}] {g} vs {want}");
                    }
                }
            }
        }
    }

    /// f64 softmax attention of query row `i` of sequence `b` over the key rows `keys`.
    fn reference_row(
        (q, k, v): (&[f32], &[f32], &[f32]),
        (l, d): (usize, usize),
        (b, i): (usize, usize),
        keys: &[usize],
        scale: f32,
    ) -> Vec<f64> {
        let scores: Vec<f64> = keys
            .iter()
            .map(|&j| {
                (0..d)
                    .map(|c| q[(b * l + i) * d + c] as f64 * k[(b * l + j) * d + c] as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|c| {
                keys.iter()
                    .zip(&weights)
                    .map(|(&j, w)| w * v[(b * l + j) * d + c] as f64)
                    .sum::<f64>()
                    / total
            })
            .collect()
    }

    #[test]
    fn frame_sparse_attention_matches_a_float64_reference_per_frame() {
        let mut rng = StdRng::seed_from_u64(9);
        // 300 tokens per frame: the query rows of a frame span several tiles. Lists of different
        // lengths, not in order, one frame alone.
        let (batch, frames, p, d) = (2, 4, 300, 16);
        let l = frames * p;
        let neighbours = vec![vec![0, 1], vec![3, 1, 0], vec![2], vec![3, 2, 1, 0]];
        let q: Vec<f32> = random(batch * l * d, &mut rng)
            .iter()
            .map(|x| x * 4.0)
            .collect();
        let k = random(batch * l * d, &mut rng);
        let v = random(batch * l * d, &mut rng);
        let scale = 1.0 / (d as f32).sqrt();
        let got = frame_sparse_attention(&q, &k, &v, (batch, frames, p, d), &neighbours, scale);
        for b in 0..batch {
            for i in (0..l).step_by(13) {
                let keys: Vec<usize> = neighbours[i / p]
                    .iter()
                    .flat_map(|&j| j * p..(j + 1) * p)
                    .collect();
                let want = reference_row((&q, &k, &v), (l, d), (b, i), &keys, scale);
                for (c, want) in want.iter().enumerate() {
                    let g = got[(b * l + i) * d + c] as f64;
                    assert!((g - want).abs() < 2e-6, "[{b},{i},{c}] {g} vs {want}");
                }
            }
        }
    }

    #[test]
    fn frame_sparse_attention_over_every_frame_is_dense_attention() {
        let mut rng = StdRng::seed_from_u64(11);
        let (batch, frames, p, d) = (3, 5, 41, 8);
        let l = frames * p;
        let q = random(batch * l * d, &mut rng);
        let k = random(batch * l * d, &mut rng);
        let v = random(batch * l * d, &mut rng);
        let all = vec![(0..frames).collect::<Vec<_>>(); frames];
        let sparse = frame_sparse_attention(&q, &k, &v, (batch, frames, p, d), &all, 0.3);
        let dense = attention(&q, &k, &v, (batch, l, l, d), 0.3);
        let worst = sparse
            .iter()
            .zip(&dense)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "max |sparse - dense| = {worst}");
    }
}
