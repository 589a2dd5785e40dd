//! Every rerun call of the daemon.
//!
//! Entity layout (world frame = the back-end's world, OpenCV camera axes, right-handed y-down):
//! - [`TRAJECTORY`]: keyframe camera centres as one line strip.
//! - `world/keyframes/kf_<id>`: `Transform3D` (world_from_cam) + `Pinhole`, image under `/image`.
//! - `world/submaps/submap_<k>`: `Transform3D` (world_from_submap), re-logged when the pose graph
//!   moves the submap; its coloured cloud under `/points`, in submap coordinates, sent once.
//! - [`CURRENT_CAMERA`]: the latest keyframe's camera with its image (`/image`) and its depth in
//!   world units (`/depth`) underneath, so the viewer back-projects the depth where the map is.
//! - [`LOOPS`]: loop-closure edges between keyframe centres.
//! - `metrics/...`: scalars (queue depths, frame rate, latency, memory).
//!
//! Timelines: `frame` (stream frame id) and `time` (capture time: a date and time for inputs
//! stamped in Unix time, such as TUM datasets; time since the start otherwise). A viewer failure
//! is a warning, never an error of the run; only a missing `rerun` binary for `spawn` is.
//!
//! Every stream carries its layout ([`blueprint`]) and the run id as its recording id, so a
//! viewer never reuses the layout guessed for an earlier recording.

use std::path::{Path, PathBuf};

use nalgebra::{Isometry3, Matrix4};
use rerun::external::re_uri::RedapUri;
use rerun::sink::{FileSink, GrpcSink, LogSink};
use submap::prediction::{Intrinsics, Map2};

use crate::config::ViewerMode;
use crate::outputs::KeyframePose;

/// Application id of the recordings.
pub const APP_ID: &str = "vggtd";
/// Root of the 3-D scene.
pub const WORLD: &str = "world";
/// Trajectory line strip.
pub const TRAJECTORY: &str = "world/trajectory";
/// Parent of the per-keyframe cameras.
pub const KEYFRAMES: &str = "world/keyframes";
/// Parent of the per-submap entities.
pub const SUBMAPS: &str = "world/submaps";
/// Latest camera with its depth image.
pub const CURRENT_CAMERA: &str = "world/current_camera";
/// Loop-closure edges.
pub const LOOPS: &str = "world/loops";
/// Parent of the scalar plots.
pub const METRICS: &str = "metrics";
/// Frame-index timeline.
pub const FRAME_TIMELINE: &str = "frame";
/// Capture-time timeline.
pub const TIME_TIMELINE: &str = "time";
/// Capture times from this many seconds on are Unix times (2001 onwards) and shown as dates.
pub const UNIX_TIME_FROM_S: f64 = 1.0e9;
/// Names of the views of the layout, as the viewer shows them.
pub const VIEW_NAMES: [&str; 7] = [
    "World",
    "Current frame",
    "Current depth",
    "Frame rate",
    "Latency",
    "Memory",
    "Queues",
];
/// Longest wait for the sinks at the end of a run.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Error of the viewer setup.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// `--viewer spawn` without a `rerun` binary on `PATH`.
    #[error("--viewer spawn needs the `rerun` viewer binary 0.36.3 and found none: {hint}")]
    NoViewerBinary {
        /// How to get one.
        hint: String,
    },
    /// The URL is not a rerun gRPC proxy URL.
    #[error("bad viewer URL {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The SDK refused (file not creatable, port in use...).
    #[error("rerun {what} failed: {reason}")]
    Sdk {
        /// What was attempted.
        what: String,
        /// The SDK's message.
        reason: String,
    },
}

/// Where the stream goes.
#[derive(Debug, Clone, PartialEq)]
pub struct VizTargets {
    /// Recording id (the run id).
    pub recording_id: String,
    /// Live viewer.
    pub mode: ViewerMode,
    /// URL for `connect`.
    pub url: String,
    /// Port for `serve`.
    pub serve_port: u16,
    /// `.rrd` file to write.
    pub rrd: Option<PathBuf>,
}

impl VizTargets {
    /// Whether anything will be logged at all.
    pub fn any(&self) -> bool {
        self.mode != ViewerMode::None || self.rrd.is_some()
    }
}

/// A live rerun stream.
#[derive(Debug)]
pub struct Viz {
    rec: rerun::RecordingStream,
}

