//! Camera geometry around the pose encoding: pose encoding <-> extrinsic/intrinsic matrices,
//! quaternion <-> rotation matrix, and depth-map unprojection to world points.
//!
//! Port of upstream `vggt/utils/{pose_enc,rotation,geometry}.py`. The pose encoding
//! "absT_quaR_FoV" is `[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]` (quaternion
//! scalar-last, field of view in radians) of the camera-from-world transform.
//!
//! # Conventions
//! Extrinsics are camera-from-world `[R | t]` (`cam_from_world`), OpenCV camera axes (x right,
//! y down, z forward). Intrinsics are pinhole `[[f_x, 0, c_x], [0, f_y, c_y], [0, 0, 1]]` in pixels,
//! with the principal point at the image centre `(W/2, H/2)`. Pixel `(u, v)` = (column, row) are
//! integer indices, so pixel centres are *not* offset by 0.5 (upstream convention).
//!
//! The matrix conversions run on the host in float32 with upstream's operation order (the inputs
//! are tiny); the tensor wrappers download, convert and upload.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Length of the "absT_quaR_FoV" pose encoding.
pub const POSE_ENCODING_DIM: usize = 9;

/// Rotation matrix (row-major `[row][col]`) of a scalar-last quaternion `[x, y, z, w]`.
///
/// The quaternion need not be unit: it is scaled by `2 / |q|^2` as upstream does, so any
/// non-zero multiple gives the same rotation.
pub fn quat_to_mat(q_xyzw: [f32; 4]) -> [[f32; 3]; 3] {
    let [i, j, k, r] = q_xyzw;
    let two_s = 2.0 / (i * i + j * j + k * k + r * r);
    [
        [
            1.0 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
        ],
        [
            two_s * (i * j + k * r),
            1.0 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
        ],
        [
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1.0 - two_s * (i * i + j * j),
        ],
    ]
}

/// Unit scalar-last quaternion `[x, y, z, w]` (with `w >= 0`) of a rotation matrix.
///
/// Picks the best-conditioned of the four closed-form candidates, as upstream (and pytorch3d) do.
pub fn mat_to_quat(m: &[[f32; 3]; 3]) -> [f32; 4] {
    let [[m00, m01, m02], [m10, m11, m12], [m20, m21, m22]] = *m;
    let sqrt_positive = |x: f32| if x > 0.0 { x.sqrt() } else { 0.0 };
    // Candidate magnitudes of (w, x, y, z), each times 2.
    let q_abs = [
        sqrt_positive(1.0 + m00 + m11 + m22),
        sqrt_positive(1.0 + m00 - m11 - m22),
        sqrt_positive(1.0 - m00 + m11 - m22),
        sqrt_positive(1.0 - m00 - m11 + m22),
    ];
    // Row n is (w, x, y, z) times 2 * q_abs[n], derived from the largest component n.
    let by_rijk = [
        [q_abs[0] * q_abs[0], m21 - m12, m02 - m20, m10 - m01],
        [m21 - m12, q_abs[1] * q_abs[1], m10 + m01, m02 + m20],
        [m02 - m20, m10 + m01, q_abs[2] * q_abs[2], m12 + m21],
        [m10 - m01, m20 + m02, m21 + m12, q_abs[3] * q_abs[3]],
    ];
    let best = (1..4).fold(0, |best, n| if q_abs[n] > q_abs[best] { n } else { best });
    let denom = 2.0 * q_abs[best].max(0.1);
    let [w, x, y, z] = by_rijk[best].map(|v| v / denom);
    if w < 0.0 {
        [-x, -y, -z, -w]
    } else {
        [x, y, z, w]
    }
}

/// Host version of [`pose_encoding_to_extri_intri`].
///
/// `pose_enc` is `[N, 9]` row-major (any number N of cameras); returns the extrinsics `[N, 3, 4]`
/// and intrinsics `[N, 3, 3]`, row-major. `image_hw` is (H, W) in pixels.
///
/// # Panics
/// If `pose_enc.len()` is not a multiple of 9 (a caller bug).
pub fn pose_encoding_to_extri_intri_host(
    pose_enc: &[f32],
    image_hw: (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        pose_enc.len() % POSE_ENCODING_DIM,
        0,
        "pose encoding length must be a multiple of 9"
    );
    let (h_px, w_px) = (image_hw.0 as f32, image_hw.1 as f32);
    let n = pose_enc.len() / POSE_ENCODING_DIM;
    let mut extrinsic = Vec::with_capacity(n * 12);
    let mut intrinsic = Vec::with_capacity(n * 9);
    for enc in pose_enc.chunks_exact(POSE_ENCODING_DIM) {
        let rot = quat_to_mat([enc[3], enc[4], enc[5], enc[6]]);
        for (row, t) in rot.iter().zip(&enc[0..3]) {
            extrinsic.extend_from_slice(row);
            extrinsic.push(*t);
        }
        let (fov_h, fov_w) = (enc[7], enc[8]);
        let focal_y_px = (h_px / 2.0) / (fov_h / 2.0).tan();
        let focal_x_px = (w_px / 2.0) / (fov_w / 2.0).tan();
        intrinsic.extend_from_slice(&[
            focal_x_px,
            0.0,
            w_px / 2.0,
            0.0,
            focal_y_px,
            h_px / 2.0,
            0.0,
            0.0,
            1.0,
        ]);
    }
    (extrinsic, intrinsic)
}

