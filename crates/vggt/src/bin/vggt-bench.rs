//! `vggt-bench`: timings and host memory of VGGT forward passes on the CPU (burn Flex backend).
//!
//! ```text
//! vggt-bench sweep  --config fixtures/tiny_a/config.json --height 56 --width 84 \
//!                   --frames 8,16,32,64,128 --neighbours 8 [--runs 3]
//! vggt-bench phases --config vggt1b --frames 1 --height 392 --width 518 [--runs 3]
//! vggt-bench plan   --config vggt1b --budget-gib 8 --height 392 --width 518 --dtype bf16
//! vggt-bench ops    [--tokens 1041] [--frames 1] [--runs 5]
//! ```
//!
//! `sweep`: for each S, dense and sparse global attention (temporal band of k neighbours: frames
//! i-k/2 .. i+k/2-1 shifted to stay inside the sequence, always k of them), median time of
//! `--runs` forwards after one warm-up, the counting allocator's peak above the pre-forward live
//! size, and time(S)/time(S_0). `phases`: per-phase time and peak from the profile rows (DINO =
//! `patch_embed`, aggregator = the `aggregator.layer_NN` rows together, camera, depth, point);
//! prints a JSON line at the end. `plan`: the planner's choice and its estimate terms. `ops`:
//! median time of each op of one transformer block at VGGT-1B width (C = 1024, 16 heads,
//! qk-norm, RoPE) over S x P tokens, each synced, with the older formulations of the head
//! split/merge and the RoPE swap next to the ones in use. Weights are random (timing does not
//! depend on values) unless `--weights` is given; a warm-up forward materialises them before
//! anything is timed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::backend::Flex;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use clap::{Parser, Subcommand, ValueEnum};
use vggt::checkpoint::{load_into, LoadOptions};
use vggt::memory::{host_memory, reset_peak, CountingAllocator, PhaseRecorder};
use vggt::planner::{estimate, plan_with, PlanOptions, Precision};
use vggt::{ForwardOptions, Vggt, VggtConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

type B = Flex;
const MIB: f64 = 1024.0 * 1024.0;

/// VGGT CPU benchmarks.
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
        /// Precision of weights and activations.
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
        /// Sparse global attention with this many neighbours.
        #[arg(long)]
        neighbours: Option<usize>,
    },
}

#[derive(Debug, clap::Args)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

