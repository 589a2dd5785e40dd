//! DPT dense prediction head: per-pixel depth (or world points) plus confidence from four
//! aggregator layers. The depth and point heads are two instances of [`DptHead`].
//!
//! Port of upstream `vggt/heads/dpt_head.py` (`DPTHead`, `FeatureFusionBlock`,
//! `ResidualConvUnit`, `_apply_pos_embed`), `vggt/heads/utils.py` (UV sin/cos embedding) and
//! `vggt/heads/head_act.py` (`activate_head`).
//!
//! Per frame: patch tokens of four layers -> shared LayerNorm -> 1x1 projections -> + UV embedding
//! -> resize to 4x, 2x, 1x, 1/2x of the patch grid -> 3x3 convs to `features` channels -> fusion
//! (residual conv units, bilinear `align_corners = true` upsampling) -> 3x3 conv -> resize to the
//! image size -> + UV embedding -> 3x3 conv, ReLU, 1x1 conv -> activations. Every op is per frame,
//! so frames are processed in chunks of `frames_chunk_size` without changing the result.
//!
//! Parameter paths spell the upstream keys except `resConfUnit{1,2}` -> `res_conf_unit{1,2}`,
//! `resize_layers.{0,1,3}` -> `resize_layer{0,1,3}` and `scratch.output_conv2.{0,2}` ->
//! `scratch.output_conv2_{0,2}` (remapped by the checkpoint loader).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};

use crate::cpu::conv2d as conv;
use burn::nn::{LayerNorm, LayerNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::config::{DptActivation, DptHeadConfig};

/// Scale of the UV sin/cos embedding added to the feature maps (hard-coded upstream).
pub const UV_EMBED_RATIO: f32 = 0.1;
/// Frequency base of the UV sin/cos embedding (hard-coded upstream).
pub const UV_EMBED_OMEGA_0: f64 = 100.0;

/// Output of a DPT head.
#[derive(Debug, Clone)]
pub struct DptOutput<B: Backend> {
    /// Activated prediction `[B, S, H, W, output_dim - 1]`: depth (`[.., 1]`) or world points
    /// (`[.., 3]`, in the first frame's camera coordinates).
    pub pred: Tensor<B, 5>,
    /// Activated confidence `[B, S, H, W]`.
    pub conf: Tensor<B, 4>,
}

/// Residual conv unit: `relu(x) + conv2(relu(conv1(relu(x))))`.
///
/// The skip adds `relu(x)`, not `x`: upstream's first ReLU is in place and overwrites the input
/// that is added back.
#[derive(Module, Debug)]
pub struct ResidualConvUnit<B: Backend> {
    /// 3x3 conv, padding 1, bias.
    pub conv1: Conv2d<B>,
    /// 3x3 conv, padding 1, bias.
    pub conv2: Conv2d<B>,
}

impl<B: Backend> ResidualConvUnit<B> {
    fn new(features: usize, device: &B::Device) -> Self {
        Self {
            conv1: conv3x3(features, features, true, device),
            conv2: conv3x3(features, features, true, device),
        }
    }

    /// `[N, F, h, w]` -> `[N, F, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = relu(x);
        let y = conv(&self.conv2, relu(conv(&self.conv1, x.clone())));
        y + x
    }
}

/// Feature fusion block (`scratch.refinenetK`): add the skip branch, refine, upsample, project.
#[derive(Module, Debug)]
pub struct FeatureFusionBlock<B: Backend> {
    /// Refines the skip input; absent in `refinenet4`, which has no skip input.
    pub res_conf_unit1: Option<ResidualConvUnit<B>>,
    /// Refines the sum.
    pub res_conf_unit2: ResidualConvUnit<B>,
    /// 1x1 conv with bias after the resize.
    pub out_conv: Conv2d<B>,
}

impl<B: Backend> FeatureFusionBlock<B> {
    fn new(features: usize, has_skip: bool, device: &B::Device) -> Self {
        Self {
            res_conf_unit1: has_skip.then(|| ResidualConvUnit::new(features, device)),
            res_conf_unit2: ResidualConvUnit::new(features, device),
            out_conv: Conv2dConfig::new([features, features], [1, 1]).init(device),
        }
    }

