//! Every output of a run is a [`Sink`]: the output files, the COLMAP model, the rerun view and
//! recording, the pose stream, the metrics endpoint, the stats lines, the ROS 2 topics on the
//! network and in a rosbag2 file. The publish stage drives
//! them all through one [`Publisher`], which also times each of them.
//!
//! A sink hears, in this order for each back-end step: the step's time, new keyframes (pose,
//! intrinsics, image), moved keyframe poses, a new submap's points, submap placements, the whole
//! trajectory, the current frame with its depth, the loop edges; then the live metrics. At the
//! end of the run every sink gets [`Sink::finish`] with the final back-end, in the order they
//! were opened: files are written into the run's staging area ([`crate::staging`]), which the run
//! then commits as one unit.
//!
//! A sink that fails while streaming (a viewer that went away, a closed pose-stream socket) is
//! dropped with a warning and the run goes on; a sink that fails at the end fails the run, and
//! the previous run's outputs stay as they were.
//!
//! Adding an output: a file in this folder with a type that implements [`Sink`], and one line
//! in [`open`] that opens it from the configuration.

mod bag;
mod colmap;
mod files;
mod metrics;
mod pose_stream;
mod rerun;
pub mod ros;
#[cfg(feature = "ros2")]
mod ros2;
mod stats;

use std::path::PathBuf;

use nalgebra::{Isometry3, Matrix4};
use submap::prediction::Map2;

use crate::backend::{BackendStep, CoreStage, KeyframeView, SubmapCloud};
use crate::config::DaemonConfig;
use crate::outputs::{KeyframePose, Summary};
use crate::staging::Staging;

pub use self::bag::BagWire;
pub use self::colmap::ColmapSink;
pub use self::files::FilesSink;
pub use self::metrics::{parse_address as parse_metrics_address, MetricsSink};
pub use self::rerun::RerunSink;
#[cfg(feature = "ros2")]
pub use self::ros2::Ros2Wire;

/// Error of one sink.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: &'static str,
    /// What went wrong.
    pub message: String,
}

impl SinkError {
    /// An error of sink `sink`.
    pub fn new(sink: &'static str, error: impl std::fmt::Display) -> Self {
        Self {
            sink,
            message: error.to_string(),
        }
    }
}

/// Result of a sink call.
pub type SinkResult = Result<(), SinkError>;

