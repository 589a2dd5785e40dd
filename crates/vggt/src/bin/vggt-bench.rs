//! `vggt-bench`: timings and memory of VGGT forward passes on any device (`--device cpu`,
//! `cuda[:N]`, `wgpu[:N]`, through `vggt::dispatch`).
//!
//! ```text
//! vggt-bench sweep   --config fixtures/tiny_a/config.json --height 56 --width 84 \
//!                    --frames 8,16,32,64,128 --neighbours 8 [--runs 3] [--device wgpu]
//! vggt-bench phases  --config vggt1b --frames 1 --height 392 --width 518 [--runs 3]
//! vggt-bench windows --config vggt1b --height 392 --width 518 --frames 16 --precision bf16 \
//!                    [--neighbours 8] [--windows 2] --device cuda [--json-line runs.jsonl]
//! vggt-bench parity  --fixture fixtures/tiny_a --device wgpu [--json-line runs.jsonl]
//! vggt-bench report  --input runs.jsonl --json report.json --markdown report.md
//! vggt-bench plan    --config vggt1b --budget-gib 8 --height 392 --width 518 --precision bf16
//! vggt-bench ops     [--tokens 1041] [--frames 1] [--runs 5]
//! vggt-bench global  --frames 8,16,32,64 --neighbours 8 [--tokens 1041] [--runs 1] [--json]
//! ```
//!
//! `sweep`: for each S, dense and sparse global attention (temporal band of k neighbours: frames
//! i-k/2 .. i+k/2-1 shifted to stay inside the sequence, always k of them), median time of
//! `--runs` forwards after one warm-up, the peak above the pre-forward size (host allocator on
//! the CPU, device pools elsewhere), and time(S)/time(S_0). `phases`: per-phase time and peak
//! from the profile rows (DINO = `patch_embed`, aggregator = the `aggregator.layer_NN` rows
//! together, camera, depth, point); prints a JSON line at the end. `windows`: one configuration,
//! a warm-up window (autotuning, lazily initialised weights), the device pools released, then
//! `--windows` profiled windows: per-phase wall time, the device memory pools' peak (reserved:
//! what the device holds; in use: live tensors), the bytes in use after each window against the
//! baseline before it (weights only), and the planner's prediction for the same configuration;
//! one JSON object per run appended to `--json-line`. `parity`: a fixture's whole forward pass
//! on the device against the upstream reference, every tensor with its max abs difference and
//! tolerance. `report`: the JSON lines of `windows` and `parity` runs as one JSON document and a
//! Markdown table. `plan`: the planner's choice and its estimate terms. `ops`: median time of
//! each op of one transformer block at VGGT-1B width (C = 1024, 16 heads, qk-norm, RoPE) over
//! S x P tokens on the CPU, each synced, with the older formulations of the head split/merge and
//! the RoPE swap next to the ones in use. `global`: one global-attention block of VGGT-1B width
//! (C = 1024, 16 heads, qk-norm, RoPE, MLP) over S frames of P tokens on the CPU, dense and
//! sparse with k neighbours per frame, both a temporal band and a covisibility-like graph (the
//! frame itself, its nearest temporal neighbours, the rest drawn at random from the whole
//! sequence as loop revisits would be): median time and the allocator's peak above the input,
//! per S and as ratios; `--json` prints one JSON line per S instead of the table. Weights are random (timing does not depend on values)
//! unless `--weights` is given; a warm-up forward materialises them before anything is timed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use vggt::checkpoint::{cast_to_precision, load_into, LoadOptions};
use vggt::memory::{
    device_probe, host_memory, release_device_memory, reset_peak, CountingAllocator, DeviceMemory,
    PhaseRecorder,
};
use vggt::planner::{estimate, plan_with, PlanOptions};
use vggt::{Device, DeviceInfo, ForwardOptions, OnBackend, Precision, Vggt, VggtConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type Cpu = Flex;
const MIB: f64 = 1024.0 * 1024.0;

/// VGGT benchmarks.
#[derive(Debug, Parser)]
#[command(name = "vggt-bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time and peak memory over window sizes, dense vs sparse global attention.
    Sweep {
        #[command(flatten)]
        model: ModelArgs,
        /// Window sizes S.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128")]
        frames: Vec<usize>,
        /// Neighbours per frame of the sparse runs.
        #[arg(long, default_value_t = 8)]
        neighbours: usize,
        /// Timed runs per point (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Per-phase time and memory of one configuration.
    Phases {
        #[command(flatten)]
        model: ModelArgs,
        /// Frames S.
        #[arg(long, default_value_t = 1)]
        frames: usize,
        /// Timed runs (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Repeated windows of one configuration: per-phase time, device peak, memory after each
    /// window against its baseline, and the planner's prediction.
    Windows {
        #[command(flatten)]
        model: ModelArgs,
        /// Frames S.
        #[arg(long)]
        frames: usize,
        /// Sparse global attention with this many neighbours per frame (temporal band).
        #[arg(long)]
        neighbours: Option<usize>,
        /// Skip the point head (as the daemon does).
        #[arg(long)]
        skip_point_head: bool,
        /// Profiled windows after the warm-up.
        #[arg(long, default_value_t = 2)]
        windows: usize,
        /// Append the result as one JSON object line to this file.
        #[arg(long)]
        json_line: Option<PathBuf>,
    },
    /// A parity fixture's forward pass on the device against the upstream reference.
    Parity {
        /// Fixture directory (`fixtures/tiny_a`, `fixtures/tiny_masked`).
        #[arg(long)]
        fixture: PathBuf,
        /// Weights; default: the fixture's `weights.safetensors`, else `../tiny_a/`'s (shared).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Reference outputs inside the fixture.
        #[arg(long, default_value = "outputs.safetensors")]
        outputs: String,
        /// cpu, cuda[:N] or wgpu[:N].
        #[arg(long, default_value_t = Device::Cpu)]
        device: Device,
        /// Append the result as one JSON object line to this file.
        #[arg(long)]
        json_line: Option<PathBuf>,
    },
    /// JSON lines of `windows` / `parity` runs as one JSON document and a Markdown report.
    Report {
        /// JSON lines files.
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        /// Where to write the JSON document.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Where to write the Markdown report.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// Per-op time of one transformer block at VGGT-1B width (C = 1024, 16 heads, qk-norm, RoPE).
    Ops {
        /// Tokens per frame P (1041 at 392 x 518: 28 x 37 patches + 5 special tokens).
        #[arg(long, default_value_t = 1041)]
        tokens: usize,
        /// Frames S (the sequence is S * P tokens, batch 1).
        #[arg(long, default_value_t = 1)]
        frames: usize,
        /// Timed runs per op (median reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// One global-attention block of VGGT-1B width: dense vs sparse, time and peak memory.
    Global {
        /// Frames S.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
        frames: Vec<usize>,
        /// Neighbours per frame of the sparse runs (the frame itself included).
        #[arg(long, default_value_t = 8)]
        neighbours: usize,
        /// Tokens per frame P (1041 at 392 x 518: 28 x 37 patches + 5 special tokens).
        #[arg(long, default_value_t = 1041)]
        tokens: usize,
        /// Timed runs per point (median reported).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// One JSON object per S on stdout instead of the Markdown table.
        #[arg(long)]
        json: bool,
    },
    /// What the budget planner chooses.
    Plan {
        /// `vggt1b` or a `config.json`.
        #[arg(long, default_value = "vggt1b")]
        config: String,
        /// Budget in GiB.
        #[arg(long)]
        budget_gib: f64,
        /// Image height in pixels.
        #[arg(long, default_value_t = 392)]
        height: usize,
        /// Image width in pixels.
        #[arg(long, default_value_t = 518)]
        width: usize,
        /// Precision of the model.
        #[arg(long, alias = "dtype", value_enum, default_value_t = Precision::F32)]
        precision: Precision,
        /// Device planned for (attention kind, memory pool slack).
        #[arg(long, default_value_t = Device::Cpu)]
        device: Device,
        /// Sparse global attention with this many neighbours.
        #[arg(long)]
        neighbours: Option<usize>,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct ModelArgs {
    /// `vggt1b` (the VGGT-1B shapes) or a `config.json`.
    #[arg(long)]
    config: String,
    /// Upstream weights; random when absent.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Image height in pixels.
    #[arg(long)]
    height: usize,
    /// Image width in pixels.
    #[arg(long)]
    width: usize,
    /// Frames per DPT chunk (the config's when absent).
    #[arg(long)]
    dpt_chunk: Option<usize>,
    /// cpu, cuda[:N] or wgpu[:N].
    #[arg(long, default_value_t = Device::Cpu)]
    device: Device,
    /// Precision of the model: f32, bf16 or f16 (half aggregator, float32 heads).
    #[arg(long, alias = "dtype", value_enum, default_value_t = Precision::F32)]
    precision: Precision,
}

fn main() -> Result<()> {
    vggt::memory::keep_large_allocations();
    match Args::parse().command {
        Command::Sweep {
            model,
            frames,
            neighbours,
            runs,
        } => {
            let (device, precision) = (model.device, model.precision);
            vggt::dispatch(
                device,
                precision,
                Sweep {
                    model,
                    frames,
                    neighbours,
                    runs,
                },
            )?
        }
        Command::Phases {
            model,
            frames,
            runs,
        } => {
            let (device, precision) = (model.device, model.precision);
            vggt::dispatch(
                device,
                precision,
                Phases {
                    model,
                    frames,
                    runs,
                },
            )?
        }
        Command::Windows {
            model,
            frames,
            neighbours,
            skip_point_head,
            windows,
            json_line,
        } => {
            let (device, precision) = (model.device, model.precision);
            let result = vggt::dispatch(
                device,
                precision,
                Windows {
                    model: model.clone(),
                    frames,
                    neighbours,
                    skip_point_head,
                    windows,
                },
            )??;
            print_windows(&result);
            append_json_line(json_line.as_deref(), &result)
        }
        Command::Parity {
            fixture,
            weights,
            outputs,
            device,
            json_line,
        } => {
            let weights = weights.unwrap_or_else(|| default_fixture_weights(&fixture));
            let result = vggt::dispatch(
                device,
                Precision::F32,
                Parity {
                    fixture: fixture.clone(),
                    weights,
                    outputs,
                },
            )??;
            append_json_line(json_line.as_deref(), &result)?;
            if result["pass"] != Value::Bool(true) {
                bail!(
                    "{}: some tensors are over their tolerance",
                    fixture.display()
                );
            }
            Ok(())
        }
        Command::Report {
            input,
            json,
            markdown,
        } => report(&input, json.as_deref(), markdown.as_deref()),
        Command::Ops {
            tokens,
            frames,
            runs,
        } => ops(tokens, frames, runs),
        Command::Global {
            frames,
            neighbours,
            tokens,
            runs,
            json,
        } => global(&frames, neighbours, tokens, runs, json),
        Command::Plan {
            config,
            budget_gib,
            height,
            width,
            precision,
            device,
            neighbours,
        } => {
            let config = load_config(&config)?;
            let budget = (budget_gib * 1024.0 * MIB) as usize;
            let options = PlanOptions {
                neighbours,
                max_window: 4096,
                ..PlanOptions::for_device(device, budget)
            };
            let planned = plan_with(budget, (height, width), precision, &config, &options)?;
            println!("{planned:#?}");
            Ok(())
        }
    }
}

fn load_config(name: &str) -> Result<VggtConfig> {
    if name == "vggt1b" {
        Ok(VggtConfig::vggt_1b())
    } else {
        VggtConfig::from_json_file(name).with_context(|| format!("reading {name}"))
    }
}

/// `DIR/weights.safetensors`, or the `tiny_a` weights that `tiny_masked` shares.
fn default_fixture_weights(fixture: &Path) -> PathBuf {
    let own = fixture.join("weights.safetensors");
    if own.exists() {
        own
    } else {
        fixture.join("../tiny_a/weights.safetensors")
    }
}

fn log_device(info: &DeviceInfo) {
    eprintln!("device {}", info.name);
    for line in &info.details {
        eprintln!("  {line}");
    }
}

fn build_model<B: Backend>(args: &ModelArgs, device: &B::Device) -> Result<Vggt<B>> {
    let config = load_config(&args.config)?;
    let mut model = Vggt::<B>::new(&config, device);
    model = match &args.weights {
        Some(weights) => load_into(model, weights, &LoadOptions::for_precision(args.precision))
            .with_context(|| format!("loading {}", weights.display()))?,
        None => cast_to_precision(model, args.precision),
    };
    if let Some(chunk) = args.dpt_chunk {
        model.set_dpt_frames_chunk(chunk);
    }
    Ok(model)
}

fn random_images<B: Backend>(
    frames: usize,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 5> {
    let count = frames * 3 * height * width;
    let mut state = 0x2545_f491_u32;
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect();
    Tensor::from_data(
        TensorData::new(values, [1, frames, 3, height, width]),
        device,
    )
}

fn live_bytes() -> usize {
    host_memory().map_or(0, |m| m.live_bytes)
}

/// Peak resident set of this process (`VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Temporal band of `k` neighbours per frame, shifted to stay inside the sequence.
fn band_neighbours(frames: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.min(frames);
    (0..frames)
        .map(|i| {
            let start = i.saturating_sub(k / 2).min(frames - k);
            (start..start + k).collect()
        })
        .collect()
}

/// `k` neighbours per frame as a covisibility graph with revisits gives them: the frame itself,
/// its nearest temporal neighbours (half of the list), the others drawn uniformly from the rest
/// of the sequence (fixed seed, so every run attends the same frames).
fn covisibility_neighbours(frames: usize, k: usize) -> Vec<Vec<usize>> {
    let k = k.clamp(1, frames.max(1));
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    (0..frames)
        .map(|i| {
            let mut list = vec![i];
            for step in 1..frames {
                if list.len() >= k.div_ceil(2) {
                    break;
                }
                for j in [i.checked_sub(step), Some(i + step).filter(|&j| j < frames)] {
                    if let Some(j) = j.filter(|_| list.len() < k.div_ceil(2)) {
                        list.push(j);
                    }
                }
            }
            while list.len() < k {
                let j = next(frames);
                if !list.contains(&j) {
                    list.push(j);
                }
            }
            list
        })
        .collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The device's memory now (after a sync), when it has accounting.
fn device_now<B: Backend>(device: &B::Device) -> Option<DeviceMemory> {
    let _ = B::sync(device);
    device_probe(device).and_then(|mut probe| probe())
}

/// Runs `runs` timed forwards after one warm-up; returns the median time and the largest
/// peak above the size before each forward (device pools' reserved bytes when the device has
/// accounting, else the host allocator's).
fn time_forward<B: Backend>(
    model: &Vggt<B>,
    images: &Tensor<B, 5>,
    options: &ForwardOptions,
    runs: usize,
) -> Result<(Duration, usize)> {
    let device = images.device();
    let mut times = Vec::new();
    let mut peak = 0;
    for run in 0..=runs {
        release_device_memory(&device);
        let device_before = device_now::<B>(&device);
        let before = live_bytes();
        reset_peak();
        let start = Instant::now();
        let out = model.forward(images.clone(), options)?;
        // Reading a value forces any deferred work.
        let _: f32 = out.depth.clone().sum().into_scalar().elem();
        B::sync(&device).ok();
        let elapsed = start.elapsed();
        let device_after = device_now::<B>(&device);
        drop(out);
        // Run 0 is the warm-up (it also materialises lazily initialised weights).
        if run > 0 {
            let above = match (device_before, device_after) {
                (Some(b), Some(a)) => a.reserved_bytes.saturating_sub(b.in_use_bytes) as usize,
                _ => host_memory().map_or(0, |m| m.peak_bytes) - before,
            };
            peak = peak.max(above);
            times.push(elapsed);
        }
    }
    Ok((median(times), peak))
}

use burn::tensor::ElementConversion as _;

struct Sweep {
    model: ModelArgs,
    frames: Vec<usize>,
    neighbours: usize,
    runs: usize,
}

impl OnBackend for Sweep {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) -> Result<()> {
        log_device(info);
        let Sweep {
            model: args,
            frames,
            neighbours,
            runs,
        } = self;
        let model = build_model::<B>(&args, &device)?;
        println!(
            "# sweep: config {}, {}x{}, {} {}, runs {runs} (median), sparse = temporal band of {neighbours}",
            args.config, args.height, args.width, info.name, args.precision
        );
        println!("| S | dense time (s) | dense peak (MiB) | dense t(S)/t(S0) | sparse time (s) | sparse peak (MiB) | sparse t(S)/t(S0) | dense/sparse time |");
        println!("|---|---|---|---|---|---|---|---|");
        let mut base: Option<(f64, f64)> = None;
        for &s in &frames {
            let images = random_images::<B>(s, args.height, args.width, &device);
            let (dense_t, dense_peak) =
                time_forward(&model, &images, &ForwardOptions::default(), runs)?;
            let sparse_options = ForwardOptions {
                neighbours: Some(band_neighbours(s, neighbours)),
                ..Default::default()
            };
            let (sparse_t, sparse_peak) = time_forward(&model, &images, &sparse_options, runs)?;
            let (d, sp) = (dense_t.as_secs_f64(), sparse_t.as_secs_f64());
            let (d0, s0) = *base.get_or_insert((d, sp));
            println!(
                "| {s} | {d:.3} | {:.1} | {:.2} | {sp:.3} | {:.1} | {:.2} | {:.2} |",
                dense_peak as f64 / MIB,
                d / d0,
                sparse_peak as f64 / MIB,
                sp / s0,
                d / sp
            );
        }
        Ok(())
    }
}

/// Column of a profile row: `aggregator` gathers the `aggregator.layer_NN` rows.
fn phase_column(phase: &str) -> Option<usize> {
    let name = if phase.starts_with("aggregator.layer_") {
        "aggregator"
    } else {
        phase
    };
    [
        "patch_embed",
        "aggregator",
        "camera_head",
        "depth_head",
        "point_head",
    ]
    .iter()
    .position(|&n| n == name)
}

const PHASE_NAMES: [&str; 6] = ["dino", "aggregator", "camera", "depth", "point", "total"];

struct Phases {
    model: ModelArgs,
    frames: usize,
    runs: usize,
}

impl OnBackend for Phases {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) -> Result<()> {
        log_device(info);
        let Phases {
            model: args,
            frames,
            runs,
        } = self;
        let build_start = Instant::now();
        let model = build_model::<B>(&args, &device)?;
        let images = random_images::<B>(frames, args.height, args.width, &device);
        let options = ForwardOptions::default();
        // Warm-up: materialises lazily initialised weights.
        drop(model.forward(images.clone(), &options)?);
        let _ = B::sync(&device);
        let weights_live = live_bytes();
        let build_s = build_start.elapsed().as_secs_f64();

        let mut rows: Vec<[f64; 6]> = Vec::new();
        let mut phase_peaks = [0usize; 5];
        let mut device_peak = None;
        let mut last_report = String::new();
        for _ in 0..runs {
            let before = live_bytes();
            let mut recorder = PhaseRecorder::new();
            if let Some(probe) = device_probe(&device) {
                recorder = recorder.with_device_probe(probe);
            }
            let start = Instant::now();
            let out = model.forward_profiled(images.clone(), &options, &mut recorder)?;
            let _: f32 = out.depth.clone().sum().into_scalar().elem();
            let total_s = start.elapsed().as_secs_f64();
            drop(out);
            let mut row = [0.0; 6];
            for p in &recorder.phases {
                if let Some(i) = phase_column(&p.phase) {
                    row[i] += p.elapsed.as_secs_f64();
                    phase_peaks[i] = phase_peaks[i].max(p.peak_bytes.saturating_sub(before));
                }
            }
            row[5] = total_s;
            rows.push(row);
            device_peak = device_peak.max(recorder.device_peak_bytes());
            last_report = recorder.report();
        }
        let medians: Vec<f64> = (0..6)
            .map(|i| {
                let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        println!(
            "# phases: config {}, S {frames}, {}x{}, runs {runs} (median), {} {}",
            args.config, args.height, args.width, info.name, args.precision
        );
        print!("# last run's report (absolute bytes):\n{last_report}");
        for (name, value) in PHASE_NAMES.iter().zip(&medians) {
            println!("{name:<11} {value:>9.4} s");
        }
        let config = load_config(&args.config)?;
        let predicted = estimate(
            &config,
            (args.height, args.width),
            args.precision,
            frames,
            model.dpt_frames_chunk(),
            &plan_options_on::<B>(&device),
        );
        println!(
            "# planner estimate ({}, DPT chunk {}): {predicted:?}",
            args.precision,
            model.dpt_frames_chunk()
        );
        let host_peak = weights_live + phase_peaks.iter().copied().max().unwrap_or(0);
        println!(
            "# planner total {:.1} MiB vs measured peak {:.1} MiB ({})",
            predicted.total_bytes as f64 / MIB,
            device_peak.map_or(host_peak as f64, |d| d as f64) / MIB,
            if device_peak.is_some() {
                "device pools' reserved bytes"
            } else {
                "host: weights + largest phase peak"
            }
        );
        let peak_names = ["dino", "aggregator", "camera", "depth", "point"];
        for (name, peak) in peak_names.iter().zip(phase_peaks) {
            println!(
                "{name:<11} host peak above live {:>9.1} MiB",
                peak as f64 / MIB
            );
        }
        let times: serde_json::Map<String, Value> = PHASE_NAMES
            .iter()
            .zip(&medians)
            .map(|(n, v)| (n.to_string(), json!(v)))
            .collect();
        let line = json!({
            "side": "burn",
            "config": args.config,
            "device": args.device.to_string(),
            "device_name": info.name,
            "precision": args.precision.to_string(),
            "S": frames,
            "H": args.height,
            "W": args.width,
            "runs": runs,
            "median_s": times,
            "weights_live_mib": weights_live as f64 / MIB,
            "peak_alloc_mib": host_peak as f64 / MIB,
            "device_peak_reserved_mib": device_peak.map(|d| d as f64 / MIB),
            "peak_rss_mib": peak_rss_bytes().unwrap_or(0) as f64 / MIB,
            "build_and_warmup_s": build_s,
        });
        println!("{line}");
        Ok(())
    }
}

/// The planner's options for the opened `device`: its attention kind and the slack of its
/// memory pools' pages.
fn plan_options_on<B: Backend>(device: &B::Device) -> PlanOptions {
    let page = vggt::memory::device_max_page_bytes(device);
    PlanOptions {
        fused_attention: page.is_none(),
        device_pool_bytes: page.map_or(0, vggt::planner::subslice_pool_bytes),
        streamed_neighbours: page.is_none(),
        ..PlanOptions::default()
    }
}

struct Windows {
    model: ModelArgs,
    frames: usize,
    neighbours: Option<usize>,
    skip_point_head: bool,
    windows: usize,
}

impl OnBackend for Windows {
    type Output = Result<Value>;
    fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) -> Result<Value> {
        log_device(info);
        let args = &self.model;
        let frames = self.frames;
        let started = Instant::now();
        let model = build_model::<B>(args, &device)?;
        let images = random_images::<B>(frames, args.height, args.width, &device);
        let options = ForwardOptions {
            neighbours: self.neighbours.map(|k| band_neighbours(frames, k)),
            skip_point_head: self.skip_point_head,
            ..Default::default()
        };
        // Warm-up window: weights materialised, kernels compiled and autotuned.
        let warm_start = Instant::now();
        let out = model.forward(images.clone(), &options)?;
        let _: f32 = out.depth.clone().sum().into_scalar().elem();
        drop(out);
        let _ = B::sync(&device);
        let warmup_s = warm_start.elapsed().as_secs_f64();

        release_device_memory(&device);
        let baseline = device_now::<B>(&device);
        let host_before = live_bytes();
        let mut rows = Vec::new();
        let mut peak_reserved = 0u64;
        let mut peak_in_use = 0u64;
        let mut host_peak = 0usize;
        let mut after_in_use = Vec::new();
        for _ in 0..self.windows.max(1) {
            let mut recorder = PhaseRecorder::new();
            if let Some(probe) = device_probe(&device) {
                recorder = recorder.with_device_probe(probe);
            }
            let start = Instant::now();
            let out = model.forward_profiled(images.clone(), &options, &mut recorder)?;
            let _: f32 = out.depth.clone().sum().into_scalar().elem();
            let total_s = start.elapsed().as_secs_f64();
            drop(out);
            let after = device_now::<B>(&device);
            let mut row = [0.0; 6];
            for p in &recorder.phases {
                if let Some(i) = phase_column(&p.phase) {
                    row[i] += p.elapsed.as_secs_f64();
                }
            }
            row[5] = total_s;
            rows.push(row);
            peak_reserved = peak_reserved
                .max(recorder.device_peak_bytes().unwrap_or(0))
                .max(after.map_or(0, |a| a.reserved_bytes));
            peak_in_use = peak_in_use.max(recorder.device_peak_in_use_bytes().unwrap_or(0));
            host_peak = host_peak.max(recorder.peak_bytes());
            match after {
                Some(after) => after_in_use.push(after.in_use_bytes),
                None => after_in_use.push(live_bytes() as u64),
            }
        }
        let medians: serde_json::Map<String, Value> = PHASE_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
                v.sort_by(f64::total_cmp);
                (name.to_string(), json!(v[v.len() / 2]))
            })
            .collect();
        let config = load_config(&args.config)?;
        let plan_options = PlanOptions {
            neighbours: self.neighbours,
            skip_point_head: self.skip_point_head,
            ..plan_options_on::<B>(&device)
        };
        let predicted = estimate(
            &config,
            (args.height, args.width),
            args.precision,
            frames,
            model.dpt_frames_chunk(),
            &plan_options,
        );
        // The measured peak: the pools' high-water mark on a device, the allocator's on the CPU.
        let (measured, baseline_in_use, baseline_reserved) = match baseline {
            Some(b) => (peak_reserved, b.in_use_bytes, b.reserved_bytes),
            None => (host_peak as u64, host_before as u64, host_before as u64),
        };
        let back_to_baseline = after_in_use.iter().all(|&a| a <= baseline_in_use);
        Ok(json!({
            "kind": "windows",
            "config": args.config,
            "device": args.device.to_string(),
            "device_name": info.name,
            "software": info.software,
            "precision": args.precision.to_string(),
            "S": frames,
            "H": args.height,
            "W": args.width,
            "neighbours": self.neighbours,
            "skip_point_head": self.skip_point_head,
            "dpt_chunk": model.dpt_frames_chunk(),
            "windows": rows.len(),
            "warmup_s": warmup_s,
            "median_s": medians,
            "baseline_in_use_bytes": baseline_in_use,
            "baseline_reserved_bytes": baseline_reserved,
            "peak_reserved_bytes": measured,
            "peak_in_use_bytes": peak_in_use,
            "after_in_use_bytes": after_in_use,
            "back_to_baseline": back_to_baseline,
            "predicted_bytes": predicted.total_bytes,
            "within_prediction": measured as usize <= predicted.total_bytes,
            "wall_s": started.elapsed().as_secs_f64(),
        }))
    }
}

fn print_windows(result: &Value) {
    let mib = |key: &str| result[key].as_f64().unwrap_or(0.0) / MIB;
    println!(
        "# windows: {} on {} ({}), {}, S {}, {}x{}, neighbours {}, {} windows",
        result["config"],
        result["device"],
        result["device_name"],
        result["precision"],
        result["S"],
        result["H"],
        result["W"],
        result["neighbours"],
        result["windows"]
    );
    if let Some(times) = result["median_s"].as_object() {
        for (name, value) in times {
            println!("{name:<11} {:>9.4} s", value.as_f64().unwrap_or(0.0));
        }
    }
    println!(
        "peak {:.1} MiB (in use {:.1} MiB), predicted {:.1} MiB, baseline {:.1} MiB, after each window {:?} B, back to baseline: {}",
        mib("peak_reserved_bytes"),
        mib("peak_in_use_bytes"),
        mib("predicted_bytes"),
        mib("baseline_in_use_bytes"),
        result["after_in_use_bytes"],
        result["back_to_baseline"]
    );
    println!("{result}");
}

fn append_json_line(path: Option<&Path>, value: &Value) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{value}").with_context(|| format!("writing {}", path.display()))
}

struct Parity {
    fixture: PathBuf,
    weights: PathBuf,
    outputs: String,
}

impl OnBackend for Parity {
    type Output = Result<Value>;
    fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) -> Result<Value> {
        log_device(info);
        let rows = vggt::parity::run_fixture::<B>(
            &self.fixture,
            &self.weights,
            &self.outputs,
            &device,
            Precision::F32,
            vggt::parity::fixture_tolerance,
        )?;
        println!(
            "# parity: {} ({}) on {}",
            self.fixture.display(),
            self.outputs,
            info.name
        );
        print!("{}", vggt::parity::report(&rows));
        let pass = rows.iter().all(|r| r.passes());
        let fixture = self
            .fixture
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Ok(json!({
            "kind": "parity",
            "fixture": fixture,
            "outputs": self.outputs,
            "device": info.device.to_string(),
            "device_name": info.name,
            "tensors": rows,
            "pass": pass,
        }))
    }
}

/// Reads JSON lines (`windows`, `parity` and `failed` records) into one document and Markdown.
fn report(inputs: &[PathBuf], json_out: Option<&Path>, markdown_out: Option<&Path>) -> Result<()> {
    let mut records = Vec::new();
    for path in inputs {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not JSON", path.display(), number + 1))?;
            records.push(value);
        }
    }
    let markdown = markdown_report(&records);
    print!("{markdown}");
    if let Some(path) = json_out {
        let document = json!({ "records": records });
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = markdown_out {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn markdown_report(records: &[Value]) -> String {
    let mut out = String::new();
    let kind = |r: &&Value, k: &str| r["kind"] == Value::String(k.to_owned());
    let parity: Vec<&Value> = records.iter().filter(|r| kind(r, "parity")).collect();
    if !parity.is_empty() {
        out.push_str("## Parity against the upstream reference\n\n");
        out.push_str(
            "| fixture | device | tensor | max abs diff | atol | rtol | worst/tol | ok |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|\n");
        for record in &parity {
            for tensor in record["tensors"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "| {} | {} | {} | {:.2e} | {:.0e} | {:.0e} | {:.3} | {} |\n",
                    record["fixture"].as_str().unwrap_or(""),
                    record["device_name"].as_str().unwrap_or(""),
                    tensor["name"].as_str().unwrap_or(""),
                    tensor["max_abs"].as_f64().unwrap_or(f64::NAN),
                    tensor["tolerance"]["atol"].as_f64().unwrap_or(f64::NAN),
                    tensor["tolerance"]["rtol"].as_f64().unwrap_or(f64::NAN),
                    tensor["worst"].as_f64().unwrap_or(f64::NAN),
                    if tensor["worst"].as_f64().is_some_and(|w| w <= 1.0) {
                        "yes"
                    } else {
                        "**no**"
                    },
                ));
            }
        }
        out.push('\n');
    }
    let windows: Vec<&Value> = records.iter().filter(|r| kind(r, "windows")).collect();
    if !windows.is_empty() {
        out.push_str("## Windows: time per phase (median) and device memory\n\n");
        out.push_str("| config | device | precision | attention | S | HxW | dino s | aggregator s | camera s | depth s | point s | total s | peak MiB | in use MiB | predicted MiB | measured/predicted | baseline MiB | after each window vs baseline |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &windows {
            let mib = |key: &str| r[key].as_f64().unwrap_or(f64::NAN) / MIB;
            let t = |name: &str| r["median_s"][name].as_f64().unwrap_or(f64::NAN);
            let attention = match r["neighbours"].as_u64() {
                Some(k) => format!("sparse k={k}"),
                None => "dense".into(),
            };
            let baseline = r["baseline_in_use_bytes"].as_u64().unwrap_or(0);
            let after: Vec<String> = r["after_in_use_bytes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let a = a.as_u64().unwrap_or(0);
                    format!("{:+} B", a as i64 - baseline as i64)
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} | {attention} | {} | {}x{} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {} |\n",
                r["config"].as_str().unwrap_or(""),
                r["device_name"].as_str().unwrap_or(""),
                r["precision"].as_str().unwrap_or(""),
                r["S"],
                r["H"],
                r["W"],
                t("dino"),
                t("aggregator"),
                t("camera"),
                t("depth"),
                t("point"),
                t("total"),
                mib("peak_reserved_bytes"),
                mib("peak_in_use_bytes"),
                mib("predicted_bytes"),
                mib("peak_reserved_bytes") / mib("predicted_bytes"),
                baseline as f64 / MIB,
                after.join(", "),
            ));
        }
        out.push('\n');
    }
    let failed: Vec<&Value> = records.iter().filter(|r| kind(r, "failed")).collect();
    if !failed.is_empty() {
        out.push_str(
            "## Runs that did not finish\n\n| run | exit status | note |\n|---|---|---|\n",
        );
        for r in &failed {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                r["label"].as_str().unwrap_or(""),
                r["status"],
                r["note"].as_str().unwrap_or("")
            ));
        }
        out.push('\n');
    }
    out
}

