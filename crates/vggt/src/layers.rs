//! Shared transformer building blocks: pre-norm [`Block`] with [`LayerScale`], multi-head
//! [`Attention`] with optional qk-norm and 2-D RoPE, and the erf-GELU [`Mlp`].
//!
//! Ported from upstream `vggt/layers/{block,attention,mlp,layer_scale}.py` (DINOv2 code as trimmed
//! by VGGT). Field names spell the checkpoint keys: `norm1`, `attn.qkv`, `attn.q_norm`,
//! `attn.k_norm`, `attn.proj`, `ls1.gamma`, `norm2`, `mlp.fc1`, `mlp.fc2`, `ls2.gamma`.
//!
//! Besides dense attention over a token sequence, [`Attention::forward_sparse`] runs
//! frame-restricted attention: the sequence is S frames of P tokens each and the queries of frame
//! i only see the keys/values of the frames in `neighbours[i]`. Keys and values are gathered once
//! per distinct neighbour set, so memory and compute scale with S * k (k neighbours), never with
//! (S * P)^2; no dense mask is built. Every attention call materialises at most
//! [`MAX_SCORE_ELEMENTS`] scores, whatever the backend's kernel.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::rope::RopeTables;

/// Dimensions of one transformer [`Block`].
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// Token width D.
    pub dim: usize,
    /// Attention heads; must divide `dim`.
    pub num_heads: usize,
    /// MLP hidden width = `mlp_ratio * dim` (4 in VGGT).
    pub mlp_ratio: f64,
    /// Epsilon of `norm1` / `norm2` (1e-6 in DINO, 1e-5 elsewhere).
    pub ln_eps: f64,
    /// Epsilon of the per-head LayerNorm on q and k; `None` = no qk-norm.
    pub qk_norm_eps: Option<f64>,
}

impl BlockConfig {
    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// MLP hidden width, rounded like upstream's `int(dim * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.dim as f64 * self.mlp_ratio) as usize
    }
}

/// Per-channel learned scale (`ls1`, `ls2`).
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    /// Scale per channel `[D]`.
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    /// Scale of ones over `dim` channels (overwritten by the checkpoint).
    pub fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([dim], device)),
        }
    }

    /// `x * gamma`, broadcast over the leading axes. x: `[N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [dim] = self.gamma.dims();
        x * self.gamma.val().reshape([1, 1, dim])
    }
}

/// Two-layer perceptron `fc2(GELU(fc1(x)))` with exact (erf) GELU.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// D -> hidden.
    pub fc1: Linear<B>,
    /// hidden -> D.
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// MLP of width `dim -> hidden -> dim`, with biases.
    pub fn new(dim: usize, hidden: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(dim, hidden).init(device),
            fc2: LinearConfig::new(hidden, dim).init(device),
        }
    }

    /// x: `[N, L, D]` -> `[N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = crate::cpu::gelu(crate::cpu::linear(&self.fc1, x));
        crate::cpu::linear(&self.fc2, hidden)
    }
}

/// Multi-head self-attention with fused qkv projection, optional per-head qk LayerNorm and
/// optional 2-D rotary embedding of q and k.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// D -> 3D; output rows are `[q | k | v]`, each head-major.
    pub qkv: Linear<B>,
    /// LayerNorm over head_dim applied to q (one weight vector shared by all heads).
    pub q_norm: Option<LayerNorm<B>>,
    /// LayerNorm over head_dim applied to k.
    pub k_norm: Option<LayerNorm<B>>,
    /// Output projection D -> D.
    pub proj: Linear<B>,
    num_heads: usize,
}

/// q, k, v of one sequence batch, each `[N, heads, L, head_dim]`.
struct Qkv<B: Backend> {
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
}

impl<B: Backend> Attention<B> {
    /// Attention over `config.dim` channels with `config.num_heads` heads.
    pub fn new(config: &BlockConfig, device: &B::Device) -> Self {
        let dim = config.dim;
        let qk_norm = |eps: f64| {
            LayerNormConfig::new(config.head_dim())
                .with_epsilon(eps)
                .init(device)
        };
        Self {
            qkv: LinearConfig::new(dim, 3 * dim).init(device),
            q_norm: config.qk_norm_eps.map(qk_norm),
            k_norm: config.qk_norm_eps.map(qk_norm),
            proj: LinearConfig::new(dim, dim).init(device),
            num_heads: config.num_heads,
        }
    }

