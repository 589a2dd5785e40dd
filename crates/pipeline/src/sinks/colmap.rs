//! `output.colmap`: a binary COLMAP model of the final map (`colmap/sparse/0/*.bin`, keyframe
//! images in `colmap/images/`), written at the end of the run.

use super::{RunEnd, Sink, SinkError, SinkResult};

/// The COLMAP model.
#[derive(Debug, Default)]
pub struct ColmapSink;

/// Name of the model's folder in the output directory.
pub const COLMAP_DIR: &str = "colmap";

impl Sink for ColmapSink {
    fn name(&self) -> &'static str {
        "colmap"
    }

    fn finish(&mut self, end: &mut RunEnd<'_>) -> SinkResult {
        let dir = end.staging.path(COLMAP_DIR);
        let map = end.map();
        let written = submap::colmap::write_model(
            &dir,
            &end.backend.mapper().backend().keyframe_cameras(),
            &map.map,
            &map.sources,
        )
        .map_err(|e| SinkError::new("colmap", e))?;
        tracing::info!(
            cameras = written.cameras,
            images = written.images,
            points = written.points,
            "COLMAP model written"
        );
        Ok(())
    }
}