/// Median wall time of `runs` calls of `op` after one warm-up call; each call ends with a
/// device sync so every op is timed to completion.
fn median_time<T>(runs: usize, mut op: impl FnMut() -> T) -> Duration {
    let device = Default::default();
    drop(op());
    Cpu::sync(&device).expect("Flex sync");
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            let out = op();
            Cpu::sync(&device).expect("Flex sync");
            let elapsed = start.elapsed();
            drop(out);
            elapsed
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Per-op timings of one block at VGGT-1B width over `frames * tokens` tokens.
fn ops(tokens: usize, frames: usize, runs: usize) -> Result<()> {
    use burn::tensor::activation::gelu;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::Distribution;
    use vggt::layers::{merge_heads, split_heads, Block, BlockConfig};
    use vggt::rope::{frame_positions, RopeTables};

    let device = Default::default();
    let config = BlockConfig {
        dim: 1024,
        num_heads: 16,
        mlp_ratio: 4.0,
        ln_eps: 1e-5,
        qk_norm_eps: Some(1e-5),
    };
    let (d, heads) = (config.dim, config.num_heads);
    let head_dim = d / heads;
    let l = frames * tokens;
    let block = Block::<Cpu>::new(&config, &device);
    let positions: Vec<[u32; 2]> = frame_positions(28, 37, 5)
        .into_iter()
        .cycle()
        .take(l)
        .collect();
    let rope = RopeTables::<Cpu>::new(&positions, head_dim, 100.0, &device);
    let x = Tensor::<Cpu, 3>::random([1, l, d], Distribution::Normal(0.0, 1.0), &device);
    let qkv = block.attn.qkv.forward(x.clone());
    let split = |t: usize| {
        qkv.clone()
            .narrow(2, t * d, d)
            .reshape([1, l, heads, head_dim])
            .swap_dims(1, 2)
    };
    let contiguous = |t: Tensor<Cpu, 4>| t.reshape([1, heads, l, head_dim]) * 1.0;
    let (q_view, k_view, v_view) = (split(0), split(1), split(2));
    let (q, k, v) = (
        contiguous(q_view.clone()),
        contiguous(k_view.clone()),
        contiguous(v_view.clone()),
    );
    let context = attention(
        q.clone(),
        k.clone(),
        v.clone(),
        None,
        None,
        AttentionModuleOptions::default(),
    );
    let hidden = block.mlp.fc1.forward(x.clone());
    let rope_cos = Tensor::<Cpu, 4>::random([1, 1, l, head_dim], Distribution::Default, &device);
    let w_qkv = block.attn.qkv.weight.val().unsqueeze::<3>();
    let w_fc1 = block.mlp.fc1.weight.val().unsqueeze::<3>();
    let w_fc2 = block.mlp.fc2.weight.val().unsqueeze::<3>();

    let gflops = |flops: f64, t: Duration| flops / t.as_secs_f64() / 1e9;
    let lf = l as f64;
    let df = d as f64;
    let rows: Vec<(&str, Duration, Option<f64>)> = vec![
        (
            "norm1 LayerNorm [1,L,1024]",
            median_time(runs, || block.norm1.forward(x.clone())),
            None,
        ),
        (
            "qkv Linear 1024->3072 (bias)",
            median_time(runs, || block.attn.qkv.forward(x.clone())),
            Some(2.0 * lf * df * 3.0 * df),
        ),
        (
            "qkv matmul only (no bias)",
            median_time(runs, || x.clone().matmul(w_qkv.clone())),
            Some(2.0 * lf * df * 3.0 * df),
        ),
        (
            "qkv Linear, vggt::cpu::linear",
            median_time(runs, || vggt::cpu::linear(&block.attn.qkv, x.clone())),
            Some(2.0 * lf * df * 3.0 * df),
        ),
        (
            "split q/k/v views -> contiguous (x3)",
            median_time(runs, || {
                (
                    contiguous(split(0)),
                    contiguous(split(1)),
                    contiguous(split(2)),
                )
            }),
            None,
        ),
        (
            "split_heads q/k/v (per-head cat, x3)",
            median_time(runs, || {
                (
                    split_heads(qkv.clone(), 0, heads, head_dim),
                    split_heads(qkv.clone(), d, heads, head_dim),
                    split_heads(qkv.clone(), 2 * d, heads, head_dim),
                )
            }),
            None,
        ),
        (
            "q_norm LayerNorm(64) on strided view",
            median_time(runs, || {
                block
                    .attn
                    .q_norm
                    .as_ref()
                    .expect("qk-norm")
                    .forward(q_view.clone())
            }),
            None,
        ),
        (
            "q_norm LayerNorm(64) on contiguous",
            median_time(runs, || {
                block
                    .attn
                    .q_norm
                    .as_ref()
                    .expect("qk-norm")
                    .forward(q.clone())
            }),
            None,
        ),
        (
            "RoPE apply (q)",
            median_time(runs, || rope.apply(q.clone())),
            None,
        ),
        (
            "attention op (contiguous q,k,v)",
            median_time(runs, || {
                attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                )
            }),
            Some(4.0 * lf * lf * df),
        ),
        (
            "attention op (strided q,k,v views)",
            median_time(runs, || {
                attention(
                    q_view.clone(),
                    k_view.clone(),
                    v_view.clone(),
                    None,
                    None,
                    AttentionModuleOptions::default(),
                )
            }),
            Some(4.0 * lf * lf * df),
        ),
        (
            "attention, vggt::cpu::attention",
            median_time(runs, || {
                vggt::cpu::attention(q.clone(), k.clone(), v.clone())
            }),
            Some(4.0 * lf * lf * df),
        ),
        (
            "attention unfused (matmul, softmax, matmul)",
            median_time(runs, || {
                let scale = (head_dim as f64).powf(-0.5);
                let scores = (q.clone() * scale).matmul(k.clone().swap_dims(2, 3));
                burn::tensor::activation::softmax(scores, 3).matmul(v.clone())
            }),
            Some(4.0 * lf * lf * df),
        ),
        (
            "RoPE swap via narrow+cat (q)",
            median_time(runs, || {
                let quarter = head_dim / 4;
                let halves = q.clone().reshape([1, heads, l * 2, 2, quarter]);
                Tensor::cat(
                    vec![halves.clone().narrow(3, 1, 1), halves.narrow(3, 0, 1)],
                    3,
                )
                .reshape([1, heads, l, head_dim])
            }),
            None,
        ),
        (
            "RoPE swap via flip (q)",
            median_time(runs, || {
                let quarter = head_dim / 4;
                q.clone()
                    .reshape([1, heads, l * 2, 2, quarter])
                    .flip([3])
                    .reshape([1, heads, l, head_dim])
            }),
            None,
        ),
        (
            "RoPE x*cos (broadcast [1,1,L,hd])",
            median_time(runs, || q.clone() * rope_cos.clone()),
            None,
        ),
        (
            "merge heads swap_dims+reshape",
            median_time(runs, || context.clone().swap_dims(1, 2).reshape([1, l, d])),
            None,
        ),
        (
            "merge_heads (per-head cat)",
            median_time(runs, || merge_heads(context.clone())),
            None,
        ),
        (
            "proj Linear 1024->1024",
            median_time(runs, || block.attn.proj.forward(x.clone())),
            Some(2.0 * lf * df * df),
        ),
        (
            "proj Linear, vggt::cpu::linear",
            median_time(runs, || vggt::cpu::linear(&block.attn.proj, x.clone())),
            Some(2.0 * lf * df * df),
        ),
        (
            "ls1 LayerScale + residual add",
            median_time(runs, || x.clone() + block.ls1.forward(x.clone())),
            None,
        ),
        (
            "fc1 Linear 1024->4096",
            median_time(runs, || block.mlp.fc1.forward(x.clone())),
            Some(2.0 * lf * df * 4.0 * df),
        ),
        (
            "fc1 matmul only (no bias)",
            median_time(runs, || x.clone().matmul(w_fc1.clone())),
            Some(2.0 * lf * df * 4.0 * df),
        ),
        (
            "fc1 Linear, vggt::cpu::linear",
            median_time(runs, || vggt::cpu::linear(&block.mlp.fc1, x.clone())),
            Some(2.0 * lf * df * 4.0 * df),
        ),
        (
            "GELU (erf) [1,L,4096]",
            median_time(runs, || gelu(hidden.clone())),
            None,
        ),
        (
            "fc2 Linear 4096->1024",
            median_time(runs, || block.mlp.fc2.forward(hidden.clone())),
            Some(2.0 * lf * df * 4.0 * df),
        ),
        (
            "fc2 matmul only (no bias)",
            median_time(runs, || hidden.clone().matmul(w_fc2.clone())),
            Some(2.0 * lf * df * 4.0 * df),
        ),
        (
            "fc2 Linear, vggt::cpu::linear",
            median_time(runs, || vggt::cpu::linear(&block.mlp.fc2, hidden.clone())),
            Some(2.0 * lf * df * 4.0 * df),
        ),
        (
            "whole Block::forward",
            median_time(runs, || block.forward(x.clone(), Some(&rope))),
            None,
        ),
    ];
    println!(
        "block ops: C = {d}, {heads} heads, L = {l} tokens ({frames} x {tokens}), median of {runs}, threads = {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into())
    );
    println!("CPU matrix products: {}", vggt::cpu::matmul_provider());
    for (name, time, flops) in rows {
        match flops {
            Some(flops) => println!(
                "{name:40} {:9.2} ms  {:7.1} GFLOP/s",
                time.as_secs_f64() * 1e3,
                gflops(flops, time)
            ),
            None => println!("{name:40} {:9.2} ms", time.as_secs_f64() * 1e3),
        }
    }
    Ok(())
}