    /// Dense attention of every token to every token of its sequence.
    ///
    /// x: `[N, L, D]`; `rope`: tables for the L tokens (or `None`). Returns `[N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, rope: Option<&RopeTables<B>>) -> Tensor<B, 3> {
        let Qkv { q, k, v } = self.project_qkv(x, rope);
        let context = attend(q, k, v);
        self.project_out(context)
    }

    /// Frame-restricted attention over a sequence of frames.
    ///
    /// x: `[N, S*P, D]`, frame-major (frame 0's P tokens, then frame 1's ...); `rope`: tables for
    /// the S*P tokens. The queries of frame i attend only the tokens of frames `neighbours[i]`
    /// (validated by the caller: S lists of in-range, distinct indices). Returns `[N, S*P, D]`.
    ///
    /// On the CPU kernels (f32) the neighbours' keys and values stream through the tiled
    /// attention kernel where they lie, so sparse attention holds no more than dense attention
    /// ([`crate::cpu::frame_sparse_attention`]). Elsewhere frames with the same neighbour set
    /// share one gather of its k*P keys/values and run as one query sequence; sets with equal
    /// (frames, k) are batched into one attention call (up to [`MAX_SCORE_ELEMENTS`] gathered
    /// keys+values). With every frame neighbouring every frame this is the dense computation.
    pub fn forward_sparse(
        &self,
        x: Tensor<B, 3>,
        frames: usize,
        rope: Option<&RopeTables<B>>,
        neighbours: &[Vec<usize>],
    ) -> Tensor<B, 3> {
        self.forward_sparse_within(x, frames, rope, neighbours, MAX_SCORE_ELEMENTS)
    }

    /// [`Self::forward_sparse`] with an explicit memory bound `budget` (elements).
    fn forward_sparse_within(
        &self,
        x: Tensor<B, 3>,
        frames: usize,
        rope: Option<&RopeTables<B>>,
        neighbours: &[Vec<usize>],
        budget: usize,
    ) -> Tensor<B, 3> {
        let l = x.dims()[1];
        assert_eq!(
            l % frames,
            0,
            "sequence length {l} is not a multiple of {frames} frames"
        );
        assert_eq!(neighbours.len(), frames, "one neighbour list per frame");
        let Qkv { q, k, v } = self.project_qkv(x, rope);
        let context = if crate::cpu::runs_attention_natively(&q, &k, &v) {
            crate::cpu::frame_sparse_attention(q, k, v, frames, neighbours)
        } else {
            gathered_sparse_context(q, k, v, frames, neighbours, budget)
        };
        self.project_out(context)
    }

    /// `[N, L, D]` -> q, k, v `[N, H, L, hd]`, with qk-norm and RoPE applied to q and k.
    fn project_qkv(&self, x: Tensor<B, 3>, rope: Option<&RopeTables<B>>) -> Qkv<B> {
        let d = x.dims()[2];
        let (heads, head_dim) = (self.num_heads, d / self.num_heads);
        let qkv = crate::cpu::linear(&self.qkv, x);
        // Channel t*D + h*hd + c of the fused projection is component t of head h, channel c.
        let split = |t: usize| split_heads(qkv.clone(), t * d, heads, head_dim);
        let (mut q, mut k, v) = (split(0), split(1), split(2));
        if let Some(norm) = &self.q_norm {
            q = norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(k);
        }
        if let Some(tables) = rope {
            q = tables.apply(q);
            k = tables.apply(k);
        }
        Qkv { q, k, v }
    }

    /// Merges heads (`[N, H, L, hd]` -> `[N, L, D]`, channel h*hd + c) and projects.
    fn project_out(&self, context: Tensor<B, 4>) -> Tensor<B, 3> {
        crate::cpu::linear(&self.proj, merge_heads(context))
    }
}

