//! Numeric precision of a [`crate::Vggt`]: one type for loading, planning, the command lines
//! and the daemon's configuration.

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// Numeric precision of a [`crate::Vggt`], as upstream runs it under autocast.
///
/// In the half modes the aggregator (DINO patch embedding and the frame/global blocks) holds its
/// parameters in the half type and computes in it; the camera, depth and point heads keep float32
/// parameters and run in float32 on the aggregator layers cast up to float32 (upstream disables
/// autocast around the heads). Outputs are float32 in every mode. Unlike upstream autocast, the
/// aggregator's normalisations and residual streams are half-precision too.
///
/// Text form (command lines, TOML): `f32`, `bf16`, `f16`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 everywhere.
    #[default]
    F32,
    /// Aggregator in bfloat16, heads in float32 (Ampere or newer NVIDIA GPUs; the CPU).
    Bf16,
    /// Aggregator in float16, heads in float32 (older GPUs, Vulkan/Metal adapters with 16-bit
    /// shader floats).
    F16,
}

impl Precision {
    /// Every precision, in text order.
    pub const ALL: [Self; 3] = [Self::F32, Self::Bf16, Self::F16];

    /// Float dtype of the aggregator's parameters and activations.
    pub fn aggregator_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// Float dtype of the heads' parameters and activations (float32 in every mode).
    pub fn heads_dtype(self) -> DType {
        DType::F32
    }

    /// Bytes per element of the aggregator's parameters and activations.
    pub fn aggregator_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// Bytes per element of the heads' parameters and activations.
    pub fn heads_bytes(self) -> usize {
        4
    }

    /// The text form (`f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A precision name that is not `f32`, `bf16` or `f16`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: expected a precision, f32, bf16 or f16")]
pub struct PrecisionParseError(String);

impl FromStr for Precision {
    type Err = PrecisionParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| PrecisionParseError(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for precision in Precision::ALL {
            assert_eq!(precision.name().parse::<Precision>(), Ok(precision));
            assert_eq!(precision.to_string(), precision.name());
        }
        let err = "fp16".parse::<Precision>().expect_err("not a name");
        assert!(err.to_string().contains("f32, bf16 or f16"), "{err}");
    }

    #[test]
    fn half_modes_keep_float32_heads() {
        assert_eq!(Precision::Bf16.aggregator_dtype(), DType::BF16);
        assert_eq!(Precision::F16.aggregator_dtype(), DType::F16);
        for precision in Precision::ALL {
            assert_eq!(precision.heads_dtype(), DType::F32);
            assert_eq!(precision.heads_bytes(), 4);
        }
        assert_eq!(Precision::Bf16.aggregator_bytes(), 2);
        assert_eq!(Precision::F32.aggregator_bytes(), 4);
    }
}