    /// `x` `[N, F, h, w]` (+ `skip` of the same shape) -> `[N, F, out_hw.0, out_hw.1]`.
    ///
    /// # Panics
    /// If a skip input is given to a block without `res_conf_unit1` (a bug).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        skip: Option<Tensor<B, 4>>,
        out_hw: [usize; 2],
    ) -> Tensor<B, 4> {
        let y = match (skip, &self.res_conf_unit1) {
            (Some(skip), Some(unit)) => x + unit.forward(skip),
            (None, _) => x,
            (Some(_), None) => panic!("fusion block without res_conf_unit1 was given a skip input"),
        };
        let y = self.res_conf_unit2.forward(y);
        conv(&self.out_conv, resize_bilinear_align_corners(y, out_hw))
    }
}

/// Convolutions and fusion blocks after the four branches (upstream `scratch`).
#[derive(Module, Debug)]
pub struct DptScratch<B: Backend> {
    /// 3x3 conv (no bias) of branch 0 to `features` channels.
    pub layer1_rn: Conv2d<B>,
    /// 3x3 conv (no bias) of branch 1.
    pub layer2_rn: Conv2d<B>,
    /// 3x3 conv (no bias) of branch 2.
    pub layer3_rn: Conv2d<B>,
    /// 3x3 conv (no bias) of branch 3.
    pub layer4_rn: Conv2d<B>,
    /// Fuses into branch 0's size and upsamples 2x.
    pub refinenet1: FeatureFusionBlock<B>,
    /// Fuses into branch 1 and resizes to branch 0's size.
    pub refinenet2: FeatureFusionBlock<B>,
    /// Fuses into branch 2 and resizes to branch 1's size.
    pub refinenet3: FeatureFusionBlock<B>,
    /// Refines branch 3 (no skip) and resizes to branch 2's size.
    pub refinenet4: FeatureFusionBlock<B>,
    /// 3x3 conv `features -> features / 2`.
    pub output_conv1: Conv2d<B>,
    /// 3x3 conv `features / 2 -> head_features_2` (upstream `output_conv2.0`).
    pub output_conv2_0: Conv2d<B>,
    /// 1x1 conv `head_features_2 -> output_dim` (upstream `output_conv2.2`; `.1` is a ReLU).
    pub output_conv2_2: Conv2d<B>,
}

/// DPT head (`depth_head` or `point_head`).
#[derive(Module, Debug)]
pub struct DptHead<B: Backend> {
    /// LayerNorm over the 2C token channels, shared by the four branches.
    pub norm: LayerNorm<B>,
    /// 1x1 convs `2C -> out_channels[k]` of the four branches.
    pub projects: Vec<Conv2d<B>>,
    /// Branch 0: transposed conv, kernel 4, stride 4 (upstream `resize_layers.0`).
    pub resize_layer0: ConvTranspose2d<B>,
    /// Branch 1: transposed conv, kernel 2, stride 2 (upstream `resize_layers.1`).
    pub resize_layer1: ConvTranspose2d<B>,
    /// Branch 3: conv, kernel 3, stride 2, padding 1 (upstream `resize_layers.3`; branch 2 is
    /// the identity).
    pub resize_layer3: Conv2d<B>,
    /// Convolutions and fusion.
    pub scratch: DptScratch<B>,
    patch_size: usize,
    output_dim: usize,
    activation: DptActivation,
    conf_activation: DptActivation,
    pos_embed: bool,
    frames_chunk_size: usize,
}

/// Applies a head activation element-wise.
fn activate<const D: usize, B: Backend>(
    x: Tensor<B, D>,
    activation: DptActivation,
) -> Tensor<B, D> {
    match activation {
        DptActivation::Exp => x.exp(),
        DptActivation::InvLog => x.clone().sign() * (x.abs().exp() - 1.0),
        DptActivation::Expp1 => x.exp() + 1.0,
        DptActivation::Linear => x,
        DptActivation::Relu => relu(x),
    }
}

fn conv3x3<B: Backend>(c_in: usize, c_out: usize, bias: bool, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(bias)
        .init(device)
}

