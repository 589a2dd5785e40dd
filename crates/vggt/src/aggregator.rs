//! Alternating-attention aggregator: DINO patch tokens plus camera/register tokens per frame, then
//! frame blocks (attention within each frame) alternating with global blocks (attention across
//! the frames of a sequence).
//!
//! Ported from upstream `vggt/models/aggregator.py`. Images enter in [0, 1] and are
//! ImageNet-normalised here. Each output layer i is `concat(f_i, g_i)` on channels, where f_i is
//! the output of frame block i and g_i of global block i (with `aa_block_size` k, a group runs k
//! frame blocks, then k global blocks, pairing them in order).
//!
//! Global attention is dense by default. Given per-frame neighbour lists it becomes sparse: frame
//! i's queries see only the tokens of its neighbours, and only those keys/values are gathered, so
//! cost scales with S * k rather than S^2 (see [`crate::layers::Attention::forward_sparse`]).
//!
//! # Stages
//! [`Aggregator::forward`] is [`Aggregator::embed`] (ImageNet normalisation + DINO, once) followed
//! by [`Aggregator::forward_embedded`] (camera/register tokens + the alternating blocks). Between
//! the two, a caller can choose neighbour lists from the DINO patch tokens
//! ([`Embedded::patch_tokens`], see [`crate::descriptor`]) without running DINO twice.
//!
//! [`Aggregator::forward_with`] and [`Aggregator::forward_embedded_with`] report progress to a
//! callback `on_stage(AggregatorStage)`: [`AggregatorStage::PatchEmbed`] once DINO has run
//! (`forward_with` only), then [`AggregatorStage::Layer`]`(i)` once frame block i and global block
//! i have both run, i.e. once output layer i exists (layers skipped because nothing after them is
//! kept are not reported). A memory report reads the allocator or device at these boundaries; the
//! plain `forward*` methods pass a no-op.
//!
//! # Precision
//! The aggregator computes in its parameters' float dtype ([`Aggregator::dtype`], e.g. bf16 when
//! loaded with [`crate::Precision::Bf16`]): images of any float dtype are cast
//! to it, and every tensor it creates (normalisation constants, RoPE tables, recorded positions)
//! takes it, whatever the device's default dtype. The DINO position-embedding interpolation runs
//! in float32 and is cast back, as upstream's.
//!
//! # Schedule
//! [`AttentionSchedule`] holds how the blocks run, set on the module
//! ([`Aggregator::set_schedule`], so that [`crate::Vggt::forward`] follows it) or per call
//! ([`Aggregator::forward_scheduled`]):
//! * `frame_chunk`: frame blocks (and swapped global blocks) run over chunks of that many frames,
//!   and the token-wise feed-forward half of the global blocks over the tokens of that many
//!   frames. Exact: frame attention and the MLP treat frames and tokens independently, so only
//!   the peak of the temporaries (qkv and attention of frame blocks, the 4C-wide MLP hidden
//!   layer of every block) shrinks, to the chunk's. The global blocks' attention itself still
//!   sees every token at once (its working set is bounded by the backend's fused attention and
//!   [`crate::layers::MAX_SCORE_ELEMENTS`]).
//! * `global_as_frame_blocks` L (default 0): the first L global blocks run as frame attention,
//!   each with its own weights but attending only within its frame ("early global-to-frame
//!   swap"). An approximation: it changes the outputs from layer 0 on and saves the cross-frame
//!   attention of those blocks. Its cost on the tiny fixtures is measured by
//!   `tests/frame_swap.rs`; on the real VGGT-1B it is reported as nearly lossless for the first
//!   few of 24 blocks, which the fixtures here cannot confirm.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::config::VggtConfig;
use crate::dino::DinoVisionTransformer;
use crate::layers::{Block, BlockConfig};
use crate::rope::{frame_positions, RopeTables};

