//! Frame sources: image folders, video files, datasets, rosbag2 MCAP bags, live cameras and
//! remote cameras on the ROS 2 network.
//!
//! A source yields [`WindowFrame`]s (stream-wide frame id, capture time in seconds, RGB pixels) in
//! capture order. A corrupt frame is a [`SourceError::Corrupt`]: the caller warns and goes on. Any
//! other error ends the stream; what was read before is kept.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use submap::prediction::WindowFrame;

pub mod bag;
mod camera;
mod dataset;
mod folder;
#[cfg(feature = "ros2")]
mod ros2;
#[cfg(feature = "video")]
mod video;

pub use bag::BagSource;
pub use camera::{
    list_cameras, Backoff, CameraFormat, CameraInfo, CameraOpener, CameraStream, ReconnectingCamera,
};
pub use dataset::{
    detect_dataset, read_sequence, read_sequence_lenient, DatasetKind, DatasetSource,
};
pub use folder::{natural_cmp, ImageFolderSource};
#[cfg(feature = "ros2")]
pub use ros2::Ros2Source;
#[cfg(feature = "video")]
pub use video::VideoSource;

/// Error of a frame source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// One frame could not be decoded; the stream goes on.
    #[error("corrupt frame {what}: {reason}")]
    Corrupt {
        /// File or frame number.
        what: String,
        /// Decoder message.
        reason: String,
    },
    /// The input could not be opened at all.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// The input.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A video ended before its header said it would.
    #[error("truncated video {path}: decoded {decoded} of {expected} frames ({reason})")]
    Truncated {
        /// The video.
        path: PathBuf,
        /// Frames decoded before the end.
        decoded: u64,
        /// Frames announced by the container.
        expected: u64,
        /// Last demuxer or decoder message.
        reason: String,
    },
    /// A read failed mid-stream.
    #[error("read error in {path}: {reason}")]
    Read {
        /// The input.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The camera disappeared and did not come back.
    #[error("camera {device} lost after {attempts} reconnection attempts: {reason}")]
    CameraLost {
        /// The device path.
        device: String,
        /// Attempts made.
        attempts: u32,
        /// Last error.
        reason: String,
    },
    /// This build cannot read the input.
    #[error("{what} is not supported by this build: {hint}")]
    Unsupported {
        /// The input kind.
        what: String,
        /// How to get support.
        hint: String,
    },
}

/// Anything that yields frames in capture order.
pub trait FrameSource: Send {
    /// The next frame, `None` at the end of the stream.
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>>;

    /// Live sources must never be blocked (frames are dropped instead).
    fn is_live(&self) -> bool;

    /// Frames the source knows were sent but never reached vggtd since the last call (a
    /// network source's gaps in its publishers' sequence numbers); 0 where it cannot tell.
    fn missed(&mut self) -> u64 {
        0
    }

    /// Number of frames when known in advance (for the progress bar).
    fn len_hint(&self) -> Option<u64>;

    /// One line for logs.
    fn describe(&self) -> String;
}

/// What kind of input a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    /// `/dev/videoN`.
    Camera(PathBuf),
    /// A video file.
    Video(PathBuf),
    /// A TUM / 7-Scenes / EuRoC dataset folder.
    Dataset(PathBuf, DatasetKind),
    /// A folder of images.
    ImageFolder(PathBuf),
    /// A rosbag2 MCAP file, or a rosbag2 folder of them.
    Bag(PathBuf),
    /// `ros2://TOPIC`: an image topic on the ROS 2 network.
    Ros2(String),
}

impl InputKind {
    /// Classifies `path`; errors when it does not exist or is nothing readable.
    pub fn detect(path: &Path) -> Result<Self, SourceError> {
        let open_err = |reason: &str| SourceError::Open {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(topic) = path.to_str().and_then(|p| p.strip_prefix("ros2://")) {
            if !crate::config::is_ros_name(topic, true) || topic == "/" {
                return Err(open_err(
                    "not an absolute ROS 2 topic name after ros2:// (e.g. ros2:///camera/image_raw, \
                     or ros2:///camera/image_raw/compressed for sensor_msgs/msg/CompressedImage)",
                ));
            }
            return Ok(Self::Ros2(topic.to_owned()));
        }
        if path.starts_with("/dev") {
            if !path.exists() {
                return Err(camera::missing_camera(path));
            }
            return Ok(Self::Camera(path.to_owned()));
        }
        let meta = std::fs::metadata(path).map_err(|e| open_err(&e.to_string()))?;
        if bag::is_bag(path) {
            return Ok(Self::Bag(path.to_owned()));
        }
        if meta.is_dir() {
            return Ok(match detect_dataset(path) {
                Some(kind) => Self::Dataset(path.to_owned(), kind),
                None => Self::ImageFolder(path.to_owned()),
            });
        }
        if meta.is_file() {
            return Ok(Self::Video(path.to_owned()));
        }
        Err(open_err(
            "neither a directory, a file nor a /dev/video device",
        ))
    }

    /// Whether frames come from a live device.
    pub fn is_live(&self) -> bool {
        matches!(self, Self::Camera(_) | Self::Ros2(_))
    }
}

/// Options shared by all sources.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Frame rate for image folders whose names are not timestamps, Hz.
    pub folder_fps: f64,
    /// Camera capture size and rate.
    pub camera_width: u32,
    /// Camera capture height, pixels.
    pub camera_height: u32,
    /// Camera frame rate, Hz.
    pub camera_fps: u32,
    /// Camera reconnection schedule.
    pub backoff: Backoff,
    /// Attach datasets' depth images to their frames (metric scale).
    pub with_depth: bool,
    /// The image topic of a bag input.
    pub topic: Option<String>,
    /// The Zenoh session of a `ros2://` input.
    pub ros2: crate::config::Ros2Config,
    /// Set when the run stops: a source that waits for frames looks at it.
    pub stop: Arc<AtomicBool>,
}

