//! Model configuration: every dimension of VGGT, the VGGT-1B preset, and the `config.json` format
//! of the parity fixtures (upstream constructor arguments, plus descriptive fields that are ignored).
//!
//! Values that upstream hard-codes (DINO MLP ratio 4, camera pose-branch hidden = dim_in / 2,
//! DPT `head_features_2` = 32, the UV embedding ratio 0.1 and omega 100) are still fields here so
//! that every number the model uses has one home, but their defaults are upstream's.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Error while reading a model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read model config {path}: {source}")]
    Io {
        /// File that failed.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or misses a required field.
    #[error("invalid model config {path}: {source}")]
    Json {
        /// File that failed.
        path: String,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// The values are inconsistent (e.g. a head count that does not divide the width).
    #[error("invalid model config: {0}")]
    Invalid(String),
}

/// DINOv2 ViT with registers used as the patch embedding (`aggregator.patch_embed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoConfig {
    /// Token width C (1024 for ViT-L).
    pub embed_dim: usize,
    /// Number of transformer blocks (24).
    pub depth: usize,
    /// Attention heads (16).
    pub num_heads: usize,
    /// MLP hidden = mlp_ratio * embed_dim (4).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Register tokens after the cls token (4).
    pub num_register_tokens: usize,
    /// LayerNorm epsilon of every DINO norm (1e-6).
    #[serde(default = "default_dino_eps")]
    pub layer_norm_eps: f64,
    /// Side of the square position-embedding grid (37 = 518 / 14).
    pub pos_embed_grid: usize,
}

/// Alternating frame/global attention aggregator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregatorConfig {
    /// Token width C (1024).
    pub embed_dim: usize,
    /// Number of frame blocks, equal to the number of global blocks (24).
    pub depth: usize,
    /// Attention heads (16).
    pub num_heads: usize,
    /// MLP hidden = mlp_ratio * embed_dim (4.0).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Register tokens per frame (4).
    pub num_register_tokens: usize,
    /// Index of the first patch token (1 camera + registers = 5).
    pub patch_start_idx: usize,
    /// Frame (or global) blocks run back to back in one group (1).
    #[serde(default = "one")]
    pub aa_block_size: usize,
    /// LayerNorm over head_dim on q and k (true).
    #[serde(default = "yes")]
    pub qk_norm: bool,
    /// Epsilon of the q/k norms (1e-5).
    #[serde(default = "default_eps")]
    pub qk_norm_eps: f64,
    /// RoPE-2D frequency base (100).
    #[serde(default = "default_rope_freq")]
    pub rope_freq: f64,
    /// Epsilon of the block norms (1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

/// Camera head: trunk over the camera tokens with adaLN and iterative refinement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraHeadConfig {
    /// Input width 2C (2048).
    pub dim_in: usize,
    /// Trunk blocks (4).
    pub trunk_depth: usize,
    /// Trunk attention heads (16).
    pub num_heads: usize,
    /// Trunk MLP ratio (4).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Refinement iterations (4).
    #[serde(default = "default_iterations")]
    pub num_iterations: usize,
    /// Pose encoding size (9: translation, quaternion, two FoVs).
    #[serde(default = "default_target_dim")]
    pub target_dim: usize,
    /// Epsilon of token_norm, trunk_norm and trunk block norms (1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Epsilon of the affine-free adaLN norm (1e-6).
    #[serde(default = "default_dino_eps")]
    pub adaln_norm_eps: f64,
    /// Hidden width of the pose branch (dim_in / 2).
    pub pose_branch_hidden: usize,
}

/// Activation applied to the non-confidence output channels of a DPT head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DptActivation {
    /// `exp(x)` (depth).
    Exp,
    /// `sign(x) * (exp(|x|) - 1)` (points).
    InvLog,
    /// `exp(x) + 1`.
    Expp1,
    /// Identity.
    Linear,
    /// `max(x, 0)`.
    Relu,
}