fn sdk_err(what: &str) -> impl Fn(rerun::RecordingStreamError) -> VizError + '_ {
    move |e| VizError::Sdk {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// Looks for an executable named `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The viewer `--viewer spawn` starts: `$VGGTD_RERUN_BIN`, else `rerun` on `PATH`, else the one
/// `scripts/get-rerun-viewer` put in the build's `target/rerun-viewer/` (found from the running
/// executable, `target/<profile>/vggtd`).
pub fn find_viewer() -> Option<PathBuf> {
    find_viewer_from(
        std::env::var_os("VGGTD_RERUN_BIN").map(PathBuf::from),
        find_on_path("rerun"),
        std::env::current_exe().ok(),
    )
}

fn find_viewer_from(
    named: Option<PathBuf>,
    on_path: Option<PathBuf>,
    exe: Option<PathBuf>,
) -> Option<PathBuf> {
    let beside_build = exe.and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(3)
            .map(|dir| dir.join("rerun-viewer").join("rerun"))
            .find(|p| p.is_file())
    });
    named.filter(|p| p.is_file()).or(on_path).or(beside_build)
}

fn grpc_sink(url: &str) -> Result<GrpcSink, VizError> {
    let bad = |reason: String| VizError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    match url.parse::<RedapUri>().map_err(|e| bad(e.to_string()))? {
        RedapUri::Proxy(uri) => Ok(GrpcSink::new(uri)),
        _ => Err(bad(
            "expected a proxy URL like rerun+http://127.0.0.1:9876/proxy".into(),
        )),
    }
}

impl Viz {
    /// Opens the sinks; `None` when there is nothing to log to.
    pub fn open(targets: &VizTargets) -> Result<Option<Self>, VizError> {
        if !targets.any() {
            return Ok(None);
        }
        let mut sinks: Vec<Box<dyn LogSink>> = Vec::new();
        if let Some(path) = &targets.rrd {
            let sink = FileSink::new(path).map_err(|e| VizError::Sdk {
                what: format!("saving to {}", path.display()),
                reason: e.to_string(),
            })?;
            sinks.push(Box::new(sink));
        }
        match targets.mode {
            ViewerMode::None => {}
            ViewerMode::Connect => sinks.push(Box::new(grpc_sink(&targets.url)?)),
            ViewerMode::Spawn => {
                let Some(viewer) = find_viewer() else {
                    return Err(VizError::NoViewerBinary {
                        hint: "run `scripts/get-rerun-viewer` (into target/rerun-viewer/), `pip install rerun-sdk==0.36.3` or `cargo install rerun-cli@0.36.3 --locked`, or set VGGTD_RERUN_BIN; or use --viewer serve / --rrd".into(),
                    });
                };
                let options = rerun::SpawnOptions {
                    executable_path: Some(viewer.display().to_string()),
                    ..Default::default()
                };
                let info = rerun::spawn(&options).map_err(|e| VizError::Sdk {
                    what: format!("spawning the viewer {}", viewer.display()),
                    reason: e.to_string(),
                })?;
                sinks.push(Box::new(grpc_sink(&format!(
                    "rerun+http://127.0.0.1:{}/proxy",
                    info.port
                ))?));
            }
            ViewerMode::Serve => {
                let sink = rerun::grpc_server::GrpcServerSink::new(
                    "0.0.0.0",
                    targets.serve_port,
                    rerun::ServerOptions::default(),
                )
                .map_err(|e| VizError::Sdk {
                    what: format!("serving on port {}", targets.serve_port),
                    reason: e.to_string(),
                })?;
                tracing::info!(url = %format!("rerun+http://127.0.0.1:{}/proxy", targets.serve_port), "serving rerun stream");
                sinks.push(Box::new(sink));
            }
        }
        let rec = builder(&targets.recording_id)
            .set_sinks(sinks)
            .map_err(sdk_err("recording stream"))?;
        let viz = Self { rec };
        viz.log_static_setup();
        Ok(Some(viz))
    }

    /// A stream that keeps everything in memory (tests, and callers that export it themselves).
    pub fn memory() -> Result<(Self, rerun::sink::MemorySinkStorage), VizError> {
        let (rec, storage) = builder("memory")
            .memory()
            .map_err(sdk_err("memory stream"))?;
        let viz = Self { rec };
        viz.log_static_setup();
        Ok((viz, storage))
    }

