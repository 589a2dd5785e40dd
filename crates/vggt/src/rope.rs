//! 2-D rotary position embedding of the aggregator's frame and global attention.
//!
//! Ported from upstream `vggt/layers/rope.py` (`RotaryPositionEmbedding2D`, `PositionGetter`).
//! A head vector of `head_dim` channels is split in two halves: the first is rotated by the token's
//! row y, the second by its column x. Within a half of F channels, channel k pairs with k + F/2
//! (split halves, not interleaved pairs) and turns by `p * f_k`, `f_k = base^(-2k/F)`.
//! Patch (row r, column c) sits at (y, x) = (r + 1, c + 1); the camera and register tokens sit at
//! (0, 0), which is no rotation.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

/// Position (y, x) of every token of one frame: `num_special` tokens at (0, 0), then the
/// `grid_h x grid_w` patches row-major at (row + 1, col + 1). Length `num_special + h*w`.
pub fn frame_positions(grid_h: usize, grid_w: usize, num_special: usize) -> Vec<[u32; 2]> {
    let specials = std::iter::repeat_n([0, 0], num_special);
    let patches = (0..grid_h).flat_map(|r| (0..grid_w).map(move |c| [r as u32 + 1, c as u32 + 1]));
    specials.chain(patches).collect()
}

/// Inverse frequencies `1 / base^(2k/F)` for k = 0 .. F/2-1 of one half of F = `half_dim`
/// channels, in float32 as upstream computes them.
pub fn inverse_frequencies(half_dim: usize, base: f64) -> Vec<f32> {
    let base = base as f32;
    (0..half_dim / 2)
        .map(|k| 1.0 / base.powf((2 * k) as f32 / half_dim as f32))
        .collect()
}