/// ImageNet channel means (RGB) subtracted from [0, 1] images.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB) dividing the centred images.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Invalid input to the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Image height or width is not a multiple of the patch size.
    #[error(
        "image size {height_px}x{width_px} (HxW) is not a multiple of the patch size {patch_size}"
    )]
    ImageSize {
        /// Image height in pixels.
        height_px: usize,
        /// Image width in pixels.
        width_px: usize,
        /// Patch side in pixels.
        patch_size: usize,
    },
    /// Images do not have 3 (RGB) channels.
    #[error("images must have 3 channels, got {channels}")]
    Channels {
        /// Channels received.
        channels: usize,
    },
    /// The batch or the frame axis is empty.
    #[error("empty input: batch {batch}, frames {frames}")]
    Empty {
        /// Batch size B.
        batch: usize,
        /// Frames per sequence S.
        frames: usize,
    },
    /// A requested output layer does not exist.
    #[error("output layer {layer} requested, the aggregator has {depth} layers")]
    LayerOutOfRange {
        /// Requested layer.
        layer: usize,
        /// Number of layers.
        depth: usize,
    },
    /// The number of neighbour lists differs from the number of frames.
    #[error("{lists} neighbour lists for {frames} frames")]
    NeighbourListCount {
        /// Frames S.
        frames: usize,
        /// Lists given.
        lists: usize,
    },
    /// A neighbour index is not a frame of the sequence.
    #[error("frame {frame} lists neighbour {neighbour}, but there are only {frames} frames")]
    NeighbourOutOfRange {
        /// Frame whose list is wrong.
        frame: usize,
        /// Offending index.
        neighbour: usize,
        /// Frames S.
        frames: usize,
    },
    /// A frame does not list itself among its neighbours.
    #[error("frame {frame} does not list itself as a neighbour")]
    NeighbourMissingSelf {
        /// Frame whose list is wrong.
        frame: usize,
    },
    /// A neighbour appears twice in one list.
    #[error("frame {frame} lists neighbour {neighbour} more than once")]
    NeighbourDuplicate {
        /// Frame whose list is wrong.
        frame: usize,
        /// Repeated index.
        neighbour: usize,
    },
    /// Neighbours could not be chosen from the frame descriptors.
    #[error("choosing neighbours from DINO features: {0}")]
    Descriptors(#[from] crate::descriptor::DescriptorError),
}

/// What [`Aggregator::forward`] computes and keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggregatorOptions {
    /// Output layers to keep (`None` = all). Only these are held in memory, and blocks after
    /// the last requested layer are skipped.
    pub keep_layers: Option<Vec<usize>>,
    /// Per-frame neighbour lists for global attention: frame i attends frames `neighbours[i]`
    /// (indices within the sequence, the same for every batch element; each list must contain i,
    /// without repeats). `None` = dense.
    pub neighbours: Option<Vec<Vec<usize>>>,
    /// Keep DINO and aggregator intermediates (for parity tests).
    pub record_intermediates: bool,
}

/// How the aggregator's blocks are executed (see the module doc). The default is the exact,
/// unchunked upstream computation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttentionSchedule {
    /// The first L global blocks attend within each frame instead of across frames
    /// (approximate; 0 = off). Values above the depth swap every global block.
    pub global_as_frame_blocks: usize,
    /// Frames per chunk of frame attention and of the global blocks' feed-forward half (`None` =
    /// all frames at once; `Some(0)` counts as 1). Results do not depend on it.
    pub frame_chunk: Option<usize>,
}

/// A boundary of the aggregator's forward pass, reported to the `on_stage` callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregatorStage {
    /// ImageNet normalisation and the DINO patch embedding have run.
    PatchEmbed,
    /// Frame block i and global block i have run: output layer i exists.
    Layer(usize),
}