impl<B: Backend> DptHead<B> {
    /// A head with the given dimensions (parameters are placeholders until loaded).
    pub fn new(config: &DptHeadConfig, device: &B::Device) -> Self {
        let [oc0, oc1, oc2, oc3] = config.out_channels;
        let features = config.features;
        let conv1_out = config.output_conv1_channels();
        Self {
            norm: LayerNormConfig::new(config.dim_in)
                .with_epsilon(config.layer_norm_eps)
                .init(device),
            projects: config
                .out_channels
                .iter()
                .map(|&oc| Conv2dConfig::new([config.dim_in, oc], [1, 1]).init(device))
                .collect(),
            resize_layer0: ConvTranspose2dConfig::new([oc0, oc0], [4, 4])
                .with_stride([4, 4])
                .init(device),
            resize_layer1: ConvTranspose2dConfig::new([oc1, oc1], [2, 2])
                .with_stride([2, 2])
                .init(device),
            resize_layer3: Conv2dConfig::new([oc3, oc3], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            scratch: DptScratch {
                layer1_rn: conv3x3(oc0, features, false, device),
                layer2_rn: conv3x3(oc1, features, false, device),
                layer3_rn: conv3x3(oc2, features, false, device),
                layer4_rn: conv3x3(oc3, features, false, device),
                refinenet1: FeatureFusionBlock::new(features, true, device),
                refinenet2: FeatureFusionBlock::new(features, true, device),
                refinenet3: FeatureFusionBlock::new(features, true, device),
                refinenet4: FeatureFusionBlock::new(features, false, device),
                output_conv1: conv3x3(features, conv1_out, true, device),
                output_conv2_0: conv3x3(conv1_out, config.head_features_2, true, device),
                output_conv2_2: Conv2dConfig::new(
                    [config.head_features_2, config.output_dim],
                    [1, 1],
                )
                .init(device),
            },
            patch_size: config.patch_size,
            output_dim: config.output_dim,
            activation: config.activation,
            conf_activation: config.conf_activation,
            pos_embed: config.pos_embed,
            frames_chunk_size: config.frames_chunk_size.max(1),
        }
    }

    /// Frames processed together (only bounds memory).
    pub fn frames_chunk_size(&self) -> usize {
        self.frames_chunk_size
    }

    /// Sets the number of frames processed together (clamped to at least 1); results do not
    /// depend on it.
    pub fn set_frames_chunk_size(&mut self, frames: usize) {
        self.frames_chunk_size = frames.max(1);
    }

    /// Dense predictions for every frame.
    ///
    /// `layers`: the four aggregator outputs of `intermediate_layer_idx`, in order, each
    /// `[B, S, P, 2C]` with the patch tokens starting at `patch_start_idx`; `image_hw` = (H, W)
    /// of the input images, multiples of the patch size.
    ///
    /// # Panics
    /// If the shapes disagree with each other or with `image_hw` (a caller bug: image sizes are
    /// validated where images enter the model).
    pub fn forward(
        &self,
        layers: &[Tensor<B, 4>; 4],
        image_hw: (usize, usize),
        patch_start_idx: usize,
    ) -> DptOutput<B> {
        let [batch, frames, _, _] = layers[0].dims();
        let (height, width) = image_hw;
        let mut preds = Vec::new();
        let mut confs = Vec::new();
        for start in (0..frames).step_by(self.frames_chunk_size) {
            let end = (start + self.frames_chunk_size).min(frames);
            let chunk = self.chunk_tokens(layers, start..end, patch_start_idx, image_hw);
            let stages = self.stages(chunk, image_hw);
            // [B*s, output_dim, H, W] -> [B, s, H, W, output_dim]
            let out = self.tail(stages, image_hw).permute([0, 2, 3, 1]).reshape([
                batch,
                end - start,
                height,
                width,
                self.output_dim,
            ]);
            let pred = out.clone().narrow(4, 0, self.output_dim - 1);
            let conf = out.narrow(4, self.output_dim - 1, 1).squeeze_dim::<4>(4);
            preds.push(activate(pred, self.activation));
            confs.push(activate(conf, self.conf_activation));
        }
        DptOutput {
            pred: Tensor::cat(preds, 1),
            conf: Tensor::cat(confs, 1),
        }
    }

    /// The four branch outputs after projection, UV embedding and resizing (upstream's inputs of
    /// `scratch_forward`), for all frames at once: `[B*S, out_channels[k], h_k, w_k]` with
    /// (h_k, w_k) = (4h, 4w), (2h, 2w), (h, w), (ceil(h/2), ceil(w/2)).
    ///
    /// # Panics
    /// As [`Self::forward`].
    pub fn forward_stages(
        &self,
        layers: &[Tensor<B, 4>; 4],
        image_hw: (usize, usize),
        patch_start_idx: usize,
    ) -> [Tensor<B, 4>; 4] {
        let [_, frames, _, _] = layers[0].dims();
        let chunk = self.chunk_tokens(layers, 0..frames, patch_start_idx, image_hw);
        self.stages(chunk, image_hw)
    }

    /// Patch tokens of a frame range, as `[B*s, h*w, 2C]` per layer, in the head's dtype (the
    /// layers may come in the aggregator's: only the chunk is cast).
    fn chunk_tokens(
        &self,
        layers: &[Tensor<B, 4>; 4],
        frames: std::ops::Range<usize>,
        patch_start_idx: usize,
        image_hw: (usize, usize),
    ) -> [Tensor<B, 3>; 4] {
        let (grid_h, grid_w) = self.patch_grid(image_hw);
        let dtype = self.norm.gamma.val().dtype();
        let [batch, num_frames, tokens, channels] = layers[0].dims();
        assert_eq!(
            tokens,
            patch_start_idx + grid_h * grid_w,
            "tokens per frame must be patch_start_idx + {grid_h}x{grid_w} patches"
        );
        layers.clone().map(|layer| {
            assert_eq!(
                layer.dims(),
                [batch, num_frames, tokens, channels],
                "DPT input layers differ in shape"
            );
            layer
                .slice([
                    0..batch,
                    frames.clone(),
                    patch_start_idx..tokens,
                    0..channels,
                ])
                .reshape([batch * frames.len(), grid_h * grid_w, channels])
                .cast(dtype)
        })
    }

    fn patch_grid(&self, image_hw: (usize, usize)) -> (usize, usize) {
        let (height, width) = image_hw;
        assert!(
            height % self.patch_size == 0 && width % self.patch_size == 0,
            "image {height}x{width} is not a multiple of the patch size {}",
            self.patch_size
        );
        (height / self.patch_size, width / self.patch_size)
    }

    /// Norm, project, UV embedding and resize of each branch: `[N, h*w, 2C]` -> `[N, oc_k, h_k, w_k]`.
    fn stages(&self, tokens: [Tensor<B, 3>; 4], image_hw: (usize, usize)) -> [Tensor<B, 4>; 4] {
        let (grid_h, grid_w) = self.patch_grid(image_hw);
        let mut k = 0;
        tokens.map(|x| {
            let [n, _, channels] = x.dims();
            // [N, h*w, 2C] -> [N, 2C, h, w]: token r*w + c is pixel (r, c).
            let x = self
                .norm
                .forward(x)
                .swap_dims(1, 2)
                .reshape([n, channels, grid_h, grid_w]);
            let x = conv(&self.projects[k], x);
            let x = if self.pos_embed {
                add_uv_embedding(x, image_hw)
            } else {
                x
            };
            let x = match k {
                0 => self.resize_layer0.forward(x),
                1 => self.resize_layer1.forward(x),
                2 => x,
                _ => conv(&self.resize_layer3, x),
            };
            k += 1;
            x
        })
    }

    /// Fusion and output convs: stages -> `[N, output_dim, H, W]` (before activation).
    fn tail(&self, stages: [Tensor<B, 4>; 4], image_hw: (usize, usize)) -> Tensor<B, 4> {
        let s = &self.scratch;
        let [l1, l2, l3, l4] = stages;
        let l1 = conv(&s.layer1_rn, l1);
        let l2 = conv(&s.layer2_rn, l2);
        let l3 = conv(&s.layer3_rn, l3);
        let l4 = conv(&s.layer4_rn, l4);
        let hw = |t: &Tensor<B, 4>| {
            let [_, _, h, w] = t.dims();
            [h, w]
        };
        let [h1, w1] = hw(&l1);
        let out = s.refinenet4.forward(l4, None, hw(&l3));
        let out = s.refinenet3.forward(out, Some(l3), hw(&l2));
        let out = s.refinenet2.forward(out, Some(l2), [h1, w1]);
        let out = s.refinenet1.forward(out, Some(l1), [2 * h1, 2 * w1]);
        let out = conv(&s.output_conv1, out);
        let out = resize_bilinear_align_corners(out, [image_hw.0, image_hw.1]);
        let out = if self.pos_embed {
            add_uv_embedding(out, image_hw)
        } else {
            out
        };
        conv(&s.output_conv2_2, relu(conv(&s.output_conv2_0, out)))
    }
}

/// Bilinear resize with `align_corners = true`: output index i samples input position
/// `i * (n_in - 1) / (n_out - 1)` (0 when `n_out = 1`), separably over rows and columns.
///
/// `[N, C, h, w]` -> `[N, C, out_hw[0], out_hw[1]]`.
pub fn resize_bilinear_align_corners<B: Backend>(
    x: Tensor<B, 4>,
    out_hw: [usize; 2],
) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == out_hw {
        return x;
    }
    if let Some(resized) = crate::cpu::resize_bilinear_align_corners(&x, out_hw) {
        return resized;
    }
    interpolate(
        x,
        out_hw,
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(true),
    )
}

