//! `--pose-stream`: every keyframe pose as a JSON line when it is first known and again when the
//! pose graph moves it (see [`crate::pose_stream`] for the line format and targets).

use super::{Sink, SinkError, SinkResult};
use crate::backend::KeyframeView;
use crate::outputs::KeyframePose;
use crate::pose_stream::PoseStream;

const NAME: &str = "pose stream";

/// Opens the stream before any frame is read, so a wrong target stops the run at start.
pub fn open(target: &str) -> Result<PoseStream, SinkError> {
    PoseStream::open(target).map_err(|e| SinkError::new(NAME, e))
}

impl Sink for PoseStream {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keyframe(&mut self, pose: &KeyframePose, _view: Option<&KeyframeView>) -> SinkResult {
        self.send(pose).map_err(|e| SinkError::new(NAME, e))
    }

    fn pose_moved(&mut self, pose: &KeyframePose) -> SinkResult {
        self.send(pose).map_err(|e| SinkError::new(NAME, e))
    }
}
