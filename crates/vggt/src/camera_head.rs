//! Camera head: predicts one pose encoding per frame from the camera tokens of the last
//! aggregator layer, refining it over a few iterations.
//!
//! Port of upstream `vggt/heads/camera_head.py` (`CameraHead`) and `activate_pose` of
//! `vggt/heads/head_act.py`. The pose encoding is "absT_quaR_FoV" (see [`crate::geometry`]):
//! translation and scalar-last quaternion of the camera-from-world transform, then the vertical
//! and horizontal fields of view in radians.
//!
//! Per iteration: the previous raw (un-activated) encoding, or the learned empty pose token at
//! first, is embedded and drives an adaLN modulation (shift, scale, gate) of the normalised camera
//! tokens; a trunk of transformer blocks attends across the S frames (one token per frame); the
//! pose branch predicts a delta that is accumulated. Each iteration emits the activated encoding.
//!
//! Parameter paths spell the upstream keys except `poseLN_modulation.1` ->
//! `pose_ln_modulation` (index 0 of that Sequential is a SiLU; remapped by the checkpoint loader).

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, silu};
use burn::tensor::{backend::Backend, Tensor};

use crate::config::CameraHeadConfig;
use crate::layers::{Block, BlockConfig};

/// Pose branch `fc2(GELU(fc1(x)))`: `dim_in -> dim_in / 2 -> target_dim`.
#[derive(Module, Debug)]
pub struct PoseBranch<B: Backend> {
    /// `dim_in -> pose_branch_hidden`.
    pub fc1: Linear<B>,
    /// `pose_branch_hidden -> target_dim`.
    pub fc2: Linear<B>,
}

impl<B: Backend> PoseBranch<B> {
    /// `[B, S, dim_in]` -> `[B, S, target_dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        crate::cpu::linear(
            &self.fc2,
            crate::cpu::gelu(crate::cpu::linear(&self.fc1, x)),
        )
    }
}

/// The camera head (`camera_head`).
#[derive(Module, Debug)]
pub struct CameraHead<B: Backend> {
    /// Trunk blocks attending across frames (no qk-norm, no RoPE).
    pub trunk: Vec<Block<B>>,
    /// LayerNorm of the input camera tokens.
    pub token_norm: LayerNorm<B>,
    /// LayerNorm before the pose branch.
    pub trunk_norm: LayerNorm<B>,
    /// Learned first-iteration input `[1, 1, target_dim]`.
    pub empty_pose_tokens: Param<Tensor<B, 3>>,
    /// `target_dim -> dim_in`.
    pub embed_pose: Linear<B>,
    /// adaLN modulation `dim_in -> 3 dim_in` (shift, scale, gate), applied after a SiLU.
    pub pose_ln_modulation: Linear<B>,
    /// Predicts the encoding delta.
    pub pose_branch: PoseBranch<B>,
    adaln_norm_eps: f64,
    num_iterations: usize,
}

