//! The daemon's TOML configuration.
//!
//! Every default lives in the `Default` impls here (and in the embedded back-end configs of
//! `submap`); `vggtd config --print-default` prints them and `configs/default.toml` is pinned to
//! them by a test. Unknown keys and bad values are rejected with the file, the line and a hint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Error while loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type.
    #[error("{path}:{line}:{column}: {message}\n  hint: {hint}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
        /// What to do about it.
        hint: String,
    },
    /// A value parsed but is out of range or inconsistent.
    #[error("{}: invalid value for `{key}`: {message}\n  hint: {hint}", location(path, *line))]
    Invalid {
        /// The file (or `<defaults>` / `<command line>`).
        path: PathBuf,
        /// 1-based line of the key, 0 when the key is not in the file.
        line: usize,
        /// Dotted key, e.g. `model.image_width`.
        key: String,
        /// What is wrong.
        message: String,
        /// What to do about it.
        hint: String,
    },
}

/// `path:line`, or the path alone when the line is unknown (0).
fn location(path: &Path, line: usize) -> String {
    if line == 0 {
        path.display().to_string()
    } else {
        format!("{}:{line}", path.display())
    }
}

/// Which predictor turns windows into predictions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictorKind {
    /// VGGT through `crates/vggt`.
    Vggt,
    /// Ground truth of a dataset in a random per-window gauge (simulation, not a model).
    Simulated,
    /// Predictions recorded earlier with `--record DIR`.
    Replay,
}

/// Where the sparse-attention neighbour lists of a window come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighbourSource {
    /// The back-end's covisibility graph over all keyframes so far (image thumbnails).
    #[default]
    Covisibility,
    /// The window's own DINO tokens, chosen inside the model after the patch embedding.
    Features,
}

/// What to do with frames when a downstream stage is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackpressurePolicy {
    /// Live sources drop, file sources block.
    Auto,
    /// Always block the source (lose nothing).
    Block,
    /// Drop frames that cannot be queued (never block the source).
    DropFrames,
}

/// Where the rerun stream goes besides an optional `.rrd` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewerMode {
    /// No live viewer.
    None,
    /// Connect to a running viewer at `viewer.url`.
    Connect,
    /// Spawn a `rerun` viewer binary found on `PATH`.
    Spawn,
    /// Serve a gRPC endpoint on `viewer.serve_port` for remote viewers.
    Serve,
}

/// Whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Sources and pacing.
    pub input: InputConfig,
    /// Predictor and model.
    pub model: ModelConfig,
    /// Keyframe selection (the back-end's selector).
    pub keyframes: submap::keyframe::KeyframeConfig,
    /// Window geometry: keyframes per window and overlap.
    pub window: submap::window::WindowConfig,
    /// Alignment, covisibility, loop closure, pose graph, global map.
    pub backend: submap::backend::BackendConfig,
    /// Metric scale from a depth sensor (`--metric-scale depth`).
    pub metric_scale: submap::mapper::MetricScaleConfig,
    /// Noise and gauges of the simulated predictor (`model.predictor = "simulated"`).
    pub sim: datasets::sim::SimConfig,
    /// Channel depths and drop policy.
    pub queues: QueueConfig,
    /// rerun live view.
    pub viewer: ViewerConfig,
    /// Files written to `--output`.
    pub output: OutputConfig,
    /// ROS 2 topics (`output.bag`).
    pub ros2: Ros2Config,
}

