//! Errors of dataset readers and writers.

use std::path::PathBuf;

/// Error reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of a text file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when the problem is not tied to a line).
        line: usize,
        /// What was expected and found.
        message: String,
    },
    /// A required file is missing.
    #[error("{path}: missing (expected {what})")]
    Missing {
        /// The path looked for.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The codec error.
        source: image::ImageError,
    },
    /// The dataset lists no frame.
    #[error("{path}: no frames")]
    NoFrames {
        /// The dataset folder or list.
        path: PathBuf,
    },
    /// A trajectory file is malformed.
    #[error(transparent)]
    Trajectory(#[from] submap::tum::TumError),
    /// Bad option value.
    #[error("invalid option {name}: {message}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// Why.
        message: String,
    },
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}
