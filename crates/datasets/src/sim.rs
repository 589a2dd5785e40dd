//! **Simulation**: a predictor that answers from ground truth, not from a model.
//!
//! For a requested window, [`SimulatedPredictor`] looks every frame up (by timestamp) in a
//! dataset with depth and ground-truth poses, and returns them as a model would: in a random
//! per-window gauge (`window_from_world` = random rotation, translation and scale) with
//! configurable noise on depth and poses, a fraction of outlier depths, random confidences, an
//! optional point map, and optionally a mild projective distortion of that point map. It lets
//! the back-end be tuned and tested without model weights; its [`Predictor::name`] says so.

use std::path::Path;
use std::sync::Arc;

use nalgebra::{Isometry3, Point3, Translation3, UnitQuaternion, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use submap::align::projective_tilt;
use submap::prediction::{
    FramePrediction, Map2, PredictError, Predictor, WindowFrame, WindowPrediction,
};

use crate::error::DatasetError;
use crate::sequence::Sequence;

/// Noise and gauge settings of the simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of all random draws.
    pub seed: u64,
    /// Relative depth noise (standard deviation of a multiplicative Gaussian). Default 0.005.
    pub depth_noise_rel: f64,
    /// Per-frame rotation noise, degrees (standard deviation per axis). Default 0.05.
    pub rotation_noise_deg: f64,
    /// Per-frame camera position noise, metres before the gauge scale (per axis). Default 0.001.
    pub translation_noise_m: f64,
    /// Fraction of pixels whose depth is replaced by a gross error (x0.5 to x1.5). Default 0.01.
    pub outlier_fraction: f64,
    /// Gauge scale drawn log-uniformly in `[1/max, max]`. Default 3.
    pub max_gauge_scale: f64,
    /// Size of the projective distortion of the point map (0 = none). Default 0.
    pub projective_tilt: f64,
    /// Return point maps too. Default true.
    pub with_points: bool,
    /// Tolerance when matching frame timestamps to the dataset, seconds. Default 0.005.
    pub timestamp_tolerance_s: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            depth_noise_rel: 0.005,
            rotation_noise_deg: 0.05,
            translation_noise_m: 0.001,
            outlier_fraction: 0.01,
            max_gauge_scale: 3.0,
            projective_tilt: 0.0,
            with_points: true,
            timestamp_tolerance_s: 0.005,
        }
    }
}

/// The simulated predictor.
pub struct SimulatedPredictor {
    sequence: Sequence,
    config: SimConfig,
    rng: StdRng,
    windows: u64,
}

impl SimulatedPredictor {
    /// A simulation over a sequence that has intrinsics, depth and ground truth.
    pub fn new(sequence: Sequence, config: SimConfig) -> Result<Self, DatasetError> {
        if sequence.intrinsics.is_none() {
            return Err(DatasetError::InvalidOption {
                name: "sequence",
                message: format!("{} has no intrinsics", sequence.name),
            });
        }
        if !sequence
            .frames
            .iter()
            .any(|f| f.depth_path.is_some() && f.world_from_cam.is_some())
        {
            return Err(DatasetError::InvalidOption {
                name: "sequence",
                message: format!(
                    "{} has no frame with both depth and ground truth",
                    sequence.name
                ),
            });
        }
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self {
            sequence,
            config,
            rng,
            windows: 0,
        })
    }

    /// Reads a TUM-layout folder (e.g. written by [`crate::synth::render_dataset`]).
    pub fn from_tum_dir(dir: &Path, config: SimConfig) -> Result<Self, DatasetError> {
        Self::new(crate::tum::read(dir)?, config)
    }

    /// The sequence answered from.
    pub fn sequence(&self) -> &Sequence {
        &self.sequence
    }

    /// Windows predicted so far.
    pub fn windows_predicted(&self) -> u64 {
        self.windows
    }

    fn random_gauge(&mut self) -> (UnitQuaternion<f64>, Vector3<f64>, f64) {
        let axis = Vector3::new(
            self.rng.random_range(-1.0..1.0),
            self.rng.random_range(-1.0..1.0),
            self.rng.random_range(-1.0..1.0),
        );
        let rotation = UnitQuaternion::from_scaled_axis(
            axis.try_normalize(1e-9).unwrap_or(Vector3::z())
                * self.rng.random_range(0.0..std::f64::consts::PI),
        );
        let translation = Vector3::new(
            self.rng.random_range(-2.0..2.0),
            self.rng.random_range(-2.0..2.0),
            self.rng.random_range(-2.0..2.0),
        );
        let ln_max = self.config.max_gauge_scale.max(1.0).ln();
        let scale = if ln_max > 0.0 {
            self.rng.random_range(-ln_max..ln_max).exp()
        } else {
            1.0
        };
        (rotation, translation, scale)
    }

    fn noise(&mut self, sigma: f64) -> f64 {
        if sigma > 0.0 {
            Normal::new(0.0, sigma).map_or(0.0, |n| n.sample(&mut self.rng))
        } else {
            0.0
        }
    }
}