/// Sources and pacing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// Pace file sources at their recorded rate instead of as fast as possible. Default false.
    pub realtime: bool,
    /// Stop after this many frames; 0 reads everything. Default 0.
    pub max_frames: u64,
    /// Keep one frame in `stride` (1 keeps all). Default 1.
    pub stride: u64,
    /// Frame rate assumed for image folders whose names are not timestamps, Hz. Default 30.
    pub folder_fps: f64,
    /// Camera capture width, pixels. Default 640.
    pub camera_width: u32,
    /// Camera capture height, pixels. Default 480.
    pub camera_height: u32,
    /// Camera frame rate, Hz. Default 30.
    pub camera_fps: u32,
    /// Reconnection attempts after a camera disappears before stopping. Default 5.
    pub reconnect_attempts: u32,
    /// First reconnection delay, milliseconds; doubles each attempt. Default 200.
    pub reconnect_initial_ms: u64,
    /// Longest reconnection delay, milliseconds. Default 5000.
    pub reconnect_max_ms: u64,
    /// Camera intrinsics: `predicted` (the model's), `dataset` (the dataset's calibration) or
    /// `FX,FY,CX,CY` in pixels of the input frames; known ones replace the predicted ones in
    /// unprojection and alignment. Default `predicted`.
    pub intrinsics: String,
    /// The image topic to read from a rosbag2 MCAP input (`sensor_msgs/msg/Image` or
    /// `sensor_msgs/msg/CompressedImage`); without it such an input lists its topics. Default
    /// unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            realtime: false,
            max_frames: 0,
            stride: 1,
            folder_fps: 30.0,
            camera_width: 640,
            camera_height: 480,
            camera_fps: 30,
            reconnect_attempts: 5,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 5000,
            intrinsics: "predicted".to_owned(),
            topic: None,
        }
    }
}

impl InputConfig {
    /// Back-off schedule for camera reconnection.
    pub fn reconnect_backoff(&self) -> crate::source::Backoff {
        crate::source::Backoff {
            attempts: self.reconnect_attempts,
            initial: Duration::from_millis(self.reconnect_initial_ms),
            max: Duration::from_millis(self.reconnect_max_ms),
        }
    }
}

/// Predictor and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Which predictor runs. Default `vggt`.
    pub predictor: PredictorKind,
    /// Checkpoint, `.safetensors` or PyTorch `.pt` (recognised by content); `--weights` and
    /// `VGGTD_WEIGHTS` take precedence. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// Where the checkpoint is downloaded from, once, into the cache (`vggtd fetch-weights`'s
    /// directory) when no weights are given; `--weights-url` and `VGGTD_WEIGHTS_URL` take
    /// precedence, `--offline` forbids it. Default VGGT-1B on the Hugging Face hub.
    pub weights_url: String,
    /// Model dimensions in the fixture `config.json` format; unset means VGGT-1B. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_config: Option<PathBuf>,
    /// Width the frames are resized to before the model, pixels (multiple of 14). Default 518.
    pub image_width: u32,
    /// Compute device: `cpu`, `cuda[:N]` or `wgpu[:N]` (`vggt::Device`; the same names as
    /// `--device`). Default `cpu`.
    pub device: vggt::Device,
    /// Run the point head too (otherwise depth is unprojected). Default false.
    pub point_head: bool,
    /// Sparse global attention: each frame attends itself and at most this many covisible
    /// frames; unset is dense attention. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_k: Option<usize>,
    /// With `attention_k`: `covisibility` (the back-end's graph) or `features` (the window's own
    /// DINO tokens: temporal neighbours, mutual k nearest by cosine, connectivity kept).
    /// Default `covisibility`.
    pub neighbours: NeighbourSource,
    /// Numeric precision: `f32`, `bf16` or `f16` (half-precision aggregator, float32 heads;
    /// `vggt::Precision`). Default `f32`.
    pub precision: vggt::Precision,
    /// Memory budget of the model in GiB (device memory on `cuda` / `wgpu`, RAM on the CPU).
    /// When set, the budget planner of the `vggt` crate lowers `window.size` and picks the DPT
    /// frame chunk so that one window fits. Default unset (no planning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_gb: Option<f64>,
    /// Dataset whose ground truth the simulated predictor serves (defaults to the input when
    /// that is a dataset). Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_dataset: Option<PathBuf>,
    /// Directory of recorded predictions for the replay predictor. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_dir: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            predictor: PredictorKind::Vggt,
            weights: None,
            weights_url: crate::fetch::VGGT_1B_URL.to_owned(),
            model_config: None,
            image_width: 518,
            device: vggt::Device::Cpu,
            point_head: false,
            attention_k: None,
            neighbours: NeighbourSource::Covisibility,
            precision: vggt::Precision::F32,
            max_memory_gb: None,
            sim_dataset: None,
            replay_dir: None,
        }
    }
}

