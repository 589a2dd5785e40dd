//! The whole VGGT model: aggregator, camera head, depth head, point head.
//!
//! `forward` keeps only the aggregator layers the heads read and runs the heads one after
//! another, so the peak holds one head's activations at a time; each layer is released as soon as
//! the last head reading it is done. The DPT heads run over chunks of frames
//! ([`Vggt::set_dpt_frames_chunk`], chosen by [`crate::planner`]). [`Vggt::forward_profiled`]
//! is the same computation with a memory/time row at every phase boundary. The track head is not
//! ported.
//!
//! # Precision
//! The aggregator computes in its parameters' dtype and the heads in theirs
//! ([`crate::Precision`]): with a bf16 aggregator and float32 heads (upstream's
//! autocast arrangement) the kept layers stay bf16 and each head reads them cast to float32: the
//! camera head its one layer, the DPT heads one frame chunk at a time.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, Tensor};

use crate::aggregator::{Aggregator, AggregatorOptions, AggregatorStage};
use crate::camera_head::CameraHead;
use crate::config::VggtConfig;
use crate::dpt_head::DptHead;
use crate::geometry::pose_encoding_to_extri_intri;
use crate::memory::PhaseRecorder;
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
    /// Choose the sparse-attention neighbours from the window's own DINO tokens
    /// ([`crate::descriptor`]) after the patch embedding and before the first global block.
    /// Ignored when `neighbours` is given.
    pub feature_neighbours: Option<FeatureNeighbours>,
}

