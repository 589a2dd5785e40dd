//! Memory budget planner: from a byte budget, the image size, the precision and the model
//! configuration, choose the window size S and the chunk sizes of one forward pass.
//!
//! # The formula
//! Counts are elements. The aggregator's terms (DINO, blocks, kept layers, its weights) are
//! bytes = elements x `a`, the heads' terms (their weights, working sets, outputs) elements x 4:
//! [`Precision`] runs the aggregator in `a` = 4 (f32) or 2 (bf16/f16) bytes and the heads in
//! float32. With patch grid h x w = H/14 x W/14, R registers, P = 1 + R + h*w tokens per frame, C the token width, nh
//! attention heads, T = S * P tokens and `A` = [`MAX_SCORE_ELEMENTS`] (the most scores one
//! attention call materialises; longer query axes are sliced, see `crate::layers`):
//!
//! ```text
//! total(S, f)      = weights + pools + images + outputs + max(dino, aggregator, camera, dpt(f))
//! pools            = PlanOptions::device_pool_bytes            (0 on the CPU)
//! weights          = parameters(aggregator) x a + parameters(heads) x 4
//!                                                              (exact counts, track head absent)
//! images           = S*3*H*W x (4 + a)                         (f32 input + normalised copy)
//! outputs          = 2 * S*H*W*(d + p) x 4                     (d = 2 depth+conf, p = 4 points+conf;
//!                                                               x2: per-chunk pieces + their concat)
//! block(T, C, sc)  = K_BLOCK * T*C + 2 * min(sc, A) * u        (one transformer block: residual,
//!                                                               norms, qkv, q/k/v, RoPE copies, MLP
//!                                                               4C hidden twice; scores + softmax,
//!                                                               u = 0 with fused attention, else 1)
//! dino             = block(S*P_dino, C_dino, S*nh_dino*P_dino^2) x a
//! aggregator       = (L_keep * T*2C + block(T, C, global scores)) x a
//!     global scores: dense nh*T^2; sparse with k neighbours nh*S*P*k*P, plus the gathered
//!                    keys/values min(2*S*k*P*C, A) unless the neighbours are streamed
//!                    (PlanOptions::streamed_neighbours, the CPU kernels in float32: 0)
//!     L_keep = distinct layers the heads read (4 depth + 4 point + last, deduplicated)
//! camera           = L_keep * T*2C x a + c32 * T*2C x 4 + K_BLOCK * S*2C x 4
//!                                                              (trunk over one token per frame;
//!                                                               c32 = 1 when a = 2: the last
//!                                                               layer cast to float32, else 0)
//! dpt(f)           = 4 * T*2C x a                              (layers still held by the heads,
//!                                                               at most 4 per head in turn)
//!                  + f * [ c32 * 4 * P*2C                      (the chunk's float32 casts)
//!                        + K_DPT_TOKENS * h*w*2C               (sliced, normed, projected tokens)
//!                        + K_FUSE * 64*h*w*F                    (fusion at 8h x 8w, F channels)
//!                        + K_FULL * H*W*(F + 2*hf2 + o) ]       (full resolution: output_conv1
//!                                                               resized (F/2) and + UV (F/2),
//!                                                               conv2_0 (hf2) and its ReLU (hf2),
//!                                                               the o output channels)
//! ```
//!
//! The constants (`K_*`) bound the live working set of the burn CPU backend; they were checked
//! against the counting allocator's peaks (`tests/planner.rs`: the measured peak of a forward
//! with the planned sizes stays under the budget) and, on the wgpu backend, against the device
//! memory pools' reserved bytes (`tests/wgpu.rs`); `bench/RESULTS.md` lists measured vs
//! predicted peaks. On the GPU backends [`PlanOptions::device_pool_bytes`] adds the slack of the
//! memory pools (pages are reserved whole). Frame attention needs no separate chunk: its scores
//! are bounded by the same query slicing, which is what [`Plan::frame_attention_chunk`] reports
//! in frames.

use burn::backend::Flex;

use crate::checkpoint::module_params;
use crate::config::VggtConfig;
use crate::layers::MAX_SCORE_ELEMENTS;
use crate::model::Vggt;
use crate::Precision;

/// Transformer block working set in units of T*C (see the module docs).
pub const K_BLOCK: usize = 12;
/// DPT token stage working set in units of h*w*2C per frame.
pub const K_DPT_TOKENS: usize = 4;
/// DPT fusion working set in units of 64*h*w*F per frame.
pub const K_FUSE: usize = 4;
/// DPT full-resolution working set in units of H*W*(F + 2*hf2 + o) per frame.
pub const K_FULL: usize = 1;

