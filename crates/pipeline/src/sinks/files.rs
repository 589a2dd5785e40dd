//! The output files: `trajectory.txt` (TUM), `keyframes.txt`, `map.ply` and `summary.json`,
//! written at the end of the run into its staging area. Finished last, so that the summary holds
//! what the other sinks added.

use super::{RunEnd, Sink, SinkError, SinkResult};
use crate::outputs;

/// The output files.
#[derive(Debug, Default)]
pub struct FilesSink;

const NAME: &str = "files";

impl Sink for FilesSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn finish(&mut self, end: &mut RunEnd<'_>) -> SinkResult {
        let fail = |e: &dyn std::fmt::Display| SinkError::new(NAME, e);
        let trajectory = end.backend.trajectory();
        let write = |name: &str, text: String| {
            outputs::write_atomic(&end.staging.path(name), text.as_bytes()).map_err(|e| fail(&e))
        };
        write(outputs::TRAJECTORY, outputs::tum_trajectory(&trajectory))?;
        write(outputs::KEYFRAMES, outputs::keyframes_table(&trajectory))?;
        let map = &end.map().map;
        submap::map::write_ply(&end.staging.path(outputs::MAP), map).map_err(|e| fail(&e))?;
        end.summary.map_points = map.points_in_world.len() as u64;
        let json = serde_json::to_string_pretty(&*end.summary)
            .unwrap_or_else(|e| unreachable!("the summary serialises: {e}"));
        write(outputs::SUMMARY, json)
    }
}