/// Evenly spaced float32 values from `start` to `end` inclusive, computed like torch's float32
/// `linspace`: the first half counts up from `start`, the second half down from `end`.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - 1 - i) as f32
            }
        })
        .collect()
}

/// Sin/cos embedding of positions: `[len(pos), channels]` row-major, row m =
/// `[sin(pos_m w_0..w_{Q-1}), cos(pos_m w_0..w_{Q-1})]` with Q = channels/2,
/// `w_k = omega_0^(-k/Q)`, computed in float64 and rounded to float32.
fn sincos_embedding(channels: usize, pos: &[f32]) -> Vec<f32> {
    let quarter = channels / 2;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / UV_EMBED_OMEGA_0.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(pos.len() * channels);
    for &p in pos {
        let angles = omega.iter().map(|w| p as f64 * w);
        out.extend(angles.clone().map(|a| a.sin() as f32));
        out.extend(angles.map(|a| a.cos() as f32));
    }
    out
}

/// The UV sin/cos embedding of a `grid_hw` feature map of an image of `image_hw` pixels, as
/// two separable tables: `(u_table [C/2, gw], v_table [C/2, gh])`, channel-major. Grid cell (i, j)
/// has embedding `[u_table[:, j], v_table[:, i]]` (upstream `position_grid_to_embed` of
/// `create_uv_grid`). The UV grid spans the image diagonal-normalised aspect: u in
/// `±(a/sqrt(a^2+1)) (gw-1)/gw`, v in `±(1/sqrt(a^2+1)) (gh-1)/gh`, a = W/H.
///
/// # Panics
/// If `channels` is not a multiple of 4 (a bug in the configuration).
pub fn uv_embedding_tables(
    channels: usize,
    grid_hw: (usize, usize),
    image_hw: (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        channels % 4,
        0,
        "UV embedding needs a channel count divisible by 4, got {channels}"
    );
    let (grid_h, grid_w) = grid_hw;
    let aspect = image_hw.1 as f64 / image_hw.0 as f64;
    let diag = (aspect * aspect + 1.0).sqrt();
    let (span_x, span_y) = (aspect / diag, 1.0 / diag);
    let half_extent = |span: f64, n: usize| (span * (n as f64 - 1.0) / n as f64) as f32;
    let u = linspace_f32(
        -half_extent(span_x, grid_w),
        half_extent(span_x, grid_w),
        grid_w,
    );
    let v = linspace_f32(
        -half_extent(span_y, grid_h),
        half_extent(span_y, grid_h),
        grid_h,
    );
    let transpose = |rows: Vec<f32>, n: usize| {
        let half = channels / 2;
        (0..half)
            .flat_map(|c| (0..n).map(move |i| (c, i)))
            .map(|(c, i)| rows[i * half + c])
            .collect()
    };
    (
        transpose(sincos_embedding(channels / 2, &u), grid_w),
        transpose(sincos_embedding(channels / 2, &v), grid_h),
    )
}