/// DINO patch tokens of a batch of image sequences, the first stage of the aggregator
/// (from [`Aggregator::embed`], consumed by [`Aggregator::forward_embedded`]).
#[derive(Debug, Clone)]
pub struct Embedded<B: Backend> {
    patch_tokens: Tensor<B, 3>,
    batch: usize,
    frames: usize,
    grid: (usize, usize),
    intermediates: BTreeMap<String, Tensor<B, 3>>,
}

impl<B: Backend> Embedded<B> {
    /// DINO final-normed patch tokens `[B*S, h*w, C]`, frame-major within each batch element.
    pub fn patch_tokens(&self) -> &Tensor<B, 3> {
        &self.patch_tokens
    }

    /// Batch size B.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Frames per sequence S.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Patch grid (h, w) = (H / patch, W / patch).
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }
}

/// Result of [`Aggregator::forward`].
#[derive(Debug, Clone)]
pub struct AggregatorOutput<B: Backend> {
    /// Kept output layers by index, each `[B, S, P, 2C]` = concat(frame, global) on channels.
    pub layers: BTreeMap<usize, Tensor<B, 4>>,
    /// DINO final-normed patch tokens `[B*S, h*w, C]`.
    pub patch_tokens: Tensor<B, 3>,
    /// Index of the first patch token within a frame's P tokens (1 + registers).
    pub patch_start_idx: usize,
    /// Intermediates named as in the parity fixtures, when requested: `dino.pos_embed_interp`
    /// `[1, 1+h*w, C]`, `dino.tokens_in` and `dino.x_prenorm` `[B*S, 1+R+h*w, C]`,
    /// `aggregator.tokens_in` `[B*S, P, C]`, `aggregator.pos` `[B*S, P, 2]` (y, x as floats).
    pub intermediates: BTreeMap<String, Tensor<B, 3>>,
}

/// The VGGT aggregator (`aggregator.*` keys).
#[derive(Module, Debug)]
pub struct Aggregator<B: Backend> {
    /// DINOv2 ViT producing the patch tokens.
    pub patch_embed: DinoVisionTransformer<B>,
    /// Attention within each frame.
    pub frame_blocks: Vec<Block<B>>,
    /// Attention across the frames of a sequence.
    pub global_blocks: Vec<Block<B>>,
    /// Camera token `[1, 2, 1, C]`: slot 0 for the first frame, slot 1 for the others.
    pub camera_token: Param<Tensor<B, 4>>,
    /// Register tokens `[1, 2, R, C]`, slots as for the camera token.
    pub register_token: Param<Tensor<B, 4>>,
    patch_size: usize,
    aa_block_size: usize,
    head_dim: usize,
    rope_freq: f64,
    #[module(skip)]
    schedule: AttentionSchedule,
}

impl<B: Backend> Aggregator<B> {
    /// Builds the aggregator of `config` (parameters are placeholders until loaded).
    pub fn new(config: &VggtConfig, device: &B::Device) -> Self {
        let agg = &config.aggregator;
        let c = agg.embed_dim;
        let block = BlockConfig {
            dim: c,
            num_heads: agg.num_heads,
            mlp_ratio: agg.mlp_ratio,
            ln_eps: agg.layer_norm_eps,
            qk_norm_eps: agg.qk_norm.then_some(agg.qk_norm_eps),
        };
        let blocks = || (0..agg.depth).map(|_| Block::new(&block, device)).collect();
        Self {
            patch_embed: DinoVisionTransformer::new(config, device),
            frame_blocks: blocks(),
            global_blocks: blocks(),
            camera_token: Param::from_tensor(Tensor::zeros([1, 2, 1, c], device)),
            register_token: Param::from_tensor(Tensor::zeros(
                [1, 2, agg.num_register_tokens, c],
                device,
            )),
            patch_size: config.patch_size,
            aa_block_size: agg.aa_block_size,
            head_dim: block.head_dim(),
            rope_freq: agg.rope_freq,
            schedule: AttentionSchedule::default(),
        }
    }