    fn warn(&self, what: &str, result: rerun::RecordingStreamResult<()>) {
        if let Err(e) = result {
            tracing::warn!(what, error = %e, "rerun logging failed");
        }
    }

    fn log_static_setup(&self) {
        self.warn(
            "view coordinates",
            self.rec
                .log_static(WORLD, &rerun::ViewCoordinates::RIGHT_HAND_Y_DOWN()),
        );
    }

    /// Sets both timelines for what follows.
    pub fn set_time(&self, frame_id: u64, timestamp_s: f64) {
        self.rec.set_time_sequence(FRAME_TIMELINE, frame_id as i64);
        if timestamp_s >= UNIX_TIME_FROM_S {
            self.rec
                .set_timestamp_secs_since_epoch(TIME_TIMELINE, timestamp_s);
        } else {
            self.rec.set_duration_secs(TIME_TIMELINE, timestamp_s);
        }
    }

    /// A keyframe's camera (pose + pinhole) and, optionally, its image.
    pub fn log_keyframe(
        &self,
        pose: &KeyframePose,
        intrinsics: &Intrinsics,
        image: Option<&image::RgbImage>,
        resolution: [u32; 2],
    ) {
        let path = format!("{KEYFRAMES}/kf_{:06}", pose.frame_id);
        self.warn(
            "keyframe pose",
            self.rec
                .log(path.as_str(), &transform_of_isometry(&pose.world_from_cam)),
        );
        self.warn(
            "keyframe pinhole",
            self.rec
                .log(path.as_str(), &pinhole(intrinsics, resolution)),
        );
        if let Some(image) = image {
            self.log_image("keyframe image", &format!("{path}/image"), image);
        }
    }

    fn log_image(&self, what: &str, path: &str, image: &image::RgbImage) {
        let logged =
            rerun::Image::from_rgb24(image.as_raw().clone(), [image.width(), image.height()]);
        self.warn(what, self.rec.log(path, &logged));
    }

    /// Re-logs a keyframe camera whose pose moved (no image).
    pub fn log_keyframe_pose(&self, pose: &KeyframePose) {
        let path = format!("{KEYFRAMES}/kf_{:06}", pose.frame_id);
        self.warn(
            "keyframe pose",
            self.rec
                .log(path, &transform_of_isometry(&pose.world_from_cam)),
        );
    }

    /// The whole trajectory as one strip through the camera centres, ordered by time.
    pub fn log_trajectory(&self, poses: &[KeyframePose]) {
        let mut ordered: Vec<&KeyframePose> = poses.iter().collect();
        ordered.sort_by(|a, b| a.timestamp_s.total_cmp(&b.timestamp_s));
        let strip: Vec<[f32; 3]> = ordered.iter().map(|p| centre(&p.world_from_cam)).collect();
        self.warn(
            "trajectory",
            self.rec.log(TRAJECTORY, &rerun::LineStrips3D::new([strip])),
        );
    }

    /// A submap's cloud, in submap coordinates; logged once per submap.
    pub fn log_submap_points(
        &self,
        submap: usize,
        points_in_submap: &[[f32; 3]],
        colors: &[[u8; 3]],
    ) {
        let path = format!("{SUBMAPS}/submap_{submap:04}/points");
        let points = rerun::Points3D::new(points_in_submap.iter().copied()).with_colors(
            colors
                .iter()
                .map(|c| rerun::Color::from_rgb(c[0], c[1], c[2])),
        );
        self.warn("submap points", self.rec.log(path, &points));
    }

    /// Places a submap in the world; re-logged whenever the pose graph moves it.
    /// `world_from_submap` must be affine (similarity); its linear part may carry scale.
    pub fn log_submap_transform(&self, submap: usize, world_from_submap: &Matrix4<f64>) {
        let path = format!("{SUBMAPS}/submap_{submap:04}");
        self.warn(
            "submap transform",
            self.rec.log(path, &transform_of_matrix(world_from_submap)),
        );
    }

