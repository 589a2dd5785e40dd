//! `vggtd run`: wires a source, the stages, a predictor, the back-end and the publishers, then
//! writes the outputs.
//!
//! Order of checks before any frame is read: output directory writable, predictor ready (weights
//! loaded and checked), viewer sinks open, pose stream open, input opened. After the stream ends
//! (input exhausted, input error, or SIGINT/SIGTERM) every stage drains and the outputs are
//! written atomically, so an interrupted run still leaves valid files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};

use crate::backend::CoreStage;
use crate::config::{BackpressurePolicy, DaemonConfig};
use crate::outputs::{self, KeyframePose, Summary};
use crate::pose_stream::PoseStream;
use crate::source::{open_source, InputKind, SourceOptions};
use crate::stages::{self, Counters, Flow, IngestSettings, KeyframeOutput, Published};
use crate::viz::{Viz, VizTargets};

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
    /// Viewer setup failed.
    #[error(transparent)]
    Viz(#[from] crate::viz::VizError),
    /// Pose stream could not be opened.
    #[error(transparent)]
    PoseStream(#[from] crate::pose_stream::PoseStreamError),
    /// Recording directory problems.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// Window geometry is invalid.
    #[error(transparent)]
    Window(#[from] submap::window::WindowError),
    /// Writing the map failed.
    #[error(transparent)]
    Map(#[from] submap::map::MapError),
    /// The memory budget cannot be met.
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
    /// A stage thread panicked (a bug).
    #[error("stage `{0}` panicked")]
    StagePanicked(&'static str),
    /// Writing the COLMAP model failed.
    #[error(transparent)]
    Colmap(#[from] submap::colmap::ColmapError),
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
    /// Files written.
    pub files: Vec<PathBuf>,
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
    let mut planned_config = options.config.clone();
    outputs::ensure_writable_dir(&options.output)?;
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
    tracing::info!(predictor = %predictor_name, input = %options.input.display(), "starting");
    let core = CoreStage::new(mapper_config(config), config.viewer.voxel_rel)?;
    let mut keyframe_selector = crate::predictors::build_keyframe_selector(config);

    let rrd = options.rrd.clone().or_else(|| {
        config
            .output
            .write_rrd
            .then(|| options.output.join("recording.rrd"))
    });
    let viz = Viz::open(&VizTargets {
        mode: config.viewer.mode.clone(),
        url: config.viewer.url.clone(),
        serve_port: config.viewer.serve_port,
        rrd: rrd.clone(),
    })?;
    let pose_stream = config
        .output
        .pose_stream
        .as_deref()
        .map(PoseStream::open)
        .transpose()?;

    let metric = config.metric_scale.enabled();
    if metric && !matches!(kind, InputKind::Dataset(..)) {
        return Err(RunError::NoMetricDepth {
            input: options.input.display().to_string(),
            hint: "use a TUM RGB-D or 7-Scenes folder (their depth/ images), or leave metric scale off",
        });
    }
    let source = open_source(
        &kind,
        &SourceOptions {
            folder_fps: config.input.folder_fps,
            camera_width: config.input.camera_width,
            camera_height: config.input.camera_height,
            camera_fps: config.input.camera_fps,
            backoff: config.input.reconnect_backoff(),
            with_depth: metric,
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
        let log_images = config.viewer.log_images;
        let progress = progress.clone();
        spawn_named("vggtd-publish", move || {
            publish(
                viz,
                pose_stream,
                log_images,
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
    let viz = join("publish", publisher)?;
    progress.finish_and_clear();

    let interrupted = stop.load(Ordering::Relaxed);
    let mut summary = Summary {
        input: options.input.display().to_string(),
        predictor: predictor_name,
        interrupted,
        stream_error: stream_error.map(|e| e.to_string()),
        device_memory: model_memory.summary(),
        ..Summary::default()
    };
    let mut files = write_outputs(&options.output, &backend, &counters, &mut summary, started)?;
    if config.output.colmap {
        let dir = options.output.join("colmap");
        let written = backend.write_colmap(&dir)?;
        tracing::info!(
            cameras = written.cameras,
            images = written.images,
            points = written.points,
            dir = %dir.display(),
            "COLMAP model written"
        );
        files.push(dir);
    }
    if let Some(viz) = viz {
        viz.flush();
    }
    if let Some(rrd) = rrd {
        files.push(rrd);
    }
    tracing::info!(
        frames = summary.frames,
        keyframes = summary.keyframes,
        windows = summary.windows,
        loops = summary.loops,
        interrupted,
        "finished"
    );
    Ok(RunReport { summary, files })
}

fn write_outputs(
    dir: &Path,
    backend: &CoreStage,
    counters: &Counters,
    summary: &mut Summary,
    started: Instant,
) -> Result<Vec<PathBuf>, RunError> {
    let trajectory = backend.trajectory();
    let trajectory_path = dir.join("trajectory.txt");
    outputs::write_atomic(
        &trajectory_path,
        outputs::tum_trajectory(&trajectory).as_bytes(),
    )?;
    let keyframes_path = dir.join("keyframes.txt");
    outputs::write_atomic(
        &keyframes_path,
        outputs::keyframes_table(&trajectory).as_bytes(),
    )?;
    let map_path = dir.join("map.ply");
    summary.map_points = backend.write_map_ply(&map_path)?;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    summary.frames = load(&counters.frames);
    summary.corrupt_frames = load(&counters.corrupt_frames);
    summary.dropped_frames = load(&counters.dropped_frames);
    summary.dropped_keyframes = load(&counters.dropped_keyframes);
    summary.keyframes = load(&counters.keyframes);
    summary.windows = load(&counters.windows);
    summary.rejected_windows = load(&counters.rejected_windows);
    summary.loops = backend.loop_count() as u64;
    summary.backend = backend.summary();
    summary.phase_times = counters.phase_times(started.elapsed());
    summary.peak_memory_bytes = outputs::peak_memory_bytes();
    let summary_path = dir.join("summary.json");
    let json = serde_json::to_string_pretty(summary)
        .unwrap_or_else(|e| unreachable!("summary serialises: {e}"));
    outputs::write_atomic(&summary_path, json.as_bytes())?;
    Ok(vec![
        trajectory_path,
        keyframes_path,
        map_path,
        summary_path,
    ])
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

#[allow(clippy::too_many_arguments)]
fn publish(
    viz: Option<Viz>,
    mut pose_stream: Option<PoseStream>,
    log_images: bool,
    input: &Receiver<Flow<Published>>,
    depths: &QueueDepths,
    counters: &Counters,
    progress: &indicatif::ProgressBar,
    started: Instant,
) -> Option<Viz> {
    for message in input {
        let (published, stamp) = match message {
            Flow::Item(published, stamp) => (published, stamp),
            Flow::End => break,
        };
        let t0 = Instant::now();
        let step = &published.step;
        if let Some(stream) = pose_stream.as_mut() {
            for pose in step.new_poses.iter().chain(&step.moved_poses) {
                if let Err(e) = stream.send(pose) {
                    tracing::warn!(error = %e, "pose stream closed; no more poses will be streamed");
                    pose_stream = None;
                    break;
                }
            }
        }
        if let Some(viz) = &viz {
            log_step(viz, step, log_images);
        }
        log_metrics(viz.as_ref(), depths, counters, started, stamp);
        progress.set_message(format!(
            "{} keyframes, {} windows",
            counters.keyframes.load(Ordering::Relaxed),
            counters.windows.load(Ordering::Relaxed)
        ));
        counters.add_publish_time(t0);
    }
    viz
}

fn log_step(viz: &Viz, step: &crate::backend::BackendStep, log_images: bool) {
    let pose_of = |frame_id: u64| -> Option<&KeyframePose> {
        step.trajectory.iter().find(|p| p.frame_id == frame_id)
    };
    if let Some(last) = step.keyframes.last().and_then(|k| pose_of(k.frame_id)) {
        viz.set_time(last.frame_id, last.timestamp_s);
    }
    for pose in &step.new_poses {
        if let Some(view) = step.keyframes.iter().find(|k| k.frame_id == pose.frame_id) {
            let image = log_images.then_some(view.image.as_ref());
            viz.log_keyframe(pose, &view.intrinsics, image, view.resolution);
        }
    }
    for pose in &step.moved_poses {
        viz.log_keyframe_pose(pose);
    }
    if let Some(cloud) = &step.new_submap {
        viz.log_submap_points(cloud.submap, &cloud.points, &cloud.colors);
    }
    for (submap, world_from_submap) in &step.placed_submaps {
        viz.log_submap_transform(*submap, world_from_submap);
    }
    viz.log_trajectory(&step.trajectory);
    if let Some((frame_id, depth)) = &step.last_depth {
        let view = step.keyframes.iter().find(|k| k.frame_id == *frame_id);
        if let (Some(pose), Some(view)) = (pose_of(*frame_id), view) {
            viz.log_current_depth(pose, &view.intrinsics, depth);
        }
    }
    if !step.new_loops.is_empty() {
        viz.log_loop_edges(&step.loop_edges);
    }
}

fn log_metrics(
    viz: Option<&Viz>,
    depths: &QueueDepths,
    counters: &Counters,
    started: Instant,
    stamp: Instant,
) {
    let elapsed_s = started.elapsed().as_secs_f64().max(1e-9);
    let frames = counters.frames.load(Ordering::Relaxed) as f64;
    let latency_ms = stamp.elapsed().as_secs_f64() * 1e3;
    let memory_mib = outputs::current_memory_bytes() as f64 / (1024.0 * 1024.0);
    let queue = [
        ("frames", depths.frames.len()),
        ("keyframes", depths.keyframes.len()),
        ("publish", depths.publish.len()),
    ];
    if let Some(viz) = viz {
        for (name, depth) in queue {
            viz.log_scalar(&format!("queue/{name}"), depth as f64);
        }
        viz.log_scalar("fps", frames / elapsed_s);
        viz.log_scalar("latency_ms", latency_ms);
        viz.log_scalar("memory_mib", memory_mib);
    }
    tracing::debug!(
        fps = frames / elapsed_s,
        latency_ms,
        memory_mib,
        queue_frames = queue[0].1,
        queue_keyframes = queue[1].1,
        queue_publish = queue[2].1,
        "metrics"
    );
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