/// Heads `[N, H, L, hd]` (contiguous) from channels `first .. first + H*hd` of tokens
/// `[N, L, C]`, channel `first + h*hd + c` being channel c of head h.
///
/// Same values as `narrow(2, first, H*hd).reshape([N, L, H, hd]).swap_dims(1, 2)`, but copied
/// head by head: each head is a 2-D strided block, which the CPU backend copies with its tiled
/// path, while the 4-D permuted view would be walked element by element (~10x slower at
/// VGGT-1B sizes).
pub fn split_heads<B: Backend>(
    tokens: Tensor<B, 3>,
    first: usize,
    heads: usize,
    head_dim: usize,
) -> Tensor<B, 4> {
    let parts = (0..heads)
        .map(|h| {
            tokens
                .clone()
                .narrow(2, first + h * head_dim, head_dim)
                .unsqueeze_dim::<4>(1)
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// Tokens `[N, L, H*hd]` from heads `[N, H, L, hd]`, channel h*hd + c being channel c of head
/// h: the inverse of [`split_heads`] (same values as `swap_dims(1, 2).reshape([N, L, H*hd])`,
/// copied head by head for the same reason).
pub fn merge_heads<B: Backend>(heads: Tensor<B, 4>) -> Tensor<B, 3> {
    let [n, h, l, head_dim] = heads.dims();
    let parts = (0..h)
        .map(|i| heads.clone().narrow(1, i, 1).reshape([n, l, head_dim]))
        .collect();
    Tensor::cat(parts, 2)
}

/// Sparse attention for backends without a streamed kernel: q, k, v `[N, H, S*P, hd]` ->
/// context `[N, H, S*P, hd]`. Frames with the same neighbour set share one gather of its k*P
/// keys/values and run as one query sequence; sets with equal (frames, k) are batched into one
/// attention call of at most `budget` gathered keys+values.
fn gathered_sparse_context<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    frames: usize,
    neighbours: &[Vec<usize>],
    budget: usize,
) -> Tensor<B, 4> {
    let [n, heads, l, head_dim] = q.dims();
    let (p, d) = (l / frames, heads * head_dim);
    let device = q.device();
    // [N, H, S*P, hd] -> [S, N, H, P, hd]: frames lead so that `select` gathers whole frames.
    let by_frame = |t: Tensor<B, 4>| {
        t.reshape([n, heads, frames, p, head_dim])
            .permute([2, 0, 1, 3, 4])
    };
    let (q, k, v) = (by_frame(q), by_frame(k), by_frame(v));

    let index = |values: &[usize]| {
        let values: Vec<i64> = values.iter().map(|&i| i as i64).collect();
        let len = values.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(values, [len]), &device)
    };
    let mut order: Vec<usize> = Vec::with_capacity(frames);
    let mut outputs: Vec<Tensor<B, 5>> = Vec::new();
    for ((m, count), hoods) in shared_neighbourhoods(neighbours) {
        // Bound the keys+values gathered by one call.
        let per_set = 2 * count * n * p * d;
        for hoods in hoods.chunks((budget / per_set).max(1)) {
            let g = hoods.len();
            let members: Vec<usize> = hoods
                .iter()
                .flat_map(|hood| hood.members.iter().copied())
                .collect();
            let gathered: Vec<usize> = hoods
                .iter()
                .flat_map(|hood| hood.set.iter().copied())
                .collect();
            // Queries of the m frames sharing a set run as one sequence:
            // [g*m, N, H, P, hd] -> [g, N, H, m, P, hd] -> [g*N, H, m*P, hd].
            let q_g = q
                .clone()
                .select(0, index(&members))
                .reshape([g, m, n, heads, p * head_dim])
                .permute([0, 2, 3, 1, 4])
                .reshape([g * n, heads, m * p, head_dim]);
            // Keys/values gathered once per set: [g*k, N, H, P, hd] -> [g*N, H, k*P, hd].
            let kv = |t: &Tensor<B, 5>| {
                t.clone()
                    .select(0, index(&gathered))
                    .reshape([g, count, n, heads, p * head_dim])
                    .permute([0, 2, 3, 1, 4])
                    .reshape([g * n, heads, count * p, head_dim])
            };
            let context = attend_within(q_g, kv(&k), kv(&v), budget);
            // [g*N, H, m*P, hd] -> [g, m, N, H, P, hd] -> [g*m, N, H, P, hd]
            let context = context
                .reshape([g, n, heads, m, p * head_dim])
                .permute([0, 3, 1, 2, 4])
                .reshape([g * m, n, heads, p, head_dim]);
            outputs.push(context);
            order.extend(members);
        }
    }
    let mut inverse = vec![0i64; frames];
    for (position, &frame) in order.iter().enumerate() {
        inverse[frame] = position as i64;
    }
    let inverse = Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [frames]), &device);
    // [S, N, H, P, hd] -> [N, H, S*P, hd]
    Tensor::cat(outputs, 0)
        .select(0, inverse)
        .permute([1, 2, 0, 3, 4])
        .reshape([n, heads, l, head_dim])
}