    /// How the blocks run when no schedule is given per call (default: exact and unchunked).
    pub fn schedule(&self) -> AttentionSchedule {
        self.schedule
    }

    /// Sets the schedule used by [`Self::forward`], [`Self::forward_with`],
    /// [`Self::forward_embedded`] and [`Self::forward_embedded_with`].
    pub fn set_schedule(&mut self, schedule: AttentionSchedule) {
        self.schedule = schedule;
    }

    /// Float dtype of the parameters, which the aggregator computes in: images are cast to it
    /// and every tensor it creates (normalisation constants, RoPE tables, tokens) takes it, so
    /// its output layers have it too.
    pub fn dtype(&self) -> DType {
        self.camera_token.val().dtype()
    }

    /// Number of output layers (= frame blocks = global blocks).
    pub fn depth(&self) -> usize {
        self.frame_blocks.len()
    }

    /// Runs the aggregator. images: `[B, S, 3, H, W]`, RGB in [0, 1], H and W multiples of the
    /// patch size.
    pub fn forward(
        &self,
        images: Tensor<B, 5>,
        options: &AggregatorOptions,
    ) -> Result<AggregatorOutput<B>, ModelError> {
        self.forward_with(images, options, &mut |_| {})
    }

    /// [`Self::forward`], calling `on_stage` at every stage boundary (see the module doc).
    /// Options are validated before DINO runs.
    pub fn forward_with(
        &self,
        images: Tensor<B, 5>,
        options: &AggregatorOptions,
        on_stage: &mut dyn FnMut(AggregatorStage),
    ) -> Result<AggregatorOutput<B>, ModelError> {
        let [batch, frames, channels, height_px, width_px] = images.dims();
        self.check_images(batch, frames, channels, height_px, width_px)?;
        self.kept_layers(options.keep_layers.as_deref())?;
        if let Some(neighbours) = &options.neighbours {
            validate_neighbours(neighbours, frames)?;
        }
        let embedded = self.embed(images, options.record_intermediates)?;
        on_stage(AggregatorStage::PatchEmbed);
        self.forward_scheduled(embedded, options, &self.schedule, on_stage)
    }

    /// First stage: ImageNet normalisation and DINO. images: `[B, S, 3, H, W]`, RGB in [0, 1],
    /// H and W multiples of the patch size, any float dtype (cast to [`Self::dtype`]). With `record_intermediates` the DINO intermediates
    /// (see [`AggregatorOutput::intermediates`]) are kept and passed on to the output.
    pub fn embed(
        &self,
        images: Tensor<B, 5>,
        record_intermediates: bool,
    ) -> Result<Embedded<B>, ModelError> {
        let [batch, frames, channels, height_px, width_px] = images.dims();
        self.check_images(batch, frames, channels, height_px, width_px)?;
        let normalised = normalise_imagenet(images.cast(self.dtype())).reshape([
            batch * frames,
            3,
            height_px,
            width_px,
        ]);
        let dino = self.patch_embed.forward(normalised, record_intermediates);
        let mut intermediates = BTreeMap::new();
        let dino_named = [
            ("dino.pos_embed_interp", dino.pos_embed_interp),
            ("dino.tokens_in", dino.tokens_in),
            ("dino.x_prenorm", dino.x_prenorm),
        ];
        for (name, tensor) in dino_named {
            intermediates.extend(tensor.map(|t| (name.to_string(), t)));
        }
        Ok(Embedded {
            patch_tokens: dino.patch_tokens,
            batch,
            frames,
            grid: (height_px / self.patch_size, width_px / self.patch_size),
            intermediates,
        })
    }

    /// Second stage: camera/register tokens and the alternating blocks over `embedded`, with the
    /// module's schedule.
    pub fn forward_embedded(
        &self,
        embedded: Embedded<B>,
        options: &AggregatorOptions,
    ) -> Result<AggregatorOutput<B>, ModelError> {
        self.forward_scheduled(embedded, options, &self.schedule, &mut |_| {})
    }