impl<B: Backend> CameraHead<B> {
    /// A head with the given dimensions (parameters are placeholders until loaded).
    pub fn new(config: &CameraHeadConfig, device: &B::Device) -> Self {
        let dim = config.dim_in;
        let block = BlockConfig {
            dim,
            num_heads: config.num_heads,
            mlp_ratio: config.mlp_ratio,
            ln_eps: config.layer_norm_eps,
            qk_norm_eps: None,
        };
        let norm = || {
            LayerNormConfig::new(dim)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        Self {
            trunk: (0..config.trunk_depth)
                .map(|_| Block::new(&block, device))
                .collect(),
            token_norm: norm(),
            trunk_norm: norm(),
            empty_pose_tokens: Param::from_tensor(Tensor::zeros([1, 1, config.target_dim], device)),
            embed_pose: LinearConfig::new(config.target_dim, dim).init(device),
            pose_ln_modulation: LinearConfig::new(dim, 3 * dim).init(device),
            pose_branch: PoseBranch {
                fc1: LinearConfig::new(dim, config.pose_branch_hidden).init(device),
                fc2: LinearConfig::new(config.pose_branch_hidden, config.target_dim).init(device),
            },
            adaln_norm_eps: config.adaln_norm_eps,
            num_iterations: config.num_iterations,
        }
    }

    /// Refinement iterations run by [`Self::forward`].
    pub fn num_iterations(&self) -> usize {
        self.num_iterations
    }

    /// Pose encodings of every frame.
    ///
    /// `last_layer`: the last aggregator output `[B, S, P, 2C]` (the camera token is token 0).
    /// Returns the activated encoding `[B, S, target_dim]` of each iteration, in order; the last
    /// one is the prediction (`pose_enc`).
    pub fn forward(&self, last_layer: Tensor<B, 4>) -> Vec<Tensor<B, 3>> {
        let [batch, frames, _, channels] = last_layer.dims();
        // [B, S, P, 2C] -> camera tokens [B, S, 2C]
        let tokens = last_layer
            .slice([0..batch, 0..frames, 0..1, 0..channels])
            .reshape([batch, frames, channels]);
        let tokens = self.token_norm.forward(tokens);
        let tokens_normed = layer_norm_no_affine(tokens.clone(), self.adaln_norm_eps);

        let [_, _, target_dim] = self.empty_pose_tokens.dims();
        let mut raw: Option<Tensor<B, 3>> = None;
        let mut emitted = Vec::with_capacity(self.num_iterations);
        for _ in 0..self.num_iterations {
            let embedded = match &raw {
                None => crate::cpu::linear(
                    &self.embed_pose,
                    self.empty_pose_tokens
                        .val()
                        .expand([batch, frames, target_dim]),
                ),
                // The raw accumulated encoding is fed back, not the activated one.
                Some(raw) => crate::cpu::linear(&self.embed_pose, raw.clone()),
            };
            let delta = self.refine(tokens.clone(), tokens_normed.clone(), embedded);
            let next = match raw {
                None => delta,
                Some(raw) => raw + delta,
            };
            emitted.push(activate_pose(next.clone()));
            raw = Some(next);
        }
        emitted
    }

    /// One iteration: adaLN-modulated tokens through the trunk and the pose branch.
    /// `tokens`, `tokens_normed` `[B, S, 2C]`, `embedded` `[B, S, 2C]` -> delta `[B, S, target_dim]`.
    fn refine(
        &self,
        tokens: Tensor<B, 3>,
        tokens_normed: Tensor<B, 3>,
        embedded: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [shift, scale, gate]: [Tensor<B, 3>; 3] =
            crate::cpu::linear(&self.pose_ln_modulation, silu(embedded))
                .chunk(3, 2)
                .try_into()
                .expect("3 dim_in channels split into 3 chunks");
        let modulated = gate * (tokens_normed * (scale + 1.0) + shift) + tokens;
        let trunk_out = self
            .trunk
            .iter()
            .fold(modulated, |x, block| block.forward(x, None));
        self.pose_branch.forward(self.trunk_norm.forward(trunk_out))
    }
}

/// LayerNorm over the last axis without affine parameters (biased variance, as torch).
fn layer_norm_no_affine<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let (var, mean) = x.clone().var_mean_bias(2);
    (x - mean) / (var + eps).sqrt()
}

/// Pose activations of "absT_quaR_FoV": translation and quaternion linear, fields of view ReLU.
/// `[B, S, 9]` -> `[B, S, 9]`.
fn activate_pose<B: Backend>(raw: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, frames, dim] = raw.dims();
    let linear = raw.clone().slice([0..batch, 0..frames, 0..7]);
    let fov = relu(raw.slice([0..batch, 0..frames, 7..dim]));
    Tensor::cat(vec![linear, fov], 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    #[test]
    fn activation_relus_only_the_fovs() {
        let device = Default::default();
        let raw = vec![-1.0f32, -2.0, -3.0, -0.1, -0.2, -0.3, -0.4, -0.5, 0.6];
        let x = Tensor::<B, 3>::from_data(TensorData::new(raw, [1, 1, 9]), &device);
        let out = activate_pose(x).into_data().to_vec::<f32>().expect("f32");
        assert_eq!(
            out,
            vec![-1.0, -2.0, -3.0, -0.1, -0.2, -0.3, -0.4, 0.0, 0.6]
        );
    }

    #[test]
    fn affine_free_norm_by_hand() {
        // [1, 2, 3, 6]: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
        let device = Default::default();
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 6.0], [1, 1, 4]),
            &device,
        );
        let out = layer_norm_no_affine(x, 0.0)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        let sd = 3.5f32.sqrt();
        for (g, w) in out.iter().zip([-2.0 / sd, -1.0 / sd, 0.0, 3.0 / sd]) {
            assert!((g - w).abs() < 1e-6, "{out:?}");
        }
    }
}
