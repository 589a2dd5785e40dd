//! Pose graph optimised with Levenberg–Marquardt and robust kernels.
//!
//! Nodes are `world_from_node` transforms (Sim(3) or SL(4)); an edge between `a` and `b`
//! measures `a_from_b`. The residual of an edge is the local coordinates of
//! `a_from_b_measured⁻¹ · world_from_a⁻¹ · world_from_b` (see [`GraphNode`]), whitened by the
//! edge's [`Information`] (inverse variances of its rotation, translation and scale parts), and
//! the cost is `Σ ρ(|r_whitened|²)` with the edge's robust [`Kernel`] (iteratively reweighted).
//! Unary [`ScalePrior`]s pull a node's scale towards a known value (metric depth).
//! Node 0 is held fixed to remove the gauge freedom. Updates are right perturbations
//! `node · exp(δ)`; Jacobians are in closed form for Sim(3) and central differences for SL(4).
//! The normal equations are a sparse block matrix factored by Cholesky in minimum-degree order
//! ([`BlockPattern`]): a chain factors in linear time, and a run that laps the same places again
//! and again (loops from every lap to the ones before) fills in only along the places that
//! separate the laps, not across a band as wide as a lap.

use nalgebra::{Matrix3, SVector, Vector3};
use serde::{Deserialize, Serialize};

use crate::lie::{Sim3, Sl4};
use crate::linalg::{BlockPattern, BlockSparse};