    /// [`Self::forward_embedded`], calling `on_stage` with [`AggregatorStage::Layer`] after each
    /// frame + global block pair.
    pub fn forward_embedded_with(
        &self,
        embedded: Embedded<B>,
        options: &AggregatorOptions,
        on_stage: &mut dyn FnMut(AggregatorStage),
    ) -> Result<AggregatorOutput<B>, ModelError> {
        self.forward_scheduled(embedded, options, &self.schedule, on_stage)
    }

    /// [`Self::forward_embedded_with`] with an explicit `schedule` instead of the module's.
    pub fn forward_scheduled(
        &self,
        embedded: Embedded<B>,
        options: &AggregatorOptions,
        schedule: &AttentionSchedule,
        on_stage: &mut dyn FnMut(AggregatorStage),
    ) -> Result<AggregatorOutput<B>, ModelError> {
        let Embedded {
            patch_tokens,
            batch,
            frames,
            grid,
            mut intermediates,
        } = embedded;
        let keep = self.kept_layers(options.keep_layers.as_deref())?;
        if let Some(neighbours) = &options.neighbours {
            validate_neighbours(neighbours, frames)?;
        }
        let tokens = self.frame_tokens(patch_tokens.clone(), batch, frames);
        let patch_start_idx = self.patch_start_idx();
        let positions = frame_positions(grid.0, grid.1, patch_start_idx);

        if options.record_intermediates {
            intermediates.insert("aggregator.tokens_in".to_string(), tokens.clone());
            let pos = positions_tensor::<B>(&positions, &tokens.device(), tokens.dtype());
            intermediates.insert(
                "aggregator.pos".to_string(),
                pos.repeat_dim(0, batch * frames),
            );
        } else {
            intermediates.clear();
        }

        let layers = self.alternate(
            tokens,
            Alternation {
                frames,
                positions: &positions,
                keep: &keep,
                neighbours: options.neighbours.as_deref(),
                schedule,
            },
            on_stage,
        );
        Ok(AggregatorOutput {
            layers,
            patch_tokens,
            patch_start_idx,
            intermediates,
        })
    }

    /// Index of the first patch token of a frame (camera token + registers).
    pub fn patch_start_idx(&self) -> usize {
        1 + self.register_token.dims()[2]
    }

    /// `[camera, registers, patches]` per frame: `[B*S, h*w, C]` -> `[B*S, P, C]`.
    fn frame_tokens(
        &self,
        patch_tokens: Tensor<B, 3>,
        batch: usize,
        frames: usize,
    ) -> Tensor<B, 3> {
        let camera = special_tokens(self.camera_token.val(), batch, frames);
        let registers = special_tokens(self.register_token.val(), batch, frames);
        Tensor::cat(vec![camera, registers, patch_tokens], 1)
    }