/// What the forward passes will compute, besides the sizes the planner chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// Largest window worth considering (frames).
    pub max_window: usize,
    /// Neighbours per frame of sparse global attention (`None` = dense).
    pub neighbours: Option<usize>,
    /// The point head is skipped (depth unprojection instead).
    pub skip_point_head: bool,
    /// The backend's attention op is fused (flash-style, no score matrix in memory): burn's
    /// Flex CPU backend (the CPU kernels). When false, score matrices are counted (the GPU
    /// backends: their autotuner also runs the unfused kernel); see
    /// [`crate::Device::fused_attention`].
    pub fused_attention: bool,
    /// Fixed bytes on top of the formula: the device memory pools' page slack on the GPU
    /// backends ([`device_pool_bytes`]), 0 on the CPU.
    pub device_pool_bytes: usize,
    /// Sparse attention reads each frame's neighbours where they lie, gathering nothing: the
    /// CPU kernels in float32 ([`crate::cpu::frame_sparse_attention`]). When false (the GPU
    /// backends, or a half-precision aggregator) the gathered keys and values are counted.
    pub streamed_neighbours: bool,
}

impl PlanOptions {
    /// The options that suit `device` with a budget of `budget_bytes`: its attention kind and
    /// memory pool slack ([`device_pool_bytes`]).
    pub fn for_device(device: crate::Device, budget_bytes: usize) -> Self {
        Self {
            fused_attention: device.fused_attention(),
            device_pool_bytes: device_pool_bytes(device, budget_bytes),
            streamed_neighbours: matches!(device, crate::Device::Cpu),
            ..Self::default()
        }
    }
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            max_window: 256,
            neighbours: None,
            skip_point_head: false,
            fused_attention: true,
            device_pool_bytes: 0,
            streamed_neighbours: true,
        }
    }
}

/// Bytes the GPU backends' memory pools may hold beyond the live tensors of a forward, for pages
/// of at most `max_page_bytes`. cubecl's default pools (`MemoryConfiguration::SubSlices`) reserve
/// device memory in whole pages: one pool of `max_page_bytes` pages, then pools of a quarter of
/// that page size each, down to 8 MiB pages; a page is sliced among many tensors. The bound here
/// is one partly used page per pool: the sum of the page sizes (168 MiB for lavapipe's 128 MiB
/// pages; ~2.7 GiB for the 2 GiB pages of an 8 GiB CUDA card). Checked against the reserved
/// bytes measured on the wgpu backend (`tests/wgpu.rs`, `bench/RESULTS.md`).
pub fn subslice_pool_bytes(max_page_bytes: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let mut total = max_page_bytes;
    let mut current = max_page_bytes;
    while current >= 32 * MIB {
        current /= 4;
        total += current;
    }
    total as usize
}

/// [`PlanOptions::device_pool_bytes`] for `device` with a budget of `budget_bytes`: 0 on the
/// CPU (its allocator is counted exactly); on wgpu the pool pages of the adapter `device` names
/// (its largest storage binding, read without opening it); on CUDA, where cubecl's pages are a
/// quarter of the GPU's memory, a quarter of the budget (the budget stands for the GPU).
pub fn device_pool_bytes(device: crate::Device, budget_bytes: usize) -> usize {
    match device {
        crate::Device::Cpu => 0,
        crate::Device::Wgpu(_) => {
            let page = crate::device::max_page_bytes(device).unwrap_or(budget_bytes as u64 / 4);
            subslice_pool_bytes(page)
        }
        crate::Device::Cuda(_) => subslice_pool_bytes(budget_bytes as u64 / 4),
    }
}

/// Predicted bytes of one forward pass, by term of the formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Model parameters.
    pub weights_bytes: usize,
    /// The device memory pools' slack ([`PlanOptions::device_pool_bytes`]).
    pub pool_bytes: usize,
    /// Input images and their normalised copy.
    pub images_bytes: usize,
    /// Depth/point outputs.
    pub outputs_bytes: usize,
    /// DINO patch-embedding working set.
    pub dino_bytes: usize,
    /// Aggregator working set (kept layers + one block).
    pub aggregator_bytes: usize,
    /// Camera head working set (kept layers + trunk).
    pub camera_bytes: usize,
    /// One DPT head over one frame chunk (plus the layers it reads).
    pub dpt_bytes: usize,
    /// `weights + pools + images + outputs + max(phases)`.
    pub total_bytes: usize,
}