/// `x + 0.1 * uv_embedding` for `x` `[N, C, gh, gw]` of an image of `image_hw` pixels.
fn add_uv_embedding<B: Backend>(x: Tensor<B, 4>, image_hw: (usize, usize)) -> Tensor<B, 4> {
    let [n, channels, grid_h, grid_w] = x.dims();
    let device = x.device();
    let dtype = x.dtype();
    let (u_table, v_table) = uv_embedding_tables(channels, (grid_h, grid_w), image_hw);
    let scale = |t: Vec<f32>| {
        t.into_iter()
            .map(|e| e * UV_EMBED_RATIO)
            .collect::<Vec<_>>()
    };
    let half = channels / 2;
    // [C, gh, gw] on the host: channel c < C/2 repeats u row c down the rows, channel C/2 + c
    // repeats v value (c, row) along each row. Written in order, one pass.
    let (u, v) = (scale(u_table), scale(v_table));
    let mut embedding = Vec::with_capacity(channels * grid_h * grid_w);
    for row in u.chunks_exact(grid_w) {
        for _ in 0..grid_h {
            embedding.extend_from_slice(row);
        }
    }
    for &value in &v {
        embedding.extend(std::iter::repeat_n(value, grid_w));
    }
    debug_assert_eq!(embedding.len(), half * 2 * grid_h * grid_w);
    let embedding: Tensor<B, 4> = Tensor::from_data(
        TensorData::new(embedding, [1, channels, grid_h, grid_w]),
        (&device, dtype),
    );
    // Flattened to [N, C*gh*gw] + [1, C*gh*gw]: a broadcast over the leading axis only, which
    // backends run as a row-wise add (a 4-D broadcast may be walked element by element).
    let plane = channels * grid_h * grid_w;
    (x.reshape([n, plane]) + embedding.reshape([1, plane])).reshape([n, channels, grid_h, grid_w])
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn linspace_matches_torch_split() {
        // Odd and even counts: both halves must land exactly on their end points.
        assert_eq!(linspace_f32(-1.0, 1.0, 5), vec![-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(linspace_f32(0.0, 3.0, 4), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(linspace_f32(2.0, 7.0, 1), vec![2.0]);
    }

    #[test]
    fn uv_embedding_by_hand() {
        // Image 56x84 (aspect 1.5), grid 2x3, 4 channels (Q = 1, w_0 = 1).
        // diag = sqrt(3.25); span_x = 1.5/diag = 0.83205, span_y = 1/diag = 0.55470.
        // u = linspace(-span_x*2/3, +span_x*2/3, 3) = (-0.55470, 0, 0.55470);
        // v = linspace(-span_y/2, +span_y/2, 2) = (-0.27735, 0.27735).
        let (u, v) = uv_embedding_tables(4, (2, 3), (56, 84));
        let diag = 3.25f64.sqrt();
        let u_pos = [-1.5 / diag * 2.0 / 3.0, 0.0, 1.5 / diag * 2.0 / 3.0];
        let v_pos = [-0.5 / diag, 0.5 / diag];
        // Tables are channel-major: [sin(u_0..u_2), cos(u_0..u_2)] and [sin(v_0,v_1), cos(v_0,v_1)].
        let want_u: Vec<f32> = u_pos
            .iter()
            .map(|p| p.sin() as f32)
            .chain(u_pos.iter().map(|p| p.cos() as f32))
            .collect();
        let want_v: Vec<f32> = v_pos
            .iter()
            .map(|p| p.sin() as f32)
            .chain(v_pos.iter().map(|p| p.cos() as f32))
            .collect();
        for (g, w) in u.iter().zip(&want_u).chain(v.iter().zip(&want_v)) {
            assert!(
                (g - w).abs() < 1e-6,
                "got {u:?} {v:?}, want {want_u:?} {want_v:?}"
            );
        }
        assert_eq!((u.len(), v.len()), (6, 4));
    }

    #[test]
    fn uv_embedding_frequencies() {
        // 8 channels: Q = 2, w = (1, 100^(-1/2) = 0.1). Column j of the u table at channel 1 is
        // sin(0.1 * u_j), at channel 3 cos(0.1 * u_j).
        let (u, _) = uv_embedding_tables(8, (1, 2), (14, 14));
        // aspect 1: span_x = 1/sqrt 2, u = ±span_x / 2.
        let u1 = (0.5f64).sqrt() / 2.0;
        assert!((u[2 + 1] - (0.1 * u1).sin() as f32).abs() < 1e-7, "{u:?}");
        assert!((u[3 * 2] - (0.1 * -u1).cos() as f32).abs() < 1e-7, "{u:?}");
    }

    #[test]
    fn add_uv_embedding_places_channels() {
        let device = Default::default();
        let x = Tensor::<B, 4>::zeros([2, 4, 2, 3], &device);
        let out = add_uv_embedding(x, (56, 84))
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let (u, v) = uv_embedding_tables(4, (2, 3), (56, 84));
        // Batch 1, channel 2 (first v channel: sin(v_i)), row 1, col 2 -> 0.1 * sin(v_1).
        let idx = ((4 + 2) * 2 + 1) * 3 + 2;
        assert!((out[idx] - 0.1 * v[1]).abs() < 1e-7);
        // Batch 0, channel 1 (cos(u_j)), row 0, col 0 -> 0.1 * cos(u_0).
        assert!((out[3 * 2] - 0.1 * u[3]).abs() < 1e-7);
    }

    #[test]
    fn bilinear_align_corners_by_hand() {
        // Rows [0, 1, 3] -> 5 samples at positions 0, 0.5, 1, 1.5, 2 (step (3-1)/(5-1)):
        // 0, 0.5, 1, 2, 3. Columns 2 -> 3 at positions 0, 0.5, 1. Input value = row value +
        // 10 * column, so the output is row(i) + 10 * col(j) with col = 0, 0.5, 1.
        let device = Default::default();
        let input: Vec<f32> = [0.0f32, 1.0, 3.0]
            .iter()
            .flat_map(|r| [r + 0.0, r + 10.0])
            .collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(input, [1, 1, 3, 2]), &device);
        let out = resize_bilinear_align_corners(x, [5, 3])
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let rows = [0.0f32, 0.5, 1.0, 2.0, 3.0];
        let want: Vec<f32> = rows
            .iter()
            .flat_map(|r| [r + 0.0, r + 5.0, r + 10.0])
            .collect();
        assert_eq!(out.len(), want.len());
        for (g, w) in out.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "got {out:?}, want {want:?}");
        }
    }

    #[test]
    fn bilinear_align_corners_single_output_takes_first() {
        // n_out = 1 samples position 0 (not the centre, as align_corners = false would).
        let device = Default::default();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 4]),
            &device,
        );
        let out = resize_bilinear_align_corners(x, [1, 1])
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        assert_eq!(out, vec![1.0]);
    }

    #[test]
    fn residual_unit_skips_relu_of_input() {
        // With zero conv weights and biases the unit returns relu(x): negative inputs vanish.
        let device = Default::default();
        let mut unit = ResidualConvUnit::<B>::new(1, &device);
        let zero_conv = |c: Conv2d<B>| Conv2d {
            weight: burn::module::Param::from_tensor(c.weight.val().zeros_like()),
            bias: c
                .bias
                .map(|b| burn::module::Param::from_tensor(b.val().zeros_like())),
            ..c
        };
        unit.conv1 = zero_conv(unit.conv1);
        unit.conv2 = zero_conv(unit.conv2);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(vec![-1.0f32, 2.0, -3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let out = unit.forward(x).into_data().to_vec::<f32>().expect("f32");
        assert_eq!(out, vec![0.0, 2.0, 0.0, 4.0]);
    }
}