/// A transform that can be a pose-graph node.
pub trait GraphNode: Copy + std::fmt::Debug {
    /// Degrees of freedom of the perturbation.
    const DOF: usize;
    /// `self · exp(delta)`, `delta` of length [`GraphNode::DOF`].
    fn retract(&self, delta: &[f64]) -> Self;
    /// Residual of measurement `a_from_b` between nodes `world_from_a` and `world_from_b`;
    /// zero when they agree exactly.
    fn edge_residual(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Vec<f64>;
    /// Square roots of the per-component weights of [`GraphNode::edge_residual`] for an edge
    /// with information `info`.
    fn sqrt_weights(info: &Information) -> Vec<f64>;
    /// Natural log of the node's scale, when the group has one.
    fn log_scale(&self) -> Option<f64>;
    /// Rotation angle (radians) and translation length of a residual vector, for reports.
    fn residual_parts(residual: &[f64]) -> (f64, f64);
    /// [`GraphNode::edge_residual`] and its Jacobians with respect to right perturbations
    /// (`node · exp(δ)`) of `world_from_a` and of `world_from_b`, each column-major (entry
    /// `(row, k)` at `k · m + row`, `m` the residual's length). The default differentiates the
    /// residual numerically (central differences).
    fn linearise_edge(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Linearised {
        let residual = Self::edge_residual(a_from_b, world_from_a, world_from_b);
        let jacobians = numeric_jacobians(a_from_b, world_from_a, world_from_b, residual.len());
        (residual, jacobians)
    }

    /// Squared whitened norm of [`GraphNode::edge_residual`] under `info` (the default builds
    /// both vectors; a group may compute it in place).
    fn whitened_sq(
        a_from_b: &Self,
        world_from_a: &Self,
        world_from_b: &Self,
        info: &Information,
    ) -> f64 {
        let r = Self::edge_residual(a_from_b, world_from_a, world_from_b);
        whitened_sum(&r, &Self::sqrt_weights(info))
    }
}

/// An edge's residual and its Jacobians for nodes a and b (see [`GraphNode::linearise_edge`]).
pub type Linearised = (Vec<f64>, [Vec<f64>; 2]);

/// Central-difference Jacobians of an edge residual of length `m` (see
/// [`GraphNode::linearise_edge`]).
pub(crate) fn numeric_jacobians<T: GraphNode>(
    a_from_b: &T,
    world_from_a: &T,
    world_from_b: &T,
    m: usize,
) -> [Vec<f64>; 2] {
    let eps = 1e-6;
    let mut d = vec![0.0; T::DOF];
    let mut jacobian = |moving_a: bool| {
        let mut jac = vec![0.0; m * T::DOF];
        for k in 0..T::DOF {
            let mut eval = |delta: f64| {
                d[k] = delta;
                let r = if moving_a {
                    T::edge_residual(a_from_b, &world_from_a.retract(&d), world_from_b)
                } else {
                    T::edge_residual(a_from_b, world_from_a, &world_from_b.retract(&d))
                };
                d[k] = 0.0;
                r
            };
            let (rp, rm) = (eval(eps), eval(-eps));
            for row in 0..m {
                jac[k * m + row] = (rp[row] - rm[row]) / (2.0 * eps);
            }
        }
        jac
    };
    [jacobian(true), jacobian(false)]
}

impl GraphNode for Sim3 {
    const DOF: usize = 7;

    fn retract(&self, delta: &[f64]) -> Self {
        *self * Sim3::from_tangent(&SVector::<f64, 7>::from_column_slice(delta))
    }

    fn edge_residual(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Vec<f64> {
        sim3_residual(a_from_b, world_from_a, world_from_b)
            .as_slice()
            .to_vec()
    }

    fn sqrt_weights(info: &Information) -> Vec<f64> {
        sim3_sqrt_weights(info).to_vec()
    }

    /// The same sums as the default, without building the vectors.
    fn whitened_sq(
        a_from_b: &Self,
        world_from_a: &Self,
        world_from_b: &Self,
        info: &Information,
    ) -> f64 {
        let r = sim3_residual(a_from_b, world_from_a, world_from_b);
        whitened_sum(r.as_slice(), &sim3_sqrt_weights(info))
    }

    fn log_scale(&self) -> Option<f64> {
        Some(self.scale.ln())
    }

    fn residual_parts(r: &[f64]) -> (f64, f64) {
        (
            (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt(),
            (r[3] * r[3] + r[4] * r[4] + r[5] * r[5]).sqrt(),
        )
    }

    /// In closed form. With `M = a_from_b⁻¹`, `F = world_from_a⁻¹ · world_from_b` and the
    /// residual's transform `E = M · F` (rotation vector `φ`), a perturbation `(ω, τ, σ)` of `b`
    /// moves the residual by `(Jr⁻¹(φ) ω, s_E R_E τ, σ)`, and one of `a` by
    /// `(-Jr⁻¹(φ) R_Fᵀ ω, s_M R_M ([t_F]ₓ ω - τ - σ t_F), -σ)`, `Jr⁻¹` the inverse right
    /// Jacobian of SO(3). Near a half turn, where `Jr⁻¹` is singular, it falls back to numeric
    /// differences.
    fn linearise_edge(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Linearised {
        let m = a_from_b.inverse();
        let a_from_world = world_from_a.inverse();
        // The same products, in the same order, as `edge_residual`.
        let e = m * a_from_world * *world_from_b;
        let f = a_from_world * *world_from_b;
        let residual = e.to_tangent().as_slice().to_vec();
        let Some(jr_inv) = so3_right_jacobian_inverse(&e.rotation.scaled_axis()) else {
            let jacobians = numeric_jacobians(a_from_b, world_from_a, world_from_b, 7);
            return (residual, jacobians);
        };
        let r_m = m.rotation.to_rotation_matrix().into_inner() * m.scale;
        let r_e = e.rotation.to_rotation_matrix().into_inner() * e.scale;
        let r_f_t = f.rotation.to_rotation_matrix().into_inner().transpose();
        let rot_a = -(jr_inv * r_f_t);
        let trans_rot_a = r_m * f.translation.cross_matrix();
        let trans_scale_a = -(r_m * f.translation);
        // Column-major 7 x 7: entry (row, k) at k * 7 + row.
        let mut ja = vec![0.0; 49];
        let mut jb = vec![0.0; 49];
        for row in 0..3 {
            for k in 0..3 {
                ja[k * 7 + row] = rot_a[(row, k)];
                jb[k * 7 + row] = jr_inv[(row, k)];
                ja[k * 7 + row + 3] = trans_rot_a[(row, k)];
                ja[(k + 3) * 7 + row + 3] = -r_m[(row, k)];
                jb[(k + 3) * 7 + row + 3] = r_e[(row, k)];
            }
            ja[6 * 7 + row + 3] = trans_scale_a[row];
        }
        ja[48] = -1.0;
        jb[48] = 1.0;
        (residual, [ja, jb])
    }
}

/// A Sim(3) edge's residual: the tangent of `a_from_b⁻¹ · world_from_a⁻¹ · world_from_b`.
fn sim3_residual(a_from_b: &Sim3, world_from_a: &Sim3, world_from_b: &Sim3) -> SVector<f64, 7> {
    (a_from_b.inverse() * world_from_a.inverse() * *world_from_b).to_tangent()
}

/// Square roots of a Sim(3) residual's weights: rotation, translation, log-scale.
fn sim3_sqrt_weights(info: &Information) -> [f64; 7] {
    let (r, t, s) = (
        info.rotation.sqrt(),
        info.translation.sqrt(),
        info.scale.sqrt(),
    );
    [r, r, r, t, t, t, s]
}

/// `Jr⁻¹(φ)`, the inverse right Jacobian of SO(3) at rotation vector `φ`: `log(exp(φ) ·
/// exp(ω)) ≈ φ + Jr⁻¹(φ) ω`. `None` within 0.1 rad of a half turn, where it is singular.
fn so3_right_jacobian_inverse(phi: &Vector3<f64>) -> Option<Matrix3<f64>> {
    let theta = phi.norm();
    if !theta.is_finite() || theta > std::f64::consts::PI - 0.1 {
        return None;
    }
    let hat = phi.cross_matrix();
    let c = if theta < 1e-4 {
        1.0 / 12.0 + theta * theta / 720.0
    } else {
        1.0 / (theta * theta) - (1.0 + theta.cos()) / (2.0 * theta * theta.sin())
    };
    Some(Matrix3::identity() + 0.5 * hat + c * hat * hat)
}

impl GraphNode for Sl4 {
    const DOF: usize = 15;

    fn retract(&self, delta: &[f64]) -> Self {
        *self * Sl4::exp(&SVector::<f64, 15>::from_column_slice(delta))
    }

    fn edge_residual(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Vec<f64> {
        (a_from_b.inverse() * world_from_a.inverse() * *world_from_b)
            .to_residual()
            .as_slice()
            .to_vec()
    }

    /// Column-major `M - I`: entries of the last column's first three rows are translations,
    /// every other entry is dimensionless (rotation, scale, projective terms).
    fn sqrt_weights(info: &Information) -> Vec<f64> {
        let (r, t) = (info.rotation.sqrt(), info.translation.sqrt());
        (0..16)
            .map(|k| if k / 4 == 3 && k % 4 < 3 { t } else { r })
            .collect()
    }

    fn log_scale(&self) -> Option<f64> {
        None
    }

    fn residual_parts(r: &[f64]) -> (f64, f64) {
        let rot = [0, 1, 2, 4, 5, 6, 8, 9, 10]
            .iter()
            .map(|&k| r[k] * r[k])
            .sum::<f64>()
            .sqrt()
            / std::f64::consts::SQRT_2;
        let t = (r[12] * r[12] + r[13] * r[13] + r[14] * r[14]).sqrt();
        (rot, t)
    }
}

/// Kind of a pose-graph edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// Between consecutive keyframes of one window, from the window's predicted poses.
    Intra,
    /// Between the two copies of a keyframe that consecutive windows share, from the alignment
    /// of their overlap frames.
    Inter,
    /// From a verified loop closure.
    Loop,
}

impl ConstraintKind {
    /// Every kind, in report order.
    pub const ALL: [ConstraintKind; 3] = [Self::Intra, Self::Inter, Self::Loop];
}

/// Inverse variances of an edge's residual parts (rotation in radians, translation in the units
/// of the edge's second node, log-scale).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Information {
    /// `1 / σ²` of each rotation-vector component.
    pub rotation: f64,
    /// `1 / σ²` of each translation component.
    pub translation: f64,
    /// `1 / σ²` of the log-scale.
    pub scale: f64,
}

impl Information {
    /// Information from standard deviations.
    pub fn from_sigmas(rotation_rad: f64, translation: f64, log_scale: f64) -> Self {
        let inv = |s: f64| 1.0 / (s * s).max(1e-300);
        Self {
            rotation: inv(rotation_rad),
            translation: inv(translation),
            scale: inv(log_scale),
        }
    }

    /// The same weight on every component.
    pub fn isotropic(weight: f64) -> Self {
        Self {
            rotation: weight,
            translation: weight,
            scale: weight,
        }
    }

    /// True when every inverse variance is positive and finite.
    pub fn is_valid(&self) -> bool {
        [self.rotation, self.translation, self.scale]
            .iter()
            .all(|w| w.is_finite() && *w > 0.0)
    }
}

/// The shape of a robust kernel, for configuration (the scale is given beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    /// Plain least squares.
    Quadratic,
    /// Huber.
    Huber,
    /// Cauchy.
    Cauchy,
}

impl KernelKind {
    /// The kernel with scale `k` (in standard deviations).
    pub fn with_scale(self, k: f64) -> Kernel {
        match self {
            Self::Quadratic => Kernel::Quadratic,
            Self::Huber => Kernel::Huber(k),
            Self::Cauchy => Kernel::Cauchy(k),
        }
    }
}

/// Robust kernel of an edge, on the whitened residual norm `r`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Kernel {
    /// Plain least squares, `r²`.
    Quadratic,
    /// `r²` up to `k`, then linear: one wrong edge costs in proportion to its error.
    Huber(f64),
    /// `k² ln(1 + r²/k²)`: a wrong edge's pull fades as its error grows.
    Cauchy(f64),
}

impl Kernel {
    /// Cost of a whitened squared norm `s`.
    pub fn cost(&self, s: f64) -> f64 {
        match *self {
            Self::Quadratic => s,
            Self::Huber(k) => {
                let r = s.sqrt();
                if r <= k {
                    s
                } else {
                    2.0 * k * r - k * k
                }
            }
            Self::Cauchy(k) => k * k * (s / (k * k)).ln_1p(),
        }
    }

    /// Iteratively-reweighted least-squares weight `ρ'(s)` (1 for an inlier).
    pub fn weight(&self, s: f64) -> f64 {
        match *self {
            Self::Quadratic => 1.0,
            Self::Huber(k) => {
                let r = s.sqrt();
                if r <= k {
                    1.0
                } else {
                    k / r
                }
            }
            Self::Cauchy(k) => 1.0 / (1.0 + s / (k * k)),
        }
    }

    /// True when the scale is positive and finite.
    pub fn is_valid(&self) -> bool {
        match *self {
            Self::Quadratic => true,
            Self::Huber(k) | Self::Cauchy(k) => k.is_finite() && k > 0.0,
        }
    }
}

/// A relative measurement `a_from_b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constraint<T> {
    /// First node.
    pub a: usize,
    /// Second node.
    pub b: usize,
    /// Measured `a_from_b`.
    pub a_from_b: T,
    /// How certain the measurement is.
    pub information: Information,
    /// Robust kernel.
    pub kernel: Kernel,
    /// Why the edge exists.
    pub kind: ConstraintKind,
}

/// A unary prior on a node's log-scale (Sim(3) nodes only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalePrior {
    /// The node.
    pub node: usize,
    /// Target `ln scale`.
    pub log_scale: f64,
    /// `1 / σ²` of the log-scale.
    pub information: f64,
}