/// How [`ForwardOptions::feature_neighbours`] picks each frame's neighbours: the frames within
/// `temporal_radius`, the mutual `k` nearest by descriptor cosine similarity at or above
/// `min_similarity`, and the pairs that keep the graph connected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureNeighbours {
    /// Nearest neighbours by descriptor similarity.
    pub k: usize,
    /// Cosine similarity below which a pair is never a neighbour (unless it joins components).
    pub min_similarity: f32,
    /// Frames this close in the window are always neighbours.
    pub temporal_radius: usize,
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

    /// Float dtype the heads compute in (that of their parameters); the aggregator's is
    /// [`Aggregator::dtype`]. Outputs have this dtype.
    pub fn heads_dtype(&self) -> DType {
        self.camera_head.empty_pose_tokens.val().dtype()
    }

    /// Frames per DPT chunk of the depth and point heads (results do not depend on it).
    pub fn dpt_frames_chunk(&self) -> usize {
        self.depth_head.frames_chunk_size()
    }

    /// Sets the frames per DPT chunk of both dense heads (clamped to at least 1).
    pub fn set_dpt_frames_chunk(&mut self, frames: usize) {
        self.depth_head.set_frames_chunk_size(frames);
        self.point_head.set_frames_chunk_size(frames);
    }

    /// Runs the model on `images` `[B, S, 3, H, W]`, RGB in `[0, 1]` (not normalised), H and W
    /// multiples of the patch size.
    pub fn forward(
        &self,
        images: Tensor<B, 5>,
        options: &ForwardOptions,
    ) -> Result<VggtOutput<B>, ModelError> {
        self.forward_with(images, options, &mut |_| {})
    }

    /// [`Self::forward`] with a row in `recorder` at every phase boundary: `patch_embed`
    /// (ImageNet normalisation + DINO), `aggregator.layer_NN` for each frame + global block pair
    /// run (two-digit index; pairs after the last layer a head reads are skipped and have no
    /// row), `camera_head` (including the download of requested intermediates), `depth_head`,
    /// `point_head` (absent with `skip_point_head`). The device is synchronised before each row,
    /// so times are the phase's own. Outputs are identical to [`Self::forward`]'s.
    pub fn forward_profiled(
        &self,
        images: Tensor<B, 5>,
        options: &ForwardOptions,
        recorder: &mut PhaseRecorder,
    ) -> Result<VggtOutput<B>, ModelError> {
        let device = images.device();
        recorder.restart();
        self.forward_with(images, options, &mut |phase| {
            // A failed sync resurfaces on the next read of a tensor; the row is still useful.
            let _ = B::sync(&device);
            recorder.end(phase);
        })
    }

    /// The forward pass; `boundary(phase)` is called after each phase.
    fn forward_with(
        &self,
        images: Tensor<B, 5>,
        options: &ForwardOptions,
        boundary: &mut dyn FnMut(&str),
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

        let mut aggregator_options = AggregatorOptions {
            keep_layers,
            neighbours: options.neighbours.clone(),
            record_intermediates: options.record_intermediates,
        };
        let mut on_stage = |stage| match stage {
            AggregatorStage::PatchEmbed => boundary("patch_embed"),
            AggregatorStage::Layer(index) => boundary(&format!("aggregator.layer_{index:02}")),
        };
        let aggregated = match (&options.neighbours, options.feature_neighbours) {
            (None, Some(rule)) => {
                let embedded = self
                    .aggregator
                    .embed(images, options.record_intermediates)?;
                on_stage(AggregatorStage::PatchEmbed);
                aggregator_options.neighbours = Some(neighbours_from_tokens(&embedded, rule)?);
                self.aggregator.forward_embedded_with(
                    embedded,
                    &aggregator_options,
                    &mut on_stage,
                )?
            }
            _ => self
                .aggregator
                .forward_with(images, &aggregator_options, &mut on_stage)?,
        };
        let mut intermediates = BTreeMap::new();
        if options.record_intermediates {
            for (index, tensor) in &aggregated.layers {
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
        let mut layers = aggregated.layers;
        drop(aggregated.patch_tokens);
        drop(aggregated.intermediates);

        let dtype = self.heads_dtype();
        let pose_enc_list = self.camera_head.forward(layer(&layers, last_layer, dtype));
        let pose_enc = pose_enc_list
            .last()
            .cloned()
            .expect("config validation requires >= 1 iteration");
        let point_reads: &[[usize; 4]] = if options.skip_point_head {
            &[]
        } else {
            std::slice::from_ref(&point_layers)
        };
        release_unread(&mut layers, &[&[depth_layers], point_reads].concat());
        boundary("camera_head");

        // The DPT heads cast each frame chunk of the layers to their dtype themselves.
        let depth_out = self.depth_head.forward(
            &depth_layers.map(|i| kept(&layers, i)),
            (height, width),
            patch_start_idx,
        );
        release_unread(&mut layers, point_reads);
        boundary("depth_head");
        let (world_points, world_points_conf) = if options.skip_point_head {
            (None, None)
        } else {
            let points_out = self.point_head.forward(
                &point_layers.map(|i| kept(&layers, i)),
                (height, width),
                patch_start_idx,
            );
            layers.clear();
            boundary("point_head");
            (Some(points_out.pred), Some(points_out.conf))
        };
        drop(layers);

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

/// The kept aggregator layer `index` in `dtype` (a no-op when it already has it). Every index a
/// head reads is kept by `forward`: a missing one is a bug.
fn layer<B: Backend>(
    layers: &BTreeMap<usize, Tensor<B, 4>>,
    index: usize,
    dtype: DType,
) -> Tensor<B, 4> {
    layers
        .get(&index)
        .cloned()
        .expect("aggregator keeps every layer a head reads")
        .cast(dtype)
}

/// The kept aggregator layer `index` in its own dtype.
fn kept<B: Backend>(layers: &BTreeMap<usize, Tensor<B, 4>>, index: usize) -> Tensor<B, 4> {
    layers
        .get(&index)
        .cloned()
        .expect("aggregator keeps every layer a head reads")
}

/// Drops the layers that no head still to run reads, so that they are not resident while it runs.
fn release_unread<B: Backend>(
    layers: &mut BTreeMap<usize, Tensor<B, 4>>,
    still_read: &[[usize; 4]],
) {
    layers.retain(|index, _| still_read.iter().any(|read| read.contains(index)));
}

/// Neighbour lists of every batch element's frames from its DINO tokens; with a batch of more
/// than one sequence the lists of the first are used for all (the daemon runs one window).
fn neighbours_from_tokens<B: Backend>(
    embedded: &crate::aggregator::Embedded<B>,
    rule: FeatureNeighbours,
) -> Result<Vec<Vec<usize>>, ModelError> {
    let frames = embedded.frames();
    let tokens = embedded.patch_tokens().clone();
    let [_, patches, channels] = tokens.dims();
    let first_sequence = tokens.slice([0..frames, 0..patches, 0..channels]);
    let descriptors = crate::descriptor::frame_descriptors(first_sequence);
    crate::descriptor::neighbours_from_descriptors(
        &descriptors,
        rule.k,
        rule.min_similarity,
        rule.temporal_radius,
    )
    .map_err(ModelError::from)
}
