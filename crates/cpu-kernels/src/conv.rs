//! 2-D convolution (groups 1, dilation 1) as matrix products: the input patches of a block of
//! output positions are unfolded into a `K x positions` matrix (K = in channels x kernel area,
//! "im2col") and multiplied by the `out x K` weight matrix, PyTorch's weight layout as it is.
//! Pointwise (1x1, stride 1, no padding) convolutions multiply the input directly.
//!
//! Memory beyond the output is one unfolded block of at most [`UNFOLD_TILE`] values. The block's
//! product is split over rayon's threads by output channel.

use rayon::prelude::*;

use crate::provider;

/// Values of one unfolded block of input patches (16 MiB of f32).
const UNFOLD_TILE: usize = 1 << 22;
/// Output channels handed to one thread at least.
const MIN_CHANNELS_PER_TASK: usize = 16;

/// Dimensions of a convolution over NCHW input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Zero padding added on both sides along height and width.
    pub padding: [usize; 2],
}

impl Conv2d {
    /// Output height and width.
    ///
    /// # Panics
    /// When the padded input is smaller than the kernel or a stride is 0.
    pub fn output(&self) -> [usize; 2] {
        let side = |axis: usize| {
            let padded = self.input[axis] + 2 * self.padding[axis];
            assert!(self.stride[axis] > 0, "conv2d: stride 0");
            assert!(
                padded >= self.kernel[axis],
                "conv2d: kernel {:?} larger than the padded input {:?}",
                self.kernel,
                self.input
            );
            (padded - self.kernel[axis]) / self.stride[axis] + 1
        };
        [side(0), side(1)]
    }

    fn pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }
}

/// Convolution of x `[batch, in, H, W]` with weight `[out, in, kh, kw]` and optional bias
/// `[out]`. Returns `[batch, out, OH, OW]` with `[OH, OW] = shape.output()`.
///
/// # Panics
/// When a slice's length does not match the dimensions.
pub fn conv2d(x: &[f32], shape: &Conv2d, weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let Conv2d {
        batch,
        in_channels,
        input: [height, width],
        out_channels,
        kernel: [kh, kw],
        ..
    } = *shape;
    let [out_h, out_w] = shape.output();
    let depth = in_channels * kh * kw;
    assert_eq!(
        x.len(),
        batch * in_channels * height * width,
        "conv2d: input shape"
    );
    assert_eq!(weight.len(), out_channels * depth, "conv2d: weight shape");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), out_channels, "conv2d: bias shape");
    }
    let positions = out_h * out_w;
    let mut out = vec![0.0f32; batch * out_channels * positions];
    if positions == 0 || out_channels == 0 {
        return out;
    }
    let threads = rayon::current_num_threads().max(1);
    let channels_per_task = out_channels.div_ceil(threads).max(MIN_CHANNELS_PER_TASK);
    let tile = (UNFOLD_TILE / depth.max(1)).clamp(1, positions);
    let mut unfolded = if shape.pointwise() {
        Vec::new()
    } else {
        vec![0.0f32; depth * tile]
    };
    let provider = provider();
    for (image, out) in x
        .chunks_exact(in_channels * height * width)
        .zip(out.chunks_exact_mut(out_channels * positions))
    {
        for start in (0..positions).step_by(tile) {
            let count = tile.min(positions - start);
            // Patches of output positions start..start+count: `depth x count`, leading dim ld.
            let (patches, ld): (&[f32], usize) = if shape.pointwise() {
                (&image[start..], positions)
            } else {
                unfold(image, shape, [out_h, out_w], start, count, &mut unfolded);
                (&unfolded[..depth * count], count)
            };
            out.par_chunks_mut(channels_per_task * positions)
                .zip(weight.par_chunks(channels_per_task * depth))
                .enumerate()
                .for_each(|(task, (out, weight))| {
                    let channels = out.len() / positions;
                    let beta = match bias {
                        Some(bias) => {
                            let first = task * channels_per_task;
                            for (row, &b) in out.chunks_exact_mut(positions).zip(&bias[first..]) {
                                row[start..start + count].fill(b);
                            }
                            1.0
                        }
                        None => 0.0,
                    };
                    provider.sgemm(
                        (channels, count, depth),
                        1.0,
                        (weight, depth, false),
                        (patches, ld, false),
                        beta,
                        (&mut out[start..], positions),
                    );
                });
        }
    }
    out
}