impl Predictor for SimulatedPredictor {
    fn predict(
        &mut self,
        frames: &[WindowFrame],
        _neighbours: Option<&[Vec<usize>]>,
    ) -> Result<WindowPrediction, PredictError> {
        if frames.is_empty() {
            return Err(PredictError::BadWindow("no frames".into()));
        }
        let intrinsics = self
            .sequence
            .intrinsics
            .ok_or_else(|| PredictError::Failed("sequence has no intrinsics".into()))?;
        // window_from_world = (rotation, translation, scale) applied as p -> s R p + t.
        let (g_rot, g_t, g_scale) = self.random_gauge();
        let tilt = if self.config.projective_tilt > 0.0 {
            let v = Vector3::new(self.noise(1.0), self.noise(1.0), self.noise(1.0));
            Some(projective_tilt(
                v.try_normalize(1e-9).unwrap_or(Vector3::x()) * self.config.projective_tilt,
            ))
        } else {
            None
        };
        let mut out = Vec::with_capacity(frames.len());
        for frame in frames {
            let i = self
                .sequence
                .nearest(frame.timestamp_s, self.config.timestamp_tolerance_s)
                .ok_or_else(|| {
                    PredictError::Failed(format!(
                        "no dataset frame within {} s of {}",
                        self.config.timestamp_tolerance_s, frame.timestamp_s
                    ))
                })?;
            let world_from_cam = self.sequence.frames[i].world_from_cam.ok_or_else(|| {
                PredictError::Failed(format!(
                    "frame at {} s has no ground truth",
                    frame.timestamp_s
                ))
            })?;
            let depth_m = self
                .sequence
                .load_depth_m(i)
                .map_err(|e| PredictError::Failed(e.to_string()))?
                .ok_or_else(|| {
                    PredictError::Failed(format!("frame at {} s has no depth", frame.timestamp_s))
                })?;
            // Pose noise, applied to the camera in metres.
            let rot_sigma = self.config.rotation_noise_deg.to_radians();
            let d_rot = UnitQuaternion::from_scaled_axis(Vector3::new(
                self.noise(rot_sigma),
                self.noise(rot_sigma),
                self.noise(rot_sigma),
            ));
            let t_sigma = self.config.translation_noise_m;
            let d_t = Vector3::new(
                self.noise(t_sigma),
                self.noise(t_sigma),
                self.noise(t_sigma),
            );
            let noisy_world_from_cam = Isometry3::from_parts(
                Translation3::from(world_from_cam.translation.vector + d_t),
                world_from_cam.rotation * d_rot,
            );
            // In window units a camera-frame point is `s` times its metric value, so
            // cam_from_window = (R_cw Rgᵀ, s t_cw - R_cw Rgᵀ t_g).
            let cam_from_world = noisy_world_from_cam.inverse();
            let rot = cam_from_world.rotation * g_rot.inverse();
            let cam_from_window = Isometry3::from_parts(
                Translation3::from(g_scale * cam_from_world.translation.vector - rot * g_t),
                rot,
            );
            let window_from_cam = cam_from_window.inverse();
            let (w, h) = (depth_m.width, depth_m.height);
            let mut depth = Vec::with_capacity(w * h);
            let mut conf = Vec::with_capacity(w * h);
            let mut points = Vec::with_capacity(if self.config.with_points { w * h } else { 0 });
            for v in 0..h {
                for u in 0..w {
                    let d = f64::from(depth_m.at(u, v));
                    let (dv, cv) = if d > 0.0 {
                        let factor = if self
                            .rng
                            .random_bool(self.config.outlier_fraction.clamp(0.0, 1.0))
                        {
                            self.rng.random_range(0.5..1.5)
                        } else {
                            1.0 + self.noise(self.config.depth_noise_rel)
                        };
                        (g_scale * d * factor, self.rng.random_range(1.0..5.0))
                    } else {
                        (0.0, 0.0)
                    };
                    depth.push(dv as f32);
                    conf.push(cv as f32);
                    if self.config.with_points {
                        let p = if dv > 0.0 {
                            window_from_cam * intrinsics.unproject(u as f64, v as f64, dv)
                        } else {
                            Point3::origin()
                        };
                        let p = match &tilt {
                            Some(t) => t.transform_point(&p).unwrap_or(p),
                            None => p,
                        };
                        points.push([p.x as f32, p.y as f32, p.z as f32]);
                    }
                }
            }
            let depth_conf = Map2 {
                width: w,
                height: h,
                data: conf,
            };
            let points_in_window = self.config.with_points.then(|| {
                (
                    Map2 {
                        width: w,
                        height: h,
                        data: points,
                    },
                    depth_conf.clone(),
                )
            });
            let image = if frame.image.width() as usize == w && frame.image.height() as usize == h {
                Arc::clone(&frame.image)
            } else {
                Arc::new(image::imageops::resize(
                    &*frame.image,
                    w as u32,
                    h as u32,
                    image::imageops::FilterType::Triangle,
                ))
            };
            out.push(FramePrediction {
                frame_id: frame.frame_id,
                timestamp_s: frame.timestamp_s,
                cam_from_window,
                intrinsics: scale_intrinsics(&intrinsics, &self.sequence, i, w, h),
                depth: Map2 {
                    width: w,
                    height: h,
                    data: depth,
                },
                depth_conf,
                points_in_window,
                image,
            });
        }
        self.windows += 1;
        let label = match tilt {
            Some(_) => format!(
                "simulated (ground truth + noise, projective tilt {})",
                self.config.projective_tilt
            ),
            None => "simulated (ground truth + noise)".to_string(),
        };
        Ok(WindowPrediction { frames: out, label })
    }

    fn name(&self) -> &str {
        "simulated (ground truth + noise, not a model)"
    }
}

/// Intrinsics at the depth resolution (depth and colour have the same size in TUM and in our
/// renderings; 7-Scenes depth is also 640x480, so this is the identity in practice).
fn scale_intrinsics(
    k: &submap::prediction::Intrinsics,
    seq: &Sequence,
    i: usize,
    w: usize,
    h: usize,
) -> submap::prediction::Intrinsics {
    let Ok(dims) = image::image_dimensions(&seq.frames[i].rgb_path) else {
        return *k;
    };
    let (sx, sy) = (w as f64 / f64::from(dims.0), h as f64 / f64::from(dims.1));
    submap::prediction::Intrinsics {
        fx: k.fx * sx,
        fy: k.fy * sy,
        cx: k.cx * sx,
        cy: k.cy * sy,
    }
}