/// Channel depths (messages) and the drop policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Decoded frames waiting for keyframe selection. Default 8.
    pub frames: usize,
    /// Keyframes waiting for the core (window assembly; it holds at most two windows' worth
    /// more itself). Default 16.
    pub keyframes: usize,
    /// Back-end results waiting for the publishers. Default 8.
    pub publish: usize,
    /// What a full frame queue does to the source. Default `auto`.
    pub policy: BackpressurePolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            frames: 8,
            keyframes: 16,
            publish: 8,
            policy: BackpressurePolicy::Auto,
        }
    }
}

/// rerun live view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewerConfig {
    /// Live viewer. Default `none`.
    pub mode: ViewerMode,
    /// gRPC URL for `connect`. Default `rerun+http://127.0.0.1:9876/proxy`.
    pub url: String,
    /// Port for `serve`. Default 9876.
    pub serve_port: u16,
    /// Voxel edge of the per-submap clouds as a fraction of the window's median depth (the
    /// world has no fixed unit). Default 0.01.
    pub voxel_rel: f64,
    /// Log each keyframe's image under its camera. Default true.
    pub log_images: bool,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        Self {
            mode: ViewerMode::None,
            url: "rerun+http://127.0.0.1:9876/proxy".to_owned(),
            serve_port: 9876,
            voxel_rel: 0.01,
            log_images: true,
        }
    }
}

/// Files written to the output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Also write `recording.rrd` into the output directory. Default false.
    pub write_rrd: bool,
    /// Also write a binary COLMAP model (`colmap/sparse/0/*.bin`, keyframe images in
    /// `colmap/images/`), e.g. for Gaussian splatting. Default false.
    pub colmap: bool,
    /// Where to stream keyframe poses as JSON lines (`-` for stdout, a Unix socket, or a file).
    /// Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pose_stream: Option<String>,
    /// Serve the run's figures as Prometheus text at `http://ADDR/metrics` (`PORT` for
    /// 127.0.0.1:PORT, or `HOST:PORT`). Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Write one JSON line of figures per step (memory, queues, time per stage and output) to
    /// this file. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<PathBuf>,
    /// Write the ROS 2 topics (`[ros2]`) into this rosbag2 MCAP file. Default unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bag: Option<PathBuf>,
}

/// The ROS 2 topics (published with `--ros2`, written by `output.bag`) and the Zenoh session
/// that carries them and the `ros2://TOPIC` inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ros2Config {
    /// Publish the topics on the ROS 2 network (`--ros2`), as a node `vggtd` that `rmw_zenoh`
    /// nodes reach through the same Zenoh router. Default false.
    pub publish: bool,
    /// ROS domain id. Default unset: `$ROS_DOMAIN_ID`, else 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<u32>,
    /// Zenoh locators to connect to: the router (`ros2 run rmw_zenoh_cpp rmw_zenohd`) or a
    /// peer; unreachable ones are retried in the background. Default `["tcp/localhost:7447"]`
    /// (rmw_zenoh's router on this machine).
    pub connect: Vec<String>,
    /// Zenoh locators to accept peers on. Default `["tcp/localhost:0"]` (this machine only, any
    /// port), as rmw_zenoh's nodes.
    pub listen: Vec<String>,
    /// Namespace of the topics (`<namespace>/pose`, `/path`, `/map`, `/depth`,
    /// `/camera_info`; `/tf` is global). Default `/vggtd`.
    pub namespace: String,
    /// Frame of poses, the path and the map. Default `map`.
    pub map_frame: String,
    /// Frame of the camera (child of `map_frame` in `/tf`, frame of the depth images). Default
    /// `camera`.
    pub camera_frame: String,
    /// Shortest stream time between two whole-map messages, seconds (the last one is always
    /// sent at the end). Default 2.
    pub map_period_s: f64,
    /// Most points in a map message (and kept for it). Default 200000.
    pub map_max_points: usize,
}