/// Writes the input patches of output positions `start .. start + count` of one image
/// `[in, H, W]` into `unfolded` as a `(in * kh * kw) x count` row-major matrix; row
/// `(c * kh + ky) * kw + kx` holds input channel c at kernel offset (ky, kx), 0 outside the
/// image.
fn unfold(
    image: &[f32],
    shape: &Conv2d,
    [_, out_w]: [usize; 2],
    start: usize,
    count: usize,
    unfolded: &mut [f32],
) {
    let [height, width] = shape.input;
    let [kh, kw] = shape.kernel;
    let [sy, sx] = shape.stride;
    let [py, px] = shape.padding;
    unfolded[..shape.in_channels * kh * kw * count]
        .par_chunks_mut(kh * kw * count)
        .zip(image.par_chunks(height * width))
        .for_each(|(rows, plane)| {
            for (offset, row) in rows.chunks_exact_mut(count).enumerate() {
                let (ky, kx) = (offset / kw, offset % kw);
                let mut position = start;
                let mut written = 0;
                while written < count {
                    let (oy, ox0) = (position / out_w, position % out_w);
                    let run = (out_w - ox0).min(count - written);
                    let segment = &mut row[written..written + run];
                    // Input row of this output row, if inside the image.
                    match (oy * sy + ky).checked_sub(py).filter(|&iy| iy < height) {
                        None => segment.fill(0.0),
                        Some(iy) if sx == 1 => {
                            // Stride 1: one contiguous piece of the input row, zeros around it.
                            let line = &plane[iy * width..(iy + 1) * width];
                            // Output columns ox0 + i read input column ox0 + i + kx - px.
                            let shift = ox0 + kx;
                            let first = px.saturating_sub(shift).min(run);
                            let last = (width + px).saturating_sub(shift).clamp(first, run);
                            segment[..first].fill(0.0);
                            segment[first..last]
                                .copy_from_slice(&line[shift + first - px..shift + last - px]);
                            segment[last..].fill(0.0);
                        }
                        Some(iy) => {
                            let line = &plane[iy * width..(iy + 1) * width];
                            for (i, value) in segment.iter_mut().enumerate() {
                                let ix = ((ox0 + i) * sx + kx).checked_sub(px);
                                *value = match ix {
                                    Some(ix) if ix < width => line[ix],
                                    _ => 0.0,
                                };
                            }
                        }
                    }
                    written += run;
                    position += run;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Direct seven-loop convolution in f64.
    fn reference(x: &[f32], s: &Conv2d, w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let [oh, ow] = s.output();
        let [h, wd] = s.input;
        let [kh, kw] = s.kernel;
        let mut out = Vec::new();
        for n in 0..s.batch {
            for o in 0..s.out_channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = bias.map_or(0.0, |b| b[o] as f64);
                        for c in 0..s.in_channels {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        (oy * s.stride[0] + ky) as isize - s.padding[0] as isize;
                                    let ix =
                                        (ox * s.stride[1] + kx) as isize - s.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((n * s.in_channels + c) * h + iy as usize) * wd
                                        + ix as usize];
                                    let wv = w[((o * s.in_channels + c) * kh + ky) * kw + kx];
                                    sum += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out.push(sum as f32);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv2d_matches_a_direct_convolution() {
        let mut rng = StdRng::seed_from_u64(11);
        let cases = [
            // 3x3 same padding, odd sizes.
            (
                [2usize, 5, 9, 13, 33],
                [3usize, 3],
                [1usize, 1],
                [1usize, 1],
            ),
            // Pointwise.
            ([1, 7, 6, 5, 40], [1, 1], [1, 1], [0, 0]),
            // Strided 3x3 (DPT's downsampling resize layer).
            ([1, 4, 11, 10, 17], [3, 3], [2, 2], [1, 1]),
            // Non-square kernel, no padding.
            ([1, 3, 8, 9, 5], [2, 3], [1, 2], [0, 0]),
            // Unit column stride with padding wider than one (the contiguous-copy path), and a
            // padded 1x1 kernel (unfolded, not pointwise).
            ([1, 3, 7, 6, 4], [3, 3], [2, 1], [1, 2]),
            ([1, 2, 5, 5, 3], [1, 1], [1, 1], [1, 1]),
        ];
        for ([batch, cin, h, w, cout], kernel, stride, padding) in cases {
            let shape = Conv2d {
                batch,
                in_channels: cin,
                input: [h, w],
                out_channels: cout,
                kernel,
                stride,
                padding,
            };
            let x: Vec<f32> = (0..batch * cin * h * w)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let wt: Vec<f32> = (0..cout * cin * kernel[0] * kernel[1])
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng.random_range(-1.0..1.0)).collect();
            for bias in [Some(bias.as_slice()), None] {
                let got = conv2d(&x, &shape, &wt, bias);
                let want = reference(&x, &shape, &wt, bias);
                assert_eq!(got.len(), want.len());
                for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - r).abs() < 1e-5 * (1.0 + r.abs()),
                        "{shape:?} [{i}] {g} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn tiles_smaller_than_the_image_give_the_same_result() {
        // 300 channels x 9 = 2700 rows: the unfold tile holds 1553 positions of the 60x60 output.
        let shape = Conv2d {
            batch: 1,
            in_channels: 300,
            input: [60, 60],
            out_channels: 20,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        let x: Vec<f32> = (0..300 * 3600)
            .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..20 * 2700)
            .map(|i| ((i * 53) % 97) as f32 / 97.0 - 0.5)
            .collect();
        // The test must cover several tiles.
        const _: () = assert!(UNFOLD_TILE / 2700 < 3600);
        let got = conv2d(&x, &shape, &w, None);
        let want = reference(&x, &shape, &w, None);
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!((g - r).abs() < 1e-4 * (1.0 + r.abs()), "[{i}] {g} vs {r}");
        }
    }
}
