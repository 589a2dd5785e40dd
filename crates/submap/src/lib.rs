//! Geometry back-end of vggtd: keyframes, covisibility, submap alignment, loop closure, pose
//! graph, global map and trajectory evaluation. No model, no threads, no viewer: predictions come
//! in through [`prediction::Predictor`].
//!
//! Conventions: cameras use OpenCV axes (x right, y down, z forward); transforms are named
//! `b_from_a` and map points of frame `a` into frame `b`; camera poses are `world_from_cam`.
//!
//! | module | job |
//! |---|---|
//! | [`prediction`] | contract between predictors and the back-end |
//! | [`keyframe`] | keyframe selection on pixels (flow, blur, duplicates, time gaps) |
//! | [`window`] | windows of N keyframes overlapping by K, assembled around failures |
//! | [`lie`], [`align`] | Sim(3) / SL(4) transforms and robust weighted estimation |
//! | [`covis`] | covisibility graph (petgraph), attention neighbour lists, retrieval |
//! | [`pose_graph`] | Levenberg–Marquardt with robust kernels over keyframe nodes |
//! | [`map`] | global map, voxel downsampling, binary PLY |
//! | [`colmap`] | binary COLMAP model of the map (cameras, keyframe images, points) |
//! | [`backend`] | keyframe pose graph: windows and loops in, trajectory and map out |
//! | [`mapper`] | the one synchronous core: keyframes in, prediction requests out, answers in |
//! | [`session`] | keyframe selection + core + predictor in one loop (tests, offline runs) |
//! | [`eval`], [`tum`] | APE / RPE like `evo`, TUM trajectory files |
#![deny(missing_docs)]

pub mod align;
pub mod backend;
pub mod colmap;
pub mod covis;
pub mod eval;
pub mod io;
pub mod keyframe;
pub mod lie;
mod linalg;
pub mod map;
pub mod mapper;
pub mod pose_graph;
pub mod prediction;
mod serde_secs;
pub mod session;
pub mod tum;
pub mod window;