/// Sizes chosen for a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Frames per window S.
    pub window_size: usize,
    /// Frames per DPT chunk (apply with [`Vggt::set_dpt_frames_chunk`]).
    pub dpt_frames_chunk: usize,
    /// Frames whose frame-attention scores fit one attention call under
    /// [`MAX_SCORE_ELEMENTS`] (the query slicing in `crate::layers` enforces this bound).
    pub frame_attention_chunk: usize,
    /// Predicted memory at these sizes.
    pub estimate: MemoryEstimate,
    /// The budget planned for.
    pub budget_bytes: usize,
    /// Model input (height, width) planned for.
    pub image_hw: (usize, usize),
    /// Precision planned for.
    pub precision: Precision,
}

/// Why no plan fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Even one frame with a one-frame DPT chunk needs more than the budget.
    #[error(
        "one frame of {height_px}x{width_px} needs {needed_bytes} bytes, budget is {budget_bytes}"
    )]
    BudgetTooSmall {
        /// Budget given.
        budget_bytes: usize,
        /// Estimate for S = 1, DPT chunk 1.
        needed_bytes: usize,
        /// Image height.
        height_px: usize,
        /// Image width.
        width_px: usize,
    },
    /// The image size is not a positive multiple of the patch size.
    #[error("image size {height_px}x{width_px} is not a multiple of the patch size {patch_size}")]
    ImageSize {
        /// Image height.
        height_px: usize,
        /// Image width.
        width_px: usize,
        /// Patch side.
        patch_size: usize,
    },
}

/// Number of model parameters (camera, depth and point heads; no track head), counted from the
/// module's lazy shapes without allocating the weights.
pub fn parameter_count(config: &VggtConfig) -> usize {
    let (aggregator, heads) = parameter_counts(config);
    aggregator + heads
}

/// Parameters of the aggregator and of the heads (camera, depth, point), counted as
/// [`parameter_count`] does: in the half precisions they are stored in different dtypes.
pub fn parameter_counts(config: &VggtConfig) -> (usize, usize) {
    let model = Vggt::<Flex>::new(config, &Default::default());
    let mut counts = (0, 0);
    for param in module_params(&model) {
        let elements = param.shape.iter().product::<usize>();
        if param.upstream_key().starts_with("aggregator.") {
            counts.0 += elements;
        } else {
            counts.1 += elements;
        }
    }
    counts
}

/// Predicted bytes of a forward over `frames` frames with DPT chunks of `dpt_frames_chunk`.
pub fn estimate(
    config: &VggtConfig,
    image_hw: (usize, usize),
    precision: Precision,
    frames: usize,
    dpt_frames_chunk: usize,
    options: &PlanOptions,
) -> MemoryEstimate {
    estimate_with_params(
        parameter_counts(config),
        config,
        image_hw,
        precision,
        frames,
        dpt_frames_chunk,
        options,
    )
}