/// Largest attention score matrix materialised by one attention call, in elements (512 MiB of
/// f32), and the bound on keys+values gathered at once by sparse attention.
///
/// Attention goes through [`crate::cpu::attention`]: with f32 on the CPU backend, tiled kernels
/// that hold one block of scores per thread (no slicing needed); elsewhere burn's `attention` op,
/// which each backend may fuse: the CubeCL backends (CUDA) autotune between a fused flash kernel
/// and the unfused fallback, Flex in bf16 runs its own tiled kernel. Backends without a fused
/// kernel fall back to burn's reference, which builds the whole `[N, H, Lq, Lk]` score tensor,
/// so longer query axes are processed in slices; this is exact, every query row's softmax being
/// independent, and costs nothing on fused backends (one slice up to 2^27 scores).
pub const MAX_SCORE_ELEMENTS: usize = 1 << 27;

/// `softmax(q k^T / sqrt(hd)) v` for q `[N, H, Lq, hd]`, k and v `[N, H, Lk, hd]`, in query
/// slices of at most [`MAX_SCORE_ELEMENTS`] scores. Returns `[N, H, Lq, hd]`.
fn attend<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    attend_within(q, k, v, MAX_SCORE_ELEMENTS)
}

/// [`attend`] with query slices of at most `budget` scores.
fn attend_within<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    budget: usize,
) -> Tensor<B, 4> {
    let [n, heads, lq, _] = q.dims();
    let lk = k.dims()[2];
    let rows = (budget / (n * heads * lk).max(1)).max(1);
    if rows >= lq || crate::cpu::runs_attention_natively(&q, &k, &v) {
        return crate::cpu::attention(q, k, v);
    }
    let slices = (0..lq)
        .step_by(rows)
        .map(|start| {
            let q = q.clone().narrow(2, start, rows.min(lq - start));
            crate::cpu::attention(q, k.clone(), v.clone())
        })
        .collect();
    Tensor::cat(slices, 2)
}

/// Frames that attend the same set of frames.
struct Neighbourhood {
    /// Query frames, increasing.
    members: Vec<usize>,
    /// Frames they attend, increasing.
    set: Vec<usize>,
}

/// Frames grouped by identical neighbour set, classed by (member count m, set size k) so that
/// each class can run as one batched attention call.
fn shared_neighbourhoods(
    neighbours: &[Vec<usize>],
) -> BTreeMap<(usize, usize), Vec<Neighbourhood>> {
    let mut by_set: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    for (frame, list) in neighbours.iter().enumerate() {
        let mut set = list.clone();
        set.sort_unstable();
        by_set.entry(set).or_default().push(frame);
    }
    let mut classes: BTreeMap<(usize, usize), Vec<Neighbourhood>> = BTreeMap::new();
    for (set, members) in by_set {
        classes
            .entry((members.len(), set.len()))
            .or_default()
            .push(Neighbourhood { members, set });
    }
    classes
}

/// Pre-norm transformer block: `x += ls1(attn(norm1(x)))`, `x += ls2(mlp(norm2(x)))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// LayerNorm before attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// LayerScale of the attention branch.
    pub ls1: LayerScale<B>,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm<B>,
    /// Feed-forward network.
    pub mlp: Mlp<B>,
    /// LayerScale of the MLP branch.
    pub ls2: LayerScale<B>,
}