/// Host version of [`extri_intri_to_pose_encoding`].
///
/// `extrinsic` is `[N, 3, 4]` and `intrinsic` `[N, 3, 3]`, row-major; returns `[N, 9]`.
///
/// # Panics
/// If the lengths are not 12 N and 9 N for one N (a caller bug).
pub fn extri_intri_to_pose_encoding_host(
    extrinsic: &[f32],
    intrinsic: &[f32],
    image_hw: (usize, usize),
) -> Vec<f32> {
    assert_eq!(
        extrinsic.len() % 12,
        0,
        "extrinsic length must be a multiple of 12"
    );
    let n = extrinsic.len() / 12;
    assert_eq!(
        intrinsic.len(),
        n * 9,
        "intrinsic length must be 9 per camera"
    );
    let (h_px, w_px) = (image_hw.0 as f32, image_hw.1 as f32);
    let mut out = Vec::with_capacity(n * POSE_ENCODING_DIM);
    for (ext, k) in extrinsic.chunks_exact(12).zip(intrinsic.chunks_exact(9)) {
        let rot = [
            [ext[0], ext[1], ext[2]],
            [ext[4], ext[5], ext[6]],
            [ext[8], ext[9], ext[10]],
        ];
        out.extend_from_slice(&[ext[3], ext[7], ext[11]]);
        out.extend_from_slice(&mat_to_quat(&rot));
        let (focal_x_px, focal_y_px) = (k[0], k[4]);
        out.push(2.0 * ((h_px / 2.0) / focal_y_px).atan());
        out.push(2.0 * ((w_px / 2.0) / focal_x_px).atan());
    }
    out
}

fn download<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("converted to f32 just before")
}

/// Camera matrices of a pose encoding.
///
/// `pose_enc` `[B, S, 9]` -> (extrinsic `[B, S, 3, 4]` cam_from_world, intrinsic `[B, S, 3, 3]`),
/// for images of `image_hw` = (H, W) pixels. `f_y = (H/2) / tan(fov_h/2)`,
/// `f_x = (W/2) / tan(fov_w/2)`; a field of view of 0 gives infinite focal lengths, as upstream.
///
/// # Panics
/// If the last axis is not 9 (a caller bug).
pub fn pose_encoding_to_extri_intri<B: Backend>(
    pose_enc: Tensor<B, 3>,
    image_hw: (usize, usize),
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, frames, dim] = pose_enc.dims();
    assert_eq!(dim, POSE_ENCODING_DIM, "pose encoding must have 9 channels");
    let device = pose_enc.device();
    let dtype = pose_enc.dtype();
    let (extrinsic, intrinsic) = pose_encoding_to_extri_intri_host(&download(pose_enc), image_hw);
    (
        Tensor::from_data(
            TensorData::new(extrinsic, [batch, frames, 3, 4]),
            (&device, dtype),
        ),
        Tensor::from_data(
            TensorData::new(intrinsic, [batch, frames, 3, 3]),
            (&device, dtype),
        ),
    )
}

/// Pose encoding of camera matrices: the inverse of [`pose_encoding_to_extri_intri`] (up to the
/// quaternion sign, which is chosen with `q_w >= 0`).
///
/// extrinsic `[B, S, 3, 4]`, intrinsic `[B, S, 3, 3]` -> `[B, S, 9]`.
///
/// # Panics
/// If the shapes disagree (a caller bug).
pub fn extri_intri_to_pose_encoding<B: Backend>(
    extrinsic: Tensor<B, 4>,
    intrinsic: Tensor<B, 4>,
    image_hw: (usize, usize),
) -> Tensor<B, 3> {
    let [batch, frames, rows, cols] = extrinsic.dims();
    assert_eq!((rows, cols), (3, 4), "extrinsic must be [B, S, 3, 4]");
    assert_eq!(
        intrinsic.dims(),
        [batch, frames, 3, 3],
        "intrinsic must be [B, S, 3, 3]"
    );
    let device = extrinsic.device();
    let dtype = extrinsic.dtype();
    let enc =
        extri_intri_to_pose_encoding_host(&download(extrinsic), &download(intrinsic), image_hw);
    Tensor::from_data(
        TensorData::new(enc, [batch, frames, POSE_ENCODING_DIM]),
        (&device, dtype),
    )
}

