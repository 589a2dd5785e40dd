//! `vggtd run`: wires a source, the stages, a predictor, the back-end and the publishers, then
//! writes the outputs.
//!
//! Order of checks before any frame is read: output directory writable, predictor ready (weights
//! loaded and checked), outputs open (viewer, recording, pose stream), input opened. After the
//! stream ends (input exhausted, input error, or the first SIGINT/SIGTERM) every stage drains,
//! every [`Sink`](crate::sinks::Sink) finishes into the run's staging area, and the staged files
//! replace the previous run's together ([`crate::staging`]). A run that fails, or ends before
//! its first window, leaves the previous outputs as they were.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver};

use crate::backend::CoreStage;
use crate::config::{BackpressurePolicy, DaemonConfig};
use crate::outputs::{self, Summary};
use crate::sinks::{Metrics, Publisher, RunEnd, SinkError, SinkSetup};
use crate::source::{open_source, InputKind, SourceOptions};
use crate::stages::{self, Counters, Flow, IngestSettings, KeyframeOutput, Published};
use crate::staging::{Staging, StagingError};

/// Error that stops a run before or while it starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Output directory problems.
    #[error(transparent)]
    Output(#[from] outputs::OutputError),
    /// Input could not be opened.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// Predictor could not be built (weights, model config, replay directory...).
    #[error(transparent)]
    Predictor(#[from] crate::predictors::PredictorError),
    /// An output could not be opened (viewer, recording file, pose stream).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The staging area of the outputs failed.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// Writing the outputs at the end failed; the previous run's outputs are kept.
    #[error("{error}; the previous outputs in {} are kept{}", .dir.display(), kept_note(.kept))]
    Finish {
        /// What failed.
        error: SinkError,
        /// The output directory.
        dir: PathBuf,
        /// Files of this run kept under a failed name (the recording).
        kept: Vec<PathBuf>,
    },
    /// The run ended before its first window.
    #[error("no window was reconstructed from {input} ({frames} frames read, {keyframes} keyframes, {rejected} windows rejected{why}); the previous outputs in {} are kept", .dir.display())]
    NoWindow {
        /// The input.
        input: String,
        /// Frames read.
        frames: u64,
        /// Keyframes selected.
        keyframes: u64,
        /// Windows rejected (see the warnings for why).
        rejected: u64,
        /// Why the stream ended, if not at its end.
        why: String,
        /// The output directory.
        dir: PathBuf,
    },
    /// Recording directory problems.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// Window geometry is invalid.
    #[error(transparent)]
    Window(#[from] submap::window::WindowError),
    /// The memory budget cannot be met.
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
    /// A stage thread panicked (a bug).
    #[error("stage `{0}` panicked")]
    StagePanicked(&'static str),
    /// The intrinsics setting cannot be used.
    #[error(transparent)]
    Intrinsics(#[from] crate::intrinsics::IntrinsicsError),
    /// `--metric-scale depth` on an input without depth images.
    #[error("--metric-scale depth needs depth images, and {input} has none: {hint}")]
    NoMetricDepth {
        /// The input.
        input: String,
        /// What to do.
        hint: &'static str,
    },
}

fn kept_note(kept: &[PathBuf]) -> String {
    if kept.is_empty() {
        return String::new();
    }
    let names: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
    format!(" (this run's recording: {})", names.join(", "))
}

/// Everything `vggtd run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Video file, image folder, dataset folder or `/dev/videoN`.
    pub input: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// Configuration after command-line overrides.
    pub config: DaemonConfig,
    /// `.rrd` file to write (besides `output.write_rrd`).
    pub rrd: Option<PathBuf>,
    /// Directory to record every window's prediction into.
    pub record: Option<PathBuf>,
}

/// Result of a finished run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// What `summary.json` holds.
    pub summary: Summary,
    /// Files and folders written (in the output directory, and the recording where it was
    /// asked for elsewhere).
    pub files: Vec<PathBuf>,
}

/// What the stage threads leave at the end of the stream.
struct Streamed {
    backend: CoreStage,
    publisher: Publisher,
    /// Everything but what the sinks add at the end.
    summary: Summary,
}

fn spawn_named<T: Send + 'static>(
    name: &'static str,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .unwrap_or_else(|e| panic!("cannot spawn thread {name}: {e}"))
}

fn join<T>(name: &'static str, handle: std::thread::JoinHandle<T>) -> Result<T, RunError> {
    handle.join().map_err(|_| RunError::StagePanicked(name))
}

/// Runs the daemon to the end of its input (or until `stop` is set) and writes the outputs.
pub fn run(options: RunOptions, stop: Arc<AtomicBool>) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let run_id = crate::staging::run_id(started_at);
    // A wrong input is said before anything is created or loaded.
    let kind = crate::source::InputKind::detect(&options.input)?;
    crate::source::check_input(&kind, options.config.input.topic.as_deref())?;
    outputs::ensure_writable_dir(&options.output)?;
    let mut staging = Staging::begin(&options.output, &run_id)?;
    let summary = Summary {
        run_id: run_id.clone(),
        started_utc: crate::staging::rfc3339(started_at),
        input: options.input.display().to_string(),
        ..Summary::default()
    };
    let streamed = match stream(&options, &stop, &mut staging, summary, started) {
        Ok(streamed) => streamed,
        Err(e @ RunError::StagePanicked(_)) => {
            staging.fail();
            return Err(e);
        }
        Err(e) => {
            staging.abandon();
            return Err(e);
        }
    };
    let Streamed {
        backend,
        publisher,
        mut summary,
    } = streamed;
    if summary.windows == 0 {
        drop(publisher);
        staging.abandon();
        let why = match (&summary.stream_error, summary.interrupted) {
            (Some(error), _) => format!(": {error}"),
            (None, true) => ": stopped by a signal".to_owned(),
            (None, false) => String::new(),
        };
        return Err(RunError::NoWindow {
            input: summary.input.clone(),
            frames: summary.frames,
            keyframes: summary.keyframes,
            rejected: summary.rejected_windows,
            why,
            dir: options.output.clone(),
        });
    }
    let finished = publisher.finish(&mut RunEnd::new(&backend, &staging, &mut summary));
    if let Err(error) = finished {
        let kept = staging.fail();
        return Err(RunError::Finish {
            error,
            dir: options.output.clone(),
            kept,
        });
    }
    let files = staging.commit()?;
    tracing::info!(
        run = %run_id,
        frames = summary.frames,
        keyframes = summary.keyframes,
        windows = summary.windows,
        loops = summary.loops,
        model_s = format!("{:.2}", summary.phase_times.inference_s),
        model_idle_s = format!("{:.2}", summary.phase_times.model_idle_s),
        interrupted = summary.interrupted,
        "finished"
    );
    Ok(RunReport { summary, files })
}

