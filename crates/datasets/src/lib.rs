//! Datasets for vggtd: readers for TUM RGB-D, 7-Scenes and EuRoC layouts that produce a common
//! [`Sequence`], a synthetic scene renderer ([`synth`]) that writes TUM-layout datasets along any
//! trajectory (with [`paths`]: camera paths that leave and come back), and a **simulated** predictor ([`sim::SimulatedPredictor`]) that answers windows
//! with ground truth in a random gauge plus noise, so the back-end can be tested without a model.
//!
//! Poses are camera-to-world (`world_from_cam`), OpenCV camera axes, metres, seconds.
#![deny(missing_docs)]

pub mod error;
pub mod euroc;
pub mod harness;
pub mod paths;
pub mod sequence;
pub mod seven_scenes;
pub mod sim;
pub mod synth;
pub mod tum;

pub use error::DatasetError;
pub use sequence::{Sequence, SequenceFrame};