/// World points of depth maps, as upstream's NumPy `unproject_depth_map_to_point_map`.
///
/// `depth_m` `[S, H, W]` (z along the optical axis), `extrinsic` `[S, 3, 4]` cam_from_world,
/// `intrinsic` `[S, 3, 3]`; returns `points_in_world` `[S, H, W, 3]`. For pixel (u, v) =
/// (column, row): `p_cam = ((u - c_x) d / f_x, (v - c_y) d / f_y, d)` and
/// `p_world = R^T p_cam - R^T t`. Camera points are computed in float64 and rounded to float32,
/// `-R^T t` in float32 and the rotation to the world in float64, as upstream does.
///
/// # Panics
/// If the slice lengths disagree with `frames`, `height`, `width` (a caller bug).
pub fn unproject_depth_map_to_point_map(
    depth_m: &[f32],
    extrinsic: &[f32],
    intrinsic: &[f32],
    frames: usize,
    height: usize,
    width: usize,
) -> Vec<f32> {
    assert_eq!(
        depth_m.len(),
        frames * height * width,
        "depth must be [S, H, W]"
    );
    assert_eq!(extrinsic.len(), frames * 12, "extrinsic must be [S, 3, 4]");
    assert_eq!(intrinsic.len(), frames * 9, "intrinsic must be [S, 3, 3]");
    let mut points = Vec::with_capacity(depth_m.len() * 3);
    for ((depth_frame, ext), k) in depth_m
        .chunks_exact(height * width)
        .zip(extrinsic.chunks_exact(12))
        .zip(intrinsic.chunks_exact(9))
    {
        let rot = |r: usize, c: usize| ext[r * 4 + c];
        // world_from_cam translation -R^T t, in float32 like upstream's matmul of float32 arrays.
        let t_world_from_cam: [f64; 3] = std::array::from_fn(|i| {
            -(rot(0, i) * ext[3] + rot(1, i) * ext[7] + rot(2, i) * ext[11]) as f64
        });
        let (focal_x_px, focal_y_px) = (k[0] as f64, k[4] as f64);
        let (cx_px, cy_px) = (k[2] as f64, k[5] as f64);
        for (v, row) in depth_frame.chunks_exact(width).enumerate() {
            for (u, &d) in row.iter().enumerate() {
                let d = d as f64;
                let p_cam = [
                    ((u as f64 - cx_px) * d / focal_x_px) as f32 as f64,
                    ((v as f64 - cy_px) * d / focal_y_px) as f32 as f64,
                    d,
                ];
                for (i, t) in t_world_from_cam.iter().enumerate() {
                    // Row i of R^T is column i of R.
                    let rotated = p_cam[0] * rot(0, i) as f64
                        + p_cam[1] * rot(1, i) as f64
                        + p_cam[2] * rot(2, i) as f64;
                    points.push((rotated + t) as f32);
                }
            }
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat_close(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3], tol: f32) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn identity_quaternion_is_identity_matrix() {
        let eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(quat_to_mat([0.0, 0.0, 0.0, 1.0]), eye);
        // A non-unit quaternion gives the same rotation (upstream scales by 2 / |q|^2).
        assert!(mat_close(&quat_to_mat([0.0, 0.0, 0.0, 3.0]), &eye, 1e-7));
        assert_eq!(mat_to_quat(&eye), [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn quarter_turn_about_z_by_hand() {
        // 90 degrees about z maps x to y: R = [[0,-1,0],[1,0,0],[0,0,1]], q = (0,0,sin 45,cos 45).
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let r = quat_to_mat([0.0, 0.0, h, h]);
        assert!(
            mat_close(
                &r,
                &[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                1e-6
            ),
            "{r:?}"
        );
    }

    #[test]
    fn quaternion_matrix_round_trip() {
        // Cases cover each of the four candidate branches of mat_to_quat (largest w, x, y, z),
        // a 180-degree turn (w = 0) and a quaternion given with w < 0 (sign must be flipped back).
        let cases: [[f32; 4]; 7] = [
            [0.1, -0.2, 0.3, 0.9],
            [0.9, 0.2, -0.1, 0.3],
            [-0.2, 0.95, 0.1, 0.2],
            [0.1, 0.3, -0.9, 0.2],
            [0.0, 1.0, 0.0, 0.0],
            [0.3, 0.1, 0.2, -0.9],
            [0.5, 0.5, 0.5, 0.5],
        ];
        for q in cases {
            let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
            let sign = if q[3] < 0.0 { -1.0 } else { 1.0 };
            let want = q.map(|x| sign * x / norm);
            let got = mat_to_quat(&quat_to_mat(q));
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 2e-6, "q {q:?}: got {got:?}, want {want:?}");
            }
            let r = quat_to_mat(q);
            assert!(mat_close(&quat_to_mat(got), &r, 2e-6));
        }
    }

    #[test]
    fn pose_encoding_matrices_by_hand() {
        // fov_h = fov_w = 90 degrees: tan(45) = 1, so f_y = H/2 and f_x = W/2.
        let fov = std::f32::consts::FRAC_PI_2;
        let enc = [1.0, -2.0, 3.0, 0.0, 0.0, 0.0, 1.0, fov, fov];
        let (ext, k) = pose_encoding_to_extri_intri_host(&enc, (56, 84));
        assert_eq!(
            ext,
            vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -2.0, 0.0, 0.0, 1.0, 3.0]
        );
        let want_k = [42.0, 0.0, 42.0, 0.0, 28.0, 28.0, 0.0, 0.0, 1.0];
        for (g, w) in k.iter().zip(want_k) {
            assert!((g - w).abs() < 1e-4, "{k:?}");
        }
    }

    #[test]
    fn extri_intri_to_pose_encoding_inverts() {
        type B = burn::backend::Flex;
        let device = Default::default();
        // Two frames: unit quaternions with w > 0, FoVs inside (0, pi).
        let mut enc: Vec<f32> = vec![
            0.3, -1.2, 2.5, 0.1, -0.2, 0.3, 0.0, 0.9, 1.3, -0.5, 0.2, 0.1, -0.6, 0.1, 0.4, 0.0,
            1.1, 0.7,
        ];
        for q in enc.chunks_exact_mut(9) {
            let xyz = q[3] * q[3] + q[4] * q[4] + q[5] * q[5];
            q[6] = (1.0 - xyz).sqrt();
        }
        let pose: Tensor<B, 3> =
            Tensor::from_data(TensorData::new(enc.clone(), [1, 2, 9]), &device);
        let (ext, k) = pose_encoding_to_extri_intri(pose, (56, 84));
        assert_eq!(ext.dims(), [1, 2, 3, 4]);
        assert_eq!(k.dims(), [1, 2, 3, 3]);
        let back = download(extri_intri_to_pose_encoding(ext, k, (56, 84)));
        for (i, (g, w)) in back.iter().zip(&enc).enumerate() {
            assert!((g - w).abs() < 3e-6, "channel {i}: {g} vs {w}");
        }
    }

    #[test]
    fn unprojection_by_hand() {
        // One 2x3 frame, camera translated: cam_from_world = [I | (0, 0, -1)], so the camera sits
        // at world z = +1 and world = cam + (0, 0, 1).
        let depth = [2.0, 2.0, 2.0, 4.0, 4.0, 4.0];
        let ext = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0];
        let k = [2.0, 0.0, 1.5, 0.0, 4.0, 1.0, 0.0, 0.0, 1.0];
        let pts = unproject_depth_map_to_point_map(&depth, &ext, &k, 1, 2, 3);
        // Pixel (u=2, v=1), depth 4: x = (2 - 1.5) * 4 / 2 = 1, y = (1 - 1) * 4 / 4 = 0, z = 4 + 1.
        assert_eq!(&pts[15..18], &[1.0, 0.0, 5.0]);
        // Pixel (u=0, v=0), depth 2: x = -1.5, y = -0.5, z = 3.
        assert_eq!(&pts[0..3], &[-1.5, -0.5, 3.0]);
    }

    #[test]
    fn unprojection_inverts_projection() {
        // Rotated, translated camera: project the unprojected points back and recover the pixels.
        let r = quat_to_mat([0.2, -0.1, 0.3, 0.93]);
        let t = [0.4f32, -0.3, 1.2];
        let mut ext = Vec::new();
        for (row, ti) in r.iter().zip(t) {
            ext.extend_from_slice(row);
            ext.push(ti);
        }
        let k = [50.0, 0.0, 42.0, 0.0, 60.0, 28.0, 0.0, 0.0, 1.0];
        let (h, w) = (4, 5);
        let depth: Vec<f32> = (0..h * w).map(|i| 1.0 + 0.1 * i as f32).collect();
        let pts = unproject_depth_map_to_point_map(&depth, &ext, &k, 1, h, w);
        for (idx, p) in pts.chunks_exact(3).enumerate() {
            let cam: [f32; 3] =
                std::array::from_fn(|i| r[i][0] * p[0] + r[i][1] * p[1] + r[i][2] * p[2] + t[i]);
            let (u, v) = (k[0] * cam[0] / cam[2] + k[2], k[4] * cam[1] / cam[2] + k[5]);
            assert!((cam[2] - depth[idx]).abs() < 1e-5);
            assert!((u - (idx % w) as f32).abs() < 1e-3 && (v - (idx / w) as f32).abs() < 1e-3);
        }
    }
}
