//! A synchronous driver: frames in, keyframes selected, then the [`Mapper`] and a predictor in
//! one loop. The daemon runs the same [`Mapper`] with the predictor on its own thread, so a
//! session and a daemon run on the same input and predictor give the same result.

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendConfig};
use crate::keyframe::{KeyframeConfig, KeyframeDecision, KeyframeSelector, SkipReason};
use crate::mapper::{Mapper, MapperConfig, MapperError, MapperEvent, MetricScaleConfig};
use crate::prediction::{Predictor, WindowFrame};
use crate::window::{WindowConfig, WindowError};

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
    /// Metric scale from the frames' sensor depth.
    pub metric_scale: MetricScaleConfig,
}

impl SessionConfig {
    /// The core's part of the settings.
    pub fn mapper(&self) -> MapperConfig {
        MapperConfig {
            window: self.window,
            backend: self.backend.clone(),
            attention_k: self.attention_k,
            metric_scale: self.metric_scale.clone(),
        }
    }
}

/// Error of a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Bad window geometry.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The core's bookkeeping failed (a bug).
    #[error(transparent)]
    Mapper(#[from] MapperError),
    /// A keyframe was refused (bad descriptor, duplicate id).
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

/// Something that happened while processing a frame.
#[derive(Debug)]
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
    /// What the core did.
    Mapper(Box<MapperEvent>),
}

/// Keyframe selector + core + predictor.
pub struct Session<P: Predictor> {
    selector: KeyframeSelector,
    mapper: Mapper,
    predictor: P,
}

impl<P: Predictor> Session<P> {
    /// A new session around `predictor`.
    pub fn new(config: SessionConfig, predictor: P) -> Result<Self, SessionError> {
        Ok(Self {
            selector: KeyframeSelector::new(config.keyframes.clone()),
            mapper: Mapper::new(config.mapper())?,
            predictor,
        })
    }

    /// The back-end state.
    pub fn backend(&self) -> &Backend {
        self.mapper.backend()
    }

    /// The core.
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
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
                self.push_keyframe(frame).map(|mut events| {
                    events.insert(0, SessionEvent::Keyframe { frame_id });
                    events
                })
            }
        }
    }

    /// Feeds a frame that is a keyframe (selection done elsewhere).
    pub fn push_keyframe(&mut self, frame: WindowFrame) -> Result<Vec<SessionEvent>, SessionError> {
        self.mapper.push_keyframe(frame)?;
        self.drain()
    }

    /// Ends the stream: predicts a last window over keyframes not yet covered.
    pub fn finish(&mut self) -> Result<Vec<SessionEvent>, SessionError> {
        self.mapper.finish();
        self.drain()
    }

    fn drain(&mut self) -> Result<Vec<SessionEvent>, SessionError> {
        let mut events = Vec::new();
        while let Some(request) = self.mapper.next_request() {
            let answer = self
                .predictor
                .predict(&request.frames, request.neighbours.as_deref());
            events.extend(
                self.mapper
                    .complete(request.id, answer)?
                    .into_iter()
                    .map(|e| SessionEvent::Mapper(Box::new(e))),
            );
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
