//! A synchronous driver: frames in, keyframes selected, windows planned and predicted, submaps
//! aligned, loops verified. The daemon may use it directly or wire the same pieces across
//! threads; tests and offline runs use it as is.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendConfig, BackendError, LoopUpdate, WindowUpdate};
use crate::keyframe::{KeyframeConfig, KeyframeDecision, KeyframeSelector, SkipReason};
use crate::prediction::{PredictError, Predictor, WindowFrame};
use crate::window::{Window, WindowConfig, WindowError, WindowPlanner};

/// Settings of the whole back-end chain.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Keyframe selection.
    pub keyframes: KeyframeConfig,
    /// Window geometry.
    pub window: WindowConfig,
    /// Back-end.
    pub backend: BackendConfig,
    /// When set, each frame of a window attends to itself and at most this many others chosen
    /// by the covisibility graph; `None` means dense attention. Default `None`.
    pub attention_k: Option<usize>,
}

/// Error of a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Bad window geometry.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The predictor failed on a window.
    #[error("window {window}: {source}")]
    Predict {
        /// Window index.
        window: usize,
        /// Cause.
        source: PredictError,
    },
    /// The back-end rejected a prediction.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Something that happened while processing a frame.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A frame became a keyframe.
    Keyframe {
        /// Its id.
        frame_id: u64,
    },
    /// A frame was dropped.
    Skipped {
        /// Its id.
        frame_id: u64,
        /// Why.
        reason: SkipReason,
    },
    /// A window was predicted and added as a submap.
    Window(WindowUpdate),
    /// A loop candidate was predicted and verified (or rejected).
    Loop(LoopUpdate),
}

/// Keyframe selector + window planner + predictor + back-end.
pub struct Session<P: Predictor> {
    config: SessionConfig,
    selector: KeyframeSelector,
    planner: WindowPlanner,
    predictor: P,
    backend: Backend,
    recent: VecDeque<WindowFrame>,
}

impl<P: Predictor> Session<P> {
    /// A new session around `predictor`.
    pub fn new(config: SessionConfig, predictor: P) -> Result<Self, SessionError> {
        Ok(Self {
            selector: KeyframeSelector::new(config.keyframes.clone()),
            planner: WindowPlanner::new(config.window)?,
            backend: Backend::new(config.backend.clone()),
            predictor,
            recent: VecDeque::new(),
            config,
        })
    }

    /// The back-end state.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The predictor.
    pub fn predictor(&self) -> &P {
        &self.predictor
    }

    /// Feeds one frame (in time order).
    pub fn push_frame(&mut self, frame: WindowFrame) -> Result<Vec<SessionEvent>, SessionError> {
        match self.selector.push(&frame.image, frame.timestamp_s) {
            KeyframeDecision::Skip(reason) => Ok(vec![SessionEvent::Skipped {
                frame_id: frame.frame_id,
                reason,
            }]),
            KeyframeDecision::Keyframe => {
                let frame_id = frame.frame_id;
                self.recent.push_back(frame);
                while self.recent.len() > self.config.window.size {
                    self.recent.pop_front();
                }
                let mut events = vec![SessionEvent::Keyframe { frame_id }];
                if let Some(window) = self.planner.push_keyframe(frame_id) {
                    events.extend(self.process(&window)?);
                }
                Ok(events)
            }
        }
    }

    /// Ends the stream: predicts a last window over keyframes not yet covered.
    pub fn finish(&mut self) -> Result<Vec<SessionEvent>, SessionError> {
        match self.planner.flush() {
            Some(window) => self.process(&window),
            None => Ok(Vec::new()),
        }
    }

    fn process(&mut self, window: &Window) -> Result<Vec<SessionEvent>, SessionError> {
        let frames: Vec<WindowFrame> = window
            .frame_ids
            .iter()
            .filter_map(|id| self.recent.iter().find(|f| f.frame_id == *id).cloned())
            .collect();
        let neighbours = self.config.attention_k.map(|k| {
            self.backend
                .covisibility()
                .neighbours_within(&window.frame_ids, k)
        });
        let prediction = self
            .predictor
            .predict(&frames, neighbours.as_deref())
            .map_err(|source| SessionError::Predict {
                window: window.index,
                source,
            })?;
        let update = self.backend.push_window(prediction)?;
        let candidates = update.loop_candidates.clone();
        let mut events = vec![SessionEvent::Window(update)];
        for candidate in candidates {
            let prediction = self
                .predictor
                .predict(&candidate.window, None)
                .map_err(|source| SessionError::Predict {
                    window: window.index,
                    source,
                })?;
            events.push(SessionEvent::Loop(
                self.backend.push_loop_window(&candidate, prediction)?,
            ));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_keys() {
        let json = r#"{"keyframes": {"min_flow_frac": 0.1, "max_gap": 1.5}, "window": {"size": 6}, "backend": {"gauge": "sl4"}}"#;
        let c: SessionConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(c.keyframes.min_flow_frac, 0.1);
        assert_eq!(c.keyframes.max_gap, Duration::from_millis(1500));
        assert_eq!(c.keyframes.min_gap, KeyframeConfig::default().min_gap);
        assert_eq!((c.window.size, c.window.overlap), (6, 2));
        assert_eq!(c.backend.gauge, crate::backend::GaugeModel::Sl4);
        assert_eq!(c.attention_k, None);
        let bad = r#"{"keyframes": {"min_flow": 0.1}}"#;
        assert!(serde_json::from_str::<SessionConfig>(bad).is_err());
        let negative = r#"{"keyframes": {"max_gap": -1.0}}"#;
        assert!(serde_json::from_str::<SessionConfig>(negative).is_err());
        // Defaults round-trip.
        let text = serde_json::to_string(&SessionConfig::default()).expect("serialise");
        assert_eq!(
            serde_json::from_str::<SessionConfig>(&text).expect("parse"),
            SessionConfig::default()
        );
    }
}
