//! Windows of keyframes: submaps of `size` keyframes, each sharing `overlap` keyframes with the
//! previous one.

use serde::{Deserialize, Serialize};

/// Window geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Keyframes per window (N). Default 8.
    pub size: usize,
    /// Keyframes shared with the previous window (K, less than N). Default 2.
    pub overlap: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size: 8,
            overlap: 2,
        }
    }
}

/// Error of a window configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Overlap must leave room for new frames, and windows hold at least 2 frames.
    #[error("window size {size} with overlap {overlap}: need size >= 2 and 1 <= overlap < size")]
    BadGeometry {
        /// N.
        size: usize,
        /// K.
        overlap: usize,
    },
}

/// A window to predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// 0-based window (= submap) index.
    pub index: usize,
    /// Keyframe ids in time order.
    pub frame_ids: Vec<u64>,
    /// How many leading frames the previous window also holds (0 for the first window).
    pub overlap: usize,
}

/// Groups a stream of keyframe ids into overlapping windows.
#[derive(Debug, Clone)]
pub struct WindowPlanner {
    config: WindowConfig,
    keyframes: Vec<u64>,
    /// Keyframes (count) already covered by an emitted window.
    covered: usize,
    emitted: usize,
}

impl WindowPlanner {
    /// A planner; fails when the geometry cannot make progress.
    pub fn new(config: WindowConfig) -> Result<Self, WindowError> {
        if config.size < 2 || config.overlap == 0 || config.overlap >= config.size {
            return Err(WindowError::BadGeometry {
                size: config.size,
                overlap: config.overlap,
            });
        }
        Ok(Self {
            config,
            keyframes: Vec::new(),
            covered: 0,
            emitted: 0,
        })
    }

    /// Adds a keyframe; returns a window once enough new keyframes arrived.
    pub fn push_keyframe(&mut self, frame_id: u64) -> Option<Window> {
        self.keyframes.push(frame_id);
        let new = self.keyframes.len() - self.covered;
        let needed = if self.emitted == 0 {
            self.config.size
        } else {
            self.config.size - self.config.overlap
        };
        (new >= needed).then(|| self.emit())
    }

    /// At end of stream: a last window over the final keyframes when some are not yet covered
    /// (it may overlap its predecessor by more than K frames, or be shorter than N for a very
    /// short stream with at least 2 keyframes).
    pub fn flush(&mut self) -> Option<Window> {
        let uncovered = self.keyframes.len() - self.covered;
        if uncovered == 0 || (self.emitted == 0 && self.keyframes.len() < 2) {
            return None;
        }
        Some(self.emit())
    }

    fn emit(&mut self) -> Window {
        let end = self.keyframes.len();
        let start = end.saturating_sub(self.config.size);
        let overlap = if self.emitted == 0 {
            0
        } else {
            self.covered - start
        };
        let window = Window {
            index: self.emitted,
            frame_ids: self.keyframes[start..end].to_vec(),
            overlap,
        };
        self.covered = end;
        self.emitted += 1;
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_k() {
        let mut p = WindowPlanner::new(WindowConfig {
            size: 4,
            overlap: 1,
        })
        .expect("valid");
        let windows: Vec<Window> = (0..11).filter_map(|i| p.push_keyframe(i)).collect();
        assert_eq!(windows.len(), 3);
        assert_eq!(windows[0].frame_ids, vec![0, 1, 2, 3]);
        assert_eq!(windows[1].frame_ids, vec![3, 4, 5, 6]);
        assert_eq!(windows[2].frame_ids, vec![6, 7, 8, 9]);
        assert_eq!((windows[1].overlap, windows[2].index), (1, 2));
        let last = p.flush().expect("keyframe 10 uncovered");
        assert_eq!(last.frame_ids, vec![7, 8, 9, 10]);
        assert_eq!(last.overlap, 3);
        assert!(p.flush().is_none());
    }

    #[test]
    fn short_stream_and_bad_geometry() {
        let mut p = WindowPlanner::new(WindowConfig::default()).expect("valid");
        assert!(p.push_keyframe(5).is_none());
        assert!(p.push_keyframe(6).is_none());
        assert_eq!(p.flush().expect("two keyframes").frame_ids, vec![5, 6]);
        assert!(WindowPlanner::new(WindowConfig {
            size: 4,
            overlap: 4
        })
        .is_err());
        assert!(WindowPlanner::new(WindowConfig {
            size: 4,
            overlap: 0
        })
        .is_err());
    }
}
