//! Real video decoding: clips are encoded at test time with the `ffmpeg` CLI (H.264 in MP4 and
//! MKV, MJPEG in AVI) from generated frames, then read back through [`VideoSource`].
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::process::Command;

use pipeline::source::{FrameSource, SourceError, VideoSource};

const FRAMES: u32 = 12;
const FPS: u32 = 10;

/// Writes `FRAMES` PNGs whose red level encodes the frame index; with `textured`, green carries
/// pseudo-random texture so that every encoded frame has a realistic size.
fn write_frames(dir: &Path, width: u32, height: u32, textured: bool) {
    for i in 0..FRAMES {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            let hash = (x.wrapping_mul(73_856_093)
                ^ y.wrapping_mul(19_349_663)
                ^ i.wrapping_mul(83_492_791))
                % 251;
            let green = if textured {
                hash as u8
            } else {
                ((x * 4) % 256) as u8
            };
            image::Rgb([(i * 20) as u8, green, ((y * 5) % 256) as u8])
        });
        img.save(dir.join(format!("f{i:03}.png")))
            .expect("save frame");
    }
}

fn encode(dir: &Path, name: &str, codec_args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-framerate",
            &FPS.to_string(),
            "-i",
        ])
        .arg(dir.join("f%03d.png"))
        .args(codec_args)
        .arg(&out)
        .status()
        .expect("the ffmpeg CLI is installed (apt package `ffmpeg`)");
    assert!(status.success(), "ffmpeg failed for {name}");
    out
}

fn mean_red(img: &image::RgbImage) -> f64 {
    img.pixels().map(|p| f64::from(p[0])).sum::<f64>() / f64::from(img.width() * img.height())
}

fn read_all(path: &Path) -> (Vec<submap::prediction::WindowFrame>, Vec<SourceError>) {
    let mut source = VideoSource::open(path).expect("opens");
    let (mut frames, mut errors) = (Vec::new(), Vec::new());
    while let Some(item) = source.next_frame() {
        match item {
            Ok(frame) => frames.push(frame),
            Err(e) => errors.push(e),
        }
    }
    (frames, errors)
}

#[test]
fn decodes_h264_mjpeg_in_mp4_mkv_avi_with_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_frames(dir.path(), 64, 48, false);
    let clips = [
        encode(
            dir.path(),
            "clip.mp4",
            &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
        ),
        encode(
            dir.path(),
            "clip.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
        ),
        encode(dir.path(), "clip.avi", &["-c:v", "mjpeg", "-q:v", "3"]),
    ];
    for clip in &clips {
        let (frames, errors) = read_all(clip);
        assert!(errors.is_empty(), "{}: {errors:?}", clip.display());
        assert_eq!(frames.len(), FRAMES as usize, "{}", clip.display());
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame.frame_id, i as u64);
            assert_eq!((frame.image.width(), frame.image.height()), (64, 48));
            let expected_t = i as f64 / f64::from(FPS);
            assert!(
                (frame.timestamp_s - expected_t).abs() < 0.011,
                "{} frame {i}: t = {}",
                clip.display(),
                frame.timestamp_s
            );
            // Lossy codecs and chroma subsampling: red within a few levels of what was encoded.
            let red = mean_red(&frame.image);
            assert!(
                (red - f64::from(i as u32 * 20)).abs() < 8.0,
                "{} frame {i}: mean red {red}",
                clip.display()
            );
        }
    }
}

#[test]
fn truncated_video_is_a_clear_error_after_the_readable_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_frames(dir.path(), 320, 240, true);
    // Intra-only so that every complete frame before the cut decodes; index at the front so the
    // header still announces all frames.
    let clip = encode(
        dir.path(),
        "full.mp4",
        &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "1",
            "-movflags",
            "+faststart",
        ],
    );
    let bytes = std::fs::read(&clip).expect("read");
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let (frames, errors) = read_all(&cut);
    assert!(
        !frames.is_empty() && frames.len() < FRAMES as usize,
        "{} frames",
        frames.len()
    );
    let last = errors.last().expect("an error at the end");
    assert!(
        matches!(last, SourceError::Truncated { expected, .. } if *expected == u64::from(FRAMES)),
        "{last}"
    );
    assert!(last.to_string().contains("truncated video"), "{last}");
}

#[test]
fn unreadable_file_fails_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, vec![0x42u8; 4096]).expect("write");
    let err = VideoSource::open(&junk).expect_err("not a video");
    assert!(matches!(err, SourceError::Open { .. }), "{err}");
    assert!(err.to_string().contains("junk.mp4"), "{err}");
}
