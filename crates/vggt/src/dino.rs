//! DINOv2 ViT with register tokens, VGGT's patch embedding (`aggregator.patch_embed`).
//!
//! Ported from upstream `vggt/layers/vision_transformer.py` and `patch_embed.py` (DINOv2 code).
//! Images (already ImageNet-normalised) are cut into 14x14 patches by a strided convolution, a cls
//! token is prepended, the position embedding (resized to the patch grid with antialiased bicubic
//! interpolation, see [`aa_bicubic_weights`]) is added, register tokens are inserted after the cls
//! token, and the blocks plus a final LayerNorm run. Only the normalised patch tokens leave.
//! `mask_token` of the checkpoint is unused at inference and has no field here.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::config::VggtConfig;
use crate::layers::{Block, BlockConfig};

/// Patchify convolution (`patch_embed.patch_embed`; upstream's `norm` there is the identity).
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// Conv2d(3, C, kernel = stride = patch size).
    pub proj: Conv2d<B>,
}

/// DINOv2 vision transformer with registers.
#[derive(Module, Debug)]
pub struct DinoVisionTransformer<B: Backend> {
    /// Class token `[1, 1, C]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Position embedding `[1, 1 + G*G, C]`: cls row, then the G x G grid row-major.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// Register tokens `[1, R, C]` (no position embedding).
    pub register_tokens: Param<Tensor<B, 3>>,
    /// Patchify convolution.
    pub patch_embed: PatchEmbed<B>,
    /// Transformer blocks.
    pub blocks: Vec<Block<B>>,
    /// Final LayerNorm.
    pub norm: LayerNorm<B>,
    patch_size: usize,
}

/// Result of a DINO forward pass.
#[derive(Debug, Clone)]
pub struct DinoOutput<B: Backend> {
    /// Final-normed patch tokens (`x_norm_patchtokens`) `[N, h*w, C]`.
    pub patch_tokens: Tensor<B, 3>,
    /// Tokens entering block 0 `[N, 1+R+h*w, C]`, when intermediates are recorded.
    pub tokens_in: Option<Tensor<B, 3>>,
    /// Tokens after the last block, before the final norm `[N, 1+R+h*w, C]`, when recorded.
    pub x_prenorm: Option<Tensor<B, 3>>,
    /// Resized position embedding incl. the cls row `[1, 1+h*w, C]`, when recorded.
    pub pos_embed_interp: Option<Tensor<B, 3>>,
}

impl<B: Backend> DinoVisionTransformer<B> {
    /// Builds the ViT described by `config.dino` with `config.patch_size` patches.
    pub fn new(config: &VggtConfig, device: &B::Device) -> Self {
        let dino = &config.dino;
        let c = dino.embed_dim;
        let block = BlockConfig {
            dim: c,
            num_heads: dino.num_heads,
            mlp_ratio: dino.mlp_ratio,
            ln_eps: dino.layer_norm_eps,
            qk_norm_eps: None,
        };
        let grid = dino.pos_embed_grid;
        let patch = config.patch_size;
        Self {
            cls_token: Param::from_tensor(Tensor::zeros([1, 1, c], device)),
            pos_embed: Param::from_tensor(Tensor::zeros([1, 1 + grid * grid, c], device)),
            register_tokens: Param::from_tensor(Tensor::zeros(
                [1, dino.num_register_tokens, c],
                device,
            )),
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([3, c], [patch, patch])
                    .with_stride([patch, patch])
                    .init(device),
            },
            blocks: (0..dino.depth)
                .map(|_| Block::new(&block, device))
                .collect(),
            norm: LayerNormConfig::new(c)
                .with_epsilon(dino.layer_norm_eps)
                .init(device),
            patch_size: patch,
        }
    }

    /// Runs the ViT. images: `[N, 3, H, W]`, ImageNet-normalised, H and W multiples of the patch
    /// size (checked by the caller). `record` keeps the intermediates of [`DinoOutput`].
    pub fn forward(&self, images: Tensor<B, 4>, record: bool) -> DinoOutput<B> {
        let [n, _, height, width] = images.dims();
        let (grid_h, grid_w) = (height / self.patch_size, width / self.patch_size);
        let [_, _, c] = self.cls_token.dims();
        // [N, C, h, w] -> [N, h*w, C], token index row * w + col.
        let patches = crate::cpu::conv2d(&self.patch_embed.proj, images)
            .reshape([n, c, grid_h * grid_w])
            .swap_dims(1, 2);
        let cls = self.cls_token.val().expand([n, 1, c]);
        let pos_embed = self.interpolate_pos_embed(grid_h, grid_w);
        let x = Tensor::cat(vec![cls, patches], 1) + pos_embed.clone();
        let [_, r, _] = self.register_tokens.dims();
        let registers = self.register_tokens.val().expand([n, r, c]);
        let x = Tensor::cat(
            vec![
                x.clone().narrow(1, 0, 1),
                registers,
                x.narrow(1, 1, grid_h * grid_w),
            ],
            1,
        );
        let tokens_in = record.then(|| x.clone());
        let x = self
            .blocks
            .iter()
            .fold(x, |x, block| block.forward(x, None));
        let x_prenorm = record.then(|| x.clone());
        let patch_tokens = self.norm.forward(x).narrow(1, 1 + r, grid_h * grid_w);
        DinoOutput {
            patch_tokens,
            tokens_in,
            x_prenorm,
            pos_embed_interp: record.then_some(pos_embed),
        }
    }

    /// Position embedding for an h x w patch grid: `[1, 1 + h*w, C]` (cls row unchanged), in the
    /// parameter's dtype. The interpolation itself runs in float32, as upstream's.
    pub fn interpolate_pos_embed(&self, grid_h: usize, grid_w: usize) -> Tensor<B, 3> {
        let pos_embed = self.pos_embed.val();
        let [_, rows, c] = pos_embed.dims();
        let grid = ((rows - 1) as f64).sqrt().round() as usize;
        assert_eq!(
            grid * grid + 1,
            rows,
            "pos_embed must hold a cls row plus a square grid"
        );
        if grid_h == grid && grid_w == grid {
            return pos_embed;
        }
        let device = pos_embed.device();
        let dtype = pos_embed.dtype();
        let pos_embed = pos_embed.cast(DType::F32);
        let cls = pos_embed.clone().narrow(1, 0, 1);
        let table = pos_embed.narrow(1, 1, grid * grid).reshape([grid, grid, c]);
        let matrix = |n_out: usize| {
            Tensor::<B, 2>::from_data(
                TensorData::new(aa_bicubic_weights(grid, n_out), [n_out, grid]),
                (&device, DType::F32),
            )
        };
        // Along W: [G_h, w, G_w] x [G_h, G_w, C] -> [G_h, w, C].
        let along_w = matrix(grid_w)
            .unsqueeze_dim::<3>(0)
            .expand([grid, grid_w, grid])
            .matmul(table);
        // Along H: [h, G_h] x [G_h, w*C] -> [h, w*C].
        let along_h = matrix(grid_h).matmul(along_w.reshape([grid, grid_w * c]));
        Tensor::cat(vec![cls, along_h.reshape([1, grid_h * grid_w, c])], 1).cast(dtype)
    }
}

