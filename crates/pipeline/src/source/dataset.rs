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

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tum => "TUM RGB-D",
            Self::SevenScenes => "7-Scenes",
            Self::Euroc => "EuRoC MAV",
        })
    }
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

/// Reads a dataset's index files for a use that needs no ground truth (the input frames, the
/// calibration): a malformed TUM `groundtruth.txt` is a warning and the frames come without poses.
pub fn read_sequence_lenient(
    dir: &Path,
    kind: DatasetKind,
) -> Result<datasets::Sequence, SourceError> {
    if kind != DatasetKind::Tum {
        return read_sequence(dir, kind);
    }
    let (sequence, ground_truth_error) =
        datasets::tum::read_lenient(dir).map_err(|e| SourceError::Open {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
    if let Some(e) = ground_truth_error {
        tracing::warn!("ground truth ignored ({e}); the run does not need it");
    }
    Ok(sequence)
}

/// Frames of a dataset sequence, in time order; frame ids are the sequence indices. With
/// depth, each frame carries its depth image in metres (a missing or unreadable one is a
/// warning and the frame comes without).
#[derive(Debug)]
pub struct DatasetSource {
    dir: PathBuf,
    kind: DatasetKind,
    sequence: datasets::Sequence,
    with_depth: bool,
    next: usize,
}

impl DatasetSource {
    /// Reads the dataset's index files.
    pub fn open(dir: &Path, kind: DatasetKind) -> Result<Self, SourceError> {
        Ok(Self {
            dir: dir.to_owned(),
            kind,
            sequence: read_sequence_lenient(dir, kind)?,
            with_depth: false,
            next: 0,
        })
    }

    /// Attach depth images; an error when the dataset has none at all.
    pub fn with_depth(mut self, with_depth: bool) -> Result<Self, SourceError> {
        if with_depth && self.sequence.frames.iter().all(|f| f.depth_path.is_none()) {
            return Err(SourceError::Open {
                path: self.dir.clone(),
                reason: format!(
                    "metric scale needs depth images and this {:?} dataset has none (EuRoC has no depth camera)",
                    self.kind
                ),
            });
        }
        self.with_depth = with_depth;
        Ok(self)
    }
}

impl FrameSource for DatasetSource {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        let index = self.next;
        let frame = self.sequence.frames.get(index)?;
        self.next += 1;
        let mut item = read_image_frame(index as u64, frame.timestamp_s, &frame.rgb_path);
        if let (true, Ok(out)) = (self.with_depth, item.as_mut()) {
            match self.sequence.load_depth_m(index) {
                Ok(Some(depth)) => out.depth_m = Some(std::sync::Arc::new(depth)),
                Ok(None) => tracing::debug!(frame = index, "no depth image for this frame"),
                Err(e) => {
                    tracing::warn!(frame = index, error = %e, "depth image unreadable; frame kept without depth")
                }
            }
        }
        Some(item)
    }

    fn is_live(&self) -> bool {
        false
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.sequence.frames.len() as u64)
    }

    fn describe(&self) -> String {
        format!(
            "{} dataset {} ({} frames)",
            self.kind,
            self.dir.display(),
            self.sequence.frames.len()
        )
    }
}