    /// The latest camera with its image (when given) and its depth image, in world units.
    pub fn log_current_frame(
        &self,
        pose: &KeyframePose,
        intrinsics: &Intrinsics,
        image: Option<&image::RgbImage>,
        depth: &Map2<f32>,
    ) {
        let resolution = [depth.width as u32, depth.height as u32];
        self.warn(
            "current pose",
            self.rec
                .log(CURRENT_CAMERA, &transform_of_isometry(&pose.world_from_cam)),
        );
        self.warn(
            "current pinhole",
            self.rec
                .log(CURRENT_CAMERA, &pinhole(intrinsics, resolution)),
        );
        if let Some(image) = image {
            self.log_image("current image", &format!("{CURRENT_CAMERA}/image"), image);
        }
        let bytes: Vec<u8> = depth.data.iter().flat_map(|d| d.to_le_bytes()).collect();
        let image = rerun::DepthImage::from_data_type_and_bytes(
            bytes,
            resolution,
            rerun::ChannelDatatype::F32,
        )
        .with_meter(1.0);
        self.warn(
            "current depth",
            self.rec.log(format!("{CURRENT_CAMERA}/depth"), &image),
        );
    }

    /// All loop-closure edges so far, each between two keyframe camera centres.
    pub fn log_loop_edges(&self, edges: &[(Isometry3<f64>, Isometry3<f64>)]) {
        let strips: Vec<Vec<[f32; 3]>> = edges
            .iter()
            .map(|(a, b)| vec![centre(a), centre(b)])
            .collect();
        let lines =
            rerun::LineStrips3D::new(strips).with_colors([rerun::Color::from_rgb(255, 60, 60)]);
        self.warn("loop edges", self.rec.log(LOOPS, &lines));
    }

    /// One scalar plot point under `metrics/<name>`.
    pub fn log_scalar(&self, name: &str, value: f64) {
        self.warn(
            "scalar",
            self.rec
                .log(format!("{METRICS}/{name}"), &rerun::Scalars::single(value)),
        );
    }

    /// Waits (at most [`FLUSH_TIMEOUT`]) until everything logged so far reached the sinks; an
    /// unreachable viewer must not hold up the end of a run.
    pub fn flush(&self) {
        if let Err(e) = self.rec.flush_with_timeout(FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "rerun flush incomplete");
        }
    }
}

/// A recording stream of the application with recording id `recording_id` and the layout.
fn builder(recording_id: &str) -> rerun::RecordingStreamBuilder {
    rerun::RecordingStreamBuilder::new(APP_ID)
        .recording_id(recording_id)
        .recording_name(format!("vggtd {recording_id}"))
        .send_properties(true)
        .with_blueprint(blueprint())
}

/// The layout sent with every recording and live stream: the world in 3-D (trajectory, cameras
/// with their keyframe images, submap clouds, the current camera's back-projected depth, loop
/// closures) on the left; on the right the current frame and its depth above the metrics, one
/// plot per unit. Keyframe images are in the 3-D view (select a camera), not one tab each, and no
/// other view is guessed. The time cursor follows the latest data (the end, for a file).
pub fn blueprint() -> rerun::blueprint::Blueprint {
    use rerun::blueprint::{
        Blueprint, ContainerLike, Grid, Horizontal, Spatial2DView, Spatial3DView, TimePanel,
        TimeSeriesView, Vertical,
    };
    let [world, frame, depth, fps, latency, memory, queues] = VIEW_NAMES;
    let current = |name: &str, part: &str| -> ContainerLike {
        Spatial2DView::new(name)
            .with_origin(CURRENT_CAMERA)
            .with_contents([format!("$origin/{part}")])
            .into()
    };
    let plot = |name: &str, contents: &str| -> ContainerLike {
        TimeSeriesView::new(name)
            .with_origin(METRICS)
            .with_contents([contents.to_owned()])
            .into()
    };
    let metrics = Grid::new([
        plot(fps, "$origin/fps"),
        plot(latency, "$origin/latency_ms"),
        plot(memory, "$origin/memory_mib"),
        plot(queues, "$origin/queue/**"),
    ])
    .with_grid_columns(2)
    .with_name("Metrics");
    let side = Vertical::new([
        Horizontal::new([current(frame, "image"), current(depth, "depth")]).into(),
        metrics.into(),
    ])
    .with_row_shares([0.55, 0.45]);
    let root = Horizontal::new([
        Spatial3DView::new(world)
            .with_origin(WORLD)
            .with_contents(["$origin/**".to_owned()])
            .into(),
        side.into(),
    ])
    .with_column_shares([0.62, 0.38]);
    Blueprint::new(root)
        .with_auto_views(false)
        .with_auto_layout(false)
        .with_time_panel(
            TimePanel::new()
                .with_timeline(TIME_TIMELINE)
                .with_play_state(rerun::blueprint::components::PlayState::Following),
        )
}

