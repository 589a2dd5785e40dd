//! The whole VGGT model: aggregator, camera head, depth head, point head.
//!
//! `forward` keeps only the aggregator layers the heads read and runs the heads one after
//! another, so the peak holds one head's activations at a time. The track head is not ported.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use crate::aggregator::{Aggregator, AggregatorOptions};
use crate::camera_head::CameraHead;
use crate::config::VggtConfig;
use crate::dpt_head::DptHead;
use crate::geometry::pose_encoding_to_extri_intri;
use crate::tensor_io::HostTensor;
use crate::ModelError;

/// VGGT: images in, cameras, depth and point maps out. Field names are the upstream
/// checkpoint's top-level keys.
#[derive(Module, Debug)]
pub struct Vggt<B: Backend> {
    /// DINO patch embedding + alternating frame/global attention.
    pub aggregator: Aggregator<B>,
    /// Camera pose and field of view per frame.
    pub camera_head: CameraHead<B>,
    /// Depth + confidence per pixel.
    pub depth_head: DptHead<B>,
    /// World points (in frame 0's camera) + confidence per pixel.
    pub point_head: DptHead<B>,
    /// Which aggregator layers each head reads (not a parameter).
    #[module(skip)]
    layout: HeadLayout,
}

/// Aggregator layers read by the heads.
#[derive(Debug, Clone)]
struct HeadLayout {
    depth_layers: [usize; 4],
    point_layers: [usize; 4],
    camera_layer: usize,
}

/// What a forward pass computes besides the always-present outputs.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// Per-frame neighbour lists for sparse global attention (frame `i` attends `neighbours[i]`,
    /// which must contain `i`); `None` is dense attention.
    pub neighbours: Option<Vec<Vec<usize>>>,
    /// Download the intermediates the parity fixtures name (`aggregator.layer_NN`,
    /// `dino.patch_tokens`, ...) into [`VggtOutput::intermediates`].
    pub record_intermediates: bool,
    /// Skip the point head (the daemon unprojects depth instead, as upstream recommends).
    pub skip_point_head: bool,
}

/// Outputs of [`Vggt::forward`].
#[derive(Debug, Clone)]
pub struct VggtOutput<B: Backend> {
    /// Pose encoding of the last refinement iteration, `[B, S, 9]`
    /// (`tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w`, camera-from-world).
    pub pose_enc: Tensor<B, 3>,
    /// Pose encoding of every refinement iteration, each `[B, S, 9]`.
    pub pose_enc_list: Vec<Tensor<B, 3>>,
    /// Depth, `[B, S, H, W, 1]`.
    pub depth: Tensor<B, 5>,
    /// Depth confidence (`1 + exp`), `[B, S, H, W]`.
    pub depth_conf: Tensor<B, 4>,
    /// Point map in frame 0's camera frame, `[B, S, H, W, 3]` (absent with `skip_point_head`).
    pub world_points: Option<Tensor<B, 5>>,
    /// Point confidence, `[B, S, H, W]` (absent with `skip_point_head`).
    pub world_points_conf: Option<Tensor<B, 4>>,
    /// Camera-from-world `[R | t]`, OpenCV axes, `[B, S, 3, 4]`.
    pub extrinsic: Tensor<B, 4>,
    /// Pinhole intrinsics at the input resolution, `[B, S, 3, 3]`.
    pub intrinsic: Tensor<B, 4>,
    /// Fixture-named intermediates, when requested.
    pub intermediates: BTreeMap<String, HostTensor>,
}

impl<B: Backend> Vggt<B> {
    /// Builds the model with freshly initialised (lazy) parameters; load weights with
    /// [`crate::checkpoint`].
    pub fn new(config: &VggtConfig, device: &B::Device) -> Self {
        Self {
            aggregator: Aggregator::new(config, device),
            camera_head: CameraHead::new(&config.camera_head, device),
            depth_head: DptHead::new(&config.depth_head, device),
            point_head: DptHead::new(&config.point_head, device),
            layout: HeadLayout {
                depth_layers: config.depth_head.intermediate_layer_idx,
                point_layers: config.point_head.intermediate_layer_idx,
                camera_layer: config.aggregator.depth - 1,
            },
        }
    }

    /// Runs the model on `images` `[B, S, 3, H, W]`, RGB in `[0, 1]` (not normalised), H and W
    /// multiples of the patch size.
    pub fn forward(
        &self,
        images: Tensor<B, 5>,
        options: &ForwardOptions,
    ) -> Result<VggtOutput<B>, ModelError> {
        let [_, _, _, height, width] = images.dims();
        let HeadLayout {
            depth_layers,
            point_layers,
            camera_layer: last_layer,
        } = self.layout.clone();

        let mut keep: Vec<usize> = depth_layers.to_vec();
        if !options.skip_point_head {
            keep.extend_from_slice(&point_layers);
        }
        keep.push(last_layer);
        keep.sort_unstable();
        keep.dedup();
        let keep_layers = if options.record_intermediates {
            None
        } else {
            Some(keep)
        };

        let aggregated = self.aggregator.forward(
            images,
            &AggregatorOptions {
                keep_layers,
                neighbours: options.neighbours.clone(),
                record_intermediates: options.record_intermediates,
            },
        )?;
        let layers = &aggregated.layers;
        // Every index used below was put in `keep` above: a missing one is a bug.
        let layer = |index: usize| -> Tensor<B, 4> {
            layers
                .get(&index)
                .cloned()
                .expect("aggregator keeps every layer a head reads")
        };
        let pick = |indices: [usize; 4]| indices.map(layer);

        let mut intermediates = BTreeMap::new();
        if options.record_intermediates {
            for (index, tensor) in layers {
                intermediates.insert(
                    format!("aggregator.layer_{index:02}"),
                    HostTensor::from_burn(tensor.clone()),
                );
            }
            intermediates.insert(
                "dino.patch_tokens".to_string(),
                HostTensor::from_burn(aggregated.patch_tokens.clone()),
            );
            for (name, tensor) in &aggregated.intermediates {
                intermediates.insert(name.clone(), HostTensor::from_burn(tensor.clone()));
            }
        }
        let patch_start_idx = aggregated.patch_start_idx;

        let pose_enc_list = self.camera_head.forward(layer(last_layer));
        let pose_enc = pose_enc_list
            .last()
            .cloned()
            .expect("config validation requires >= 1 iteration");

        let depth_out =
            self.depth_head
                .forward(&pick(depth_layers), (height, width), patch_start_idx);
        let (world_points, world_points_conf) = if options.skip_point_head {
            (None, None)
        } else {
            let points_out =
                self.point_head
                    .forward(&pick(point_layers), (height, width), patch_start_idx);
            (Some(points_out.pred), Some(points_out.conf))
        };
        drop(aggregated);

        let (extrinsic, intrinsic) =
            pose_encoding_to_extri_intri(pose_enc.clone(), (height, width));
        Ok(VggtOutput {
            pose_enc,
            pose_enc_list,
            depth: depth_out.pred,
            depth_conf: depth_out.conf,
            world_points,
            world_points_conf,
            extrinsic,
            intrinsic,
            intermediates,
        })
    }
}