/// Keys cubic convolution kernel with a = -0.5 (Pillow's, used by antialiased resizing).
fn cubic_aa(t: f32) -> f32 {
    const A: f32 = -0.5;
    let t = t.abs();
    if t < 1.0 {
        ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
    } else if t < 2.0 {
        (((t - 5.0) * t + 8.0) * t - 4.0) * A
    } else {
        0.0
    }
}

/// Weights of antialiased bicubic resizing of one axis from `n_in` to `n_out` samples
/// (align_corners = false), as a row-major `[n_out, n_in]` matrix, computed in float32.
///
/// When downsampling the kernel is widened by `n_in / n_out`; taps that fall outside the input
/// are dropped and each row is renormalised to sum to one. `n_in == n_out` gives the identity.
pub fn aa_bicubic_weights(n_in: usize, n_out: usize) -> Vec<f32> {
    let scale = n_in as f32 / n_out as f32;
    let (support, inv_scale) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut weights = vec![0.0f32; n_out * n_in];
    for (i, row) in weights.chunks_exact_mut(n_in).enumerate() {
        let center = scale * (i as f32 + 0.5);
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
        let mut total = 0.0f32;
        for (j, w) in row.iter_mut().enumerate().take(hi).skip(lo) {
            *w = cubic_aa((j as f32 - center + 0.5) * inv_scale);
            total += *w;
        }
        if total != 0.0 {
            row[lo..hi].iter_mut().for_each(|w| *w /= total);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        for n in [1, 5, 37] {
            let w = aa_bicubic_weights(n, n);
            for i in 0..n {
                for j in 0..n {
                    assert_eq!(
                        w[i * n + j],
                        if i == j { 1.0 } else { 0.0 },
                        "n={n} ({i},{j})"
                    );
                }
            }
        }
    }

    /// Row 0 worked by hand from the kernel definition; the other rows follow by mirror symmetry.
    #[test]
    fn downsampling_5_to_4_widens_the_kernel() {
        // scale 1.25: support 2.5, taps j = 0..3 at t = (j - 0.625 + 0.5) * 0.8 = -0.1, 0.7, 1.5
        // give K = 0.9765, 0.2895, -0.0625 (sum 1.2035); tap j = -1 is dropped.
        let w = aa_bicubic_weights(5, 4);
        let row0 = [0.9765 / 1.2035, 0.2895 / 1.2035, -0.0625 / 1.2035, 0.0, 0.0];
        for (j, want) in row0.iter().enumerate() {
            assert!(
                (w[j] - want).abs() < 1e-6,
                "row 0 tap {j}: {} vs {want}",
                w[j]
            );
            assert!(
                (w[3 * 5 + 4 - j] - want).abs() < 1e-6,
                "row 3 tap {} mirrors row 0",
                4 - j
            );
        }
    }

    #[test]
    fn upsampling_5_to_6_drops_border_taps() {
        // scale 5/6, support 2: row 0 centre 5/12 keeps taps j = 0, 1 at t = 1/12, 13/12,
        // K = 0.98350694, -0.03501157; the tap at j = -1 is dropped and the row renormalised,
        // so the first weight exceeds one (no border replication).
        let w = aa_bicubic_weights(5, 6);
        let (k0, k1) = (0.983_507_f32, -0.035_011_6_f32);
        let row0 = [k0 / (k0 + k1), k1 / (k0 + k1), 0.0, 0.0, 0.0];
        for (j, want) in row0.iter().enumerate() {
            assert!(
                (w[j] - want).abs() < 1e-6,
                "row 0 tap {j}: {} vs {want}",
                w[j]
            );
            assert!(
                (w[5 * 5 + 4 - j] - want).abs() < 1e-6,
                "row 5 tap {} mirrors row 0",
                4 - j
            );
        }
        assert!(w[0] > 1.0);
    }

    #[test]
    fn rows_sum_to_one() {
        for (n_in, n_out) in [(5, 4), (5, 6), (37, 28), (37, 50), (37, 1)] {
            let w = aa_bicubic_weights(n_in, n_out);
            for (i, row) in w.chunks_exact(n_in).enumerate() {
                let sum: f32 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-6,
                    "{n_in}->{n_out} row {i} sums to {sum}"
                );
            }
        }
    }
}
