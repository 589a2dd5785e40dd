//! `vggt-run`: one VGGT forward pass on a parity-fixture style input file.
//!
//! Reads a model `config.json`, upstream weights (`.safetensors` or PyTorch `.pt`, recognised by
//! content) and an `inputs.safetensors` holding `images` (`[S, 3, H, W]` or `[B, S, 3, H, W]`, RGB
//! in `[0, 1]`) and optionally `frame_mask` (`[S, S]`, 1 = frame i may attend to frame j in global
//! attention, diagonal 1), and writes every output under the fixtures' `outputs.safetensors`
//! names: `pose_enc`, `pose_enc_list` (stacked on axis 0), `depth`, `depth_conf`, `world_points`,
//! `world_points_conf`, `extrinsic`, `intrinsic`, `world_points_from_depth` and the recorded
//! intermediates (`aggregator.layer_NN`, `dino.patch_tokens`, ...).
//!
//! ```text
//! vggt-run --config tiny_a/config.json --weights tiny_a/weights.safetensors \
//!          --inputs tiny_a/inputs.safetensors --output out.safetensors [--precision bf16] \
//!          [--device cpu|cuda[:N]|wgpu[:N]]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use clap::Parser;
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::geometry::unproject_depth_map_to_point_map;
use vggt::model::{ForwardOptions, Vggt};
use vggt::tensor_io::{read_tensors, take, write_tensors, HostTensor};
use vggt::{Device, DeviceInfo, OnBackend, Precision, VggtConfig};

/// Runs VGGT on fixture-format inputs and writes all outputs to a safetensors file.
#[derive(Debug, Parser)]
#[command(name = "vggt-run", version, about)]
struct Args {
    /// Model configuration (`config.json` of the fixtures, or of VGGT-1B).
    #[arg(long)]
    config: PathBuf,
    /// Upstream weights: `model.safetensors` or PyTorch `model.pt` (format read from the content).
    #[arg(long)]
    weights: PathBuf,
    /// Inputs: `images` [S,3,H,W] or [B,S,3,H,W] in [0,1], optional `frame_mask` [S,S].
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    output: PathBuf,
    /// Precision: `bf16` / `f16` run the aggregator in that type and the heads in float32, as
    /// upstream's autocast does.
    #[arg(long, alias = "dtype", value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Where to run: cpu, cuda[:N] or wgpu[:N] (see `vggt::device`).
    #[arg(long, default_value_t = Device::Cpu)]
    device: Device,
}

/// Validated inputs: images `[B, S, 3, H, W]` and optional neighbour lists.
struct Inputs {
    images: HostTensor,
    neighbours: Option<Vec<Vec<usize>>>,
}

fn main() -> Result<()> {
    vggt::memory::keep_large_allocations();
    let args = Args::parse();
    vggt::dispatch(args.device, args.precision, Run(&args))?
}

/// The run on whichever backend `--device` names.
struct Run<'a>(&'a Args);

impl OnBackend for Run<'_> {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) -> Result<()> {
        eprintln!("device {}", info.name);
        for line in &info.details {
            eprintln!("  {line}");
        }
        run::<B>(self.0, device)
    }
}

fn run<B: Backend>(args: &Args, device: B::Device) -> Result<()> {
    let config = VggtConfig::from_json_file(&args.config)?;
    let inputs = read_inputs(&args.inputs, config.patch_size)?;
    let precision = args.precision;

    let started = Instant::now();
    let model = load_into(
        Vggt::<B>::new(&config, &device),
        &args.weights,
        &LoadOptions::for_precision(precision),
    )?;
    eprintln!(
        "loaded {} in {:.2?}",
        args.weights.display(),
        started.elapsed()
    );

    let started = Instant::now();
    let images: Tensor<B, 5> = inputs.images.to_burn(&device);
    let options = ForwardOptions {
        neighbours: inputs.neighbours,
        record_intermediates: true,
        ..Default::default()
    };
    let output = model.forward(images, &options).context("forward pass")?;
    eprintln!("forward pass in {:.2?}", started.elapsed());

    let mut tensors: BTreeMap<String, HostTensor> = output.intermediates;
    let [batch, frames, height, width, _] = output.depth.dims();
    let depth = HostTensor::from_burn(output.depth);
    let extrinsic = HostTensor::from_burn(output.extrinsic);
    let intrinsic = HostTensor::from_burn(output.intrinsic);
    let points = unproject_depth_map_to_point_map(
        &depth.to_f32_vec(),
        &extrinsic.to_f32_vec(),
        &intrinsic.to_f32_vec(),
        batch * frames,
        height,
        width,
    );
    // Upstream unprojects the batch-squeezed arrays: [S, H, W, 3] for a batch of one.
    let points_shape = if batch == 1 {
        vec![frames, height, width, 3]
    } else {
        vec![batch, frames, height, width, 3]
    };
    tensors.insert(
        "world_points_from_depth".into(),
        HostTensor::f32(points_shape, points),
    );
    tensors.insert("depth".into(), depth);
    tensors.insert("extrinsic".into(), extrinsic);
    tensors.insert("intrinsic".into(), intrinsic);
    tensors.insert(
        "depth_conf".into(),
        HostTensor::from_burn(output.depth_conf),
    );
    tensors.insert("pose_enc".into(), HostTensor::from_burn(output.pose_enc));
    tensors.insert(
        "pose_enc_list".into(),
        HostTensor::from_burn(Tensor::stack::<4>(output.pose_enc_list, 0)),
    );
    if let Some(points) = output.world_points {
        tensors.insert("world_points".into(), HostTensor::from_burn(points));
    }
    if let Some(conf) = output.world_points_conf {
        tensors.insert("world_points_conf".into(), HostTensor::from_burn(conf));
    }
    write_tensors(&args.output, tensors.iter().map(|(k, v)| (k.as_str(), v)))?;
    eprintln!(
        "wrote {} tensors to {}",
        tensors.len(),
        args.output.display()
    );
    Ok(())
}

