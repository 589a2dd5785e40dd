//! Transform groups used by the back-end: Sim(3) (rotation, translation, positive scale) and
//! SL(4) (4x4 projective transforms with unit determinant).
//!
//! Both act on points as `b_from_a * point_in_a = point_in_b`. Composition follows the names:
//! `world_from_submap * submap_from_cam = world_from_cam`.

use std::ops::Mul;

use nalgebra::{
    Isometry3, Matrix3, Matrix4, Point3, SVector, Translation3, UnitQuaternion, Vector3, Vector4,
};
use serde::{Deserialize, Serialize};

/// A similarity transform: `p -> scale * rotation * p + translation`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sim3 {
    /// Rotation part.
    pub rotation: UnitQuaternion<f64>,
    /// Translation part, in the units of the target frame.
    pub translation: Vector3<f64>,
    /// Positive scale factor (target units per source unit).
    pub scale: f64,
}

impl Default for Sim3 {
    fn default() -> Self {
        Self::identity()
    }
}

impl Sim3 {
    /// The identity transform.
    pub fn identity() -> Self {
        Self {
            rotation: UnitQuaternion::identity(),
            translation: Vector3::zeros(),
            scale: 1.0,
        }
    }

    /// Builds a similarity from its parts.
    pub fn new(rotation: UnitQuaternion<f64>, translation: Vector3<f64>, scale: f64) -> Self {
        Self {
            rotation,
            translation,
            scale,
        }
    }

    /// A rigid transform seen as a similarity of scale 1.
    pub fn from_isometry(iso: &Isometry3<f64>) -> Self {
        Self::new(iso.rotation, iso.translation.vector, 1.0)
    }

    /// Rotation and translation, dropping the scale (the result maps the origin and axes
    /// directions the same way, not lengths).
    pub fn to_isometry(&self) -> Isometry3<f64> {
        Isometry3::from_parts(Translation3::from(self.translation), self.rotation)
    }

    /// Applies the transform to a point.
    pub fn transform_point(&self, p: &Point3<f64>) -> Point3<f64> {
        Point3::from(self.scale * (self.rotation * p.coords) + self.translation)
    }

    /// The inverse transform.
    pub fn inverse(&self) -> Self {
        let rotation = self.rotation.inverse();
        let scale = 1.0 / self.scale;
        Self {
            rotation,
            translation: -(scale * (rotation * self.translation)),
            scale,
        }
    }

    /// Homogeneous 4x4 matrix `[sR t; 0 1]`.
    pub fn to_homogeneous(&self) -> Matrix4<f64> {
        let mut m = Matrix4::identity();
        m.fixed_view_mut::<3, 3>(0, 0)
            .copy_from(&(self.rotation.to_rotation_matrix().matrix() * self.scale));
        m.fixed_view_mut::<3, 1>(0, 3).copy_from(&self.translation);
        m
    }

    /// Local coordinates `[rotation vector (3), translation (3), ln scale (1)]`. Zero exactly at
    /// the identity; used as the residual of the pose graph.
    pub fn to_tangent(&self) -> SVector<f64, 7> {
        let r = self.rotation.scaled_axis();
        SVector::<f64, 7>::from_column_slice(&[
            r.x,
            r.y,
            r.z,
            self.translation.x,
            self.translation.y,
            self.translation.z,
            self.scale.ln(),
        ])
    }

    /// Inverse of [`Sim3::to_tangent`].
    pub fn from_tangent(v: &SVector<f64, 7>) -> Self {
        Self::new(
            UnitQuaternion::from_scaled_axis(Vector3::new(v[0], v[1], v[2])),
            Vector3::new(v[3], v[4], v[5]),
            v[6].exp(),
        )
    }

    /// True when every number is finite and the scale is positive.
    pub fn is_valid(&self) -> bool {
        self.scale.is_finite()
            && self.scale > 0.0
            && self.translation.iter().all(|v| v.is_finite())
            && self.rotation.coords.iter().all(|v| v.is_finite())
    }
}

impl Mul for Sim3 {
    type Output = Sim3;

