//! Live cameras with reconnection.
//!
//! [`ReconnectingCamera`] wraps any [`CameraOpener`]: when a read fails (camera unplugged) it
//! reopens the device with exponential back-off, and after the configured number of failed
//! attempts it ends the stream cleanly with [`SourceError::CameraLost`]. The V4L2 opener
//! (`/dev/videoN`, in every Linux build) is one implementation; the logic does not depend on it.
//! [`list_cameras`] is `vggtd cameras`: the capture devices found, their names and formats.

use std::path::Path;
use std::time::{Duration, Instant};

use submap::prediction::WindowFrame;

use super::{FrameSource, SourceError, SourceOptions};

/// Exponential back-off schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Attempts before giving up.
    pub attempts: u32,
    /// Delay before the first attempt; doubled after each failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Delay before attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// An open camera delivering RGB frames.
pub trait CameraStream: Send {
    /// Blocks for the next frame; an error means the device is gone or broken.
    fn capture(&mut self) -> Result<image::RgbImage, String>;
}

/// Opens (and reopens) a camera.
pub trait CameraOpener: Send {
    /// Opens the device.
    fn open(&mut self) -> Result<Box<dyn CameraStream>, String>;
    /// Device name for messages.
    fn device(&self) -> String;
}

/// A live source that survives unplugging for a while.
pub struct ReconnectingCamera<O: CameraOpener> {
    opener: O,
    stream: Option<Box<dyn CameraStream>>,
    backoff: Backoff,
    start: Instant,
    next_id: u64,
    lost: bool,
    sleep: fn(Duration),
}

impl<O: CameraOpener> std::fmt::Debug for ReconnectingCamera<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingCamera")
            .field("device", &self.opener.device())
            .finish()
    }
}

impl<O: CameraOpener> ReconnectingCamera<O> {
    /// Opens the camera once; failing here is an error (no retries before the first frame).
    pub fn open(mut opener: O, backoff: Backoff) -> Result<Self, SourceError> {
        let stream = opener.open().map_err(|reason| SourceError::Open {
            path: opener.device().into(),
            reason,
        })?;
        Ok(Self {
            opener,
            stream: Some(stream),
            backoff,
            start: Instant::now(),
            next_id: 0,
            lost: false,
            sleep: std::thread::sleep,
        })
    }

    /// Replaces the sleep function (tests run the schedule without waiting).
    pub fn with_sleep(mut self, sleep: fn(Duration)) -> Self {
        self.sleep = sleep;
        self
    }

    fn reconnect(&mut self, first_error: String) -> Result<(), SourceError> {
        let mut last = first_error;
        for attempt in 0..self.backoff.attempts {
            let delay = self.backoff.delay(attempt);
            tracing::warn!(device = %self.opener.device(), attempt, ?delay, error = %last, "camera lost, reconnecting");
            (self.sleep)(delay);
            match self.opener.open() {
                Ok(stream) => {
                    tracing::info!(device = %self.opener.device(), attempt, "camera reconnected");
                    self.stream = Some(stream);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(SourceError::CameraLost {
            device: self.opener.device(),
            attempts: self.backoff.attempts,
            reason: last,
        })
    }
}

impl<O: CameraOpener> FrameSource for ReconnectingCamera<O> {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        if self.lost {
            return None;
        }
        loop {
            let result = match self.stream.as_mut() {
                Some(stream) => stream.capture(),
                None => Err("not open".to_owned()),
            };
            match result {
                Ok(image) => {
                    let frame_id = self.next_id;
                    self.next_id += 1;
                    return Some(Ok(super::make_frame(
                        frame_id,
                        self.start.elapsed().as_secs_f64(),
                        image,
                    )));
                }
                Err(e) => {
                    self.stream = None;
                    if let Err(lost) = self.reconnect(e) {
                        self.lost = true;
                        return Some(Err(lost));
                    }
                }
            }
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    fn describe(&self) -> String {
        format!("camera {}", self.opener.device())
    }
}

/// Opens a `/dev/videoN` device.
pub(super) fn open_camera(
    device: &Path,
    options: &SourceOptions,
) -> Result<Box<dyn FrameSource>, SourceError> {
    if !device.exists() {
        return Err(missing_camera(device));
    }
    #[cfg(target_os = "linux")]
    {
        let opener = v4l2::V4l2Opener::new(device, options);
        Ok(Box::new(ReconnectingCamera::open(opener, options.backoff)?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = options;
        Err(SourceError::Unsupported {
            what: format!("camera {}", device.display()),
            hint: "live cameras are read through V4L2, on Linux only; record a video and pass the file".into(),
        })
    }
}

/// The error for a camera path that names no device, with the cameras that do exist.
pub(super) fn missing_camera(device: &Path) -> SourceError {
    SourceError::Open {
        path: device.to_owned(),
        reason: format!(
            "no such camera: {} does not exist ({})",
            device.display(),
            found_hint()
        ),
    }
}

/// One line naming the cameras that exist, for error messages.
fn found_hint() -> String {
    let found: Vec<String> = video_devices()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if found.is_empty() {
        "this machine has no /dev/video* device; is the camera plugged in?".into()
    } else {
        format!(
            "found: {}; `vggtd cameras` says which capture",
            found.join(", ")
        )
    }
}

/// The `/dev/video*` nodes, in numeric order.
fn video_devices() -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else {
        return Vec::new();
    };
    let mut devices: Vec<(u32, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, entry.path()))
        })
        .collect();
    devices.sort();
    devices.into_iter().map(|(_, path)| path).collect()
}

/// A video device as `vggtd cameras` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraInfo {
    /// The device node.
    pub device: std::path::PathBuf,
    /// What the driver calls it, with driver and bus (`card (driver, bus)`), when it could be opened.
    pub name: Option<String>,
    /// Whether it captures video (many cameras expose a second, metadata-only node).
    pub captures: bool,
    /// Capture formats: FourCC, description and frame sizes.
    pub formats: Vec<CameraFormat>,
    /// Why it could not be queried (busy, permission denied).
    pub error: Option<String>,
}

/// One capture format of a camera.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraFormat {
    /// FourCC, e.g. `MJPG`, `YUYV`.
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Frame sizes (`640x480`, or `min-max` ranges for stepwise sizes).
    pub sizes: Vec<String>,
    /// Whether vggtd can decode it (MJPEG and YUYV).
    pub supported: bool,
}

