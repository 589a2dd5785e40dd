//! Dataset folders (TUM RGB-D, 7-Scenes, EuRoC) through the `datasets` readers. Timestamps are
//! the dataset's own.

use std::path::{Path, PathBuf};

use submap::prediction::WindowFrame;

use super::{read_image_frame, FrameSource, SourceError};

/// Known dataset layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// TUM RGB-D: `rgb.txt` + `rgb/`.
    Tum,
    /// 7-Scenes sequence: `frame-NNNNNN.color.png` + `.pose.txt`.
    SevenScenes,
    /// EuRoC MAV: `mav0/cam0/data.csv`.
    Euroc,
}

/// Recognises a dataset layout by its marker files.
pub fn detect_dataset(dir: &Path) -> Option<DatasetKind> {
    if dir.join("rgb.txt").is_file() {
        return Some(DatasetKind::Tum);
    }
    if dir.join("mav0/cam0/data.csv").is_file() || dir.join("cam0/data.csv").is_file() {
        return Some(DatasetKind::Euroc);
    }
    let has_seven_scenes_frames =
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("frame-") && n.ends_with(".color.png"))
            });
    has_seven_scenes_frames.then_some(DatasetKind::SevenScenes)
}

/// Reads a dataset's index files.
pub fn read_sequence(dir: &Path, kind: DatasetKind) -> Result<datasets::Sequence, SourceError> {
    let read = match kind {
        DatasetKind::Tum => datasets::tum::read(dir),
        DatasetKind::SevenScenes => datasets::seven_scenes::read(dir),
        DatasetKind::Euroc => datasets::euroc::read(dir),
    };
    read.map_err(|e| SourceError::Open {
        path: dir.to_owned(),
        reason: e.to_string(),
    })
}

/// Frames of a dataset sequence, in time order; frame ids are the sequence indices.
#[derive(Debug)]
pub struct DatasetSource {
    dir: PathBuf,
    kind: DatasetKind,
    frames: Vec<(f64, PathBuf)>,
    next: usize,
}

impl DatasetSource {
    /// Reads the dataset's index files.
    pub fn open(dir: &Path, kind: DatasetKind) -> Result<Self, SourceError> {
        let sequence = read_sequence(dir, kind)?;
        let frames = sequence
            .frames
            .into_iter()
            .map(|f| (f.timestamp_s, f.rgb_path))
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            kind,
            frames,
            next: 0,
        })
    }
}

impl FrameSource for DatasetSource {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        let index = self.next;
        let (timestamp_s, path) = self.frames.get(index)?.clone();
        self.next += 1;
        Some(read_image_frame(index as u64, timestamp_s, &path))
    }

    fn is_live(&self) -> bool {
        false
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.frames.len() as u64)
    }

    fn describe(&self) -> String {
        format!(
            "{:?} dataset {} ({} frames)",
            self.kind,
            self.dir.display(),
            self.frames.len()
        )
    }
}