fn estimate_with_params(
    (aggregator_parameters, head_parameters): (usize, usize),
    config: &VggtConfig,
    (height, width): (usize, usize),
    precision: Precision,
    frames: usize,
    dpt_frames_chunk: usize,
    options: &PlanOptions,
) -> MemoryEstimate {
    let a = precision.aggregator_bytes();
    let f = precision.heads_bytes();
    // The heads read float32 casts of the kept layers when the aggregator is in a half type.
    let c32 = usize::from(a != f);
    let s = frames;
    let chunk = dpt_frames_chunk.clamp(1, s.max(1));
    let (gh, gw) = (height / config.patch_size, width / config.patch_size);
    let hw = gh * gw;
    let agg = &config.aggregator;
    let c = agg.embed_dim;
    let p = 1 + agg.num_register_tokens + hw;
    let t = s * p;
    let score_factor = if options.fused_attention { 0 } else { 2 };
    let block = |tokens: usize, width: usize, scores: usize| {
        K_BLOCK * tokens * width + score_factor * scores.min(MAX_SCORE_ELEMENTS)
    };

    let p_dino = 1 + config.dino.num_register_tokens + hw;
    let dino = a * block(
        s * p_dino,
        config.dino.embed_dim,
        s * config.dino.num_heads * p_dino * p_dino,
    );

    let mut kept: Vec<usize> = config.depth_head.intermediate_layer_idx.to_vec();
    if !options.skip_point_head {
        kept.extend_from_slice(&config.point_head.intermediate_layer_idx);
    }
    kept.push(agg.depth.saturating_sub(1));
    kept.sort_unstable();
    kept.dedup();
    let layer = t * 2 * c;
    let kept_layers = a * kept.len() * layer;
    let frame_scores = s * agg.num_heads * p * p;
    let global = match options.neighbours {
        None => block(t, c, agg.num_heads * t * t),
        Some(k) => {
            let k = k.clamp(1, s.max(1));
            // The CPU kernels stream float32 neighbours; other paths gather them.
            let gathered = if options.streamed_neighbours && a == 4 {
                0
            } else {
                (2 * s * k * p * c).min(MAX_SCORE_ELEMENTS)
            };
            block(t, c, agg.num_heads * t * k * p) + gathered
        }
    };
    let aggregator = kept_layers + a * global.max(block(t, c, frame_scores));
    let camera = kept_layers + f * (c32 * layer + K_BLOCK * s * config.camera_head.dim_in);

    let head = &config.depth_head;
    let features = head.features;
    let full = height * width * (features + 2 * head.head_features_2 + head.output_dim);
    let dpt = a * 4 * layer
        + f * chunk
            * (c32 * 4 * p * 2 * c
                + K_DPT_TOKENS * hw * head.dim_in
                + K_FUSE * 64 * hw * features
                + K_FULL * full);

    let point_channels = if options.skip_point_head {
        0
    } else {
        config.point_head.output_dim
    };
    let outputs = f * 2 * s * height * width * (config.depth_head.output_dim + point_channels);
    let images = (4 + a) * s * 3 * height * width;
    let weights = a * aggregator_parameters + f * head_parameters;
    let phases = dino.max(aggregator).max(camera).max(dpt);
    let pools = options.device_pool_bytes;
    let total = weights + pools + images + outputs + phases;
    MemoryEstimate {
        weights_bytes: weights,
        pool_bytes: pools,
        images_bytes: images,
        outputs_bytes: outputs,
        dino_bytes: dino,
        aggregator_bytes: aggregator,
        camera_bytes: camera,
        dpt_bytes: dpt,
        total_bytes: total,
    }
}

/// The largest window (then the largest DPT chunk, up to the config's default) whose
/// [`estimate`] fits in `budget_bytes`, with default [`PlanOptions`].
pub fn plan(
    budget_bytes: usize,
    image_hw: (usize, usize),
    precision: Precision,
    config: &VggtConfig,
) -> Result<Plan, PlanError> {
    plan_with(
        budget_bytes,
        image_hw,
        precision,
        config,
        &PlanOptions::default(),
    )
}

/// [`plan`] with explicit options.
pub fn plan_with(
    budget_bytes: usize,
    image_hw: (usize, usize),
    precision: Precision,
    config: &VggtConfig,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    let (height_px, width_px) = image_hw;
    let patch_size = config.patch_size;
    if height_px == 0
        || width_px == 0
        || !height_px.is_multiple_of(patch_size)
        || !width_px.is_multiple_of(patch_size)
    {
        return Err(PlanError::ImageSize {
            height_px,
            width_px,
            patch_size,
        });
    }
    let parameters = parameter_counts(config);
    let total = |frames: usize, chunk: usize| {
        estimate_with_params(
            parameters, config, image_hw, precision, frames, chunk, options,
        )
    };
    let fits = |frames: usize, chunk: usize| total(frames, chunk).total_bytes <= budget_bytes;
    if !fits(1, 1) {
        return Err(PlanError::BudgetTooSmall {
            budget_bytes,
            needed_bytes: total(1, 1).total_bytes,
            height_px,
            width_px,
        });
    }
    // The estimate grows with S: binary search for the largest window that fits with chunk 1.
    let (mut lo, mut hi) = (1, options.max_window.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid, 1) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let window_size = lo;
    let max_chunk = config.depth_head.frames_chunk_size.clamp(1, window_size);
    let dpt_frames_chunk = (1..=max_chunk)
        .rev()
        .find(|&chunk| fits(window_size, chunk))
        .unwrap_or(1);
    let (gh, gw) = (height_px / patch_size, width_px / patch_size);
    let p = 1 + config.aggregator.num_register_tokens + gh * gw;
    let per_frame_scores = config.aggregator.num_heads * p * p;
    let frame_attention_chunk =
        (MAX_SCORE_ELEMENTS / per_frame_scores.max(1)).clamp(1, window_size);
    Ok(Plan {
        window_size,
        dpt_frames_chunk,
        frame_attention_chunk,
        estimate: total(window_size, dpt_frames_chunk),
        budget_bytes,
        image_hw,
        precision,
    })
}