/// Opens the source for `kind`.
pub fn open_source(
    kind: &InputKind,
    options: &SourceOptions,
) -> Result<Box<dyn FrameSource>, SourceError> {
    match kind {
        InputKind::ImageFolder(dir) => {
            Ok(Box::new(ImageFolderSource::open(dir, options.folder_fps)?))
        }
        InputKind::Dataset(dir, dataset_kind) => Ok(Box::new(
            DatasetSource::open(dir, *dataset_kind)?.with_depth(options.with_depth)?,
        )),
        InputKind::Video(path) => open_video(path),
        InputKind::Camera(device) => camera::open_camera(device, options),
        InputKind::Bag(path) => Ok(Box::new(BagSource::open(path, options.topic.as_deref())?)),
        InputKind::Ros2(topic) => open_ros2(topic, options),
    }
}

#[cfg(feature = "ros2")]
fn open_ros2(topic: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(Ros2Source::open(
        topic,
        &options.ros2,
        options.stop.clone(),
    )?))
}

#[cfg(not(feature = "ros2"))]
fn open_ros2(topic: &str, _: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::Unsupported {
        what: format!("ROS 2 topic {topic}"),
        hint: "rebuild with the `ros2` cargo feature".into(),
    })
}

/// Checks what can be checked of an input before anything is loaded: that a bag has the image
/// topic `topic` (the error lists the bag's topics).
pub fn check_input(kind: &InputKind, topic: Option<&str>) -> Result<(), SourceError> {
    match kind {
        InputKind::Bag(path) => bag::check_topic(path, topic).map(|_| ()),
        _ => Ok(()),
    }
}

#[cfg(feature = "video")]
fn open_video(path: &Path) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(Box::new(VideoSource::open(path)?))
}

#[cfg(not(feature = "video"))]
fn open_video(path: &Path) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::Unsupported {
        what: format!("video file {}", path.display()),
        hint: "rebuild with the `video` cargo feature (needs FFmpeg development libraries)".into(),
    })
}

/// Builds a frame from decoded pixels.
pub(crate) fn make_frame(frame_id: u64, timestamp_s: f64, image: image::RgbImage) -> WindowFrame {
    WindowFrame {
        frame_id,
        timestamp_s,
        image: Arc::new(image),
        depth_m: None,
    }
}

/// Reads one image file as a frame; an unreadable or corrupt file is a [`SourceError::Corrupt`]
/// that the caller logs and skips.
pub(crate) fn read_image_frame(
    frame_id: u64,
    timestamp_s: f64,
    path: &std::path::Path,
) -> Result<WindowFrame, SourceError> {
    image::open(path)
        .map(|img| make_frame(frame_id, timestamp_s, img.to_rgb8()))
        .map_err(|e| SourceError::Corrupt {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Sleeps so that frames are delivered at their recorded rate (`--realtime`).
#[derive(Debug)]
pub struct Pacer {
    start: Option<(std::time::Instant, f64)>,
}

impl Pacer {
    /// A pacer that starts with the first frame it sees.
    pub fn new() -> Self {
        Self { start: None }
    }

    /// Blocks until `timestamp_s` is due relative to the first frame.
    pub fn wait_for(&mut self, timestamp_s: f64) {
        let (wall_start, stream_start) = *self
            .start
            .get_or_insert((std::time::Instant::now(), timestamp_s));
        let due = Duration::from_secs_f64((timestamp_s - stream_start).max(0.0));
        if let Some(remaining) = due.checked_sub(wall_start.elapsed()) {
            std::thread::sleep(remaining);
        }
    }
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}