impl Default for Ros2Config {
    fn default() -> Self {
        Self {
            publish: false,
            domain_id: None,
            connect: vec!["tcp/localhost:7447".to_owned()],
            listen: vec!["tcp/localhost:0".to_owned()],
            namespace: "/vggtd".to_owned(),
            map_frame: "map".to_owned(),
            camera_frame: "camera".to_owned(),
            map_period_s: 2.0,
            map_max_points: 200_000,
        }
    }
}

/// The largest ROS domain id (ROS 2 allows 0 to 232).
pub const MAX_ROS_DOMAIN_ID: u32 = 232;

/// Whether `locator` looks like a Zenoh locator, `PROTOCOL/ADDRESS` (Zenoh checks the rest when
/// the session opens).
pub fn is_zenoh_locator(locator: &str) -> bool {
    locator.split_once('/').is_some_and(|(protocol, address)| {
        !protocol.is_empty()
            && protocol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !address.is_empty()
            && !address.chars().any(char::is_whitespace)
    })
}

/// Whether `name` is a ROS 2 name: `/`-separated tokens of letters, digits and `_`, none
/// starting with a digit, no empty token, no trailing `/` (except the root `/` itself).
pub fn is_ros_name(name: &str, absolute: bool) -> bool {
    if name == "/" {
        return absolute;
    }
    let body = match name.strip_prefix('/') {
        Some(body) => body,
        None if absolute => return false,
        None => name,
    };
    !body.is_empty()
        && body.split('/').all(|token| {
            !token.is_empty()
                && !token.starts_with(|c: char| c.is_ascii_digit())
                && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

impl DaemonConfig {
    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            let (line, column) = line_column(text, offset);
            let message = err.message().to_owned();
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                hint: parse_hint(&message),
                message,
            }
        })?;
        config.validate_in(text, path)?;
        Ok(config)
    }

    /// The defaults as TOML, the output of `vggtd config --print-default`.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Self::default())
            .unwrap_or_else(|err| unreachable!("the default config always serialises: {err}"))
    }

    /// Checks ranges and consistency; errors point into `text` when the key is there.
    pub fn validate_in(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String, hint: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: find_key_line(text, key),
            key: key.to_owned(),
            message,
            hint: hint.to_owned(),
        };
        let width = self.model.image_width;
        if width == 0 || !width.is_multiple_of(14) {
            return Err(invalid(
                "model.image_width",
                format!("{width} is not a positive multiple of the 14-pixel patch size"),
                "use 518 for VGGT-1B, or e.g. 84 / 168 / 294 for quick runs",
            ));
        }
        for (key, value) in [
            ("queues.frames", self.queues.frames),
            ("queues.keyframes", self.queues.keyframes),
            ("queues.publish", self.queues.publish),
        ] {
            if value == 0 {
                return Err(invalid(
                    key,
                    "a queue needs room for at least one message".into(),
                    "use 1 or more",
                ));
            }
        }
        if self.input.stride == 0 {
            return Err(invalid(
                "input.stride",
                "0 would keep no frame".into(),
                "use 1 to keep every frame",
            ));
        }
        if !(self.input.folder_fps.is_finite() && self.input.folder_fps > 0.0) {
            return Err(invalid(
                "input.folder_fps",
                format!("{} is not a positive frame rate", self.input.folder_fps),
                "e.g. 30.0",
            ));
        }
        if self.input.reconnect_initial_ms > self.input.reconnect_max_ms {
            return Err(invalid(
                "input.reconnect_initial_ms",
                format!(
                    "first delay {} ms exceeds the longest delay {} ms",
                    self.input.reconnect_initial_ms, self.input.reconnect_max_ms
                ),
                "lower reconnect_initial_ms or raise reconnect_max_ms",
            ));
        }
        if !is_ros_name(&self.ros2.namespace, true) {
            return Err(invalid(
                "ros2.namespace",
                format!("{:?} is not an absolute ROS 2 name", self.ros2.namespace),
                "e.g. \"/vggtd\" or \"/robot1/mapping\" (letters, digits, _ between slashes)",
            ));
        }
        for (key, frame) in [
            ("ros2.map_frame", &self.ros2.map_frame),
            ("ros2.camera_frame", &self.ros2.camera_frame),
        ] {
            if !is_ros_name(frame, false) || frame.starts_with('/') {
                return Err(invalid(
                    key,
                    format!("{frame:?} is not a frame name"),
                    "e.g. \"map\" or \"camera_optical_frame\" (no leading slash)",
                ));
            }
        }
        if !(self.ros2.map_period_s.is_finite() && self.ros2.map_period_s >= 0.0) {
            return Err(invalid(
                "ros2.map_period_s",
                format!("{} is not a non-negative time", self.ros2.map_period_s),
                "e.g. 2.0 (0 sends the map after every step that changed it)",
            ));
        }
        if let Some(id) = self.ros2.domain_id.filter(|&id| id > MAX_ROS_DOMAIN_ID) {
            return Err(invalid(
                "ros2.domain_id",
                format!("{id} is past the largest ROS domain id {MAX_ROS_DOMAIN_ID}"),
                "e.g. 0 (the default), or the robot's ROS_DOMAIN_ID",
            ));
        }
        for (key, locators) in [
            ("ros2.connect", &self.ros2.connect),
            ("ros2.listen", &self.ros2.listen),
        ] {
            if let Some(bad) = locators.iter().find(|l| !is_zenoh_locator(l)) {
                return Err(invalid(
                    key,
                    format!("{bad:?} is not a Zenoh locator"),
                    "PROTOCOL/ADDRESS, e.g. \"tcp/127.0.0.1:7447\" or \"tcp/[::1]:7447\"",
                ));
            }
        }
        if self.ros2.map_max_points == 0 {
            return Err(invalid(
                "ros2.map_max_points",
                "a map message needs room for at least one point".into(),
                "e.g. 200000",
            ));
        }
        if let Some(topic) = &self.input.topic {
            if !is_ros_name(topic, true) {
                return Err(invalid(
                    "input.topic",
                    format!("{topic:?} is not an absolute ROS 2 topic name"),
                    "e.g. \"/camera/image_raw\" or \"/camera/image_raw/compressed\"",
                ));
            }
        }
        if !(self.viewer.voxel_rel.is_finite() && self.viewer.voxel_rel >= 0.0) {
            return Err(invalid(
                "viewer.voxel_rel",
                format!("{} is not a non-negative fraction", self.viewer.voxel_rel),
                "e.g. 0.01 (0 disables downsampling)",
            ));
        }
        if let Err(e) = submap::window::WindowAssembler::new(self.window) {
            // Blame the key that is wrong: a window needs 2 frames, then room for new ones.
            let key = if self.window.size < 2 {
                "window.size"
            } else {
                "window.overlap"
            };
            return Err(invalid(key, e.to_string(), "e.g. size = 8, overlap = 2"));
        }
        let g = &self.backend.graph;
        let l = &self.backend.loops;
        for (key, value) in [
            ("graph.intra_rotation_sigma_deg", g.intra_rotation_sigma_deg),
            (
                "graph.intra_translation_sigma_rel",
                g.intra_translation_sigma_rel,
            ),
            ("graph.intra_scale_sigma", g.intra_scale_sigma),
            ("graph.inter_sigma_floor_rel", g.inter_sigma_floor_rel),
            ("graph.odometry_huber", g.odometry_huber),
            ("loops.kernel_scale", l.kernel_scale),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    line: find_key_line(text, &format!("backend.{key}")),
                    key: format!("backend.{key}"),
                    message: format!("{value} is not a positive number"),
                    hint: "standard deviations and kernel scales are positive; see configs/default.toml".into(),
                });
            }
        }
        let confidence = self.backend.align.ransac_confidence;
        if !(0.0..=1.0).contains(&confidence) {
            return Err(invalid(
                "backend.align.ransac_confidence",
                format!("{confidence} is not a probability"),
                "e.g. ransac_confidence = 0.999 (1: always draw ransac_iterations)",
            ));
        }
        let decrease = self.backend.pose_graph.min_decrease;
        if !(decrease.is_finite() && decrease >= 0.0) {
            return Err(invalid(
                "backend.pose_graph.min_decrease",
                format!("{decrease} is not a decrease of the whitened χ²"),
                "e.g. min_decrease = 0.01 (0: stop on the relative tolerance alone)",
            ));
        }
        let bound = self.backend.map.max_retained_mib;
        if !(bound.is_finite() && bound >= 0.0) {
            return Err(invalid(
                "backend.map.max_retained_mib",
                format!("{bound} is not a size in MiB"),
                "e.g. max_retained_mib = 2048 (0: no bound)",
            ));
        }
        if let Err(e) = crate::intrinsics::IntrinsicsSource::parse(&self.input.intrinsics) {
            return Err(invalid(
                "input.intrinsics",
                e.to_string(),
                "e.g. intrinsics = \"517.3,516.5,318.6,255.3\" (TUM fr1) or \"dataset\"",
            ));
        }
        if let Err(e) = self.sim.resolved() {
            let key = match &e {
                datasets::DatasetError::InvalidOption { name, .. } => name.to_string(),
                _ => "sim".to_owned(),
            };
            return Err(invalid(
                &key,
                e.to_string(),
                "sizes are non-negative, fractions lie in [0, 1]; see configs/README.md ([sim])",
            ));
        }
        let m = &self.metric_scale;
        if !(m.min_depth_m.is_finite() && m.min_depth_m >= 0.0 && m.max_depth_m > m.min_depth_m) {
            return Err(invalid(
                "metric_scale.max_depth_m",
                format!(
                    "sensor depth range {}..{} m is empty",
                    m.min_depth_m, m.max_depth_m
                ),
                "e.g. min_depth_m = 0.1, max_depth_m = 8.0",
            ));
        }
        if !(0.0..1.0).contains(&m.min_valid_fraction) || !(0.0..=1.0).contains(&m.conf_quantile) {
            return Err(invalid(
                "metric_scale.min_valid_fraction",
                "fractions must lie in [0, 1)".into(),
                "e.g. min_valid_fraction = 0.05, conf_quantile = 0.5",
            ));
        }
        if let Some(gb) = self.model.max_memory_gb {
            if !(gb.is_finite() && gb > 0.0) {
                return Err(invalid(
                    "model.max_memory_gb",
                    format!("{gb} is not a positive number of GiB"),
                    "e.g. max_memory_gb = 7.5 for an 8 GB GPU",
                ));
            }
        }
        if self.model.attention_k == Some(0) {
            return Err(invalid(
                "model.attention_k",
                "0 would let frames attend only to themselves".into(),
                "use 1 or more, or remove the key for dense attention",
            ));
        }
        if self.model.predictor == PredictorKind::Replay && self.model.replay_dir.is_none() {
            return Err(invalid(
                "model.replay_dir",
                "the replay predictor needs a directory of recorded windows".into(),
                "pass --predictor replay:DIR or set model.replay_dir",
            ));
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn parse_hint(message: &str) -> String {
    if message.contains("unknown field") {
        "remove or correct the key; `vggtd config --print-default` lists every key".to_owned()
    } else if message.contains("unknown variant") {
        "use one of the listed values".to_owned()
    } else {
        "compare with `vggtd config --print-default`".to_owned()
    }
}

/// 1-based line where `section.key` is assigned in `text` (`section` may be nested, as
/// `backend.loops`), 0 when absent.
fn find_key_line(text: &str, dotted: &str) -> usize {
    let Some((section, key)) = dotted.rsplit_once('.') else {
        return 0;
    };
    let mut current = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
            continue;
        }
        let assigned = line.split('=').next().map(str::trim);
        if current == section && assigned == Some(key) {
            return index + 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_toml() {
        let text = DaemonConfig::default_toml();
        let parsed = DaemonConfig::from_toml_str(&text, Path::new("<default>")).expect("parses");
        assert_eq!(parsed, DaemonConfig::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_hint() {
        let text = "[input]\nrealtime = true\n\n[model]\nimage_widht = 84\n";
        let err = DaemonConfig::from_toml_str(text, Path::new("my.toml")).expect_err("rejected");
        let ConfigError::Parse {
            line, ref message, ..
        } = err
        else {
            panic!("wrong error: {err}")
        };
        assert_eq!(line, 5, "the typo is on line 5");
        assert!(message.contains("image_widht"), "{message}");
        let shown = err.to_string();
        assert!(shown.starts_with("my.toml:5:"), "{shown}");
        assert!(shown.contains("hint:"), "{shown}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let text = "[model]\ndevice = \"cpu\"\nimage_width = 100\n";
        let err = DaemonConfig::from_toml_str(text, Path::new("x.toml")).expect_err("rejected");
        let ConfigError::Invalid { line, ref key, .. } = err else {
            panic!("wrong error: {err}")
        };
        assert_eq!((line, key.as_str()), (3, "model.image_width"));
    }

    #[test]
    fn bad_enum_value_is_a_parse_error_with_line() {
        let text = "[viewer]\nmode = \"sometimes\"\n";
        let err = DaemonConfig::from_toml_str(text, Path::new("v.toml")).expect_err("rejected");
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err}");
    }

    const CONFIGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");

    #[test]
    fn shipped_default_toml_is_the_default() {
        let path = Path::new(CONFIGS).join("default.toml");
        assert_eq!(
            DaemonConfig::from_file(&path).expect("parses"),
            DaemonConfig::default()
        );
    }

    #[test]
    fn every_shipped_config_is_valid() {
        let mut checked = 0;
        for entry in std::fs::read_dir(CONFIGS).expect("configs/") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                DaemonConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked >= 5, "default, low VRAM and one per dataset kind");
        let low_vram =
            DaemonConfig::from_file(&Path::new(CONFIGS).join("low_vram_8gb.toml")).expect("parses");
        assert_eq!(
            (low_vram.model.device, low_vram.model.attention_k),
            (vggt::Device::Cuda(0), Some(4))
        );
    }

    /// `text` is rejected by a check that names `key` and the line it is on (3), and `allowed`
    /// (the same key at the edge of its range) passes.
    fn rejected_at_its_key_and_line(text: &str, key: &str, allowed: &str) {
        let err = DaemonConfig::from_toml_str(text, Path::new("c.toml")).expect_err("rejected");
        let shown = err.to_string();
        assert!(shown.contains(key), "{shown}");
        assert!(
            matches!(err, ConfigError::Invalid { line: 3, .. }),
            "{shown}"
        );
        assert!(
            DaemonConfig::from_toml_str(allowed, Path::new("a.toml")).is_ok(),
            "{allowed}"
        );
    }

    #[test]
    fn a_negative_min_decrease_names_its_key_and_line() {
        rejected_at_its_key_and_line(
            "[backend.pose_graph]\ntolerance = 1e-6\nmin_decrease = -1\n",
            "backend.pose_graph.min_decrease",
            "[backend.pose_graph]\nmin_decrease = 0\n",
        );
    }

    #[test]
    fn a_ransac_confidence_outside_zero_to_one_names_its_key_and_line() {
        rejected_at_its_key_and_line(
            "[backend.align]\nseed = 7\nransac_confidence = 99.9\n",
            "backend.align.ransac_confidence",
            "[backend.align]\nransac_confidence = 1.0\n",
        );
    }

    #[test]
    fn a_negative_map_bound_names_its_key_and_line() {
        // 0: no bound.
        rejected_at_its_key_and_line(
            "[backend.map]\nvoxel_rel = 0.01\nmax_retained_mib = -1\n",
            "backend.map.max_retained_mib",
            "[backend.map]\nmax_retained_mib = 0\n",
        );
    }

    #[test]
    fn zenoh_locators_and_the_domain_id_are_checked_at_their_keys() {
        rejected_at_its_key_and_line(
            "[ros2]\npublish = true\nconnect = [\"127.0.0.1:7447\"]\n",
            "ros2.connect",
            "[ros2]\nconnect = [\"tcp/127.0.0.1:7447\", \"tcp/[::1]:7447\"]\n",
        );
        rejected_at_its_key_and_line(
            "[ros2]\npublish = false\nlisten = [\"tcp/\"]\n",
            "ros2.listen",
            "[ros2]\nlisten = []\n",
        );
        rejected_at_its_key_and_line(
            "[ros2]\nnamespace = \"/r\"\ndomain_id = 233\n",
            "ros2.domain_id",
            "[ros2]\ndomain_id = 232\n",
        );
    }

    #[test]
    fn device_and_precision_take_the_command_line_names() {
        let text = "[model]\ndevice = \"wgpu:1\"\nprecision = \"f16\"\n";
        let parsed = DaemonConfig::from_toml_str(text, Path::new("d.toml")).expect("parses");
        assert_eq!(parsed.model.device, vggt::Device::Wgpu(Some(1)));
        assert_eq!(parsed.model.precision, vggt::Precision::F16);
        let err = DaemonConfig::from_toml_str("[model]\ndevice = \"gpu\"\n", Path::new("d.toml"))
            .expect_err("unknown device");
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err}");
        assert!(
            err.to_string().contains("cpu, cuda[:N] or wgpu[:N]"),
            "{err}"
        );
    }

    #[test]
    fn bad_sim_values_name_the_key() {
        let text = "[sim]\npreset = \"vggt\"\ndepth_noise_rel = -0.5\n";
        let err = DaemonConfig::from_toml_str(text, Path::new("s.toml")).expect_err("rejected");
        let ConfigError::Invalid { line, ref key, .. } = err else {
            panic!("wrong error: {err}")
        };
        assert_eq!((line, key.as_str()), (3, "sim.depth_noise_rel"), "{err}");
    }

    #[test]
    fn nested_values_are_checked_and_located() {
        let text = "[backend.graph]\nodometry_huber = 3.0\nintra_scale_sigma = -1.0\n";
        let err = DaemonConfig::from_toml_str(text, Path::new("g.toml")).expect_err("rejected");
        let ConfigError::Invalid { line, ref key, .. } = err else {
            panic!("wrong error: {err}")
        };
        assert_eq!((line, key.as_str()), (3, "backend.graph.intra_scale_sigma"));
    }

    #[test]
    fn window_size_errors_blame_the_size() {
        let text = "[window]\nsize = 0\noverlap = 2\n";
        let err = DaemonConfig::from_toml_str(text, Path::new("w.toml")).expect_err("rejected");
        let ConfigError::Invalid { line, ref key, .. } = err else {
            panic!("wrong error: {err}")
        };
        assert_eq!((line, key.as_str()), (2, "window.size"), "{err}");
    }

    #[test]
    fn nested_backend_keys_are_checked_too() {
        let text = "[backend.loops]\nmin_keyframe_gap = 3\nmin_keyframe_gapp = 4\n";
        let err =
            DaemonConfig::from_toml_str(text, Path::new("n.toml")).expect_err("typo rejected");
        assert!(matches!(err, ConfigError::Parse { line: 3, .. }), "{err}");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let text = "[queues]\nkeyframes = 5\n";
        let parsed = DaemonConfig::from_toml_str(text, Path::new("p.toml")).expect("parses");
        assert_eq!(parsed.queues.keyframes, 5);
        assert_eq!(parsed.queues.frames, QueueConfig::default().frames);
        assert_eq!(parsed.model, ModelConfig::default());
    }
}
