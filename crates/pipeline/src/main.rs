//! `vggtd`: streaming 3-D reconstruction daemon (frames in, a growing map out).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pipeline::config::{DaemonConfig, PredictorKind, ViewerMode};

#[derive(Parser, Debug)]
#[command(
    name = "vggtd",
    version,
    about = "Streaming 3-D reconstruction with VGGT: frames in, a growing map out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (coloured only on a terminal, never with NO_COLOR set) or as one JSON
    /// object per line (for systemd, containers and log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`, at `RUST_LOG`'s levels (by default `info`, and only warnings of
/// the Zenoh and hiroz libraries, whose information is about their own sessions; hiroz's warning
/// that no router is connected comes from `pipeline::ros2` with more to say).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,zenoh=warn,hiroz=warn,hiroz::context=error")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init();
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconstruct from a video file, image folder, dataset folder or /dev/videoN.
    Run(Box<RunArgs>),
    /// Absolute pose error between two TUM trajectories.
    Eval(EvalArgs),
    /// Render a synthetic TUM-layout dataset along a trajectory.
    Simulate(SimulateArgs),
    /// Inspect configurations.
    Config(ConfigArgs),
    /// Download the VGGT-1B checkpoint into the cache directory (resumable, checksummed).
    FetchWeights(FetchArgs),
    /// List the cameras (/dev/video*): device, name, capture formats and sizes.
    Cameras,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Video file, image folder, TUM / 7-Scenes / EuRoC dataset folder, rosbag2 MCAP file or
    /// folder (with --topic), /dev/videoN, or ros2://TOPIC (an image topic on the ROS 2 network,
    /// `[ros2]` session; `/compressed` topics carry CompressedImage).
    #[arg(long, short)]
    input: PathBuf,
    /// Image topic of a rosbag2 input (`sensor_msgs/msg/Image` or `CompressedImage`); without
    /// it vggtd lists the bag's topics.
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Also write the ROS 2 topics (pose, path, map, tf, depth, camera info; `[ros2]`) into
    /// this rosbag2 MCAP file.
    #[arg(long, value_name = "FILE")]
    bag: Option<PathBuf>,
    /// Publish the ROS 2 topics (pose, path, map, tf, depth, camera info) over Zenoh, as
    /// rmw_zenoh nodes do, through the router or peer at ENDPOINT (e.g. tcp/127.0.0.1:7447;
    /// default `ros2.connect`, rmw_zenoh's router on this machine).
    #[arg(long, value_name = "ENDPOINT", num_args = 0..=1, default_missing_value = "")]
    ros2: Option<String>,
    /// Output directory (trajectory.txt, keyframes.txt, map.ply, summary.json).
    #[arg(long, short)]
    output: PathBuf,
    /// VGGT checkpoint: `.safetensors` or PyTorch `.pt` (the format is recognised by content, not
    /// by extension). Falls back to $VGGTD_WEIGHTS, then `model.weights` in the config.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Without weights, the checkpoint is downloaded once into the cache from this URL
    /// ($VGGTD_WEIGHTS_URL, `model.weights_url`; VGGT-1B on the Hugging Face hub by default).
    #[arg(long, value_name = "URL")]
    weights_url: Option<String>,
    /// Never download: without weights given or cached, stop with a message ($VGGTD_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Model dimensions (fixture config.json format); VGGT-1B when absent.
    #[arg(long)]
    model_config: Option<PathBuf>,
    /// TOML configuration (see `vggtd config --print-default`); flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Write the rerun recording to this .rrd file.
    #[arg(long)]
    rrd: Option<PathBuf>,
    /// Live viewer: none, connect[=URL] (a running viewer), spawn (start one), serve[=PORT]
    /// (host a gRPC stream for remote viewers).
    #[arg(long, value_parser = parse_viewer)]
    viewer: Option<(ViewerMode, Option<String>)>,
    /// Predictor: vggt, simulated, or replay:DIR.
    #[arg(long, value_parser = parse_predictor)]
    predictor: Option<(PredictorKind, Option<PathBuf>)>,
    /// Record every window's prediction (safetensors) into DIR, for `--predictor replay:DIR`.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Stream keyframe poses as JSON lines to PATH (file or Unix socket) or `-` (stdout).
    #[arg(long, value_name = "PATH|-")]
    pose_stream: Option<String>,
    /// Serve the run's figures (frames, keyframes, windows, loops, queues, latency, memory) as
    /// Prometheus text at http://ADDR/metrics; PORT alone listens on 127.0.0.1.
    #[arg(long, value_name = "PORT|HOST:PORT", value_parser = parse_metrics)]
    metrics: Option<String>,
    /// Write one JSON line of figures after every step to FILE: memory (resident, live heap,
    /// map), queue depths, and the time each stage and output took since the line before.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Dataset whose ground truth the simulated predictor serves (default: the input).
    #[arg(long, value_name = "DIR")]
    sim_dataset: Option<PathBuf>,
    /// Pace file inputs at their recorded rate.
    #[arg(long)]
    realtime: bool,
    /// Stop after N frames (0: no limit, the default).
    #[arg(long)]
    max_frames: Option<u64>,
    /// Model input width in pixels (multiple of 14; VGGT-1B was trained at 518).
    #[arg(long)]
    image_width: Option<u32>,
    /// Compute device: cpu, cuda[:N] or wgpu[:N] (the names of `model.device`).
    #[arg(long)]
    device: Option<vggt::Device>,
    /// Numeric precision of the model: f32, bf16 or f16 (`model.precision`).
    #[arg(long, value_enum)]
    precision: Option<vggt::Precision>,
    /// Metric scale: `depth` fits every window's scale to the dataset's depth images (TUM,
    /// 7-Scenes), so trajectory and map come out in metres; `none` keeps the model's scale.
    #[arg(long, value_enum, value_name = "SOURCE")]
    metric_scale: Option<MetricArg>,
    /// Camera intrinsics `FX,FY,CX,CY` in pixels of the input frames, or `dataset` for the
    /// dataset's calibration; they replace the predicted intrinsics.
    #[arg(long, value_name = "FX,FY,CX,CY|dataset", allow_hyphen_values = true)]
    intrinsics: Option<String>,
    /// Also write a binary COLMAP model (`OUTPUT/colmap/`: `sparse/0/*.bin`, `images/`).
    #[arg(long)]
    colmap: bool,
    /// Noise preset of the simulated predictor: toy, vggt (the real model's error level) or
    /// hard.
    #[arg(long, value_enum)]
    sim_preset: Option<SimPresetArg>,
    /// The simulated predictor answers no sooner than FACTOR times VGGT-1B's published
    /// aggregator time on one H100 for the request's frames (`sim.model_pace`): whether the
    /// daemon keeps a GPU busy, without a GPU.
    #[arg(long, value_name = "FACTOR")]
    sim_pace: Option<f64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MetricArg {
    None,
    Depth,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SimPresetArg {
    Toy,
    Vggt,
    Hard,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Ground-truth TUM trajectory.
    #[arg(long)]
    gt: PathBuf,
    /// Estimated TUM trajectory.
    #[arg(long)]
    est: PathBuf,
    /// Alignment before computing the error.
    #[arg(long, value_enum, default_value = "none")]
    align: AlignArg,
    /// Largest timestamp difference for associating poses, seconds.
    #[arg(long, default_value_t = 0.01)]
    t_max_diff: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AlignArg {
    None,
    Se3,
    Sim3,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// TUM trajectory to render along (camera-to-world).
    #[arg(long, required_unless_present = "path", conflicts_with = "path")]
    trajectory: Option<PathBuf>,
    /// A built-in camera path instead: orbit, figure-eight, corridor (each comes back to its
    /// start) or circuit (laps of a circle, 200 frames a lap, for long runs).
    #[arg(long, value_name = "KIND", value_parser = parse_path_kind)]
    path: Option<datasets::paths::PathKind>,
    /// Poses of `--path`, 10 per second.
    #[arg(long, default_value_t = 400, requires = "path")]
    frames: usize,
    /// Output dataset directory (TUM layout).
    #[arg(long, short)]
    output: PathBuf,
    /// Scene seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image width, pixels.
    #[arg(long, default_value_t = 160)]
    width: u32,
    /// Image height, pixels.
    #[arg(long, default_value_t = 120)]
    height: u32,
    /// Render at most N frames.
    #[arg(long)]
    max_frames: Option<usize>,
    /// Render every N-th pose of the trajectory.
    #[arg(long, default_value_t = 1)]
    stride: usize,
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// Print the default configuration as TOML.
    #[arg(long)]
    print_default: bool,
    /// Validate a configuration file.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct FetchArgs {
    /// Where to download from.
    #[arg(long, default_value = pipeline::fetch::VGGT_1B_URL)]
    url: String,
    /// Cache directory (default: $VGGTD_CACHE, $XDG_CACHE_HOME/vggtd or ~/.cache/vggtd).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// File name inside the cache directory [default: the URL's last segment, as `vggtd run`
    /// looks for it: model.safetensors].
    #[arg(long)]
    file_name: Option<String>,
    /// Expected SHA-256 (hex); by default the server's ETag when it is one.
    #[arg(long)]
    sha256: Option<String>,
}

fn parse_viewer(text: &str) -> Result<(ViewerMode, Option<String>), String> {
    match text.split_once('=') {
        Some(("connect", url)) => Ok((ViewerMode::Connect, Some(url.to_owned()))),
        None if text == "connect" => Ok((ViewerMode::Connect, None)),
        None if text == "none" => Ok((ViewerMode::None, None)),
        None if text == "spawn" => Ok((ViewerMode::Spawn, None)),
        None if text == "serve" => Ok((ViewerMode::Serve, None)),
        Some(("serve", port)) => match port.parse::<u16>() {
            Ok(_) => Ok((ViewerMode::Serve, Some(port.to_owned()))),
            Err(_) => Err(format!(
                "`{port}`: serve=PORT needs a port number (0-65535)"
            )),
        },
        _ => Err(format!(
            "`{text}`: expected none, connect[=URL], spawn or serve[=PORT]"
        )),
    }
}

fn parse_predictor(text: &str) -> Result<(PredictorKind, Option<PathBuf>), String> {
    match text.split_once(':') {
        Some(("replay", dir)) if !dir.is_empty() => {
            Ok((PredictorKind::Replay, Some(PathBuf::from(dir))))
        }
        None if text == "vggt" => Ok((PredictorKind::Vggt, None)),
        None if text == "simulated" => Ok((PredictorKind::Simulated, None)),
        _ => Err(format!("`{text}`: expected vggt, simulated or replay:DIR")),
    }
}

// Host live/peak byte counters for the per-phase memory report of every window.
#[global_allocator]
static ALLOCATOR: vggt::memory::CountingAllocator = vggt::memory::CountingAllocator;

fn main() -> std::process::ExitCode {
    vggt::memory::keep_large_allocations();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Eval(args) => eval(args),
        Command::Simulate(args) => simulate(args),
        Command::Config(args) => config(args),
        Command::FetchWeights(args) => fetch_weights(args),
        Command::Cameras => cameras(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let message = message_once(&error);
            match cli.log_format {
                LogFormat::Text => eprintln!("Error: {message}"),
                LogFormat::Json => tracing::error!(error = %message, "vggtd failed"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose text the message already
/// holds (most of ours quote their source) is not repeated.
fn message_once(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => DaemonConfig::from_file(path)?,
        None => DaemonConfig::default(),
    };
    apply_overrides(&mut config, &args);
    config
        .validate_in("", Path::new("<command line>"))
        .map_err(name_the_flag)?;
    if config.model.image_width < 14 * 8 {
        tracing::warn!(
            width = config.model.image_width,
            "a model input narrower than 112 pixels ({} patches across) gives the model little to see; VGGT-1B was trained at 518",
            config.model.image_width / 14
        );
    }

    if config.model.predictor == PredictorKind::Vggt && config.model.weights.is_none() {
        // A wrong input path is said before a 5 GB download, not after.
        let kind = pipeline::source::InputKind::detect(&args.input)?;
        pipeline::source::check_input(&kind, config.input.topic.as_deref())?;
        let offline = args.offline || std::env::var_os("VGGTD_OFFLINE").is_some_and(|v| v != "0");
        config.model.weights = Some(weights_from_cache(&config.model.weights_url, offline)?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone(), &args.output)?;
    let report = pipeline::run::run(
        pipeline::run::RunOptions {
            input: args.input.clone(),
            output: args.output.clone(),
            config,
            rrd: args.rrd.clone(),
            record: args.record.clone(),
        },
        stop,
    )?;
    let s = &report.summary;
    eprintln!(
        "vggtd: {} frames, {} keyframes, {} windows ({} rejected), {} loops, {} map points{} -> {}",
        s.frames,
        s.keyframes,
        s.windows,
        s.rejected_windows,
        s.loops,
        s.map_points,
        if s.interrupted { " (interrupted)" } else { "" },
        args.output.display()
    );
    let t = &s.phase_times;
    eprintln!(
        "vggtd: the model worked {:.2} s and waited {:.2} s for its next request ({:.2} s of it \
         for keyframes) over {:.1} s of stream",
        t.inference_s, t.model_idle_s, t.input_wait_s, t.total_s
    );
    if let Some(error) = &s.stream_error {
        bail!("input ended early: {error} (outputs hold what was processed)");
    }
    Ok(())
}

fn parse_metrics(text: &str) -> Result<String, String> {
    pipeline::sinks::parse_metrics_address(text).map(|_| text.to_owned())
}

/// A settings error that a flag caused names the flag rather than a file position.
fn name_the_flag(error: pipeline::config::ConfigError) -> pipeline::config::ConfigError {
    const FLAGS: [(&str, &str); 8] = [
        ("input.topic", "--topic"),
        ("sim.model_pace", "--sim-pace"),
        ("ros2.connect", "--ros2 ENDPOINT"),
        ("model.image_width", "--image-width"),
        ("input.intrinsics", "--intrinsics"),
        ("input.max_frames", "--max-frames"),
        ("model.replay_dir", "--predictor replay:DIR"),
        ("model.precision", "--precision"),
    ];
    match error {
        pipeline::config::ConfigError::Invalid {
            key, message, hint, ..
        } => {
            let flag = FLAGS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or_else(|| "a flag".to_owned(), |(_, flag)| flag.to_string());
            pipeline::config::ConfigError::Invalid {
                path: PathBuf::from(format!("command line ({flag})")),
                line: 0,
                key,
                message,
                hint,
            }
        }
        other => other,
    }
}

/// The cached checkpoint, downloaded first when it is not there: a progress bar on a terminal,
/// a log line every tenth otherwise.
fn weights_from_cache(url: &str, offline: bool) -> anyhow::Result<PathBuf> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} downloading the weights",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let attended = std::io::stderr().is_terminal();
    if !attended {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut logged_tenth = None;
    let path = pipeline::fetch::weights_for_run(
        url,
        &pipeline::fetch::default_cache_dir(),
        offline,
        &mut |p| {
            if let Some(total) = p.total {
                bar.set_length(total);
                let tenth = (p.bytes * 10).checked_div(total).unwrap_or(0);
                if !attended && logged_tenth != Some(tenth) {
                    logged_tenth = Some(tenth);
                    tracing::info!(
                        "downloading the weights: {} of {} MB",
                        p.bytes >> 20,
                        total >> 20
                    );
                }
            }
            bar.set_position(p.bytes);
        },
    );
    bar.finish_and_clear();
    Ok(path?)
}

/// SIGINT / SIGTERM: the first asks the run to stop (the window in flight is finished and the
/// outputs are written), the second stops at once; both say so right away.
fn watch_signals(stop: Arc<AtomicBool>, output: &Path) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing the signal handler")?;
    let output = output.display().to_string();
    std::thread::Builder::new()
        .name("vggtd-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                if !stop.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "{name}: stopping; finishing the window in flight, then writing the outputs to {output} (send it again to stop at once, keeping the previous outputs)"
                    );
                } else {
                    tracing::error!(
                        "second {name}: stopping at once; the outputs in {output} stay as the previous run left them"
                    );
                    std::process::exit(130);
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn apply_overrides(config: &mut DaemonConfig, args: &RunArgs) {
    if let Some(weights) = args
        .weights
        .clone()
        .or_else(|| std::env::var_os("VGGTD_WEIGHTS").map(PathBuf::from))
    {
        config.model.weights = Some(weights);
    }
    if let Some(url) = args
        .weights_url
        .clone()
        .or_else(|| std::env::var("VGGTD_WEIGHTS_URL").ok())
    {
        config.model.weights_url = url;
    }
    if let Some(model_config) = &args.model_config {
        config.model.model_config = Some(model_config.clone());
    }
    if let Some((mode, value)) = &args.viewer {
        config.viewer.mode = mode.clone();
        match (mode, value) {
            (ViewerMode::Serve, Some(port)) => {
                config.viewer.serve_port = port.parse().expect("checked by parse_viewer");
            }
            (_, Some(url)) => config.viewer.url = url.clone(),
            (_, None) => {}
        }
    }
    if let Some((kind, dir)) = &args.predictor {
        config.model.predictor = kind.clone();
        if let Some(dir) = dir {
            config.model.replay_dir = Some(dir.clone());
        }
    }
    if let Some(path) = &args.stats {
        config.output.stats = Some(path.clone());
    }
    if let Some(path) = &args.bag {
        config.output.bag = Some(path.clone());
    }
    if let Some(topic) = &args.topic {
        config.input.topic = Some(topic.clone());
    }
    if let Some(endpoint) = &args.ros2 {
        config.ros2.publish = true;
        if !endpoint.is_empty() {
            config.ros2.connect = vec![endpoint.clone()];
        }
    }
    if let Some(target) = &args.pose_stream {
        config.output.pose_stream = Some(target.clone());
    }
    if let Some(address) = &args.metrics {
        config.output.metrics = Some(address.clone());
    }
    if let Some(dir) = &args.sim_dataset {
        config.model.sim_dataset = Some(dir.clone());
    }
    if args.realtime {
        config.input.realtime = true;
    }
    if let Some(n) = args.max_frames {
        config.input.max_frames = n;
    }
    if let Some(width) = args.image_width {
        config.model.image_width = width;
    }
    if let Some(device) = args.device {
        config.model.device = device;
    }
    if let Some(precision) = args.precision {
        config.model.precision = precision;
    }
    if args.colmap {
        config.output.colmap = true;
    }
    if let Some(intrinsics) = &args.intrinsics {
        config.input.intrinsics = intrinsics.clone();
    }
    if let Some(metric) = args.metric_scale {
        config.metric_scale.source = match metric {
            MetricArg::None => submap::mapper::MetricSource::None,
            MetricArg::Depth => submap::mapper::MetricSource::Depth,
        };
    }
    if let Some(preset) = args.sim_preset {
        config.sim.preset = match preset {
            SimPresetArg::Toy => datasets::sim::SimPreset::Toy,
            SimPresetArg::Vggt => datasets::sim::SimPreset::Vggt,
            SimPresetArg::Hard => datasets::sim::SimPreset::Hard,
        };
    }
    if let Some(pace) = args.sim_pace {
        config.sim.model_pace = pace;
    }
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let alignment = match args.align {
        AlignArg::None => submap::eval::Alignment::None,
        AlignArg::Se3 => submap::eval::Alignment::Se3,
        AlignArg::Sim3 => submap::eval::Alignment::Sim3,
    };
    let stats = submap::eval::ape_from_files(&args.gt, &args.est, alignment, args.t_max_diff)
        .with_context(|| {
            format!(
                "evaluating {} against {}",
                args.est.display(),
                args.gt.display()
            )
        })?;
    if args.json {
        println!("{}", serde_json::to_string(&stats)?);
    } else {
        println!(
            "APE translation (m), {} pairs, alignment {:?}",
            stats.pairs, args.align
        );
        for (name, value) in [
            ("rmse", stats.rmse),
            ("mean", stats.mean),
            ("median", stats.median),
            ("std", stats.std),
            ("min", stats.min),
            ("max", stats.max),
            ("sse", stats.sse),
        ] {
            println!("  {name:>6}  {value:.6}");
        }
    }
    Ok(())
}

fn parse_path_kind(text: &str) -> Result<datasets::paths::PathKind, String> {
    datasets::paths::PathKind::parse(text).ok_or_else(|| {
        let names: Vec<&str> = datasets::paths::PathKind::ALL
            .iter()
            .map(|k| k.name())
            .collect();
        format!("`{text}`: expected one of {}", names.join(", "))
    })
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let options = datasets::synth::SynthOptions {
        seed: args.seed,
        width: args.width,
        height: args.height,
        max_frames: args.max_frames,
        stride: args.stride,
        ..Default::default()
    };
    let trajectory = match (&args.trajectory, args.path) {
        (Some(file), _) => file.clone(),
        (None, Some(kind)) => {
            std::fs::create_dir_all(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?;
            let file = args.output.join(format!("{}_path.txt", kind.name()));
            let poses = datasets::paths::path(kind, args.frames, 0.0);
            submap::tum::write_trajectory(&file, &poses)
                .with_context(|| format!("writing {}", file.display()))?;
            file
        }
        (None, None) => bail!("give --trajectory FILE or --path KIND"),
    };
    let rendered = datasets::synth::render_dataset(&trajectory, &args.output, &options)
        .with_context(|| format!("rendering along {}", trajectory.display()))?;
    eprintln!(
        "vggtd: rendered {} frames ({:.0}% coverage) into {}",
        rendered.frames,
        rendered.coverage * 100.0,
        args.output.display()
    );
    Ok(())
}

fn config(args: ConfigArgs) -> anyhow::Result<()> {
    if args.print_default {
        print!("{}", DaemonConfig::default_toml());
    }
    if let Some(path) = &args.check {
        DaemonConfig::from_file(path)?;
        eprintln!("{}: ok", path.display());
    }
    if !args.print_default && args.check.is_none() {
        bail!("nothing to do: pass --print-default or --check FILE");
    }
    Ok(())
}

fn cameras() -> anyhow::Result<()> {
    let cameras = pipeline::source::list_cameras();
    if cameras.is_empty() {
        println!("no cameras found: this machine has no /dev/video* device");
        return Ok(());
    }
    for camera in &cameras {
        let name = camera.name.as_deref().unwrap_or("(unknown)");
        match (&camera.error, camera.captures) {
            (Some(error), _) => {
                println!("{}  {name}: cannot query: {error}", camera.device.display())
            }
            (None, false) => println!(
                "{}  {name}: not a capture device (metadata or output node)",
                camera.device.display()
            ),
            (None, true) => {
                println!("{}  {name}", camera.device.display());
                for format in &camera.formats {
                    println!(
                        "    {} {}{}: {}",
                        format.fourcc,
                        format.description,
                        if format.supported {
                            ""
                        } else {
                            " (not decoded by vggtd)"
                        },
                        if format.sizes.is_empty() {
                            "sizes not listed".to_owned()
                        } else {
                            format.sizes.join(" ")
                        }
                    );
                }
            }
        }
    }
    let usable = cameras
        .iter()
        .filter(|c| c.captures && c.formats.iter().any(|f| f.supported))
        .count();
    if usable == 0 {
        println!("none of them captures MJPEG or YUYV, the formats vggtd reads");
    }
    Ok(())
}

fn fetch_weights(args: FetchArgs) -> anyhow::Result<()> {
    let dir = args
        .cache_dir
        .unwrap_or_else(pipeline::fetch::default_cache_dir);
    let name = args
        .file_name
        .unwrap_or_else(|| pipeline::fetch::cache_file_name(&args.url));
    let fetched = pipeline::fetch::fetch(&args.url, &dir, &name, args.sha256.as_deref())?;
    println!("{}", fetched.path.display());
    eprintln!(
        "vggtd: {} ({} bytes downloaded{}), sha256 {}{}",
        fetched.path.display(),
        fetched.downloaded_bytes,
        if fetched.resumed { ", resumed" } else { "" },
        fetched.sha256,
        if fetched.verified {
            " (verified)"
        } else {
            " (not verified: no expected checksum)"
        }
    );
    Ok(())
}
