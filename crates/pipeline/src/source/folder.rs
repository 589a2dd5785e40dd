//! A folder of images in natural sort order (`frame2.png` before `frame10.png`).
//!
//! Timestamps come from the file stem when it is a number (TUM-style `1305031102.175304.png`),
//! otherwise from the index at a fixed frame rate.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use submap::prediction::WindowFrame;

use super::{read_image_frame, FrameSource, SourceError};

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Reads every image of a folder, in natural order.
#[derive(Debug)]
pub struct ImageFolderSource {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    fps: f64,
    stems_are_times: bool,
}

impl ImageFolderSource {
    /// Lists the images of `dir`; errors when there is none.
    pub fn open(dir: &Path, fps: f64) -> Result<Self, SourceError> {
        let read = std::fs::read_dir(dir).map_err(|e| SourceError::Open {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        let mut files: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        if files.is_empty() {
            return Err(SourceError::Open {
                path: dir.to_owned(),
                reason: "no .png/.jpg images and no known dataset layout".into(),
            });
        }
        files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
        let stems_are_times = files.iter().all(|p| stem_time(p).is_some());
        Ok(Self {
            dir: dir.to_owned(),
            files,
            next: 0,
            fps,
            stems_are_times,
        })
    }
}

fn stem_time(path: &Path) -> Option<f64> {
    path.file_stem()?
        .to_str()?
        .parse::<f64>()
        .ok()
        .filter(|t| t.is_finite())
}

impl FrameSource for ImageFolderSource {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        let index = self.next;
        let path = self.files.get(index)?.clone();
        self.next += 1;
        let timestamp_s = if self.stems_are_times {
            stem_time(&path).unwrap_or_default()
        } else {
            index as f64 / self.fps
        };
        Some(read_image_frame(index as u64, timestamp_s, &path))
    }

    fn is_live(&self) -> bool {
        false
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }

    fn describe(&self) -> String {
        format!(
            "image folder {} ({} images)",
            self.dir.display(),
            self.files.len()
        )
    }
}

/// Natural order: digit runs compare by value, everything else by character.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let run_a = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let run_b = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (digits_a, digits_b) = (trim_zeros(&a[..run_a]), trim_zeros(&b[..run_b]));
                let by_value = digits_a
                    .len()
                    .cmp(&digits_b.len())
                    .then_with(|| digits_a.cmp(digits_b));
                // Equal values with different zero padding: the shorter spelling first.
                let order = by_value.then_with(|| run_a.cmp(&run_b));
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[run_a..];
                b = &b[run_b..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&d| d == b'0').count();
    &digits[zeros..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_sorts_numbers_by_value() {
        let mut names = vec![
            "f10.png",
            "f2.png",
            "f1.png",
            "f010a.png",
            "g1.png",
            "f02.png",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "f1.png",
                "f2.png",
                "f02.png",
                "f10.png",
                "f010a.png",
                "g1.png"
            ]
        );
    }

    #[test]
    fn corrupt_image_is_reported_and_the_rest_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in [1u8, 3] {
            image::RgbImage::from_pixel(8, 6, image::Rgb([i, 0, 0]))
                .save(dir.path().join(format!("frame{i}.png")))
                .expect("save");
        }
        std::fs::write(dir.path().join("frame2.png"), b"not a png").expect("write");
        let mut source = ImageFolderSource::open(dir.path(), 10.0).expect("opens");
        let first = source.next_frame().expect("some").expect("decodes");
        assert_eq!((first.frame_id, first.image.get_pixel(0, 0)[0]), (0, 1));
        assert!(matches!(
            source.next_frame(),
            Some(Err(SourceError::Corrupt { .. }))
        ));
        let third = source.next_frame().expect("some").expect("decodes");
        assert_eq!(third.frame_id, 2);
        assert!((third.timestamp_s - 0.2).abs() < 1e-12, "index / fps");
        assert!(source.next_frame().is_none());
    }

    #[test]
    fn numeric_stems_are_timestamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        for stem in ["1305031102.175304", "1305031102.211214"] {
            image::RgbImage::new(4, 4)
                .save(dir.path().join(format!("{stem}.png")))
                .expect("save");
        }
        let mut source = ImageFolderSource::open(dir.path(), 30.0).expect("opens");
        let frame = source.next_frame().expect("some").expect("decodes");
        assert!((frame.timestamp_s - 1305031102.175304).abs() < 1e-6);
    }
}
