//! vggtd, the streaming 3-D reconstruction daemon: sources, stage threads, predictors (VGGT,
//! simulated, replay), rerun live view, outputs and configuration.
//!
//! # Scope
//! This crate is the only one that sees the model (`vggt`), the geometry back-end (`submap`),
//! the viewer, the configuration files and the threads. The model knows nothing of keyframes and
//! the back-end nothing of burn or rerun.
//!
//! # Conventions
//! Poses are named `b_from_a`; keyframe poses are `world_from_cam` (camera-to-world) with OpenCV
//! camera axes (x right, y down, z forward). Times are seconds (`timestamp_s`).
#![deny(missing_docs)]

pub mod backend;
pub mod budget;
pub mod config;
pub mod fetch;
pub mod intrinsics;
pub mod outputs;
pub mod pose_stream;
pub mod predictors;
pub mod record;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod ros_msgs;
pub mod run;
pub mod sinks;
pub mod source;
pub mod stages;
pub mod staging;
pub mod vggt_predictor;
pub mod viz;