/// Figures of the running pipeline, after each step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Frames read so far.
    pub frames: u64,
    /// Input frames per second of wall time since the start.
    pub fps: f64,
    /// Time from the window's request to its publication, milliseconds.
    pub latency_ms: f64,
    /// Items waiting in the frame, keyframe and publish queues.
    pub queues: [(&'static str, usize); 3],
    /// Keyframes selected so far.
    pub keyframes: u64,
    /// Windows predicted so far.
    pub windows: u64,
    /// Loops closed so far.
    pub loops: u64,
    /// Resident memory of the process, bytes.
    pub rss_bytes: u64,
    /// Bytes the process's allocator holds for live allocations (0 where the binary does not
    /// count them).
    pub live_bytes: u64,
    /// The lowest `live_bytes` since the previous figures: what stayed allocated throughout, not
    /// what the stages had in flight at the moment of reading (0 where not counted).
    pub live_floor_bytes: u64,
    /// What the back-end keeps for the map (`map.max_retained_mib` bounds it), bytes.
    pub map_bytes: u64,
    /// Time in each stage since the start (busy time, each stage on its own thread).
    pub phase_times: crate::outputs::PhaseTimes,
    /// Time in each output since the start, seconds, in the outputs' order.
    pub sink_s: Vec<(&'static str, f64)>,
}

impl Metrics {
    /// Resident memory of the process, MiB.
    pub fn memory_mib(&self) -> f64 {
        self.rss_bytes as f64 / (1024.0 * 1024.0)
    }
}

/// What a sink gets at the end of the run.
pub struct RunEnd<'a> {
    /// The back-end with the final trajectory and map.
    pub backend: &'a CoreStage,
    /// The run's staging area: files go to [`Staging::path`].
    pub staging: &'a Staging,
    /// The run's summary; sinks add their figures (the files sink, finished last, writes it).
    pub summary: &'a mut Summary,
    /// The final map, built by the first sink that asks ([`RunEnd::map`]).
    map: std::cell::OnceCell<FinalMap>,
}

/// The end-of-run map (what `map.ply` holds), with the keyframe pixel each point comes from
/// (`(frame id, u, v)`, for the COLMAP model).
pub struct FinalMap {
    /// Points and colours.
    pub map: submap::map::GlobalMap,
    /// Where each point comes from.
    pub sources: Vec<(u64, f64, f64)>,
}

impl<'a> RunEnd<'a> {
    /// The end of a run over `backend`.
    pub fn new(backend: &'a CoreStage, staging: &'a Staging, summary: &'a mut Summary) -> Self {
        Self {
            backend,
            staging,
            summary,
            map: std::cell::OnceCell::new(),
        }
    }

    /// The final map: built from every kept pixel once, for all the sinks that write it.
    pub fn map(&self) -> &FinalMap {
        self.map.get_or_init(|| {
            let started = std::time::Instant::now();
            let (map, sources) = self.backend.mapper().backend().map_with_sources();
            tracing::info!(
                points = map.points_in_world.len(),
                seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                "final map built"
            );
            FinalMap { map, sources }
        })
    }
}

/// One output of the daemon. Every method has a default that ignores the event.
pub trait Sink: Send {
    /// Short name for messages.
    fn name(&self) -> &'static str;
    /// A step begins; what follows belongs to frame `frame_id` captured at `timestamp_s`.
    fn set_time(&mut self, _frame_id: u64, _timestamp_s: f64) {}
    /// A keyframe's first pose, with what the prediction saw when the keyframe is in the step's
    /// window.
    fn keyframe(&mut self, _pose: &KeyframePose, _view: Option<&KeyframeView>) -> SinkResult {
        Ok(())
    }
    /// A keyframe pose the pose graph moved (its revision grew).
    fn pose_moved(&mut self, _pose: &KeyframePose) -> SinkResult {
        Ok(())
    }
    /// Whether this output uses the submaps' points ([`Sink::submap`]); when no output does, the
    /// core does not compute them and the clouds arrive empty.
    fn wants_clouds(&self) -> bool {
        false
    }
    /// A new submap's points, in the submap's own frame (sent once per submap).
    fn submap(&mut self, _cloud: &SubmapCloud) -> SinkResult {
        Ok(())
    }
    /// A submap's placement in the world (similarity), new or moved by the pose graph.
    fn submap_placed(&mut self, _submap: usize, _world_from_submap: &Matrix4<f64>) -> SinkResult {
        Ok(())
    }
    /// The whole trajectory after the step, every pose with its revision.
    fn trajectory(&mut self, _poses: &[KeyframePose]) -> SinkResult {
        Ok(())
    }
    /// The latest keyframe with its depth in world units.
    fn current_frame(
        &mut self,
        _pose: &KeyframePose,
        _view: &KeyframeView,
        _depth: &Map2<f32>,
    ) -> SinkResult {
        Ok(())
    }
    /// Every loop closure so far, as the two keyframes' current poses (sent when one is added).
    fn loops(&mut self, _edges: &[(Isometry3<f64>, Isometry3<f64>)]) -> SinkResult {
        Ok(())
    }
    /// Live figures after a step.
    fn metrics(&mut self, _metrics: &Metrics) -> SinkResult {
        Ok(())
    }
    /// End of the run (clean end, end of input, or first stop signal).
    fn finish(&mut self, _end: &mut RunEnd<'_>) -> SinkResult {
        Ok(())
    }
}

/// Where and how the sinks are opened.
#[derive(Debug, Clone)]
pub struct SinkSetup<'a> {
    /// The run's settings.
    pub config: &'a DaemonConfig,
    /// Where the recording goes (already a staging path), if anywhere.
    pub recording: Option<PathBuf>,
    /// Where the rosbag2 file goes (already a staging path), if anywhere.
    pub bag: Option<PathBuf>,
    /// The run's id, also the recording id.
    pub run_id: &'a str,
}

/// Opens every output the configuration asks for, files last (they write the summary).
pub fn open(setup: &SinkSetup<'_>) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let config = setup.config;
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(target) = &config.output.pose_stream {
        sinks.push(Box::new(pose_stream::open(target)?));
    }
    if let Some(address) = &config.output.metrics {
        sinks.push(Box::new(MetricsSink::open(address)?));
    }
    if let Some(path) = &config.output.stats {
        sinks.push(Box::new(stats::StatsSink::open(path)?));
    }
    if let Some(viz) = RerunSink::open(config, setup.recording.clone(), setup.run_id)? {
        sinks.push(Box::new(viz));
    }
    if let Some(path) = &setup.bag {
        sinks.push(Box::new(bag::open(path, &config.ros2)?));
    }
    if config.ros2.publish {
        sinks.push(open_ros2(config)?);
    }
    if config.output.colmap {
        sinks.push(Box::new(ColmapSink));
    }
    sinks.push(Box::new(FilesSink));
    Ok(sinks)
}

#[cfg(feature = "ros2")]
fn open_ros2(config: &DaemonConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(ros2::open(&config.ros2)?))
}

#[cfg(not(feature = "ros2"))]
fn open_ros2(_: &DaemonConfig) -> Result<Box<dyn Sink>, SinkError> {
    Err(SinkError::new(
        "ros2",
        "this build has no ROS 2 network support: rebuild with the `ros2` cargo feature",
    ))
}