/// Settings of the optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmConfig {
    /// Maximum iterations. Default 30.
    pub max_iterations: usize,
    /// Initial damping. Default 1e-4.
    pub initial_lambda: f64,
    /// Stop when the relative cost decrease falls below this. Default 1e-6: on a
    /// 721-keyframe circuit 1e-10 closed the same loops and moved no keyframe by more than 3.7 µm
    /// in a 1.8 m scene, at twice the cost of each loop check.
    pub tolerance: f64,
    /// Stop when a step lowers the cost (whitened χ²) by less than this. A Gauss–Newton step's
    /// decrease is its squared length in the estimate's own standard deviations (the metric of
    /// the normal equations), so the default 0.01 stops once a step moves the whole estimate
    /// by less than about a tenth of a standard deviation, however large the graph. On the
    /// 5000-frame circuit (1501 keyframes, 209 loops) it took 13-17 % off the back-end's time
    /// against 0, with the same loops and a trajectory within 0.13 µm; on the 16600-frame one
    /// the difference was inside the run-to-run noise (`bench/RESULTS.md`, section 10).
    pub min_decrease: f64,
}

impl Default for LmConfig {
    fn default() -> Self {
        Self {
            max_iterations: 30,
            initial_lambda: 1e-4,
            tolerance: 1e-6,
            min_decrease: 0.01,
        }
    }
}

