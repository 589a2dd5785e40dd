//! Windows of keyframes: submaps of `size` keyframes, each sharing `overlap` keyframes with the
//! previous one.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::prediction::WindowFrame;

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
#[derive(Debug, Clone)]
pub struct PlannedWindow {
    /// 0-based window index.
    pub index: usize,
    /// Keyframes in time order.
    pub frames: Vec<WindowFrame>,
    /// How many leading frames the last integrated window also holds (0 for the first).
    pub overlap: usize,
}

impl PlannedWindow {
    /// The keyframe ids.
    pub fn frame_ids(&self) -> Vec<u64> {
        self.frames.iter().map(|f| f.frame_id).collect()
    }
}

/// Groups a stream of keyframes into windows of `size` that share `overlap` keyframes with the
/// last window that was *integrated*: when a window fails (the predictor erred, the back-end
/// rejected it), its new keyframes are dropped and the next window overlaps the last good one,
/// so the map stays connected.
///
/// One window at a time: [`WindowAssembler::next_window`] plans one, and the caller reports it with
/// [`WindowAssembler::integrated`] (or drops it) before planning the next.
#[derive(Debug, Clone)]
pub struct WindowAssembler {
    config: WindowConfig,
    /// Keyframes of the last integrated window.
    last: Vec<WindowFrame>,
    /// Keyframes in no window yet, in order.
    pending: VecDeque<WindowFrame>,
    planned: usize,
}

impl WindowAssembler {
    /// An assembler; fails when the geometry cannot make progress.
    pub fn new(config: WindowConfig) -> Result<Self, WindowError> {
        if config.size < 2 || config.overlap == 0 || config.overlap >= config.size {
            return Err(WindowError::BadGeometry {
                size: config.size,
                overlap: config.overlap,
            });
        }
        Ok(Self {
            config,
            last: Vec::new(),
            pending: VecDeque::new(),
            planned: 0,
        })
    }

    /// The geometry.
    pub fn config(&self) -> WindowConfig {
        self.config
    }

    /// Adds a keyframe (in time order).
    pub fn push(&mut self, frame: WindowFrame) {
        self.pending.push_back(frame);
    }

    /// Keyframes waiting for a window.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn needed(&self) -> usize {
        if self.last.is_empty() {
            self.config.size
        } else {
            self.config.size - self.config.overlap
        }
    }

    /// The next full window, when enough keyframes are waiting.
    pub fn next_window(&mut self) -> Option<PlannedWindow> {
        let needed = self.needed();
        (self.pending.len() >= needed).then(|| {
            let new: Vec<WindowFrame> = self.pending.drain(..needed).collect();
            self.plan(self.config.overlap, new)
        })
    }

    /// At the end of the stream: a last window over the keyframes still waiting, completed to
    /// `size` with the last integrated window's frames (so it may overlap by more than
    /// `overlap`), or shorter for a stream of fewer than `size` keyframes (at least 2).
    pub fn flush(&mut self) -> Option<PlannedWindow> {
        if let Some(window) = self.next_window() {
            return Some(window);
        }
        if self.pending.is_empty() || (self.last.is_empty() && self.pending.len() < 2) {
            return None;
        }
        let new: Vec<WindowFrame> = self.pending.drain(..).collect();
        let overlap = self
            .config
            .size
            .saturating_sub(new.len())
            .max(self.config.overlap);
        Some(self.plan(overlap, new))
    }

    fn plan(&mut self, overlap: usize, new: Vec<WindowFrame>) -> PlannedWindow {
        let keep = overlap.min(self.last.len());
        let mut frames: Vec<WindowFrame> = self.last[self.last.len() - keep..].to_vec();
        frames.extend(new);
        let window = PlannedWindow {
            index: self.planned,
            frames,
            overlap: keep,
        };
        self.planned += 1;
        window
    }

    /// Drops the keyframes still waiting; returns how many.
    pub fn discard_pending(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }

    /// Records that `window` became a submap: the next window overlaps it.
    pub fn integrated(&mut self, window: &PlannedWindow) {
        self.last = window.frames.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(frame_id: u64) -> WindowFrame {
        WindowFrame {
            frame_id,
            timestamp_s: frame_id as f64,
            image: Arc::new(image::RgbImage::new(1, 1)),
            depth_m: None,
        }
    }

    fn run(a: &mut WindowAssembler, ids: std::ops::Range<u64>) -> Vec<Vec<u64>> {
        let mut out = Vec::new();
        for id in ids {
            a.push(frame(id));
            while let Some(w) = a.next_window() {
                a.integrated(&w);
                out.push(w.frame_ids());
            }
        }
        out
    }

    #[test]
    fn windows_overlap_by_k() {
        let mut a = WindowAssembler::new(WindowConfig {
            size: 4,
            overlap: 1,
        })
        .expect("valid");
        let windows = run(&mut a, 0..11);
        assert_eq!(
            windows,
            [vec![0, 1, 2, 3], vec![3, 4, 5, 6], vec![6, 7, 8, 9]]
        );
        let last = a.flush().expect("keyframe 10 uncovered");
        assert_eq!(last.frame_ids(), vec![7, 8, 9, 10]);
        assert_eq!((last.overlap, last.index), (3, 3));
        a.integrated(&last);
        assert!(a.flush().is_none());
    }

    #[test]
    fn a_failed_window_is_skipped_and_the_next_overlaps_the_last_good_one() {
        let mut a = WindowAssembler::new(WindowConfig {
            size: 4,
            overlap: 2,
        })
        .expect("valid");
        for id in 0..10 {
            a.push(frame(id));
        }
        let first = a.next_window().expect("first");
        a.integrated(&first);
        let failed = a.next_window().expect("second");
        assert_eq!(failed.frame_ids(), vec![2, 3, 4, 5]);
        // Not integrated: 4 and 5 are lost, 6 and 7 join 2 and 3.
        let third = a.next_window().expect("third");
        assert_eq!(third.frame_ids(), vec![2, 3, 6, 7]);
        assert_eq!(third.overlap, 2);
    }

    #[test]
    fn short_stream_and_bad_geometry() {
        let mut a = WindowAssembler::new(WindowConfig::default()).expect("valid");
        a.push(frame(5));
        assert!(a.next_window().is_none());
        assert!(a.flush().is_none(), "one keyframe is no window");
        a.push(frame(6));
        assert!(a.next_window().is_none());
        assert_eq!(a.flush().expect("two keyframes").frame_ids(), vec![5, 6]);
        assert!(WindowAssembler::new(WindowConfig {
            size: 4,
            overlap: 4
        })
        .is_err());
        assert!(WindowAssembler::new(WindowConfig {
            size: 4,
            overlap: 0
        })
        .is_err());
    }
}