    /// The alternating frame/global blocks over tokens `[B*S, P, C]`. Returns the kept outputs
    /// `[B, S, P, 2C]`; blocks after the last kept layer are skipped.
    fn alternate(
        &self,
        tokens: Tensor<B, 3>,
        run: Alternation<'_>,
        on_stage: &mut dyn FnMut(AggregatorStage),
    ) -> BTreeMap<usize, Tensor<B, 4>> {
        let Alternation {
            frames,
            positions,
            keep,
            neighbours,
            schedule,
        } = run;
        let [batch_frames, tokens_per_frame, c] = tokens.dims();
        let batch = batch_frames / frames;
        let framed = [batch, frames, tokens_per_frame, c];
        let frame_rope =
            RopeTables::new(positions, self.head_dim, self.rope_freq, &tokens.device())
                .cast(tokens.dtype());
        let global_rope = frame_rope.repeat(frames);
        let chunk = schedule.frame_chunk;
        let frame = |block: &Block<B>, x: Tensor<B, 3>| frame_block(block, x, &frame_rope, chunk);
        // g: [B, S*P, C], one sequence of all frames.
        let global = |index: usize, block: &Block<B>, g: Tensor<B, 3>| {
            if index < schedule.global_as_frame_blocks {
                let x = g.reshape([batch_frames, tokens_per_frame, c]);
                return frame(block, x).reshape([batch, frames * tokens_per_frame, c]);
            }
            let ffn_chunk = chunk.map(|frames| frames.max(1) * tokens_per_frame);
            block.forward_global(g, frames, Some(&global_rope), neighbours, ffn_chunk)
        };

        let last_needed = keep.iter().rposition(|&k| k);
        let mut layers = BTreeMap::new();
        let mut x = tokens;
        let k = self.aa_block_size;
        let groups = self
            .frame_blocks
            .chunks(k)
            .zip(self.global_blocks.chunks(k))
            .zip(keep.chunks(k));
        for (group, ((frame_blocks, global_blocks), kept)) in groups.enumerate() {
            let first = group * k;
            if last_needed.is_none_or(|last| first > last) {
                break;
            }
            let mut frame_outputs = Vec::with_capacity(k);
            for (block, &kept) in frame_blocks.iter().zip(kept) {
                x = frame(block, x);
                frame_outputs.push(kept.then(|| x.clone().reshape(framed)));
            }
            let mut g = x.reshape([batch, frames * tokens_per_frame, c]);
            for (j, (block, frame_output)) in global_blocks.iter().zip(frame_outputs).enumerate() {
                g = global(first + j, block, g);
                if let Some(f) = frame_output {
                    layers.insert(
                        first + j,
                        Tensor::cat(vec![f, g.clone().reshape(framed)], 3),
                    );
                }
                on_stage(AggregatorStage::Layer(first + j));
            }
            x = g.reshape([batch_frames, tokens_per_frame, c]);
        }
        layers
    }

    fn check_images(
        &self,
        batch: usize,
        frames: usize,
        channels: usize,
        height_px: usize,
        width_px: usize,
    ) -> Result<(), ModelError> {
        if batch == 0 || frames == 0 {
            return Err(ModelError::Empty { batch, frames });
        }
        if channels != 3 {
            return Err(ModelError::Channels { channels });
        }
        let patch_size = self.patch_size;
        if height_px == 0
            || width_px == 0
            || !height_px.is_multiple_of(patch_size)
            || !width_px.is_multiple_of(patch_size)
        {
            return Err(ModelError::ImageSize {
                height_px,
                width_px,
                patch_size,
            });
        }
        Ok(())
    }

    /// One flag per layer: kept or not.
    fn kept_layers(&self, requested: Option<&[usize]>) -> Result<Vec<bool>, ModelError> {
        let depth = self.depth();
        let Some(requested) = requested else {
            return Ok(vec![true; depth]);
        };
        let mut keep = vec![false; depth];
        for &layer in requested {
            *keep
                .get_mut(layer)
                .ok_or(ModelError::LayerOutOfRange { layer, depth })? = true;
        }
        Ok(keep)
    }
}

/// What one run of [`Aggregator::alternate`] works on.
struct Alternation<'a> {
    /// Frames per sequence S.
    frames: usize,
    /// (y, x) of the P tokens of a frame.
    positions: &'a [[u32; 2]],
    /// One flag per layer: kept or not.
    keep: &'a [bool],
    /// Neighbour lists of sparse global attention (`None` = dense).
    neighbours: Option<&'a [Vec<usize>]>,
    /// How the blocks run.
    schedule: &'a AttentionSchedule,
}