/// Where the recording goes: `--rrd FILE`, else `recording.rrd` with `output.write_rrd`; in the
/// staging area when it belongs in the output directory, else beside its target under a
/// temporary name. Kept under a failed name when the run fails.
fn recording_path(
    options: &RunOptions,
    config: &DaemonConfig,
    staging: &mut Staging,
) -> Option<PathBuf> {
    let target = options.rrd.clone().or_else(|| {
        config
            .output
            .write_rrd
            .then(|| options.output.join(outputs::RECORDING))
    })?;
    Some(staged_file(&options.output, &target, staging))
}

/// Where to write output file `target`: in the staging area when it is in the output directory,
/// else beside itself under a temporary name; either way it is kept when the run fails.
fn staged_file(output: &Path, target: &Path, staging: &mut Staging) -> PathBuf {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let same_dir = match (parent.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let path = match target.file_name() {
        Some(name) if same_dir => staging.path(&name.to_string_lossy()),
        _ => staging.external(target),
    };
    staging.keep_on_failure(&path);
    path
}

/// Opens everything and runs the stage threads to the end of the stream.
fn stream(
    options: &RunOptions,
    stop: &Arc<AtomicBool>,
    staging: &mut Staging,
    mut summary: Summary,
    started: Instant,
) -> Result<Streamed, RunError> {
    let mut planned_config = options.config.clone();
    let kind = InputKind::detect(&options.input)?;
    let plan = crate::budget::plan_for(&planned_config, &kind)?;
    if let Some(plan) = &plan {
        crate::budget::apply(&mut planned_config, plan);
    }
    let config = &planned_config;

    let model_memory = crate::vggt_predictor::ModelMemory::default();
    let mut predictor = crate::predictors::build(config, &kind, plan.as_ref(), &model_memory)?;
    let known = crate::intrinsics::IntrinsicsSource::parse(&config.input.intrinsics)
        .and_then(|source| source.resolve(&kind))?;
    if let Some(k) = known {
        tracing::info!(
            fx = k.fx,
            fy = k.fy,
            cx = k.cx,
            cy = k.cy,
            "known intrinsics replace the predicted ones"
        );
        predictor = Box::new(crate::intrinsics::KnownIntrinsics::new(predictor, k));
    }
    if let Some(dir) = &options.record {
        predictor = Box::new(crate::record::RecordingPredictor::new(
            predictor,
            crate::record::Recorder::new(dir)?,
        ));
    }
    let predictor_name = predictor.name().to_owned();
    tracing::info!(
        run = %staging.run_id(),
        predictor = %predictor_name,
        input = %options.input.display(),
        "starting"
    );
    let mut core = CoreStage::new(mapper_config(config), config.viewer.voxel_rel)?;
    let mut keyframe_selector = crate::predictors::build_keyframe_selector(config);

    // Checked before the outputs open (a viewer may be spawned for them).
    let metric = config.metric_scale.enabled();
    if metric && !matches!(kind, InputKind::Dataset(..)) {
        return Err(RunError::NoMetricDepth {
            input: options.input.display().to_string(),
            hint: "use a TUM RGB-D or 7-Scenes folder (their depth/ images), or leave metric scale off",
        });
    }
    let recording = recording_path(options, config, staging);
    let bag = config
        .output
        .bag
        .as_ref()
        .map(|target| staged_file(&options.output, target, staging));
    let publisher = Publisher::new(crate::sinks::open(&SinkSetup {
        config,
        recording,
        bag,
        run_id: staging.run_id(),
    })?);
    core.set_clouds(publisher.wants_clouds());

    let source = open_source(
        &kind,
        &SourceOptions {
            folder_fps: config.input.folder_fps,
            camera_width: config.input.camera_width,
            camera_height: config.input.camera_height,
            camera_fps: config.input.camera_fps,
            backoff: config.input.reconnect_backoff(),
            with_depth: metric,
            topic: config.input.topic.clone(),
            ros2: config.ros2.clone(),
            stop: stop.clone(),
        },
    )?;
    tracing::info!(source = %source.describe(), "input opened");
    let progress = progress_bar(source.len_hint(), source.is_live());
    let drop_when_full = match config.queues.policy {
        BackpressurePolicy::Auto => source.is_live(),
        BackpressurePolicy::Block => false,
        BackpressurePolicy::DropFrames => true,
    };
    let keyframe_output = if drop_when_full {
        KeyframeOutput::Backlog {
            capacity: stages::LIVE_KEYFRAME_BACKLOG,
        }
    } else {
        KeyframeOutput::Block
    };
    let ingest_settings = IngestSettings {
        drop_when_full,
        realtime: config.input.realtime && !source.is_live(),
        stride: config.input.stride,
        max_frames: config.input.max_frames,
    };

    let counters = Arc::new(Counters::default());
    let q = &config.queues;
    let (frames_tx, frames_rx) = bounded(q.frames);
    let (keyframes_tx, keyframes_rx) = bounded(q.keyframes);
    // One request in flight: the core integrates every answer before the next request.
    let (requests_tx, requests_rx) = bounded(1);
    let (answers_tx, answers_rx) = bounded(1);
    let (publish_tx, publish_rx) = bounded(q.publish);
    let depths = QueueDepths {
        frames: frames_rx.clone(),
        keyframes: keyframes_rx.clone(),
        publish: publish_rx.clone(),
    };
    // The first stats line's floor covers the stages' run, not the start-up before it.
    let _ = vggt::memory::take_floor();

    let ingest = {
        let (stop, counters, progress) = (stop.clone(), counters.clone(), progress.clone());
        spawn_named("vggtd-ingest", move || {
            stages::ingest(
                source,
                &ingest_settings,
                &frames_tx,
                &stop,
                &counters,
                &progress,
            )
        })
    };
    let keyframes = {
        let (stop, counters) = (stop.clone(), counters.clone());
        spawn_named("vggtd-keyframes", move || {
            stages::select_keyframes(
                |frame| keyframe_selector(frame),
                keyframe_output,
                &frames_rx,
                &keyframes_tx,
                &stop,
                &counters,
            )
        })
    };
    let core = {
        let (stop, counters) = (stop.clone(), counters.clone());
        spawn_named("vggtd-core", move || {
            stages::run_core(
                core,
                &keyframes_rx,
                requests_tx,
                &answers_rx,
                &publish_tx,
                &stop,
                &counters,
            )
        })
    };
    let inference = {
        let counters = counters.clone();
        spawn_named("vggtd-inference", move || {
            stages::infer(predictor, &requests_rx, &answers_tx, &counters)
        })
    };
    let publisher = {
        let counters = counters.clone();
        let progress = progress.clone();
        spawn_named("vggtd-publish", move || {
            publish(
                publisher,
                &publish_rx,
                &depths,
                &counters,
                &progress,
                started,
            )
        })
    };

    let stream_error = join("ingest", ingest)?;
    join("keyframes", keyframes)?;
    let backend = join("core", core)?;
    join("inference", inference)?;
    let publisher = join("publish", publisher)?;
    progress.finish_and_clear();

    summary.predictor = predictor_name;
    summary.interrupted = stop.load(Ordering::Relaxed);
    summary.stream_error = stream_error.map(|e| e.to_string());
    summary.device_memory = model_memory.summary();
    fill_summary(&mut summary, &backend, &counters, started);
    Ok(Streamed {
        backend,
        publisher,
        summary,
    })
}

/// The counters' and the back-end's figures.
fn fill_summary(summary: &mut Summary, backend: &CoreStage, counters: &Counters, started: Instant) {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    summary.frames = load(&counters.frames);
    summary.corrupt_frames = load(&counters.corrupt_frames);
    summary.dropped_frames = load(&counters.dropped_frames);
    summary.missed_frames = load(&counters.missed_frames);
    summary.dropped_keyframes = load(&counters.dropped_keyframes);
    summary.keyframes = load(&counters.keyframes);
    summary.windows = load(&counters.windows);
    summary.rejected_windows = load(&counters.rejected_windows);
    summary.loops = backend.loop_count() as u64;
    summary.backend = backend.summary();
    summary.phase_times = counters.phase_times(started.elapsed());
    summary.peak_memory_bytes = outputs::peak_memory_bytes();
}

fn progress_bar(len: Option<u64>, live: bool) -> indicatif::ProgressBar {
    if live {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => indicatif::ProgressBar::new(len),
        None => indicatif::ProgressBar::no_length(),
    };
    let style =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} frames {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

struct QueueDepths {
    frames: Receiver<Flow<submap::prediction::WindowFrame>>,
    keyframes: Receiver<Flow<submap::prediction::WindowFrame>>,
    publish: Receiver<Flow<Published>>,
}

fn publish(
    mut publisher: Publisher,
    input: &Receiver<Flow<Published>>,
    depths: &QueueDepths,
    counters: &Counters,
    progress: &indicatif::ProgressBar,
    started: Instant,
) -> Publisher {
    for message in input {
        let (published, stamp) = match message {
            Flow::Item(published, stamp) => (published, stamp),
            Flow::End => break,
        };
        let t0 = Instant::now();
        publisher.step(&published.step);
        let mut figures = metrics(depths, counters, started, stamp);
        figures.map_bytes = published.step.retained_bytes as u64;
        figures.sink_s = publisher.sink_seconds();
        publisher.metrics(&figures);
        progress.set_message(format!(
            "{} keyframes, {} windows",
            counters.keyframes.load(Ordering::Relaxed),
            counters.windows.load(Ordering::Relaxed)
        ));
        counters.add_publish_time(t0);
    }
    publisher
}

/// The live figures the counters and the process give; the caller adds the step's.
fn metrics(depths: &QueueDepths, counters: &Counters, started: Instant, stamp: Instant) -> Metrics {
    let elapsed_s = started.elapsed().as_secs_f64().max(1e-9);
    let frames = counters.frames.load(Ordering::Relaxed) as f64;
    let host = vggt::memory::take_floor();
    let metrics = Metrics {
        frames: counters.frames.load(Ordering::Relaxed),
        fps: frames / elapsed_s,
        latency_ms: stamp.elapsed().as_secs_f64() * 1e3,
        queues: [
            ("frames", depths.frames.len()),
            ("keyframes", depths.keyframes.len()),
            ("publish", depths.publish.len()),
        ],
        keyframes: counters.keyframes.load(Ordering::Relaxed),
        windows: counters.windows.load(Ordering::Relaxed),
        loops: counters.loops.load(Ordering::Relaxed),
        rss_bytes: outputs::current_memory_bytes(),
        live_bytes: host.map_or(0, |m| m.live_bytes as u64),
        live_floor_bytes: host.map_or(0, |m| m.floor_bytes as u64),
        phase_times: counters.phase_times(started.elapsed()),
        ..Metrics::default()
    };
    tracing::debug!(
        fps = metrics.fps,
        latency_ms = metrics.latency_ms,
        memory_mib = metrics.memory_mib(),
        queue_frames = metrics.queues[0].1,
        queue_keyframes = metrics.queues[1].1,
        queue_publish = metrics.queues[2].1,
        "metrics"
    );
    metrics
}

/// The core's settings: `attention_k` only when the covisibility graph chooses the neighbours.
fn mapper_config(config: &DaemonConfig) -> submap::mapper::MapperConfig {
    submap::mapper::MapperConfig {
        window: config.window,
        backend: config.backend.clone(),
        attention_k: config
            .model
            .attention_k
            .filter(|_| config.model.neighbours == crate::config::NeighbourSource::Covisibility),
        metric_scale: config.metric_scale.clone(),
    }
}