fn centre(pose: &Isometry3<f64>) -> [f32; 3] {
    let t = pose.translation.vector;
    [t.x as f32, t.y as f32, t.z as f32]
}

fn columns(m: &Matrix4<f64>) -> [[f32; 3]; 3] {
    let col = |c: usize| [m[(0, c)] as f32, m[(1, c)] as f32, m[(2, c)] as f32];
    [col(0), col(1), col(2)]
}

fn transform_of_matrix(m: &Matrix4<f64>) -> rerun::Transform3D {
    let translation = [m[(0, 3)] as f32, m[(1, 3)] as f32, m[(2, 3)] as f32];
    rerun::Transform3D::from_translation_mat3x3(translation, columns(m))
}

fn transform_of_isometry(pose: &Isometry3<f64>) -> rerun::Transform3D {
    transform_of_matrix(&pose.to_homogeneous())
}

fn pinhole(k: &Intrinsics, resolution: [u32; 2]) -> rerun::Pinhole {
    rerun::Pinhole::from_focal_length_and_resolution(
        [k.fx as f32, k.fy as f32],
        [resolution[0] as f32, resolution[1] as f32],
    )
    .with_principal_point([k.cx as f32, k.cy as f32])
    .with_image_plane_distance(0.1)
}

/// What an `.rrd` file holds, as read back with the SDK (for checks and tests).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RrdContents {
    /// Entity paths of the recording's data.
    pub entity_paths: std::collections::BTreeSet<String>,
    /// Recording ids of its data stores.
    pub recording_ids: std::collections::BTreeSet<String>,
    /// Names of the views of its layout (blueprint store).
    pub view_names: std::collections::BTreeSet<String>,
    /// Whether the layout is activated for the recording (a blueprint activation command).
    pub layout_activated: bool,
    /// Each timeline with its kind (`sequence`, `duration`, `timestamp`).
    pub timelines: std::collections::BTreeMap<String, String>,
}