/// A block with attention within each frame over x `[N, P, C]` (N = B*S frames), in chunks of
/// `chunk` frames when given (exact: the block treats frames independently). Returns `[N, P, C]`.
fn frame_block<B: Backend>(
    block: &Block<B>,
    x: Tensor<B, 3>,
    rope: &RopeTables<B>,
    chunk: Option<usize>,
) -> Tensor<B, 3> {
    let n = x.dims()[0];
    match chunk.map(|chunk| chunk.max(1)) {
        Some(chunk) if chunk < n => {
            let parts = (0..n)
                .step_by(chunk)
                .map(|start| {
                    block.forward(x.clone().narrow(0, start, chunk.min(n - start)), Some(rope))
                })
                .collect();
            Tensor::cat(parts, 0)
        }
        _ => block.forward(x, Some(rope)),
    }
}

/// Checks per-frame neighbour lists for `frames` frames: one list per frame, indices in range,
/// no repeats, and each frame listed among its own neighbours.
pub fn validate_neighbours(neighbours: &[Vec<usize>], frames: usize) -> Result<(), ModelError> {
    if neighbours.len() != frames {
        return Err(ModelError::NeighbourListCount {
            frames,
            lists: neighbours.len(),
        });
    }
    for (frame, list) in neighbours.iter().enumerate() {
        let mut seen = vec![false; frames];
        for &neighbour in list {
            let slot = seen
                .get_mut(neighbour)
                .ok_or(ModelError::NeighbourOutOfRange {
                    frame,
                    neighbour,
                    frames,
                })?;
            if std::mem::replace(slot, true) {
                return Err(ModelError::NeighbourDuplicate { frame, neighbour });
            }
        }
        if !seen[frame] {
            return Err(ModelError::NeighbourMissingSelf { frame });
        }
    }
    Ok(())
}

/// Positions (y, x) as a float tensor `[1, P, 2]` of `dtype`.
fn positions_tensor<B: Backend>(
    positions: &[[u32; 2]],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 3> {
    let values: Vec<f32> = positions
        .iter()
        .flat_map(|yx| yx.map(|v| v as f32))
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, positions.len(), 2]),
        (device, dtype),
    )
}

/// `(x - mean) / std` per RGB channel, in the images' dtype. images: `[B, S, 3, H, W]`.
fn normalise_imagenet<B: Backend>(images: Tensor<B, 5>) -> Tensor<B, 5> {
    let device = images.device();
    let dtype = images.dtype();
    let per_channel = |values: [f32; 3]| {
        Tensor::<B, 5>::from_data(
            TensorData::new(values.to_vec(), [1, 1, 3, 1, 1]),
            (&device, dtype),
        )
    };
    (images - per_channel(IMAGENET_MEAN)) / per_channel(IMAGENET_STD)
}