/// Reads and checks `images` and `frame_mask`, before any weight is loaded.
fn read_inputs(path: &Path, patch_size: usize) -> Result<Inputs> {
    let mut tensors = read_tensors(path)?;
    let mut images = take(&mut tensors, "images", path)?;
    if images.shape.len() == 4 {
        images.shape.insert(0, 1);
    }
    let &[batch, frames, channels, height, width] = images.shape.as_slice() else {
        bail!(
            "{}: `images` must be [S, 3, H, W] or [B, S, 3, H, W], got {:?}",
            path.display(),
            images.shape
        );
    };
    ensure!(
        batch > 0 && frames > 0,
        "{}: `images` {:?} is empty",
        path.display(),
        images.shape
    );
    ensure!(
        channels == 3,
        "{}: `images` must have 3 channels, got {:?}",
        path.display(),
        images.shape
    );
    ensure!(
        height > 0 && width > 0 && height % patch_size == 0 && width % patch_size == 0,
        "{}: image size {height}x{width} (HxW) is not a positive multiple of the patch size {patch_size}",
        path.display()
    );
    let neighbours = tensors
        .remove("frame_mask")
        .map(|mask| mask_to_neighbours(&mask, frames))
        .transpose()
        .with_context(|| format!("{}: bad `frame_mask`", path.display()))?;
    Ok(Inputs { images, neighbours })
}

/// `[S, S]` covisibility mask -> per-frame neighbour lists (frame i attends `lists[i]`).
fn mask_to_neighbours(mask: &HostTensor, frames: usize) -> Result<Vec<Vec<usize>>> {
    ensure!(
        mask.shape == [frames, frames],
        "shape {:?} should be [{frames}, {frames}]",
        mask.shape
    );
    let values = mask.to_f32_vec();
    (0..frames)
        .map(|i| {
            let row = &values[i * frames..(i + 1) * frames];
            ensure!(
                row[i] != 0.0,
                "frame {i} must attend to itself (diagonal entry is 0)"
            );
            Ok((0..frames).filter(|&j| row[j] != 0.0).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_rows_become_neighbour_lists() {
        let mask = HostTensor::f32(
            vec![3, 3],
            vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        );
        assert_eq!(
            mask_to_neighbours(&mask, 3).expect("valid"),
            vec![vec![0, 1], vec![0, 1, 2], vec![1, 2]]
        );
    }

    #[test]
    fn bad_masks_are_rejected() {
        let no_diagonal = HostTensor::f32(vec![2, 2], vec![1.0, 1.0, 1.0, 0.0]);
        assert!(mask_to_neighbours(&no_diagonal, 2)
            .unwrap_err()
            .to_string()
            .contains("frame 1"));
        let wrong_shape = HostTensor::f32(vec![2, 2], vec![1.0; 4]);
        assert!(mask_to_neighbours(&wrong_shape, 3).is_err());
    }

    #[test]
    fn arguments_parse_and_reject_unknown_values() {
        let args = Args::try_parse_from([
            "vggt-run",
            "--config",
            "c.json",
            "--weights",
            "w.pt",
            "--inputs",
            "i",
            "--output",
            "o",
            "--dtype",
            "bf16",
        ])
        .expect("valid arguments");
        assert_eq!(
            (args.precision, args.device),
            (Precision::Bf16, Device::Cpu)
        );
        assert!(
            Args::try_parse_from(["vggt-run", "--config", "c.json"]).is_err(),
            "missing required arguments"
        );
        assert!(Args::try_parse_from([
            "vggt-run",
            "--config",
            "c",
            "--weights",
            "w",
            "--inputs",
            "i",
            "--output",
            "o",
            "--dtype",
            "f64",
        ])
        .is_err());
    }
}