/// DPT dense prediction head (depth and point heads share this structure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DptHeadConfig {
    /// Input width 2C (2048).
    pub dim_in: usize,
    /// Patch size (14).
    pub patch_size: usize,
    /// Output channels including the confidence channel (depth 2, points 4).
    pub output_dim: usize,
    /// Activation of the prediction channels.
    pub activation: DptActivation,
    /// Activation of the confidence channel.
    pub conf_activation: DptActivation,
    /// Fusion width (256).
    pub features: usize,
    /// Projection widths of the four branches ([256, 512, 1024, 1024]).
    pub out_channels: [usize; 4],
    /// Aggregator outputs read by the four branches ([4, 11, 17, 23]).
    pub intermediate_layer_idx: [usize; 4],
    /// Add the UV sin/cos embedding (true).
    #[serde(default = "yes")]
    pub pos_embed: bool,
    /// Width of the last hidden conv (32, hard-coded upstream).
    #[serde(default = "default_head_features_2")]
    pub head_features_2: usize,
    /// Epsilon of the token LayerNorm (1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Frames processed together (8); only bounds memory, results do not depend on it.
    #[serde(default = "default_frames_chunk")]
    pub frames_chunk_size: usize,
}

/// The whole model. Deserialises the fixtures' `config.json` (descriptive extra fields ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggtConfig {
    /// Nominal image size of the position-embedding table (518).
    pub img_size: usize,
    /// Patch size (14).
    pub patch_size: usize,
    /// Token width C (1024).
    pub embed_dim: usize,
    /// Patch-embedding ViT.
    pub dino: DinoConfig,
    /// Aggregator.
    pub aggregator: AggregatorConfig,
    /// Camera head.
    pub camera_head: CameraHeadConfig,
    /// Depth head (`exp`, 2 outputs).
    pub depth_head: DptHeadConfig,
    /// Point head (`inv_log`, 4 outputs).
    pub point_head: DptHeadConfig,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_dino_eps() -> f64 {
    1e-6
}
fn default_eps() -> f64 {
    1e-5
}
fn default_rope_freq() -> f64 {
    100.0
}
fn default_iterations() -> usize {
    4
}
fn default_target_dim() -> usize {
    9
}
fn default_head_features_2() -> usize {
    32
}
fn default_frames_chunk() -> usize {
    8
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

impl DptHeadConfig {
    fn vggt_1b(output_dim: usize, activation: DptActivation) -> Self {
        Self {
            dim_in: 2048,
            patch_size: 14,
            output_dim,
            activation,
            conf_activation: DptActivation::Expp1,
            features: 256,
            out_channels: [256, 512, 1024, 1024],
            intermediate_layer_idx: [4, 11, 17, 23],
            pos_embed: true,
            head_features_2: 32,
            layer_norm_eps: 1e-5,
            frames_chunk_size: 8,
        }
    }

    /// Channels of `scratch.output_conv1` (features / 2).
    pub fn output_conv1_channels(&self) -> usize {
        self.features / 2
    }
}

impl VggtConfig {
    /// The released facebook/VGGT-1B model.
    pub fn vggt_1b() -> Self {
        Self {
            img_size: 518,
            patch_size: 14,
            embed_dim: 1024,
            dino: DinoConfig {
                embed_dim: 1024,
                depth: 24,
                num_heads: 16,
                mlp_ratio: 4.0,
                num_register_tokens: 4,
                layer_norm_eps: 1e-6,
                pos_embed_grid: 37,
            },
            aggregator: AggregatorConfig {
                embed_dim: 1024,
                depth: 24,
                num_heads: 16,
                mlp_ratio: 4.0,
                num_register_tokens: 4,
                patch_start_idx: 5,
                aa_block_size: 1,
                qk_norm: true,
                qk_norm_eps: 1e-5,
                rope_freq: 100.0,
                layer_norm_eps: 1e-5,
            },
            camera_head: CameraHeadConfig {
                dim_in: 2048,
                trunk_depth: 4,
                num_heads: 16,
                mlp_ratio: 4.0,
                num_iterations: 4,
                target_dim: 9,
                layer_norm_eps: 1e-5,
                adaln_norm_eps: 1e-6,
                pose_branch_hidden: 1024,
            },
            depth_head: DptHeadConfig::vggt_1b(2, DptActivation::Exp),
            point_head: DptHeadConfig::vggt_1b(4, DptActivation::InvLog),
        }
    }

    /// Reads the fixtures' `config.json` format and checks it.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.display().to_string(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between dimensions that the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if self.dino.embed_dim != self.embed_dim || self.aggregator.embed_dim != self.embed_dim {
            return fail(format!(
                "dino.embed_dim {} and aggregator.embed_dim {} must equal embed_dim {}",
                self.dino.embed_dim, self.aggregator.embed_dim, self.embed_dim
            ));
        }
        for (name, dim, heads) in [
            ("dino", self.dino.embed_dim, self.dino.num_heads),
            (
                "aggregator",
                self.aggregator.embed_dim,
                self.aggregator.num_heads,
            ),
            (
                "camera_head",
                self.camera_head.dim_in,
                self.camera_head.num_heads,
            ),
        ] {
            if heads == 0 || !dim.is_multiple_of(heads) {
                return fail(format!("{name}: {heads} heads do not divide width {dim}"));
            }
        }
        let head_dim = self.aggregator.embed_dim / self.aggregator.num_heads;
        if !head_dim.is_multiple_of(4) {
            return fail(format!(
                "aggregator head_dim {head_dim} must be a multiple of 4 for 2-D RoPE"
            ));
        }
        if self.aggregator.patch_start_idx != 1 + self.aggregator.num_register_tokens {
            return fail(format!(
                "aggregator.patch_start_idx {} must be 1 + num_register_tokens ({})",
                self.aggregator.patch_start_idx, self.aggregator.num_register_tokens
            ));
        }
        if self.aggregator.aa_block_size == 0
            || !self
                .aggregator
                .depth
                .is_multiple_of(self.aggregator.aa_block_size)
        {
            return fail("aggregator.depth must be a multiple of aa_block_size".into());
        }
        for (name, head) in [
            ("depth_head", &self.depth_head),
            ("point_head", &self.point_head),
        ] {
            if head.dim_in != 2 * self.embed_dim {
                return fail(format!("{name}.dim_in must be 2 * embed_dim"));
            }
            if let Some(bad) = head
                .intermediate_layer_idx
                .iter()
                .find(|&&l| l >= self.aggregator.depth)
            {
                return fail(format!(
                    "{name} reads aggregator layer {bad}, but depth is {}",
                    self.aggregator.depth
                ));
            }
            if head.output_dim < 2
                || !head.features.is_multiple_of(2)
                || head.frames_chunk_size == 0
            {
                return fail(format!(
                    "{name}: output_dim >= 2, even features and chunk >= 1 required"
                ));
            }
            if head.out_channels.iter().any(|c| !c.is_multiple_of(4)) || head.head_features_2 == 0 {
                return fail(format!(
                    "{name}: out_channels must be multiples of 4 (UV embedding)"
                ));
            }
        }
        if self.camera_head.num_iterations == 0 {
            return fail("camera_head.num_iterations must be at least 1".into());
        }
        if self.camera_head.dim_in != 2 * self.embed_dim {
            return fail("camera_head.dim_in must be 2 * embed_dim".into());
        }
        Ok(())
    }

    /// Aggregator layers read by any head, sorted and unique: the only ones worth keeping.
    pub fn layers_read_by_heads(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self
            .depth_head
            .intermediate_layer_idx
            .iter()
            .chain(self.point_head.intermediate_layer_idx.iter())
            .copied()
            .chain(std::iter::once(self.aggregator.depth - 1))
            .collect();
        layers.sort_unstable();
        layers.dedup();
        layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_is_valid_and_reads_four_layers() {
        let config = VggtConfig::vggt_1b();
        config.validate().expect("VGGT-1B preset must validate");
        assert_eq!(config.layers_read_by_heads(), vec![4, 11, 17, 23]);
    }

    #[test]
    fn fixture_config_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/tiny_a/config.json"
        );
        let config = VggtConfig::from_json_file(path).expect("tiny_a config");
        assert_eq!(config.embed_dim, 64);
        assert_eq!(config.dino.pos_embed_grid, 5);
        assert_eq!(config.aggregator.depth, 4);
        assert_eq!(config.camera_head.pose_branch_hidden, 64);
        assert_eq!(config.depth_head.activation, DptActivation::Exp);
        assert_eq!(config.point_head.activation, DptActivation::InvLog);
        assert_eq!(config.point_head.out_channels, [8, 16, 32, 32]);
    }

    #[test]
    fn inconsistent_config_is_rejected() {
        let mut config = VggtConfig::vggt_1b();
        config.aggregator.num_heads = 7;
        assert!(matches!(config.validate(), Err(ConfigError::Invalid(_))));
    }
}