/// Expands a `[1, 2, n, C]` token pair to `[B*S, n, C]`: slot 0 for frame 0, slot 1 for the rest.
fn special_tokens<B: Backend>(pair: Tensor<B, 4>, batch: usize, frames: usize) -> Tensor<B, 3> {
    let [_, _, n, c] = pair.dims();
    let first = pair.clone().narrow(1, 0, 1).expand([batch, 1, n, c]);
    let tokens = if frames > 1 {
        let rest = pair.narrow(1, 1, 1).expand([batch, frames - 1, n, c]);
        Tensor::cat(vec![first, rest], 1)
    } else {
        first
    };
    tokens.reshape([batch * frames, n, c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tiny() -> Aggregator<Flex> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/tiny_a/config.json"
        );
        let config = VggtConfig::from_json_file(path).expect("tiny_a config");
        Aggregator::new(&config, &Default::default())
    }

    #[test]
    fn keeps_only_requested_layers() {
        let aggregator = tiny();
        let images = Tensor::<Flex, 5>::ones([1, 2, 3, 28, 42], &Default::default()) * 0.5;
        let options = AggregatorOptions {
            keep_layers: Some(vec![2, 0]),
            ..Default::default()
        };
        let output = aggregator
            .forward(images.clone(), &options)
            .expect("forward");
        assert_eq!(output.layers.keys().copied().collect::<Vec<_>>(), [0, 2]);
        // 1 camera + 4 registers + 2x3 patches per frame, 2C channels.
        assert_eq!(output.layers[&2].dims(), [1, 2, 11, 128]);
        assert_eq!(output.patch_tokens.dims(), [2, 6, 64]);
        assert_eq!(output.patch_start_idx, 5);

        let all = aggregator
            .forward(images, &AggregatorOptions::default())
            .expect("forward");
        assert_eq!(all.layers.len(), aggregator.depth());
        let same = |a: &Tensor<Flex, 4>, b: &Tensor<Flex, 4>| {
            a.clone().equal(b.clone()).all().into_scalar()
        };
        assert!(
            same(&all.layers[&2], &output.layers[&2]),
            "a kept layer does not depend on what else is kept"
        );
    }

    /// With aa_block_size 2 a group runs frame blocks 0, 1 then global blocks 0, 1, and output j
    /// pairs frame block j with global block j.
    #[test]
    fn block_groups_pair_frame_and_global_outputs() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/tiny_a/config.json"
        );
        let mut config = VggtConfig::from_json_file(path).expect("tiny_a config");
        config.aggregator.aa_block_size = 2;
        let device = Default::default();
        let aggregator = Aggregator::<Flex>::new(&config, &device);
        let (batch, frames, tokens, c) = (1, 2, 11, 64);
        let values: Vec<f32> = (0..frames * 3 * 28 * 42)
            .map(|i| (i % 17) as f32 / 16.0)
            .collect();
        let images = Tensor::<Flex, 5>::from_data(
            TensorData::new(values, [batch, frames, 3, 28, 42]),
            &device,
        );
        let options = AggregatorOptions {
            record_intermediates: true,
            ..Default::default()
        };
        let output = aggregator.forward(images, &options).expect("forward");

        let positions = frame_positions(2, 3, 5);
        let frame_rope = RopeTables::new(&positions, 16, config.aggregator.rope_freq, &device);
        let global_rope = frame_rope.repeat(frames);
        let mut x = output.intermediates["aggregator.tokens_in"].clone();
        for group in [0, 2] {
            let f0 = aggregator.frame_blocks[group].forward(x, Some(&frame_rope));
            let f1 = aggregator.frame_blocks[group + 1].forward(f0.clone(), Some(&frame_rope));
            let g0 = aggregator.global_blocks[group].forward(
                f1.clone().reshape([batch, frames * tokens, c]),
                Some(&global_rope),
            );
            let g1 = aggregator.global_blocks[group + 1].forward(g0.clone(), Some(&global_rope));
            for (j, (f, g)) in [(f0, g0), (f1, g1.clone())].into_iter().enumerate() {
                let framed = [batch, frames, tokens, c];
                let want = Tensor::cat(vec![f.reshape(framed), g.reshape(framed)], 3);
                let diff = (output.layers[&(group + j)].clone() - want)
                    .abs()
                    .max()
                    .into_scalar();
                assert!(diff <= 1e-6, "layer {}: {diff}", group + j);
            }
            x = g1.reshape([batch * frames, tokens, c]);
        }
    }

    #[test]
    fn bad_images_are_rejected() {
        let aggregator = tiny();
        let device = Default::default();
        let gray = Tensor::<Flex, 5>::zeros([1, 2, 1, 28, 42], &device);
        assert_eq!(
            aggregator
                .forward(gray, &AggregatorOptions::default())
                .err(),
            Some(ModelError::Channels { channels: 1 })
        );
        let empty = Tensor::<Flex, 5>::zeros([1, 0, 3, 28, 42], &device);
        assert_eq!(
            aggregator
                .forward(empty, &AggregatorOptions::default())
                .err(),
            Some(ModelError::Empty {
                batch: 1,
                frames: 0
            })
        );
    }
}
