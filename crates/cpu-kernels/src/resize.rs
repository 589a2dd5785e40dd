//! Bilinear resize with `align_corners = true` over planes of row-major values, computed like
//! PyTorch's CPU kernel: source position `i * (n_in - 1) / (n_out - 1)` in f32, index
//! `min(floor(pos), n_in - 1)` and its next neighbour (itself at the last row or column), weights
//! `l1 = clamp(pos - index, 0, 1)`, `l0 = 1 - l1`, and the value
//! `(x00 l0x + x01 l1x) l0y + (x10 l0x + x11 l1x) l1y`.

use rayon::prelude::*;

/// Index of the first source sample, offset to the second (0 or 1) and their weights, for each
/// of `n_out` outputs resampling `n_in` inputs.
fn taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = if n_out > 1 {
        (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
    } else {
        0.0
    };
    (0..n_out)
        .map(|i| {
            let position = scale * i as f32;
            let first = (position.floor() as usize).min(n_in - 1);
            let step = usize::from(first < n_in - 1);
            let l1 = (position - first as f32).clamp(0.0, 1.0);
            (first, step, 1.0 - l1, l1)
        })
        .collect()
}

/// Resizes `planes` planes of `[h, w]` values (plane-major) to `[out_h, out_w]`.
///
/// # Panics
/// When `x` is not `planes * h * w` long, or an input side is 0.
pub fn resize_bilinear_align_corners(
    x: &[f32],
    planes: usize,
    [h, w]: [usize; 2],
    [out_h, out_w]: [usize; 2],
) -> Vec<f32> {
    assert_eq!(x.len(), planes * h * w, "resize: input shape");
    assert!(h > 0 && w > 0, "resize: empty input plane");
    let mut out = vec![0.0f32; planes * out_h * out_w];
    if out.is_empty() {
        return out;
    }
    let (rows, columns) = (taps(h, out_h), taps(w, out_w));
    out.par_chunks_mut(out_w)
        .enumerate()
        .for_each(|(index, out_row)| {
            let (plane, oy) = (index / out_h, index % out_h);
            let (y0, dy, ly0, ly1) = rows[oy];
            let source = &x[plane * h * w..(plane + 1) * h * w];
            let top = &source[y0 * w..(y0 + 1) * w];
            let bottom = &source[(y0 + dy) * w..(y0 + dy + 1) * w];
            for (value, &(x0, dx, lx0, lx1)) in out_row.iter_mut().zip(&columns) {
                let upper = top[x0] * lx0 + top[x0 + dx] * lx1;
                let lower = bottom[x0] * lx0 + bottom[x0 + dx] * lx1;
                *value = upper * ly0 + lower * ly1;
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_are_kept_and_midpoints_are_averages() {
        // 2x3 plane -> 3x5: align_corners keeps the four corners, samples halfway between.
        let x = [0.0f32, 1.0, 4.0, 10.0, 11.0, 14.0];
        let out = resize_bilinear_align_corners(&x, 1, [2, 3], [3, 5]);
        let want = [
            0.0, 0.5, 1.0, 2.5, 4.0, //
            5.0, 5.5, 6.0, 7.5, 9.0, //
            10.0, 10.5, 11.0, 12.5, 14.0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn one_output_samples_the_first_input_and_planes_are_independent() {
        let x: Vec<f32> = (0..2 * 4 * 4).map(|i| i as f32).collect();
        let out = resize_bilinear_align_corners(&x, 2, [4, 4], [1, 1]);
        assert_eq!(out, [0.0, 16.0]);
        // Same size: the identity.
        assert_eq!(resize_bilinear_align_corners(&x, 2, [4, 4], [4, 4]), x);
    }
}