/// Drives a set of sinks; the synchronous core of the publish stage.
pub struct Publisher {
    sinks: Vec<Box<dyn Sink>>,
    /// Time spent in each sink, by name, in the order they were opened.
    spent: Vec<(&'static str, std::time::Duration)>,
}

impl Publisher {
    /// Drives `sinks`, in this order.
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        let spent = sinks
            .iter()
            .map(|s| (s.name(), std::time::Duration::ZERO))
            .collect();
        Self { sinks, spent }
    }

    /// Seconds spent in each sink so far (failed sinks included), in the order they were opened.
    pub fn sink_seconds(&self) -> Vec<(&'static str, f64)> {
        self.spent
            .iter()
            .map(|(name, d)| (*name, d.as_secs_f64()))
            .collect()
    }

    /// Whether any sink uses the submaps' clouds.
    pub fn wants_clouds(&self) -> bool {
        self.sinks.iter().any(|s| s.wants_clouds())
    }

    /// Names of the sinks still running.
    pub fn names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|s| s.name()).collect()
    }

    /// Calls `event` on every sink; drops, with a warning, a sink that fails.
    fn each(&mut self, mut event: impl FnMut(&mut dyn Sink) -> SinkResult) {
        let spent = &mut self.spent;
        self.sinks.retain_mut(|sink| {
            let started = std::time::Instant::now();
            let result = event(sink.as_mut());
            if let Some((_, d)) = spent.iter_mut().find(|(name, _)| *name == sink.name()) {
                *d += started.elapsed();
            }
            match result {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(sink = sink.name(), error = %e, "output failed; it gets nothing more in this run");
                    false
                }
            }
        });
    }

    /// Sends one back-end step to every sink.
    pub fn step(&mut self, step: &BackendStep) {
        let pose_of = |frame_id: u64| step.trajectory.iter().find(|p| p.frame_id == frame_id);
        let view_of = |frame_id: u64| step.keyframes.iter().find(|k| k.frame_id == frame_id);
        if let Some(last) = step.keyframes.last().and_then(|k| pose_of(k.frame_id)) {
            for sink in &mut self.sinks {
                sink.set_time(last.frame_id, last.timestamp_s);
            }
        }
        for pose in &step.new_poses {
            let view = view_of(pose.frame_id);
            self.each(|sink| sink.keyframe(pose, view));
        }
        for pose in &step.moved_poses {
            self.each(|sink| sink.pose_moved(pose));
        }
        if let Some(cloud) = &step.new_submap {
            self.each(|sink| sink.submap(cloud));
        }
        for (submap, world_from_submap) in &step.placed_submaps {
            self.each(|sink| sink.submap_placed(*submap, world_from_submap));
        }
        self.each(|sink| sink.trajectory(&step.trajectory));
        if let Some((frame_id, depth)) = &step.last_depth {
            if let (Some(pose), Some(view)) = (pose_of(*frame_id), view_of(*frame_id)) {
                self.each(|sink| sink.current_frame(pose, view, depth));
            }
        }
        if !step.new_loops.is_empty() {
            self.each(|sink| sink.loops(&step.loop_edges));
        }
    }

    /// Sends the live figures to every sink.
    pub fn metrics(&mut self, metrics: &Metrics) {
        self.each(|sink| sink.metrics(metrics));
    }

    /// Finishes every sink in order; the first error ends it (the run then keeps the previous
    /// outputs).
    pub fn finish(mut self, end: &mut RunEnd<'_>) -> Result<(), SinkError> {
        for sink in &mut self.sinks {
            sink.finish(end)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use nalgebra::Vector3;

    use super::*;

    /// Records the events it hears.
    struct Log {
        events: Arc<Mutex<Vec<String>>>,
        fail_on: Option<&'static str>,
    }

    impl Log {
        fn push(&mut self, event: &'static str, detail: String) -> SinkResult {
            self.events
                .lock()
                .expect("lock")
                .push(format!("{event} {detail}"));
            match self.fail_on {
                Some(e) if e == event => Err(SinkError::new("log", "refused")),
                _ => Ok(()),
            }
        }
    }

    impl Sink for Log {
        fn name(&self) -> &'static str {
            "log"
        }
        fn set_time(&mut self, frame_id: u64, _timestamp_s: f64) {
            let _ = self.push("time", frame_id.to_string());
        }
        fn keyframe(&mut self, pose: &KeyframePose, _view: Option<&KeyframeView>) -> SinkResult {
            self.push("keyframe", pose.frame_id.to_string())
        }
        fn pose_moved(&mut self, pose: &KeyframePose) -> SinkResult {
            self.push("moved", pose.frame_id.to_string())
        }
        fn submap(&mut self, cloud: &SubmapCloud) -> SinkResult {
            self.push("submap", cloud.points.len().to_string())
        }
        fn submap_placed(&mut self, submap: usize, _m: &Matrix4<f64>) -> SinkResult {
            self.push("placed", submap.to_string())
        }
        fn trajectory(&mut self, poses: &[KeyframePose]) -> SinkResult {
            self.push("trajectory", poses.len().to_string())
        }
        fn current_frame(
            &mut self,
            pose: &KeyframePose,
            _view: &KeyframeView,
            depth: &Map2<f32>,
        ) -> SinkResult {
            self.push("current", format!("{} {}", pose.frame_id, depth.width))
        }
        fn loops(&mut self, edges: &[(Isometry3<f64>, Isometry3<f64>)]) -> SinkResult {
            self.push("loops", edges.len().to_string())
        }
        fn metrics(&mut self, metrics: &Metrics) -> SinkResult {
            self.push("metrics", metrics.windows.to_string())
        }
    }

    fn pose(frame_id: u64) -> KeyframePose {
        KeyframePose {
            frame_id,
            timestamp_s: frame_id as f64 * 0.1,
            world_from_cam: Isometry3::new(
                Vector3::new(frame_id as f64, 0.0, 0.0),
                Vector3::zeros(),
            ),
            submap: 0,
            revision: 0,
        }
    }

    fn view(frame_id: u64) -> KeyframeView {
        KeyframeView {
            frame_id,
            intrinsics: submap::prediction::Intrinsics {
                fx: 10.0,
                fy: 10.0,
                cx: 2.0,
                cy: 1.5,
            },
            resolution: [4, 3],
            image: Arc::new(image::RgbImage::new(4, 3)),
        }
    }

    fn step() -> BackendStep {
        BackendStep {
            new_submap: Some(SubmapCloud {
                submap: 1,
                points: vec![[0.0; 3]; 5],
                colors: vec![[0; 3]; 5],
            }),
            placed_submaps: vec![(1, Matrix4::identity())],
            new_poses: vec![pose(4), pose(5)],
            moved_poses: vec![pose(2)],
            new_loops: vec![(2, 5)],
            loop_edges: vec![(Isometry3::identity(), Isometry3::identity())],
            trajectory: vec![pose(2), pose(4), pose(5)],
            keyframes: vec![view(4), view(5)],
            last_depth: Some((
                5,
                Map2 {
                    width: 4,
                    height: 3,
                    data: vec![1.0; 12],
                },
            )),
            retained_bytes: 1000,
        }
    }

    #[test]
    fn a_step_reaches_every_sink_in_order() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(Log {
            events: events.clone(),
            fail_on: None,
        })];
        let mut publisher = Publisher::new(sinks);
        publisher.step(&step());
        publisher.metrics(&Metrics {
            windows: 3,
            ..Metrics::default()
        });
        let events = events.lock().expect("lock").clone();
        assert_eq!(
            events,
            [
                "time 5",
                "keyframe 4",
                "keyframe 5",
                "moved 2",
                "submap 5",
                "placed 1",
                "trajectory 3",
                "current 5 4",
                "loops 1",
                "metrics 3",
            ]
        );
    }

    #[test]
    fn only_outputs_that_place_clouds_ask_for_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = DaemonConfig::default();
        let plain = Publisher::new(
            open(&SinkSetup {
                config: &config,
                recording: None,
                bag: None,
                run_id: "clouds",
            })
            .expect("open"),
        );
        assert!(!plain.wants_clouds(), "{:?}", plain.names());
        let bag = Publisher::new(
            open(&SinkSetup {
                config: &config,
                recording: None,
                bag: Some(dir.path().join("out.mcap")),
                run_id: "clouds",
            })
            .expect("open"),
        );
        assert!(bag.wants_clouds(), "{:?}", bag.names());
    }

    #[test]
    fn a_failing_sink_is_dropped_and_the_others_go_on() {
        let failing = Arc::new(Mutex::new(Vec::new()));
        let healthy = Arc::new(Mutex::new(Vec::new()));
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(Log {
                events: failing.clone(),
                fail_on: Some("moved"),
            }),
            Box::new(Log {
                events: healthy.clone(),
                fail_on: None,
            }),
        ];
        let mut publisher = Publisher::new(sinks);
        publisher.step(&step());
        publisher.step(&step());
        assert_eq!(publisher.names(), ["log"]);
        let failing = failing.lock().expect("lock").clone();
        assert_eq!(failing.last().map(String::as_str), Some("moved 2"));
        assert_eq!(failing.iter().filter(|e| e.starts_with("time")).count(), 1);
        assert_eq!(healthy.lock().expect("lock").len(), 18, "two whole steps");
    }
}