    fn mul(self, rhs: Sim3) -> Sim3 {
        Sim3 {
            rotation: self.rotation * rhs.rotation,
            translation: self.scale * (self.rotation * rhs.translation) + self.translation,
            scale: self.scale * rhs.scale,
        }
    }
}

/// A projective transform of 3-D space, a 4x4 matrix normalised to determinant 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sl4 {
    matrix: Matrix4<f64>,
}

impl Default for Sl4 {
    fn default() -> Self {
        Self::identity()
    }
}

impl Sl4 {
    /// The identity transform.
    pub fn identity() -> Self {
        Self {
            matrix: Matrix4::identity(),
        }
    }

    /// Normalises `m` to determinant 1 (a negative determinant is kept negative with unit
    /// magnitude). `None` when `m` is singular or not finite.
    pub fn from_matrix(m: Matrix4<f64>) -> Option<Self> {
        let det = m.determinant();
        if !det.is_finite() || det.abs() < 1e-300 {
            return None;
        }
        let s = det.abs().powf(-0.25);
        let mut matrix = m * s;
        // Projective equivalence: fix the overall sign so that the bottom-right element is
        // non-negative when possible, which keeps the matrix close to affine ones.
        if matrix[(3, 3)] < 0.0 {
            matrix = -matrix;
        }
        Some(Self { matrix })
    }

    /// The normalised matrix.
    pub fn matrix(&self) -> &Matrix4<f64> {
        &self.matrix
    }

    /// A similarity as a projective transform.
    pub fn from_sim3(sim: &Sim3) -> Self {
        Self::from_matrix(sim.to_homogeneous()).unwrap_or_else(Self::identity)
    }

    /// Applies the transform to a point; `None` when the point maps to infinity.
    pub fn transform_point(&self, p: &Point3<f64>) -> Option<Point3<f64>> {
        let h = self.matrix * Vector4::new(p.x, p.y, p.z, 1.0);
        (h.w.abs() > 1e-12).then(|| Point3::new(h.x / h.w, h.y / h.w, h.z / h.w))
    }

    /// The inverse transform.
    pub fn inverse(&self) -> Self {
        let inv = self.matrix.try_inverse().unwrap_or_else(Matrix4::identity);
        Self::from_matrix(inv).unwrap_or_else(Self::identity)
    }

    /// Exponential of the traceless matrix built from 15 coordinates, used as the local
    /// perturbation of pose-graph nodes.
    pub fn exp(v: &SVector<f64, 15>) -> Self {
        let a = sl4_hat(v);
        Self::from_matrix(expm(&a)).unwrap_or_else(Self::identity)
    }

    /// Residual used by the pose graph: the 16 entries of `self - I`.
    pub fn to_residual(&self) -> SVector<f64, 16> {
        let d = self.matrix - Matrix4::identity();
        SVector::<f64, 16>::from_column_slice(d.as_slice())
    }

    /// The closest similarity: exact on the affine part's rotation and scale when the matrix
    /// is a similarity, an approximation otherwise.
    pub fn to_sim3_approx(&self) -> Sim3 {
        let m = self.matrix / self.matrix[(3, 3)];
        let a: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into();
        let scale = a.determinant().abs().cbrt();
        Sim3::new(
            nearest_rotation(&a),
            m.fixed_view::<3, 1>(0, 3).into(),
            scale,
        )
    }
}

impl Mul for Sl4 {
    type Output = Sl4;

    fn mul(self, rhs: Sl4) -> Sl4 {
        Sl4::from_matrix(self.matrix * rhs.matrix).unwrap_or_else(Sl4::identity)
    }
}

/// The rotation nearest to `a` in the Frobenius sense (after removing any reflection).
pub fn nearest_rotation(a: &Matrix3<f64>) -> UnitQuaternion<f64> {
    let svd = a.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return UnitQuaternion::identity();
    };
    let mut d = Matrix3::identity();
    if (u * v_t).determinant() < 0.0 {
        d[(2, 2)] = -1.0;
    }
    let r = u * d * v_t;
    UnitQuaternion::from_rotation_matrix(&nalgebra::Rotation3::from_matrix_unchecked(r))
}

