//! Pose graph over submap transforms, optimised with Levenberg–Marquardt.
//!
//! Nodes are `world_from_submap` transforms (Sim(3) or SL(4)); an edge between `a` and `b`
//! measures `a_from_b`. The residual of an edge is the local coordinates of
//! `a_from_b_measured⁻¹ · world_from_a⁻¹ · world_from_b` (see [`GraphNode`]), weighted by the
//! edge's scalar information weight. Node 0 is held fixed to remove the gauge freedom. Updates
//! are right perturbations `node · exp(δ)`; Jacobians are central differences, normal
//! equations are dense (submap counts are small).

use nalgebra::SVector;
use serde::{Deserialize, Serialize};

use crate::lie::{Sim3, Sl4};

/// A transform that can be a pose-graph node.
pub trait GraphNode: Copy + std::fmt::Debug {
    /// Degrees of freedom of the perturbation.
    const DOF: usize;
    /// `self · exp(delta)`, `delta` of length [`GraphNode::DOF`].
    fn retract(&self, delta: &[f64]) -> Self;
    /// Residual of measurement `a_from_b` between nodes `world_from_a` and `world_from_b`;
    /// zero when they agree exactly.
    fn edge_residual(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Vec<f64>;
}

impl GraphNode for Sim3 {
    const DOF: usize = 7;

    fn retract(&self, delta: &[f64]) -> Self {
        *self * Sim3::from_tangent(&SVector::<f64, 7>::from_column_slice(delta))
    }

    fn edge_residual(a_from_b: &Self, world_from_a: &Self, world_from_b: &Self) -> Vec<f64> {
        (a_from_b.inverse() * world_from_a.inverse() * *world_from_b)
            .to_tangent()
            .as_slice()
            .to_vec()
    }
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
}

/// Kind of a pose-graph edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintKind {
    /// Between consecutive submaps, from their overlap frames.
    Sequential,
    /// From a verified loop closure.
    Loop,
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
    /// Information weight (> 0) multiplying the squared residual.
    pub weight: f64,
    /// Why the edge exists.
    pub kind: ConstraintKind,
}

/// Settings of the optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmConfig {
    /// Maximum iterations. Default 30.
    pub max_iterations: usize,
    /// Initial damping. Default 1e-4.
    pub initial_lambda: f64,
    /// Stop when the relative cost decrease falls below this. Default 1e-10.
    pub tolerance: f64,
}

impl Default for LmConfig {
    fn default() -> Self {
        Self {
            max_iterations: 30,
            initial_lambda: 1e-4,
            tolerance: 1e-10,
        }
    }
}

/// What an optimisation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmReport {
    /// Accepted plus rejected iterations.
    pub iterations: usize,
    /// Weighted squared residual before.
    pub initial_cost: f64,
    /// Weighted squared residual after.
    pub final_cost: f64,
    /// Unweighted residual norm of each edge after, in edge order.
    pub edge_residuals: Vec<f64>,
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
    /// Weight not positive and finite.
    #[error("edge weight {0} is not positive and finite")]
    BadWeight(f64),
}

/// Nodes and constraints.
#[derive(Debug, Clone, Default)]
pub struct PoseGraph<T> {
    nodes: Vec<T>,
    constraints: Vec<Constraint<T>>,
}