/// Residuals of one kind of edge after an optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindResiduals {
    /// The kind.
    pub kind: ConstraintKind,
    /// Edges of this kind.
    pub edges: usize,
    /// Root mean square of the whitened residual norms (about `sqrt(DOF)` when the edges'
    /// information is right).
    pub rms_whitened: f64,
    /// Largest whitened residual norm.
    pub max_whitened: f64,
    /// RMS rotation residual, degrees.
    pub rms_rotation_deg: f64,
    /// RMS translation residual, units of the edges' second nodes.
    pub rms_translation: f64,
    /// Edges whose robust weight fell below 0.5 (treated as partly outlying).
    pub downweighted: usize,
}

/// What an optimisation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmReport {
    /// Accepted plus rejected iterations.
    pub iterations: usize,
    /// Robust cost before.
    pub initial_cost: f64,
    /// Robust cost after.
    pub final_cost: f64,
    /// Whitened residual norm of each edge after, in edge order.
    pub edge_residuals: Vec<f64>,
    /// Robust weight of each edge after (1 = full weight), in edge order.
    pub edge_weights: Vec<f64>,
    /// Residuals per edge kind (kinds without edges left out).
    pub by_kind: Vec<KindResiduals>,
}

/// Error of the pose graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoseGraphError {
    /// An edge names a node that does not exist.
    #[error("edge {a} -> {b} but the graph has {nodes} nodes")]
    BadNode {
        /// First node.
        a: usize,
        /// Second node.
        b: usize,
        /// Node count.
        nodes: usize,
    },
    /// Information or kernel scale not positive and finite.
    #[error("edge {a} -> {b}: information and kernel scale must be positive and finite")]
    BadWeight {
        /// First node.
        a: usize,
        /// Second node.
        b: usize,
    },
}

/// Nodes, constraints and priors.
#[derive(Debug, Clone, Default)]
pub struct PoseGraph<T> {
    nodes: Vec<T>,
    constraints: Vec<Constraint<T>>,
    priors: Vec<ScalePrior>,
}

