//! Geometry back-end of vggtd: keyframes, covisibility, submap alignment, loop closure, pose
//! graph, global map and trajectory evaluation. No model, no threads, no viewer: predictions come
//! in through [`prediction::Predictor`].

pub mod prediction;