impl<B: Backend> Block<B> {
    /// Block with the given dimensions; parameters are placeholders until a checkpoint is loaded.
    pub fn new(config: &BlockConfig, device: &B::Device) -> Self {
        let norm = || {
            LayerNormConfig::new(config.dim)
                .with_epsilon(config.ln_eps)
                .init(device)
        };
        Self {
            norm1: norm(),
            attn: Attention::new(config, device),
            ls1: LayerScale::new(config.dim, device),
            norm2: norm(),
            mlp: Mlp::new(config.dim, config.mlp_hidden(), device),
            ls2: LayerScale::new(config.dim, device),
        }
    }

    /// Dense block. x: `[N, L, D]`; `rope`: optional rotary tables for the L tokens.
    /// Returns `[N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, rope: Option<&RopeTables<B>>) -> Tensor<B, 3> {
        let attended = self.attn.forward(self.norm1.forward(x.clone()), rope);
        self.feed_forward(x + self.ls1.forward(attended))
    }

    /// Block over a sequence of `frames` frames, dense (`neighbours` = `None`) or
    /// frame-restricted, whose token-wise feed-forward half (norm2, the 4D-wide MLP, ls2) runs
    /// over chunks of `ffn_chunk_tokens` tokens of the sequence axis when given. Exact: only the
    /// peak of the MLP's hidden activations shrinks, to the chunk's. x: `[N, S*P, D]`
    /// frame-major; returns `[N, S*P, D]`.
    pub fn forward_global(
        &self,
        x: Tensor<B, 3>,
        frames: usize,
        rope: Option<&RopeTables<B>>,
        neighbours: Option<&[Vec<usize>]>,
        ffn_chunk_tokens: Option<usize>,
    ) -> Tensor<B, 3> {
        let normed = self.norm1.forward(x.clone());
        let attended = match neighbours {
            None => self.attn.forward(normed, rope),
            Some(neighbours) => self.attn.forward_sparse(normed, frames, rope, neighbours),
        };
        let x = x + self.ls1.forward(attended);
        let len = x.dims()[1];
        match ffn_chunk_tokens.map(|chunk| chunk.max(1)) {
            Some(chunk) if chunk < len => {
                let parts = (0..len)
                    .step_by(chunk)
                    .map(|start| {
                        self.feed_forward(x.clone().narrow(1, start, chunk.min(len - start)))
                    })
                    .collect();
                Tensor::cat(parts, 1)
            }
            _ => self.feed_forward(x),
        }
    }

    fn feed_forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let update = self
            .ls2
            .forward(self.mlp.forward(self.norm2.forward(x.clone())));
        x + update
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tokens(shape: [usize; 3]) -> Tensor<Flex, 3> {
        let count = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..count)
            .map(|i| ((i * 7919) % 997) as f32 / 498.5 - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    /// The head-by-head copies give exactly the values of the permuted views they replace.
    #[test]
    fn split_and_merge_heads_match_the_permuted_views() {
        let (n, l, heads, head_dim) = (2, 5, 3, 4);
        let d = heads * head_dim;
        let qkv = tokens([n, l, 3 * d]);
        for t in 0..3 {
            let view = qkv
                .clone()
                .narrow(2, t * d, d)
                .reshape([n, l, heads, head_dim])
                .swap_dims(1, 2);
            let split = split_heads(qkv.clone(), t * d, heads, head_dim);
            assert_eq!(split.dims(), [n, heads, l, head_dim]);
            assert_eq!(
                split.clone().into_data().to_vec::<f32>().expect("f32"),
                view.clone().into_data().to_vec::<f32>().expect("f32"),
                "component {t}"
            );
            let merged = merge_heads(split);
            assert_eq!(
                merged.into_data().to_vec::<f32>().expect("f32"),
                view.swap_dims(1, 2)
                    .reshape([n, l, d])
                    .into_data()
                    .to_vec::<f32>()
                    .expect("f32"),
                "component {t} merged"
            );
        }
    }

    #[test]
    fn query_slicing_does_not_change_attention() {
        // bf16 on the CPU runs burn's op, which is what slicing exists for (f32 runs the CPU
        // kernels, which tile the query axis themselves).
        let device = Default::default();
        let make = |seed: usize, len: usize| {
            let values: Vec<f32> = (0..2 * 2 * len * 8)
                .map(|i| (((i + seed) * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            Tensor::<Flex, 4>::from_data(TensorData::new(values, [2, 2, len, 8]), &device)
                .cast(burn::tensor::DType::BF16)
        };
        let (q, k, v) = (make(1, 13), make(2, 9), make(3, 9));
        assert!(!crate::cpu::runs_attention_natively(&q, &k, &v));
        let whole = attend_within(q.clone(), k.clone(), v.clone(), usize::MAX);
        // 2 * 2 * 9 = 36 scores per query row: a budget of 100 gives slices of 2 rows (last 1).
        let sliced = attend_within(q, k, v, 100);
        let diff = (whole - sliced).abs().max().into_scalar();
        assert!(diff <= 1e-6, "sliced attention differs by {diff}");
    }

    /// The backend's (possibly fused) attention agrees with burn's unfused reference, on the
    /// two-gemm path (short key axis) and on Flex's tiled flash path (key axis > 512).
    #[test]
    fn backend_attention_matches_unfused_reference() {
        use burn::tensor::module::{attention, attention_fallback};
        use burn::tensor::ops::AttentionModuleOptions;
        let device = Default::default();
        let make = |seed: usize, len: usize| {
            let values: Vec<f32> = (0..2 * 3 * len * 16)
                .map(|i| (((i + seed) * 7919) % 1009) as f32 / 250.0 - 2.0)
                .collect();
            Tensor::<Flex, 4>::from_data(TensorData::new(values, [2, 3, len, 16]), &device)
        };
        for (lq, lk) in [(11, 37), (40, 1500)] {
            let (q, k, v) = (make(1, lq), make(2, lk), make(3, lk));
            let options = AttentionModuleOptions::default();
            let fused = attention(q.clone(), k.clone(), v.clone(), None, None, options);
            let reference = attention_fallback(q, k, v, None, None, options);
            let diff = (fused - reference).abs().max().into_scalar();
            assert!(
                diff <= 1e-5,
                "Lq {lq}, Lk {lk}: backend attention differs by {diff}"
            );
        }
    }

    /// The gathering path (the GPU backends') at any memory bound and the CPU kernels' streamed
    /// path give the same context.
    #[test]
    fn gathered_and_streamed_sparse_attention_agree_at_any_memory_bound() {
        let (frames, p) = (5, 3);
        let qkv = |seed: usize| {
            let values: Vec<f32> = (0..2 * 2 * frames * p * 8)
                .map(|i| (((i + seed) * 7919) % 997) as f32 / 498.5 - 1.0)
                .collect();
            Tensor::<Flex, 4>::from_data(
                TensorData::new(values, [2, 2, frames * p, 8]),
                &Default::default(),
            )
        };
        let (q, k, v) = (qkv(1), qkv(2), qkv(3));
        // Frames 0, 1 share a set, as do 3, 4 (one batched class of two sets); 2 stands alone.
        let neighbours = vec![
            vec![0, 1],
            vec![1, 0],
            vec![1, 2, 3],
            vec![3, 4],
            vec![4, 3],
        ];
        let gathered = |budget| {
            gathered_sparse_context(q.clone(), k.clone(), v.clone(), frames, &neighbours, budget)
        };
        let unbounded = gathered(usize::MAX);
        // One frame per call and single query rows.
        let bounded = gathered(1);
        let streamed = crate::cpu::frame_sparse_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            frames,
            &neighbours,
        );
        let diff =
            |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| -> f32 { (a - b).abs().max().into_scalar() };
        let bound = diff(unbounded.clone(), bounded);
        assert!(bound <= 1e-6, "memory-bounded gathering differs by {bound}");
        let stream = diff(unbounded, streamed);
        assert!(stream <= 1e-6, "streamed differs from gathered by {stream}");
    }
}