impl<T: GraphNode> PoseGraph<T> {
    /// An empty graph.
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            constraints: Vec::new(),
            priors: Vec::new(),
        }
    }

    /// Adds a node with its initial `world_from_node`; returns its index.
    pub fn add_node(&mut self, world_from_node: T) -> usize {
        self.nodes.push(world_from_node);
        self.nodes.len() - 1
    }

    /// Adds a constraint; returns its index.
    pub fn add_constraint(&mut self, c: Constraint<T>) -> Result<usize, PoseGraphError> {
        if c.a >= self.nodes.len() || c.b >= self.nodes.len() || c.a == c.b {
            return Err(PoseGraphError::BadNode {
                a: c.a,
                b: c.b,
                nodes: self.nodes.len(),
            });
        }
        if !(c.information.is_valid() && c.kernel.is_valid()) {
            return Err(PoseGraphError::BadWeight { a: c.a, b: c.b });
        }
        self.constraints.push(c);
        Ok(self.constraints.len() - 1)
    }

    /// Changes the robust kernel of constraint `i`.
    pub fn set_kernel(&mut self, i: usize, kernel: Kernel) {
        if let Some(c) = self.constraints.get_mut(i) {
            c.kernel = kernel;
        }
    }

    /// Removes the last constraint (a loop edge the optimisation found inconsistent).
    pub fn pop_constraint(&mut self) -> Option<Constraint<T>> {
        self.constraints.pop()
    }

    /// Adds a scale prior (ignored for groups without a scale).
    pub fn add_scale_prior(&mut self, prior: ScalePrior) -> Result<(), PoseGraphError> {
        if prior.node >= self.nodes.len() {
            return Err(PoseGraphError::BadNode {
                a: prior.node,
                b: prior.node,
                nodes: self.nodes.len(),
            });
        }
        if !(prior.information.is_finite()
            && prior.information > 0.0
            && prior.log_scale.is_finite())
        {
            return Err(PoseGraphError::BadWeight {
                a: prior.node,
                b: prior.node,
            });
        }
        self.priors.push(prior);
        Ok(())
    }

    /// Current node values.
    pub fn nodes(&self) -> &[T] {
        &self.nodes
    }

    /// Constraints in insertion order.
    pub fn constraints(&self) -> &[Constraint<T>] {
        &self.constraints
    }

    /// Overwrites a node value (e.g. to initialise it).
    pub fn set_node(&mut self, i: usize, value: T) {
        self.nodes[i] = value;
    }

    /// Squared whitened residual norm of constraint `c` at node values `nodes`.
    fn whitened_sq(c: &Constraint<T>, nodes: &[T]) -> f64 {
        T::whitened_sq(&c.a_from_b, &nodes[c.a], &nodes[c.b], &c.information)
    }

    fn prior_residual(p: &ScalePrior, nodes: &[T]) -> Option<f64> {
        nodes[p.node]
            .log_scale()
            .map(|s| (s - p.log_scale) * p.information.sqrt())
    }

    /// Whitened residual norm of constraint `i` at the current nodes.
    pub fn whitened_norm(&self, i: usize) -> f64 {
        Self::whitened_sq(&self.constraints[i], &self.nodes).sqrt()
    }

    /// Robust cost at the current nodes.
    pub fn cost(&self) -> f64 {
        self.cost_of(&self.nodes)
    }

    fn cost_of(&self, nodes: &[T]) -> f64 {
        let edges: f64 = self
            .constraints
            .iter()
            .map(|c| c.kernel.cost(Self::whitened_sq(c, nodes)))
            .sum();
        let priors: f64 = self
            .priors
            .iter()
            .filter_map(|p| Self::prior_residual(p, nodes))
            .map(|r| r * r)
            .sum();
        edges + priors
    }

    /// Levenberg–Marquardt with iteratively reweighted robust kernels, node 0 fixed.
    pub fn optimize(&mut self, config: &LmConfig) -> LmReport {
        let initial_cost = self.cost();
        let dof = T::DOF;
        let dim = self.nodes.len().saturating_sub(1) * dof;
        let mut cost = initial_cost;
        let mut lambda = config.initial_lambda;
        let mut iterations = 0;
        let pattern = self.pattern();
        while iterations < config.max_iterations && dim > 0 && cost > 0.0 {
            iterations += 1;
            let (h, g) = self.normal_equations(&pattern);
            let mut improved = false;
            for _ in 0..10 {
                let mut damped = h.clone();
                for i in 0..dim {
                    let d = h.diagonal(i);
                    damped.add(i, i, lambda * (d + 1e-9));
                }
                let Some(factor) = damped.cholesky() else {
                    lambda *= 10.0;
                    continue;
                };
                let rhs: Vec<f64> = g.iter().map(|v| -v).collect();
                let step = factor.solve_factored(&rhs);
                let candidate: Vec<T> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        if i == 0 {
                            *n
                        } else {
                            let o = pattern.position(i - 1) * dof;
                            n.retract(&step[o..o + dof])
                        }
                    })
                    .collect();
                let new_cost = self.cost_of(&candidate);
                if new_cost.is_finite() && new_cost < cost {
                    let decrease = cost - new_cost;
                    let rel = decrease / cost.max(1e-300);
                    self.nodes = candidate;
                    cost = new_cost;
                    lambda = (lambda / 3.0).max(1e-12);
                    improved = rel > config.tolerance && decrease > config.min_decrease;
                    break;
                }
                lambda *= 4.0;
            }
            if !improved {
                break;
            }
        }
        self.report(iterations, initial_cost, cost)
    }

    /// Residual statistics at the current nodes (one pass over the edges).
    pub fn report(&self, iterations: usize, initial_cost: f64, final_cost: f64) -> LmReport {
        let n = self.constraints.len();
        let mut edge_residuals = Vec::with_capacity(n);
        let mut edge_weights = Vec::with_capacity(n);
        let mut kinds = ConstraintKind::ALL.map(|kind| KindResiduals {
            kind,
            edges: 0,
            rms_whitened: 0.0,
            max_whitened: 0.0,
            rms_rotation_deg: 0.0,
            rms_translation: 0.0,
            downweighted: 0,
        });
        for c in &self.constraints {
            let raw = T::edge_residual(&c.a_from_b, &self.nodes[c.a], &self.nodes[c.b]);
            let (rot, t) = T::residual_parts(&raw);
            let s = whitened_sum(&raw, &T::sqrt_weights(&c.information));
            let w = s.sqrt();
            let weight = c.kernel.weight(s);
            edge_residuals.push(w);
            edge_weights.push(weight);
            if let Some(k) = kinds.iter_mut().find(|k| k.kind == c.kind) {
                k.edges += 1;
                k.rms_whitened += s;
                k.max_whitened = k.max_whitened.max(w);
                k.rms_rotation_deg += rot.to_degrees().powi(2);
                k.rms_translation += t * t;
                k.downweighted += usize::from(weight < 0.5);
            }
        }
        let by_kind = kinds
            .into_iter()
            .filter(|k| k.edges > 0)
            .map(|mut k| {
                let n = k.edges as f64;
                k.rms_whitened = (k.rms_whitened / n).sqrt();
                k.rms_rotation_deg = (k.rms_rotation_deg / n).sqrt();
                k.rms_translation = (k.rms_translation / n).sqrt();
                k
            })
            .collect();
        LmReport {
            iterations,
            initial_cost,
            final_cost,
            edge_residuals,
            edge_weights,
            by_kind,
        }
    }

    /// Sparsity of the normal equations over the free nodes (`node - 1`), in minimum-degree
    /// elimination order.
    fn pattern(&self) -> BlockPattern {
        let free = self.nodes.len().saturating_sub(1);
        let edges = self
            .constraints
            .iter()
            .filter(|c| c.a != 0 && c.b != 0)
            .map(|c| (c.a - 1, c.b - 1));
        BlockPattern::new(free, T::DOF, edges)
    }

    /// `Jᵀ W J` (lower triangle on `pattern`) and `Jᵀ W r` over the free nodes, with
    /// central-difference Jacobians and robust weights at the current nodes.
    fn normal_equations<'p>(&self, pattern: &'p BlockPattern) -> (BlockSparse<'p>, Vec<f64>) {
        let dof = T::DOF;
        let dim = self.nodes.len().saturating_sub(1) * dof;
        let mut h = pattern.zeros();
        let mut g = vec![0.0; dim];
        let mut local = vec![0.0; dof * dof];
        // Scratch reused across edges: the whitened residual.
        let mut r0: Vec<f64> = Vec::with_capacity(16);
        for c in &self.constraints {
            let (na, nb) = (&self.nodes[c.a], &self.nodes[c.b]);
            let (residual, [mut ja, mut jb]) = T::linearise_edge(&c.a_from_b, na, nb);
            let sw = T::sqrt_weights(&c.information);
            r0.clear();
            r0.extend(residual.iter().zip(&sw).map(|(r, w)| r * w));
            let m = r0.len();
            let robust = c.kernel.weight(sq(&r0));
            // Whitened column-major Jacobian blocks (jac[k * m + row]) of the free ends, with
            // their elimination positions.
            let mut blocks: [Option<(usize, &[f64])>; 2] = [None, None];
            for (slot, (node, jac)) in blocks.iter_mut().zip([(c.a, &mut ja), (c.b, &mut jb)]) {
                if node == 0 {
                    continue;
                }
                for col in jac.chunks_exact_mut(m) {
                    for (v, w) in col.iter_mut().zip(&sw) {
                        *v *= w;
                    }
                }
                *slot = Some((pattern.position(node - 1), &jac[..]));
            }
            for &(pi, ji) in blocks.iter().flatten() {
                for k in 0..dof {
                    let col = &ji[k * m..(k + 1) * m];
                    g[pi * dof + k] += robust * dot(col, &r0);
                }
                for &(pj, jj) in blocks.iter().flatten() {
                    if pj > pi {
                        continue;
                    }
                    // Jᵢᵀ Jⱼ, lower triangle only on the diagonal.
                    for k in 0..dof {
                        let col_k = &ji[k * m..(k + 1) * m];
                        for l in 0..dof {
                            local[k * dof + l] = if pj == pi && l > k {
                                0.0
                            } else {
                                robust * dot(col_k, &jj[l * m..(l + 1) * m])
                            };
                        }
                    }
                    h.add_block(pi, pj, &local);
                }
            }
        }
        for p in &self.priors {
            if p.node == 0 {
                continue;
            }
            let Some(r0) = Self::prior_residual(p, &self.nodes) else {
                continue;
            };
            let o = pattern.position(p.node - 1) * dof;
            let eps = 1e-6;
            let mut d = vec![0.0; dof];
            let jac: Vec<f64> = (0..dof)
                .map(|k| {
                    let mut eval = |delta: f64| {
                        d[k] = delta;
                        let moved = [self.nodes[p.node].retract(&d)];
                        d[k] = 0.0;
                        moved[0]
                            .log_scale()
                            .map_or(0.0, |s| (s - p.log_scale) * p.information.sqrt())
                    };
                    (eval(eps) - eval(-eps)) / (2.0 * eps)
                })
                .collect();
            for k in 0..dof {
                g[o + k] += jac[k] * r0;
                for l in 0..=k {
                    h.add(o + k, o + l, jac[k] * jac[l]);
                }
            }
        }
        (h, g)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sq(v: &[f64]) -> f64 {
    dot(v, v)
}

/// `Σ (rᵢ wᵢ)²`: the squared whitened norm of residual `r` under square-root weights `w`.
fn whitened_sum(r: &[f64], w: &[f64]) -> f64 {
    r.iter().zip(w).map(|(r, w)| (r * w) * (r * w)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::projective_tilt;
    use nalgebra::{UnitQuaternion, Vector3};

    /// A square-ish loop of `n` nodes with a true relative motion per step.
    fn true_poses(n: usize) -> Vec<Sim3> {
        let step = Sim3::new(
            UnitQuaternion::from_euler_angles(0.0, 0.0, std::f64::consts::TAU / n as f64),
            Vector3::new(1.0, 0.0, 0.1),
            1.0,
        );
        let mut poses = vec![Sim3::identity()];
        for i in 1..n {
            poses.push(poses[i - 1] * step);
        }
        poses
    }

    fn edge<T>(
        a: usize,
        b: usize,
        a_from_b: T,
        weight: f64,
        kind: ConstraintKind,
    ) -> Constraint<T> {
        Constraint {
            a,
            b,
            a_from_b,
            information: Information::isotropic(weight),
            kernel: Kernel::Quadratic,
            kind,
        }
    }

    /// Odometry `truth[i-1]^-1 truth[i] * bias` chained from the identity (so the estimate
    /// drifts), plus one exact loop edge from the first to the last node with weight 10.
    fn biased_loop_graph<T>(truth: &[T], bias: T, identity: T, inverse: fn(&T) -> T) -> PoseGraph<T>
    where
        T: GraphNode + std::ops::Mul<Output = T>,
    {
        let n = truth.len();
        let mut graph = PoseGraph::new();
        let mut chain = identity;
        graph.add_node(chain);
        for i in 1..n {
            let meas = inverse(&truth[i - 1]) * truth[i] * bias;
            chain = chain * meas;
            graph.add_node(chain);
            graph
                .add_constraint(edge(i - 1, i, meas, 1.0, ConstraintKind::Intra))
                .expect("edge");
        }
        graph
            .add_constraint(edge(
                0,
                n - 1,
                inverse(&truth[0]) * truth[n - 1],
                10.0,
                ConstraintKind::Loop,
            ))
            .expect("edge");
        graph
    }

    fn max_position_error(g: &PoseGraph<Sim3>, truth: &[Sim3]) -> f64 {
        g.nodes()
            .iter()
            .zip(truth)
            .map(|(e, t)| (e.translation - t.translation).norm())
            .fold(0.0, f64::max)
    }

    /// Odometry with a planted bias (rotation, scale drift), exact loop edge: optimisation must
    /// spread the loop error and pull the chain back towards the truth.
    #[test]
    fn sim3_pose_graph_reduces_planted_loop_error() {
        let n = 12;
        let truth = true_poses(n);
        let bias = Sim3::new(
            UnitQuaternion::from_euler_angles(0.01, -0.02, 0.015),
            Vector3::new(0.02, -0.03, 0.01),
            1.01,
        );
        let mut graph = biased_loop_graph(&truth, bias, Sim3::identity(), Sim3::inverse);
        let before = max_position_error(&graph, &truth);
        let report = graph.optimize(&LmConfig::default());
        let after = max_position_error(&graph, &truth);
        assert!(report.final_cost < 0.05 * report.initial_cost, "{report:?}");
        assert!(
            after < 0.5 * before,
            "max position error {before} -> {after}"
        );
        assert_eq!(report.edge_residuals.len(), n);
        assert!(graph.nodes()[0] == Sim3::identity(), "node 0 is fixed");
        let kinds: Vec<_> = report.by_kind.iter().map(|k| (k.kind, k.edges)).collect();
        assert_eq!(
            kinds,
            [(ConstraintKind::Intra, n - 1), (ConstraintKind::Loop, 1)]
        );
    }

    /// One grossly wrong loop edge among good ones (every edge with σ = 0.1): with a Cauchy
    /// kernel the map keeps its shape (the wrong edge is down-weighted); with plain least
    /// squares it bends.
    #[test]
    fn cauchy_kernel_keeps_one_bad_loop_from_bending_the_map() {
        let n = 16;
        let truth = true_poses(n);
        let run = |kernel: Kernel| {
            let mut graph = PoseGraph::new();
            for t in &truth {
                graph.add_node(*t);
            }
            for i in 1..n {
                graph
                    .add_constraint(edge(
                        i - 1,
                        i,
                        truth[i - 1].inverse() * truth[i],
                        100.0,
                        ConstraintKind::Intra,
                    ))
                    .expect("edge");
            }
            // Two good loops and a wrong one that claims node 12 sits on node 3.
            for (a, b) in [(0, n - 1), (4, 11)] {
                let mut c = edge(
                    a,
                    b,
                    truth[a].inverse() * truth[b],
                    100.0,
                    ConstraintKind::Loop,
                );
                c.kernel = kernel;
                graph.add_constraint(c).expect("edge");
            }
            let mut wrong = edge(3, 12, Sim3::identity(), 100.0, ConstraintKind::Loop);
            wrong.kernel = kernel;
            graph.add_constraint(wrong).expect("edge");
            let report = graph.optimize(&LmConfig {
                max_iterations: 100,
                ..LmConfig::default()
            });
            (max_position_error(&graph, &truth), report)
        };
        let (err_ls, _) = run(Kernel::Quadratic);
        let (err_cauchy, report) = run(Kernel::Cauchy(2.0));
        assert!(err_ls > 0.2, "least squares bends: {err_ls}");
        assert!(
            err_cauchy < 0.1 * err_ls,
            "Cauchy {err_cauchy} vs least squares {err_ls}"
        );
        let wrong_weight = *report.edge_weights.last().expect("edges");
        assert!(wrong_weight < 0.05, "wrong loop weight {wrong_weight}");
        let loops = report
            .by_kind
            .iter()
            .find(|k| k.kind == ConstraintKind::Loop)
            .expect("loops");
        assert_eq!(loops.downweighted, 1);
    }

    /// `min_decrease` ends the solve once a step moves the estimate by less than about
    /// `sqrt(min_decrease)` standard deviations: on a long drifted ring with Huber edges (whose
    /// reweighting converges slowly) the default takes half the iterations of running until the
    /// relative tolerance (45 -> 20), and ends statistically where the longer solve ends (χ²
    /// higher by 0.06, no node further than one odometry σ: 0.007 of 0.01).
    #[test]
    fn min_decrease_stops_once_steps_are_a_fraction_of_a_standard_deviation() {
        let n = 60;
        let truth = true_poses(n);
        let bias = Sim3::new(
            UnitQuaternion::from_euler_angles(0.004, -0.006, 0.005),
            Vector3::new(0.01, -0.015, 0.005),
            1.004,
        );
        // Odometry with σ = 0.01 (the bias is a few σ a step), loops with σ = 0.003, every edge
        // with a Huber kernel as in the back-end.
        let (odometry, loop_weight) = (1e4, 1e5);
        let solve = |min_decrease: f64| {
            let mut graph = biased_loop_graph(&truth, bias, Sim3::identity(), Sim3::inverse);
            for c in &mut graph.constraints {
                c.information = Information::isotropic(odometry);
                c.kernel = Kernel::Huber(1.0);
            }
            for (a, b) in [(5, 50), (12, 40), (20, 58)] {
                let mut c = edge(
                    a,
                    b,
                    truth[a].inverse() * truth[b],
                    loop_weight,
                    ConstraintKind::Loop,
                );
                c.kernel = Kernel::Huber(1.0);
                graph.add_constraint(c).expect("edge");
            }
            let report = graph.optimize(&LmConfig {
                max_iterations: 200,
                min_decrease,
                ..LmConfig::default()
            });
            (graph, report)
        };
        let (full, full_report) = solve(0.0);
        let (short, short_report) = solve(LmConfig::default().min_decrease);
        assert!(
            2 * short_report.iterations <= full_report.iterations,
            "{} vs {} iterations",
            short_report.iterations,
            full_report.iterations
        );
        let extra = short_report.final_cost - full_report.final_cost;
        assert!(
            (0.0..0.1).contains(&extra),
            "χ² {extra} above the full solve"
        );
        let apart = full
            .nodes()
            .iter()
            .zip(short.nodes())
            .map(|(a, b)| (a.translation - b.translation).norm())
            .fold(0.0, f64::max);
        assert!(apart < 0.01, "{apart} from the full solve");
    }

    #[test]
    fn scale_prior_pulls_the_scale() {
        let truth = true_poses(4);
        let mut graph = PoseGraph::new();
        for t in &truth {
            graph.add_node(*t);
        }
        for i in 1..4 {
            let mut c = edge(
                i - 1,
                i,
                truth[i - 1].inverse() * truth[i],
                1.0,
                ConstraintKind::Intra,
            );
            c.information.scale = 1e-6;
            graph.add_constraint(c).expect("edge");
        }
        graph
            .add_scale_prior(ScalePrior {
                node: 3,
                log_scale: 2.0f64.ln(),
                information: 1e4,
            })
            .expect("prior");
        graph.optimize(&LmConfig::default());
        let s = graph.nodes()[3].scale;
        assert!((s - 2.0).abs() < 0.01, "scale {s}");
        assert!(graph
            .add_scale_prior(ScalePrior {
                node: 9,
                log_scale: 0.0,
                information: 1.0
            })
            .is_err());
    }

    #[test]
    fn consistent_graph_stays_put() {
        let truth = true_poses(5);
        let mut graph = PoseGraph::new();
        for t in &truth {
            graph.add_node(*t);
        }
        for i in 1..5 {
            let meas = truth[i - 1].inverse() * truth[i];
            graph
                .add_constraint(edge(i - 1, i, meas, 1.0, ConstraintKind::Intra))
                .expect("edge");
        }
        let report = graph.optimize(&LmConfig::default());
        assert!(report.initial_cost < 1e-20 && report.final_cost < 1e-20);
        assert!(graph
            .add_constraint(edge(0, 9, Sim3::identity(), 1.0, ConstraintKind::Loop))
            .is_err());
        assert!(graph
            .add_constraint(edge(0, 1, Sim3::identity(), 0.0, ConstraintKind::Loop))
            .is_err());
    }

    #[test]
    fn sl4_pose_graph_reduces_planted_loop_error() {
        let n = 8;
        let truth: Vec<Sl4> = true_poses(n).iter().map(Sl4::from_sim3).collect();
        let bias = projective_tilt(Vector3::new(0.003, -0.002, 0.001))
            * Sl4::from_sim3(&Sim3::new(
                UnitQuaternion::from_euler_angles(0.0, 0.01, 0.0),
                Vector3::new(0.01, 0.0, 0.0),
                1.0,
            ));
        let mut graph = biased_loop_graph(&truth, bias, Sl4::identity(), Sl4::inverse);
        let report = graph.optimize(&LmConfig::default());
        assert!(report.final_cost < 0.1 * report.initial_cost, "{report:?}");
    }

    #[test]
    fn sim3_jacobians_match_central_differences() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut random = |angle: f64| {
            let axis = Vector3::new(
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
            );
            Sim3::new(
                UnitQuaternion::from_scaled_axis(axis.normalize() * rng.random_range(0.0..angle)),
                Vector3::new(
                    rng.random_range(-3.0..3.0),
                    rng.random_range(-3.0..3.0),
                    rng.random_range(-3.0..3.0),
                ),
                rng.random_range(0.3..3.0),
            )
        };
        for case in 0..200 {
            // Far from agreement (large residuals) and near it (small ones), as during a solve.
            let (wa, wb) = (random(3.0), random(3.0));
            let a_from_b = if case % 2 == 0 {
                random(2.5)
            } else {
                wa.inverse()
                    * wb
                    * Sim3::from_tangent(&SVector::from_column_slice(&[
                        1e-3, -2e-3, 5e-4, 1e-3, 0.0, -1e-3, 1e-3,
                    ]))
            };
            let residual = Sim3::edge_residual(&a_from_b, &wa, &wb);
            let angle = Vector3::new(residual[0], residual[1], residual[2]).norm();
            if angle > std::f64::consts::PI - 0.2 {
                continue;
            }
            let (closed_residual, closed) = Sim3::linearise_edge(&a_from_b, &wa, &wb);
            assert_eq!(closed_residual, residual, "case {case}");
            // The in-place whitened square: the same sums as whitening the residual vector.
            let info = Information::from_sigmas(0.01, 0.02 * (1.0 + case as f64), 0.003);
            let whitened: f64 = residual
                .iter()
                .zip(Sim3::sqrt_weights(&info))
                .map(|(r, w)| (r * w) * (r * w))
                .sum();
            assert_eq!(Sim3::whitened_sq(&a_from_b, &wa, &wb, &info), whitened);
            let numeric = numeric_jacobians(&a_from_b, &wa, &wb, 7);
            for (c, n) in closed.iter().zip(&numeric) {
                for (x, y) in c.iter().zip(n) {
                    assert!(
                        (x - y).abs() < 1e-6 * (1.0 + y.abs()),
                        "case {case}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
