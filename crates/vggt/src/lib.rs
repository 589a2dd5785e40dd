//! VGGT (Visual Geometry Grounded Transformer) in burn.
//!
//! Images in, cameras + depth + point maps out. This crate is the model only: configuration,
//! modules whose parameter paths spell the upstream checkpoint keys, checkpoint loading, image
//! preprocessing and memory-bounded execution. It knows nothing of keyframes, submaps, threads or
//! viewers; sparse global attention takes plain per-frame neighbour lists.
//!
//! Port of the PyTorch reference `facebookresearch/vggt` at commit `44b3afb` (model package last
//! changed in `d3434b3`).
//!
//! # Shapes
//! Tensor shapes are written with named axes: B batch, S frames, P tokens per frame
//! (1 camera + R registers + h*w patches), C channels, H x W pixels, h x w patches (H/14, W/14).
//!
//! # Conventions
//! Extrinsics are camera-from-world `[R | t]` with OpenCV camera axes (x right, y down,
//! z forward); the world frame of a prediction is the first frame's camera.

pub mod config;
pub mod tensor_io;

pub mod aggregator;
pub mod descriptor;
pub mod dino;
pub mod layers;
pub mod rope;

pub mod camera_head;
pub mod dpt_head;
pub mod geometry;

pub mod checkpoint;
pub mod cpu;
pub mod device;
pub mod memory;
pub mod model;
pub mod parity;
pub mod planner;
pub mod precision;
pub mod preprocess;

pub use aggregator::ModelError;
pub use config::VggtConfig;
pub use device::{dispatch, Device, DeviceError, DeviceInfo, OnBackend};
pub use model::{ForwardOptions, Vggt, VggtOutput};
pub use precision::Precision;