/// Precomputed rotation of q/k for L tokens.
///
/// The rotation `u * cos + rot(u) * sin` with `rot = [-b, a]` per half (a, b the half's two
/// quarters) is evaluated as `u * cos + swap(u) * sin_signed`, where `swap` exchanges the quarters
/// of each half and `sin_signed` carries the minus sign: same products, same rounding.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `cos(theta)` per token and channel, `[L, head_dim]`.
    pub cos: Tensor<B, 2>,
    /// `sin(theta)` with the sign of the rotated partner, `[L, head_dim]`.
    pub sin_signed: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for tokens at `positions` (y, x), in float32 whatever the device's default dtype
    /// (see [`Self::cast`]). `head_dim` must be a multiple of 4 (checked by the model config; a
    /// violation is a bug).
    pub fn new(positions: &[[u32; 2]], head_dim: usize, base: f64, device: &B::Device) -> Self {
        assert!(
            head_dim.is_multiple_of(4),
            "RoPE-2D needs head_dim divisible by 4, got {head_dim}"
        );
        let half = head_dim / 2;
        let inv_freq = inverse_frequencies(half, base);
        let mut cos = Vec::with_capacity(positions.len() * head_dim);
        let mut sin = Vec::with_capacity(positions.len() * head_dim);
        for position in positions {
            // y rotates the first half, x the second.
            for &p in position {
                for sign in [-1.0f32, 1.0] {
                    for &f in &inv_freq {
                        let angle = p as f32 * f;
                        cos.push(angle.cos());
                        sin.push(sign * angle.sin());
                    }
                }
            }
        }
        let shape = [positions.len(), head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), (device, DType::F32)),
            sin_signed: Tensor::from_data(TensorData::new(sin, shape), (device, DType::F32)),
        }
    }

    /// The same tables in float `dtype` (that of the q/k they rotate).
    pub fn cast(self, dtype: DType) -> Self {
        Self {
            cos: self.cos.cast(dtype),
            sin_signed: self.sin_signed.cast(dtype),
        }
    }

    /// The same tables repeated `times` times along the token axis (frames concatenated).
    pub fn repeat(&self, times: usize) -> Self {
        Self {
            cos: self.cos.clone().repeat_dim(0, times),
            sin_signed: self.sin_signed.clone().repeat_dim(0, times),
        }
    }

    /// Number of tokens L.
    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// True when the tables cover no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rotates x: `[N, H, L, head_dim]` -> same shape.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, heads, l, head_dim] = x.dims();
        assert_eq!(
            l,
            self.len(),
            "RoPE tables cover {} tokens, attention has {l}",
            self.len()
        );
        let quarter = head_dim / 4;
        // [N, H, L, (half, quarter, c)] -> exchange the two quarters of each half. Two narrows
        // and a cat copy runs of `quarter` contiguous values (a flip of the size-2 axis copies
        // element by element on the CPU backend, ~5x slower).
        let pairs = x.clone().reshape([n, heads, l * 2, 2, quarter]);
        let swapped = Tensor::cat(
            vec![pairs.clone().narrow(3, 1, 1), pairs.narrow(3, 0, 1)],
            3,
        )
        .reshape([n * heads, l * head_dim]);
        // Flattened to [N*H, L*head_dim] so the tables broadcast along one leading axis only.
        let cos = self.cos.clone().reshape([1, l * head_dim]);
        let sin = self.sin_signed.clone().reshape([1, l * head_dim]);
        (x.reshape([n * heads, l * head_dim]) * cos + swapped * sin)
            .reshape([n, heads, l, head_dim])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn positions_put_specials_at_origin_and_patches_one_based() {
        let positions = frame_positions(2, 3, 2);
        let want = [
            [0, 0],
            [0, 0],
            [1, 1],
            [1, 2],
            [1, 3],
            [2, 1],
            [2, 2],
            [2, 3],
        ];
        assert_eq!(positions, want);
    }

    #[test]
    fn frequencies_follow_the_base() {
        // F = 32, base 100: f_k = 100^(-k/16).
        let f = inverse_frequencies(32, 100.0);
        assert_eq!(f.len(), 16);
        assert_eq!(f[0], 1.0);
        assert!((f[8] - 0.1).abs() < 1e-7, "f_8 = {}", f[8]);
        assert!((f[15] - 0.013_335_214).abs() < 1e-7, "f_15 = {}", f[15]);
    }

    /// Every batch entry and head is rotated by the same tables: a [2, 3, L, 8] input gives,
    /// slice by slice, what the [1, 1, L, 8] slice gives alone.
    #[test]
    fn rotation_is_shared_by_batch_and_heads() {
        let device = Default::default();
        let positions = frame_positions(2, 3, 1);
        let l = positions.len();
        let tables = RopeTables::<Flex>::new(&positions, 8, 100.0, &device);
        let values: Vec<f32> = (0..2 * 3 * l * 8)
            .map(|i| ((i * 37) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let x = Tensor::<Flex, 4>::from_data(TensorData::new(values, [2, 3, l, 8]), &device);
        let whole = tables.apply(x.clone());
        for b in 0..2 {
            for h in 0..3 {
                let slice = |t: Tensor<Flex, 4>| t.narrow(0, b, 1).narrow(1, h, 1);
                let alone = tables.apply(slice(x.clone()));
                assert_eq!(
                    slice(whole.clone())
                        .into_data()
                        .to_vec::<f32>()
                        .expect("f32"),
                    alone.into_data().to_vec::<f32>().expect("f32"),
                    "batch {b}, head {h}"
                );
            }
        }
    }

    /// head_dim 8, base 100: each half has F = 4 channels and frequencies (1, 0.1); channel k
    /// pairs with k + 2. Token 0 is a special token (no rotation), token 1 sits at (y, x) = (2, 1).
    #[test]
    fn rotation_matches_hand_worked_values() {
        let device = Default::default();
        let tables = RopeTables::<Flex>::new(&[[0, 0], [2, 1]], 8, 100.0, &device);
        let u: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let x = Tensor::<Flex, 4>::from_data(
            TensorData::new([u.clone(), u.clone()].concat(), [1, 1, 2, 8]),
            &device,
        );
        let got = tables.apply(x).into_data().to_vec::<f32>().expect("f32");
        let (c, s) = (|t: f64| t.cos(), |t: f64| t.sin());
        let want = [
            1.0 * c(2.0) - 3.0 * s(2.0),
            2.0 * c(0.2) - 4.0 * s(0.2),
            3.0 * c(2.0) + 1.0 * s(2.0),
            4.0 * c(0.2) + 2.0 * s(0.2),
            5.0 * c(1.0) - 7.0 * s(1.0),
            6.0 * c(0.1) - 8.0 * s(0.1),
            7.0 * c(1.0) + 5.0 * s(1.0),
            8.0 * c(0.1) + 6.0 * s(0.1),
        ];
        for k in 0..8 {
            assert_eq!(got[k], u[k], "special token channel {k} must not rotate");
            assert!(
                (got[8 + k] as f64 - want[k]).abs() < 1e-5,
                "channel {k}: {} vs {}",
                got[8 + k],
                want[k]
            );
        }
    }
}