/// `vggt-bench global`: see the module docs.
fn global(frames: &[usize], k: usize, tokens: usize, runs: usize, json: bool) -> Result<()> {
    use burn::tensor::Distribution;
    use vggt::layers::{Block, BlockConfig};
    use vggt::rope::{frame_positions, RopeTables};

    if frames.is_empty() || tokens == 0 || runs == 0 {
        bail!("--frames, --tokens and --runs must be positive");
    }
    let device = Default::default();
    let config = BlockConfig {
        dim: 1024,
        num_heads: 16,
        mlp_ratio: 4.0,
        ln_eps: 1e-5,
        qk_norm_eps: Some(1e-5),
    };
    let block = Block::<Cpu>::new(&config, &device);
    // VGGT-1B's token layout at 392 x 518: 5 special tokens and 28 x 37 patches per frame.
    let per_frame: Vec<[u32; 2]> = frame_positions(28, 37, 5)
        .into_iter()
        .cycle()
        .take(tokens)
        .collect();
    // Time and allocator peak above the input of `runs` forwards, after a warm-up forward
    // (which also materialises the lazily initialised weights).
    let measure = |x: &Tensor<Cpu, 3>,
                   rope: &RopeTables<Cpu>,
                   s: usize,
                   neighbours: Option<&[Vec<usize>]>|
     -> (Duration, usize) {
        let forward = || {
            let out = block.forward_global(x.clone(), s, Some(rope), neighbours, None);
            let _: f32 = out.sum().into_scalar().elem();
        };
        forward();
        let mut times = Vec::new();
        let mut peak = 0;
        for _ in 0..runs {
            let before = live_bytes();
            reset_peak();
            let start = Instant::now();
            forward();
            times.push(start.elapsed());
            peak = peak.max(
                host_memory()
                    .map_or(0, |m| m.peak_bytes)
                    .saturating_sub(before),
            );
        }
        (median(times), peak)
    };
    if !json {
        println!(
            "# one global block, C = 1024, 16 heads, P = {tokens}, k = {k}, {} threads, {runs} run(s)",
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        );
        println!("| S | dense s | dense peak MiB | band s | band peak MiB | covis s | covis peak MiB | dense/band time |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    let mut first_band: Option<(usize, f64)> = None;
    for &s in frames {
        let positions: Vec<[u32; 2]> = per_frame.iter().copied().cycle().take(s * tokens).collect();
        let rope = RopeTables::<Cpu>::new(&positions, config.head_dim(), 100.0, &device);
        let x = Tensor::<Cpu, 3>::random(
            [1, s * tokens, config.dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let band = band_neighbours(s, k);
        let covisible = covisibility_neighbours(s, k);
        let (dense_t, dense_peak) = measure(&x, &rope, s, None);
        let (band_t, band_peak) = measure(&x, &rope, s, Some(&band));
        let (covis_t, covis_peak) = measure(&x, &rope, s, Some(&covisible));
        let secs = |t: Duration| t.as_secs_f64();
        let (first_s, first_t) = *first_band.get_or_insert((s, secs(band_t)));
        if json {
            let line = json!({
                "S": s,
                "P": tokens,
                "k": k.min(s),
                "dense_s": secs(dense_t),
                "sparse_s": secs(band_t),
                "dense_peak_bytes": dense_peak,
                "sparse_peak_bytes": band_peak,
                "covisibility_s": secs(covis_t),
                "covisibility_peak_bytes": covis_peak,
                "dense_over_sparse_time": secs(dense_t) / secs(band_t),
                "sparse_time_over_first": secs(band_t) / first_t,
                "first_S": first_s,
            });
            println!("{line}");
        } else {
            println!(
                "| {s} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
                secs(dense_t),
                dense_peak as f64 / MIB,
                secs(band_t),
                band_peak as f64 / MIB,
                secs(covis_t),
                covis_peak as f64 / MIB,
                secs(dense_t) / secs(band_t),
            );
        }
        std::io::stdout().flush().ok();
    }
    Ok(())
}
