//! Video files through FFmpeg (any container and codec the system's libavformat/libavcodec
//! read: H.264 and MJPEG in MP4, MKV and AVI among them).
//!
//! Timestamps are the frames' presentation times in seconds from the stream start. A packet the
//! decoder rejects is a corrupt frame (warned, skipped); a file that ends before the frame count
//! its header announced is a [`SourceError::Truncated`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;
use submap::prediction::WindowFrame;

use super::{make_frame, FrameSource, SourceError};

/// Decodes the best video stream of a file.
pub struct VideoSource {
    path: PathBuf,
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream_index: usize,
    time_base_s: f64,
    expected_frames: u64,
    decoded: u64,
    pending: VecDeque<Result<WindowFrame, SourceError>>,
    last_error: Option<String>,
    finished: bool,
}

impl std::fmt::Debug for VideoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VideoSource")
            .field("path", &self.path)
            .field("decoded", &self.decoded)
            .finish()
    }
}

impl VideoSource {
    /// Opens `path` and its best video stream.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let open_err = |reason: String| SourceError::Open {
            path: path.to_owned(),
            reason,
        };
        ffmpeg::init().map_err(|e| open_err(format!("FFmpeg init: {e}")))?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
        let input = ffmpeg::format::input(path)
            .map_err(|e| open_err(format!("not a readable video: {e}")))?;
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| open_err("no video stream".into()))?;
        let stream_index = stream.index();
        let time_base_s = f64::from(stream.time_base());
        let expected_frames = u64::try_from(stream.frames()).unwrap_or(0);
        let context = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| open_err(format!("codec parameters: {e}")))?;
        let decoder = context
            .decoder()
            .video()
            .map_err(|e| open_err(format!("no decoder: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            input,
            decoder,
            stream_index,
            time_base_s,
            expected_frames,
            decoded: 0,
            pending: VecDeque::new(),
            last_error: None,
            finished: false,
        })
    }

    /// Frames announced by the container header (0 when unknown).
    pub fn expected_frames(&self) -> u64 {
        self.expected_frames
    }

    fn receive_all(&mut self) {
        let mut frame = ffmpeg::frame::Video::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            let frame_id = self.decoded;
            self.decoded += 1;
            let timestamp_s =
                frame.timestamp().unwrap_or(frame_id as i64) as f64 * self.time_base_s;
            let converted = self
                .to_rgb(&frame)
                .map(|img| make_frame(frame_id, timestamp_s, img));
            self.pending.push_back(converted);
        }
    }

    /// Converts to packed RGB. The converter is built per frame: `scaling::Context` is not
    /// `Send`, and the source moves to the ingest thread.
    fn to_rgb(&self, frame: &ffmpeg::frame::Video) -> Result<image::RgbImage, SourceError> {
        let corrupt = |reason: String| SourceError::Corrupt {
            what: match frame.pts() {
                Some(pts) => format!("video frame at time stamp {pts}"),
                None => "video frame without a time stamp".to_owned(),
            },
            reason,
        };
        let (format, width, height) = (frame.format(), frame.width(), frame.height());
        let mut scaler = scaling::Context::get(
            format,
            width,
            height,
            Pixel::RGB24,
            width,
            height,
            scaling::Flags::BILINEAR,
        )
        .map_err(|e| corrupt(format!("no converter from {format:?}: {e}")))?;
        let mut rgb = ffmpeg::frame::Video::empty();
        scaler
            .run(frame, &mut rgb)
            .map_err(|e| corrupt(e.to_string()))?;
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let mut pixels = Vec::with_capacity(width * height * 3);
        for row in 0..height {
            pixels.extend_from_slice(&data[row * stride..row * stride + width * 3]);
        }
        image::RgbImage::from_raw(width as u32, height as u32, pixels)
            .ok_or_else(|| corrupt("frame buffer size mismatch".into()))
    }

    fn end_of_file(&mut self) {
        self.finished = true;
        // Drain the decoder's delayed frames.
        if self.decoder.send_eof().is_ok() {
            self.receive_all();
        }
        if self.expected_frames > 0 && self.decoded < self.expected_frames {
            self.pending.push_back(Err(SourceError::Truncated {
                path: self.path.clone(),
                decoded: self.decoded,
                expected: self.expected_frames,
                reason: self
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "end of file".into()),
            }));
        }
    }

    fn read_packet(&mut self) {
        let mut packet = ffmpeg::Packet::empty();
        match packet.read(&mut self.input) {
            Ok(()) if packet.stream() == self.stream_index => match self
                .decoder
                .send_packet(&packet)
            {
                Ok(()) => self.receive_all(),
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    self.pending.push_back(Err(SourceError::Corrupt {
                        what: match packet.pts() {
                            Some(pts) => {
                                format!("{} packet at time stamp {pts}", self.path.display())
                            }
                            None => format!("{} packet without a time stamp", self.path.display()),
                        },
                        reason: e.to_string(),
                    }));
                }
            },
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => self.end_of_file(),
            Err(e) => {
                // A demuxer error mid-file: the rest is unreadable.
                self.last_error = Some(e.to_string());
                self.end_of_file();
                if self.pending.back().is_none_or(Result::is_ok) {
                    self.pending.push_back(Err(SourceError::Read {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    }));
                }
            }
        }
    }
}

impl FrameSource for VideoSource {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        while self.pending.is_empty() && !self.finished {
            self.read_packet();
        }
        self.pending.pop_front()
    }

    fn is_live(&self) -> bool {
        false
    }

    fn len_hint(&self) -> Option<u64> {
        (self.expected_frames > 0).then_some(self.expected_frames)
    }

    fn describe(&self) -> String {
        format!(
            "video {} ({} {}x{}, {} frames)",
            self.path.display(),
            self.decoder.id().name(),
            self.decoder.width(),
            self.decoder.height(),
            self.expected_frames
        )
    }
}