/// Reads an `.rrd` file back.
pub fn read_rrd(path: &Path) -> Result<RrdContents, VizError> {
    use rerun::external::re_log_encoding::DecoderApp;
    use rerun::external::re_log_types::LogMsg;
    let read_err = |reason: String| VizError::Sdk {
        what: format!("reading {}", path.display()),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut contents = RrdContents::default();
    for message in DecoderApp::decode_lazy(std::io::BufReader::new(file)) {
        match message.map_err(|e| read_err(e.to_string()))? {
            LogMsg::ArrowMsg(store, arrow) => {
                let chunk = rerun::log::Chunk::from_arrow_msg(&arrow)
                    .map_err(|e| read_err(e.to_string()))?;
                if store.is_blueprint() {
                    let names = chunk
                        .iter_component::<rerun::components::Name>(
                            "ViewBlueprint:display_name".into(),
                        )
                        .flat_map(|batch| batch.to_vec());
                    contents
                        .view_names
                        .extend(names.map(|n| n.as_str().to_owned()));
                    continue;
                }
                contents
                    .recording_ids
                    .insert(store.recording_id().as_str().to_owned());
                contents
                    .entity_paths
                    .insert(chunk.entity_path().to_string());
                for (name, column) in chunk.timelines() {
                    let kind = match column.timeline().typ() {
                        rerun::time::TimeType::Sequence => "sequence",
                        rerun::time::TimeType::DurationNs => "duration",
                        rerun::time::TimeType::TimestampNs => "timestamp",
                    };
                    contents
                        .timelines
                        .insert(name.as_str().to_owned(), kind.to_owned());
                }
            }
            LogMsg::BlueprintActivationCommand(command) => {
                contents.layout_activated |= command.make_active;
            }
            LogMsg::SetStoreInfo(_) => {}
        }
    }
    Ok(contents)
}

/// Entity paths present in an `.rrd` file (for checks and tests).
pub fn rrd_entity_paths(path: &Path) -> Result<std::collections::BTreeSet<String>, VizError> {
    read_rrd(path).map(|c| c.entity_paths)
}

#[cfg(test)]
mod tests {
    use nalgebra::Vector3;

    use super::*;

    #[test]
    fn rrd_file_holds_the_logged_entities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rrd = dir.path().join("run.rrd");
        let targets = VizTargets {
            recording_id: "20261202T000000Z-1".into(),
            mode: ViewerMode::None,
            url: String::new(),
            serve_port: 0,
            rrd: Some(rrd.clone()),
        };
        let viz = Viz::open(&targets)
            .expect("opens")
            .expect("an rrd target means a stream");
        let pose = KeyframePose {
            frame_id: 3,
            timestamp_s: 0.1,
            world_from_cam: Isometry3::new(Vector3::new(0.0, 0.0, 1.0), Vector3::zeros()),
            submap: 0,
            revision: 0,
        };
        let k = Intrinsics {
            fx: 10.0,
            fy: 10.0,
            cx: 2.0,
            cy: 1.5,
        };
        viz.set_time(3, 1_305_031_102.175);
        viz.log_keyframe(&pose, &k, Some(&image::RgbImage::new(4, 3)), [4, 3]);
        viz.log_trajectory(std::slice::from_ref(&pose));
        viz.log_submap_points(0, &[[0.0, 0.0, 1.0]], &[[255, 0, 0]]);
        viz.log_submap_transform(0, &Matrix4::identity());
        viz.log_current_frame(
            &pose,
            &k,
            Some(&image::RgbImage::new(4, 3)),
            &Map2 {
                width: 4,
                height: 3,
                data: vec![1.0; 12],
            },
        );
        viz.log_loop_edges(&[(pose.world_from_cam, Isometry3::identity())]);
        viz.log_scalar("fps", 30.0);
        drop(viz);
        let contents = read_rrd(&rrd).expect("reads back");
        let paths = &contents.entity_paths;
        for expected in [
            "/world/keyframes/kf_000003",
            "/world/keyframes/kf_000003/image",
            "/world/trajectory",
            "/world/submaps/submap_0000",
            "/world/submaps/submap_0000/points",
            "/world/current_camera/depth",
            "/world/current_camera/image",
            "/world/loops",
            "/metrics/fps",
        ] {
            assert!(
                paths.contains(expected),
                "{expected} missing from {paths:?}"
            );
        }
        // The layout travels with the recording, activated, with every view named.
        assert!(contents.layout_activated, "{contents:?}");
        let names: Vec<&str> = contents.view_names.iter().map(String::as_str).collect();
        let mut expected = VIEW_NAMES.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
        // The run id is the recording id; Unix capture times are timestamps, frames a sequence.
        assert_eq!(
            contents.recording_ids.iter().collect::<Vec<_>>(),
            ["20261202T000000Z-1"]
        );
        assert_eq!(contents.timelines[TIME_TIMELINE], "timestamp");
        assert_eq!(contents.timelines[FRAME_TIMELINE], "sequence");
    }

    #[test]
    fn the_viewer_is_found_by_name_on_path_or_beside_the_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("target/release/vggtd");
        let beside = dir.path().join("target/rerun-viewer/rerun");
        let named = dir.path().join("my-rerun");
        assert_eq!(find_viewer_from(None, None, Some(exe.clone())), None);
        assert_eq!(
            find_viewer_from(Some(named.clone()), None, Some(exe.clone())),
            None,
            "a named file that does not exist is not a viewer"
        );
        std::fs::create_dir_all(beside.parent().unwrap()).unwrap();
        std::fs::write(&beside, b"").unwrap();
        assert_eq!(
            find_viewer_from(None, None, Some(exe.clone())),
            Some(beside.clone())
        );
        let on_path = PathBuf::from("/usr/bin/rerun");
        assert_eq!(
            find_viewer_from(None, Some(on_path.clone()), Some(exe.clone())),
            Some(on_path)
        );
        std::fs::write(&named, b"").unwrap();
        assert_eq!(
            find_viewer_from(Some(named.clone()), None, Some(exe)),
            Some(named)
        );
    }

    #[test]
    fn spawn_without_viewer_binary_is_a_clear_error() {
        if find_viewer().is_some() {
            return; // A viewer is installed here; the error path cannot be exercised.
        }
        let targets = VizTargets {
            recording_id: "20261202T000000Z-1".into(),
            mode: ViewerMode::Spawn,
            url: String::new(),
            serve_port: 0,
            rrd: None,
        };
        let err = Viz::open(&targets).expect_err("no viewer binary");
        assert!(err.to_string().contains("get-rerun-viewer"), "{err}");
    }
}