/// Every `/dev/video*` node with its name and formats, in numeric order.
pub fn list_cameras() -> Vec<CameraInfo> {
    video_devices().into_iter().map(query_camera).collect()
}

#[cfg(target_os = "linux")]
fn query_camera(device: std::path::PathBuf) -> CameraInfo {
    use v4l::video::Capture as _;
    let mut info = CameraInfo {
        device,
        name: None,
        captures: false,
        formats: Vec::new(),
        error: None,
    };
    let handle = match v4l::Device::with_path(&info.device) {
        Ok(handle) => handle,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (add your user to the `video` group)"
            } else {
                ""
            };
            info.error = Some(format!("{e}{hint}"));
            return info;
        }
    };
    match handle.query_caps() {
        Ok(caps) => {
            info.name = Some(format!("{} ({}, {})", caps.card, caps.driver, caps.bus));
            info.captures = caps
                .capabilities
                .contains(v4l::capability::Flags::VIDEO_CAPTURE);
        }
        Err(e) => {
            info.error = Some(e.to_string());
            return info;
        }
    }
    if !info.captures {
        return info;
    }
    match handle.enum_formats() {
        Ok(formats) => {
            for format in formats {
                let fourcc = format.fourcc.str().unwrap_or("????").to_owned();
                let sizes = handle
                    .enum_framesizes(format.fourcc)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|size| match size.size {
                        v4l::framesize::FrameSizeEnum::Discrete(d) => {
                            format!("{}x{}", d.width, d.height)
                        }
                        v4l::framesize::FrameSizeEnum::Stepwise(s) => format!(
                            "{}x{}-{}x{}",
                            s.min_width, s.min_height, s.max_width, s.max_height
                        ),
                    })
                    .collect();
                info.formats.push(CameraFormat {
                    supported: fourcc == "MJPG" || fourcc == "YUYV",
                    fourcc,
                    description: format.description,
                    sizes,
                });
            }
        }
        Err(e) => info.error = Some(e.to_string()),
    }
    info
}

#[cfg(not(target_os = "linux"))]
fn query_camera(device: std::path::PathBuf) -> CameraInfo {
    CameraInfo {
        device,
        name: None,
        captures: false,
        formats: Vec::new(),
        error: Some("cameras are read through V4L2, on Linux only".into()),
    }
}

#[cfg(target_os = "linux")]
mod v4l2 {
    //! V4L2 capture in MJPEG or YUYV.

    use std::path::{Path, PathBuf};

    use v4l::io::traits::CaptureStream as _;
    use v4l::video::Capture as _;

    use super::{CameraOpener, CameraStream, SourceOptions};

    pub(super) struct V4l2Opener {
        path: PathBuf,
        width: u32,
        height: u32,
        fps: u32,
    }

    impl V4l2Opener {
        pub(super) fn new(path: &Path, options: &SourceOptions) -> Self {
            Self {
                path: path.to_owned(),
                width: options.camera_width,
                height: options.camera_height,
                fps: options.camera_fps,
            }
        }
    }

    struct V4l2Stream {
        stream: v4l::io::mmap::Stream<'static>,
        format: v4l::Format,
    }

    impl CameraOpener for V4l2Opener {
        fn open(&mut self) -> Result<Box<dyn CameraStream>, String> {
            let device = v4l::Device::with_path(&self.path).map_err(|e| e.to_string())?;
            let mut format = device.format().map_err(|e| e.to_string())?;
            format.width = self.width;
            format.height = self.height;
            format.fourcc = v4l::FourCC::new(b"MJPG");
            let mut format = device.set_format(&format).map_err(|e| e.to_string())?;
            if format.fourcc != v4l::FourCC::new(b"MJPG") {
                format.fourcc = v4l::FourCC::new(b"YUYV");
                format = device.set_format(&format).map_err(|e| e.to_string())?;
            }
            let params = v4l::video::capture::Parameters::with_fps(self.fps);
            device.set_params(&params).map_err(|e| e.to_string())?;
            let stream =
                v4l::io::mmap::Stream::with_buffers(&device, v4l::buffer::Type::VideoCapture, 4)
                    .map_err(|e| e.to_string())?;
            Ok(Box::new(V4l2Stream { stream, format }))
        }