/// Traceless 4x4 matrix from 15 coordinates: the first 12 fill the off-diagonal entries row by
/// row, the last 3 the first three diagonal entries (the fourth makes the trace zero).
fn sl4_hat(v: &SVector<f64, 15>) -> Matrix4<f64> {
    let mut a = Matrix4::zeros();
    let mut k = 0;
    for r in 0..4 {
        for c in 0..4 {
            if r != c {
                a[(r, c)] = v[k];
                k += 1;
            }
        }
    }
    a[(0, 0)] = v[12];
    a[(1, 1)] = v[13];
    a[(2, 2)] = v[14];
    a[(3, 3)] = -(v[12] + v[13] + v[14]);
    a
}

/// Matrix exponential by scaling and squaring with a Taylor series.
fn expm(a: &Matrix4<f64>) -> Matrix4<f64> {
    let norm = a.abs().max() * 4.0;
    let squarings = if norm > 0.5 {
        (norm / 0.5).log2().ceil() as u32
    } else {
        0
    };
    let scaled = a / f64::from(2u32.pow(squarings.min(30)));
    let mut term = Matrix4::identity();
    let mut sum = Matrix4::identity();
    for k in 1..=12 {
        term = term * scaled / f64::from(k);
        sum += term;
    }
    for _ in 0..squarings.min(30) {
        sum = sum * sum;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_sim3() -> Sim3 {
        Sim3::new(
            UnitQuaternion::from_euler_angles(0.3, -0.2, 1.1),
            Vector3::new(0.5, -1.0, 2.0),
            1.7,
        )
    }

    #[test]
    fn sim3_inverse_and_composition_agree_with_matrices() {
        let a = sample_sim3();
        let b = Sim3::new(
            UnitQuaternion::from_euler_angles(-0.5, 0.1, 0.2),
            Vector3::new(1.0, 2.0, 3.0),
            0.4,
        );
        let ab = (a * b).to_homogeneous();
        assert!((ab - a.to_homogeneous() * b.to_homogeneous()).abs().max() < 1e-12);
        let id = (a * a.inverse()).to_homogeneous();
        assert!((id - Matrix4::identity()).abs().max() < 1e-12);
        let p = Point3::new(0.3, 0.2, -0.7);
        let q = a.transform_point(&p);
        let h = a.to_homogeneous() * p.to_homogeneous();
        assert!((q.coords - h.xyz()).norm() < 1e-12);
    }

    #[test]
    fn sim3_tangent_round_trips() {
        let a = sample_sim3();
        let b = Sim3::from_tangent(&a.to_tangent());
        assert!((a.to_homogeneous() - b.to_homogeneous()).abs().max() < 1e-12);
        assert!(Sim3::identity().to_tangent().norm() == 0.0);
    }

    #[test]
    fn sl4_normalises_and_matches_sim3_action() {
        let a = sample_sim3();
        let h = Sl4::from_sim3(&a);
        assert!((h.matrix().determinant() - 1.0).abs() < 1e-9);
        let p = Point3::new(1.0, -2.0, 0.5);
        let q = h.transform_point(&p).expect("finite");
        assert!((q - a.transform_point(&p)).norm() < 1e-12);
        let back = h.inverse().transform_point(&q).expect("finite");
        assert!((back - p).norm() < 1e-12);
        let s = h.to_sim3_approx();
        assert!((s.to_homogeneous() - a.to_homogeneous()).abs().max() < 1e-9);
    }

    #[test]
    fn sl4_exp_is_identity_at_zero_and_unimodular() {
        assert!(
            (Sl4::exp(&SVector::zeros()).matrix() - Matrix4::identity())
                .abs()
                .max()
                < 1e-15
        );
        let v = SVector::<f64, 15>::from_fn(|i, _| 0.05 * (i as f64 - 7.0));
        let e = Sl4::exp(&v);
        assert!((e.matrix().determinant() - 1.0).abs() < 1e-9);
        // exp(A) exp(-A) = I
        let prod = e.matrix() * Sl4::exp(&(-v)).matrix();
        assert!((prod - Matrix4::identity()).abs().max() < 1e-9);
    }
}