fn main() -> Result<()> {
    vggt::memory::keep_large_allocations();
    match Args::parse().command {
        Command::Sweep {
            model,
            frames,
            neighbours,
            runs,
        } => sweep(&model, &frames, neighbours, runs),
        Command::Phases {
            model,
            frames,
            runs,
        } => phases(&model, frames, runs),
        Command::Ops {
            tokens,
            frames,
            runs,
        } => ops(tokens, frames, runs),
        Command::Plan {
            config,
            budget_gib,
            height,
            width,
            dtype,
            neighbours,
        } => {
            let config = load_config(&config)?;
            let precision = match dtype {
                Dtype::F32 => Precision::F32,
                Dtype::F16 => Precision::F16,
                Dtype::Bf16 => Precision::Bf16,
            };
            let options = PlanOptions {
                neighbours,
                max_window: 4096,
                ..Default::default()
            };
            let budget = (budget_gib * 1024.0 * MIB) as usize;
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

fn build_model(args: &ModelArgs) -> Result<Vggt<B>> {
    let config = load_config(&args.config)?;
    let device = Default::default();
    let mut model = Vggt::<B>::new(&config, &device);
    if let Some(weights) = &args.weights {
        model = load_into(model, weights, &LoadOptions::default())
            .with_context(|| format!("loading {}", weights.display()))?;
    }
    if let Some(chunk) = args.dpt_chunk {
        model.set_dpt_frames_chunk(chunk);
    }
    Ok(model)
}

fn random_images(frames: usize, height: usize, width: usize) -> Tensor<B, 5> {
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
        &Default::default(),
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

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Runs `runs` timed forwards after one warm-up; returns the median time and the largest
/// allocation peak above the live size before each forward.
fn time_forward(
    model: &Vggt<B>,
    images: &Tensor<B, 5>,
    options: &ForwardOptions,
    runs: usize,
) -> Result<(Duration, usize)> {
    let device = images.device();
    let mut times = Vec::new();
    let mut peak = 0;
    for run in 0..=runs {
        let before = live_bytes();
        reset_peak();
        let start = Instant::now();
        let out = model.forward(images.clone(), options)?;
        B::sync(&device).ok();
        // Reading a value forces any deferred work.
        let _: f32 = out.depth.clone().sum().into_scalar();
        let elapsed = start.elapsed();
        drop(out);
        // Run 0 is the warm-up (it also materialises lazily initialised weights).
        if run > 0 {
            peak = peak.max(host_memory().map_or(0, |m| m.peak_bytes) - before);
            times.push(elapsed);
        }
    }
    Ok((median(times), peak))
}

fn sweep(args: &ModelArgs, frames: &[usize], neighbours: usize, runs: usize) -> Result<()> {
    let model = build_model(args)?;
    println!(
        "# sweep: config {}, {}x{}, runs {runs} (median), sparse = temporal band of {neighbours}",
        args.config, args.height, args.width
    );
    println!("| S | dense time (s) | dense peak (MiB) | dense t(S)/t(S0) | sparse time (s) | sparse peak (MiB) | sparse t(S)/t(S0) | dense/sparse time |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut base: Option<(f64, f64)> = None;
    for &s in frames {
        let images = random_images(s, args.height, args.width);
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

fn phases(args: &ModelArgs, frames: usize, runs: usize) -> Result<()> {
    let build_start = Instant::now();
    let model = build_model(args)?;
    let images = random_images(frames, args.height, args.width);
    let options = ForwardOptions::default();
    // Warm-up: materialises lazily initialised weights.
    drop(model.forward(images.clone(), &options)?);
    let weights_live = live_bytes();
    let build_s = build_start.elapsed().as_secs_f64();

    let names = ["dino", "aggregator", "camera", "depth", "point", "total"];
    let mut rows: Vec<[f64; 6]> = Vec::new();
    let mut phase_peaks = [0usize; 5];
    let mut last_report = String::new();
    for _ in 0..runs {
        let before = live_bytes();
        let mut recorder = PhaseRecorder::new();
        let start = Instant::now();
        let out = model.forward_profiled(images.clone(), &options, &mut recorder)?;
        let _: f32 = out.depth.clone().sum().into_scalar();
        let total_s = start.elapsed().as_secs_f64();
        drop(out);
        // Column of a profile row: `aggregator` gathers the `aggregator.layer_NN` rows.
        let column = |phase: &str| {
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
        };
        let mut row = [0.0; 6];
        for p in &recorder.phases {
            if let Some(i) = column(&p.phase) {
                row[i] += p.elapsed.as_secs_f64();
                phase_peaks[i] = phase_peaks[i].max(p.peak_bytes.saturating_sub(before));
            }
        }
        row[5] = total_s;
        rows.push(row);
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
        "# phases: config {}, S {frames}, {}x{}, runs {runs} (median), Flex CPU f32",
        args.config, args.height, args.width
    );
    print!("# last run's report (absolute host bytes):\n{last_report}");
    for (name, value) in names.iter().zip(&medians) {
        println!("{name:<11} {value:>9.4} s");
    }
    let config = load_config(&args.config)?;
    let predicted = estimate(
        &config,
        (args.height, args.width),
        Precision::F32,
        frames,
        model.dpt_frames_chunk(),
        &PlanOptions::default(),
    );
    println!(
        "# planner estimate (f32, DPT chunk {}): {predicted:?}",
        model.dpt_frames_chunk()
    );
    println!(
        "# planner total {:.1} MiB vs measured peak (weights + largest phase peak) {:.1} MiB",
        predicted.total_bytes as f64 / MIB,
        (weights_live + phase_peaks.iter().copied().max().unwrap_or(0)) as f64 / MIB
    );
    let peak_names = ["dino", "aggregator", "camera", "depth", "point"];
    for (name, peak) in peak_names.iter().zip(phase_peaks) {
        println!("{name:<11} peak above live {:>9.1} MiB", peak as f64 / MIB);
    }
    let json_times: Vec<String> = names
        .iter()
        .zip(&medians)
        .map(|(n, v)| format!("\"{n}\": {v:.6}"))
        .collect();
    let peak_above = phase_peaks.iter().copied().max().unwrap_or(0);
    println!(
        "{{\"side\": \"burn\", \"config\": \"{}\", \"S\": {frames}, \"H\": {}, \"W\": {}, \"runs\": {runs}, \
         \"median_s\": {{{}}}, \"weights_live_mib\": {:.1}, \"peak_alloc_mib\": {:.1}, \
         \"peak_rss_mib\": {:.1}, \"build_and_warmup_s\": {build_s:.3}}}",
        args.config,
        args.height,
        args.width,
        json_times.join(", "),
        weights_live as f64 / MIB,
        (weights_live + peak_above) as f64 / MIB,
        peak_rss_bytes().unwrap_or(0) as f64 / MIB,
    );
    Ok(())
}

/// Median wall time of `runs` calls of `op` after one warm-up call; each call ends with a
/// device sync so every op is timed to completion.
fn median_time<T>(runs: usize, mut op: impl FnMut() -> T) -> Duration {
    let device = Default::default();
    drop(op());
    B::sync(&device).expect("Flex sync");
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            let out = op();
            B::sync(&device).expect("Flex sync");
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
    let block = Block::<B>::new(&config, &device);
    let positions: Vec<[u32; 2]> = frame_positions(28, 37, 5)
        .into_iter()
        .cycle()
        .take(l)
        .collect();
    let rope = RopeTables::<B>::new(&positions, head_dim, 100.0, &device);
    let x = Tensor::<B, 3>::random([1, l, d], Distribution::Normal(0.0, 1.0), &device);
    let qkv = block.attn.qkv.forward(x.clone());
    let split = |t: usize| {
        qkv.clone()
            .narrow(2, t * d, d)
            .reshape([1, l, heads, head_dim])
            .swap_dims(1, 2)
    };
    let contiguous = |t: Tensor<B, 4>| t.reshape([1, heads, l, head_dim]) * 1.0;
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
    let rope_cos = Tensor::<B, 4>::random([1, 1, l, head_dim], Distribution::Default, &device);
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