        fn device(&self) -> String {
            self.path.display().to_string()
        }
    }

    impl CameraStream for V4l2Stream {
        fn capture(&mut self) -> Result<image::RgbImage, String> {
            let (data, _meta) = self.stream.next().map_err(|e| e.to_string())?;
            if self.format.fourcc == v4l::FourCC::new(b"MJPG") {
                image::load_from_memory_with_format(data, image::ImageFormat::Jpeg)
                    .map(|img| img.to_rgb8())
                    .map_err(|e| e.to_string())
            } else {
                yuyv_to_rgb(data, self.format.width, self.format.height)
            }
        }
    }

    fn yuyv_to_rgb(data: &[u8], width: u32, height: u32) -> Result<image::RgbImage, String> {
        let needed = width as usize * height as usize * 2;
        if data.len() < needed {
            return Err(format!(
                "short YUYV frame: {} of {needed} bytes",
                data.len()
            ));
        }
        let mut rgb = Vec::with_capacity(needed / 2 * 3);
        for quad in data[..needed].chunks_exact(4) {
            let (y0, u, y1, v) = (
                quad[0] as f32,
                quad[1] as f32 - 128.0,
                quad[2] as f32,
                quad[3] as f32 - 128.0,
            );
            for y in [y0, y1] {
                let clamp = |x: f32| x.clamp(0.0, 255.0) as u8;
                rgb.extend([
                    clamp(y + 1.402 * v),
                    clamp(y - 0.344 * u - 0.714 * v),
                    clamp(y + 1.772 * u),
                ]);
            }
        }
        image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| "YUYV size mismatch".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A device that delivers `frames_per_session` frames per open, and accepts only the opens
    /// whose index is in `good_opens`.
    struct FlakyDevice {
        opens: Arc<AtomicU32>,
        good_opens: Vec<u32>,
        frames_per_session: u32,
    }

    struct Session(u32);

    impl CameraStream for Session {
        fn capture(&mut self) -> Result<image::RgbImage, String> {
            if self.0 == 0 {
                return Err("No such device (os error 19)".into());
            }
            self.0 -= 1;
            Ok(image::RgbImage::new(4, 3))
        }
    }

    impl CameraOpener for FlakyDevice {
        fn open(&mut self) -> Result<Box<dyn CameraStream>, String> {
            let index = self.opens.fetch_add(1, Ordering::SeqCst);
            if self.good_opens.contains(&index) {
                Ok(Box::new(Session(self.frames_per_session)))
            } else {
                Err("No such file or directory (os error 2)".into())
            }
        }
        fn device(&self) -> String {
            "/dev/video-test".into()
        }
    }

    fn no_sleep(_: Duration) {}

    #[test]
    fn backoff_doubles_and_caps() {
        let backoff = Backoff {
            attempts: 6,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        let delays: Vec<u128> = (0..5).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn unplugged_camera_reconnects_then_stops_cleanly() {
        let opens = Arc::new(AtomicU32::new(0));
        // Open 0 works, the camera is then unplugged; opens 1 and 2 fail, open 3 works again,
        // then the camera is unplugged for good.
        let device = FlakyDevice {
            opens: opens.clone(),
            good_opens: vec![0, 3],
            frames_per_session: 2,
        };
        let backoff = Backoff {
            attempts: 3,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        };
        let mut camera = ReconnectingCamera::open(device, backoff)
            .expect("first open")
            .with_sleep(no_sleep);
        let mut ids = Vec::new();
        let mut final_error = None;
        while let Some(item) = camera.next_frame() {
            match item {
                Ok(frame) => ids.push(frame.frame_id),
                Err(e) => final_error = Some(e),
            }
        }
        assert_eq!(
            ids,
            [0, 1, 2, 3],
            "frames of both sessions, ids continue across the reconnection"
        );
        assert!(
            matches!(
                final_error,
                Some(SourceError::CameraLost { attempts: 3, .. })
            ),
            "{final_error:?}"
        );
        assert_eq!(
            opens.load(Ordering::SeqCst),
            1 + 3 + 3,
            "first open, 3 tries, 3 final tries"
        );
        assert!(camera.next_frame().is_none(), "the stream stays ended");
    }

    #[test]
    fn missing_camera_fails_at_open() {
        let device = FlakyDevice {
            opens: Arc::default(),
            good_opens: vec![],
            frames_per_session: 0,
        };
        let backoff = Backoff {
            attempts: 3,
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert!(matches!(
            ReconnectingCamera::open(device, backoff),
            Err(SourceError::Open { .. })
        ));
    }
}
