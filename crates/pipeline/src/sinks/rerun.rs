//! The rerun view and recording: a live stream to a viewer (`--viewer`) and/or an `.rrd` file
//! (`--rrd`, `output.write_rrd`), both with the layout of [`crate::viz::blueprint`]. The entity
//! layout is described in [`crate::viz`].

use std::path::PathBuf;

use nalgebra::{Isometry3, Matrix4};
use submap::prediction::Map2;

use super::{Metrics, RunEnd, Sink, SinkError, SinkResult};
use crate::backend::{KeyframeView, SubmapCloud};
use crate::config::DaemonConfig;
use crate::outputs::KeyframePose;
use crate::viz::{Viz, VizTargets};

const NAME: &str = "rerun";

/// The rerun stream of a run.
#[derive(Debug)]
pub struct RerunSink {
    viz: Option<Viz>,
    log_images: bool,
}

impl RerunSink {
    /// Opens the viewer connection and the recording file (`recording`, a path in the staging
    /// area); `None` when the configuration asks for neither.
    pub fn open(
        config: &DaemonConfig,
        recording: Option<PathBuf>,
        run_id: &str,
    ) -> Result<Option<Self>, SinkError> {
        let viz = Viz::open(&VizTargets {
            recording_id: run_id.to_owned(),
            mode: config.viewer.mode.clone(),
            url: config.viewer.url.clone(),
            serve_port: config.viewer.serve_port,
            rrd: recording,
        })
        .map_err(|e| SinkError::new(NAME, e))?;
        Ok(viz.map(|viz| Self {
            viz: Some(viz),
            log_images: config.viewer.log_images,
        }))
    }

    fn viz(&self) -> Result<&Viz, SinkError> {
        self.viz
            .as_ref()
            .ok_or_else(|| SinkError::new(NAME, "the stream is closed"))
    }
}

impl Sink for RerunSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_time(&mut self, frame_id: u64, timestamp_s: f64) {
        if let Some(viz) = &self.viz {
            viz.set_time(frame_id, timestamp_s);
        }
    }

    fn keyframe(&mut self, pose: &KeyframePose, view: Option<&KeyframeView>) -> SinkResult {
        let viz = self.viz()?;
        match view {
            Some(view) => {
                let image = self.log_images.then_some(view.image.as_ref());
                viz.log_keyframe(pose, &view.intrinsics, image, view.resolution);
            }
            None => viz.log_keyframe_pose(pose),
        }
        Ok(())
    }

    fn pose_moved(&mut self, pose: &KeyframePose) -> SinkResult {
        self.viz()?.log_keyframe_pose(pose);
        Ok(())
    }

    fn wants_clouds(&self) -> bool {
        true
    }

    fn submap(&mut self, cloud: &SubmapCloud) -> SinkResult {
        self.viz()?
            .log_submap_points(cloud.submap, &cloud.points, &cloud.colors);
        Ok(())
    }

    fn submap_placed(&mut self, submap: usize, world_from_submap: &Matrix4<f64>) -> SinkResult {
        self.viz()?.log_submap_transform(submap, world_from_submap);
        Ok(())
    }

    fn trajectory(&mut self, poses: &[KeyframePose]) -> SinkResult {
        self.viz()?.log_trajectory(poses);
        Ok(())
    }

    fn current_frame(
        &mut self,
        pose: &KeyframePose,
        view: &KeyframeView,
        depth: &Map2<f32>,
    ) -> SinkResult {
        let image = self.log_images.then_some(view.image.as_ref());
        self.viz()?
            .log_current_frame(pose, &view.intrinsics, image, depth);
        Ok(())
    }

    fn loops(&mut self, edges: &[(Isometry3<f64>, Isometry3<f64>)]) -> SinkResult {
        self.viz()?.log_loop_edges(edges);
        Ok(())
    }

    fn metrics(&mut self, metrics: &Metrics) -> SinkResult {
        let viz = self.viz()?;
        for (name, depth) in metrics.queues {
            viz.log_scalar(&format!("queue/{name}"), depth as f64);
        }
        viz.log_scalar("fps", metrics.fps);
        viz.log_scalar("latency_ms", metrics.latency_ms);
        viz.log_scalar("memory_mib", metrics.memory_mib());
        Ok(())
    }

    /// Flushes and closes the stream, so the recording file is complete before it is committed.
    fn finish(&mut self, _end: &mut RunEnd<'_>) -> SinkResult {
        if let Some(viz) = self.viz.take() {
            viz.flush();
        }
        Ok(())
    }
}