impl<T: GraphNode> PoseGraph<T> {
    /// An empty graph.
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            constraints: Vec::new(),
        }
    }

    /// Adds a node with its initial `world_from_node`; returns its index.
    pub fn add_node(&mut self, world_from_node: T) -> usize {
        self.nodes.push(world_from_node);
        self.nodes.len() - 1
    }

    /// Adds a constraint.
    pub fn add_constraint(&mut self, c: Constraint<T>) -> Result<(), PoseGraphError> {
        if c.a >= self.nodes.len() || c.b >= self.nodes.len() {
            return Err(PoseGraphError::BadNode {
                a: c.a,
                b: c.b,
                nodes: self.nodes.len(),
            });
        }
        if !(c.weight.is_finite() && c.weight > 0.0) {
            return Err(PoseGraphError::BadWeight(c.weight));
        }
        self.constraints.push(c);
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

    fn residual(&self, c: &Constraint<T>, nodes: &[T]) -> Vec<f64> {
        T::edge_residual(&c.a_from_b, &nodes[c.a], &nodes[c.b])
    }

    /// Weighted sum of squared residuals.
    pub fn cost(&self) -> f64 {
        self.cost_of(&self.nodes)
    }

    fn cost_of(&self, nodes: &[T]) -> f64 {
        self.constraints
            .iter()
            .map(|c| c.weight * self.residual(c, nodes).iter().map(|r| r * r).sum::<f64>())
            .sum()
    }

    /// Unweighted residual norm per constraint.
    pub fn edge_residuals(&self) -> Vec<f64> {
        self.constraints
            .iter()
            .map(|c| {
                self.residual(c, &self.nodes)
                    .iter()
                    .map(|r| r * r)
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    }

    /// Levenberg–Marquardt with node 0 fixed.
    pub fn optimize(&mut self, config: &LmConfig) -> LmReport {
        let initial_cost = self.cost();
        let dof = T::DOF;
        let dim = self.nodes.len().saturating_sub(1) * dof;
        let mut cost = initial_cost;
        let mut lambda = config.initial_lambda;
        let mut iterations = 0;
        while iterations < config.max_iterations && dim > 0 && cost > 0.0 {
            iterations += 1;
            let (h, g) = self.normal_equations();
            let mut improved = false;
            for _ in 0..10 {
                let mut damped = h.clone();
                for i in 0..dim {
                    damped[i * dim + i] += lambda * (h[i * dim + i] + 1e-9);
                }
                let rhs: Vec<f64> = g.iter().map(|v| -v).collect();
                let Some(step) = crate::linalg::solve_spd(&mut damped, &rhs, dim) else {
                    lambda *= 10.0;
                    continue;
                };
                let candidate: Vec<T> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        if i == 0 {
                            *n
                        } else {
                            n.retract(&step[(i - 1) * dof..i * dof])
                        }
                    })
                    .collect();
                let new_cost = self.cost_of(&candidate);
                if new_cost.is_finite() && new_cost < cost {
                    let rel = (cost - new_cost) / cost.max(1e-300);
                    self.nodes = candidate;
                    cost = new_cost;
                    lambda = (lambda / 3.0).max(1e-12);
                    improved = rel > config.tolerance;
                    break;
                }
                lambda *= 4.0;
            }
            if !improved {
                break;
            }
        }
        LmReport {
            iterations,
            initial_cost,
            final_cost: cost,
            edge_residuals: self.edge_residuals(),
        }
    }

    /// `Jᵀ W J` (row-major `dim x dim`) and `Jᵀ W r` over the free nodes, with central-difference
    /// Jacobians.
    fn normal_equations(&self) -> (Vec<f64>, Vec<f64>) {
        let dof = T::DOF;
        let dim = self.nodes.len().saturating_sub(1) * dof;
        let mut h = vec![0.0; dim * dim];
        let mut g = vec![0.0; dim];
        let eps = 1e-6;
        for c in &self.constraints {
            let (na, nb) = (self.nodes[c.a], self.nodes[c.b]);
            let r0 = T::edge_residual(&c.a_from_b, &na, &nb);
            let m = r0.len();
            // Column-major Jacobian blocks: jac[k * m + row].
            let mut blocks: Vec<(usize, Vec<f64>)> = Vec::with_capacity(2);
            for node in [c.a, c.b] {
                if node == 0 || blocks.iter().any(|(n, _)| *n == node) {
                    continue;
                }
                let mut jac = vec![0.0; m * dof];
                let mut d = vec![0.0; dof];
                for k in 0..dof {
                    let mut eval = |delta: f64| {
                        d[k] = delta;
                        let moved = self.nodes[node].retract(&d);
                        d[k] = 0.0;
                        let a = if c.a == node { moved } else { na };
                        let b = if c.b == node { moved } else { nb };
                        T::edge_residual(&c.a_from_b, &a, &b)
                    };
                    let rp = eval(eps);
                    let rm = eval(-eps);
                    for row in 0..m {
                        jac[k * m + row] = (rp[row] - rm[row]) / (2.0 * eps);
                    }
                }
                blocks.push((node, jac));
            }
            for (ni, ji) in &blocks {
                let oi = (ni - 1) * dof;
                for k in 0..dof {
                    let col = &ji[k * m..(k + 1) * m];
                    g[oi + k] += c.weight * col.iter().zip(&r0).map(|(a, b)| a * b).sum::<f64>();
                }
                for (nj, jj) in &blocks {
                    let oj = (nj - 1) * dof;
                    for k in 0..dof {
                        let col_k = &ji[k * m..(k + 1) * m];
                        for l in 0..dof {
                            let col_l = &jj[l * m..(l + 1) * m];
                            h[(oi + k) * dim + oj + l] +=
                                c.weight * col_k.iter().zip(col_l).map(|(a, b)| a * b).sum::<f64>();
                        }
                    }
                }
            }
        }
        (h, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::projective_tilt;
    use nalgebra::{UnitQuaternion, Vector3};

    /// A square-ish loop of `n` submaps with a true relative motion per step.
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
                .add_constraint(Constraint {
                    a: i - 1,
                    b: i,
                    a_from_b: meas,
                    weight: 1.0,
                    kind: ConstraintKind::Sequential,
                })
                .expect("edge");
        }
        graph
            .add_constraint(Constraint {
                a: 0,
                b: n - 1,
                a_from_b: inverse(&truth[0]) * truth[n - 1],
                weight: 10.0,
                kind: ConstraintKind::Loop,
            })
            .expect("edge");
        graph
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
        let err = |g: &PoseGraph<Sim3>| -> f64 {
            g.nodes()
                .iter()
                .zip(&truth)
                .map(|(e, t)| (e.translation - t.translation).norm())
                .fold(0.0, f64::max)
        };
        let before = err(&graph);
        let report = graph.optimize(&LmConfig::default());
        let after = err(&graph);
        assert!(report.final_cost < 0.05 * report.initial_cost, "{report:?}");
        assert!(
            after < 0.5 * before,
            "max position error {before} -> {after}"
        );
        assert_eq!(report.edge_residuals.len(), n);
        assert!(graph.nodes()[0] == Sim3::identity(), "node 0 is fixed");
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
                .add_constraint(Constraint {
                    a: i - 1,
                    b: i,
                    a_from_b: meas,
                    weight: 1.0,
                    kind: ConstraintKind::Sequential,
                })
                .expect("edge");
        }
        let report = graph.optimize(&LmConfig::default());
        assert!(report.initial_cost < 1e-20 && report.final_cost < 1e-20);
        assert!(graph
            .add_constraint(Constraint {
                a: 0,
                b: 9,
                a_from_b: Sim3::identity(),
                weight: 1.0,
                kind: ConstraintKind::Loop
            })
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
}
