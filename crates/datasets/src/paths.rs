//! Synthetic camera paths that leave a place and come back, for testing loop closure: an orbit
//! around the room's centre, a figure-eight, and a corridor walked there and back. Poses are
//! TUM-style `world_from_cam` with OpenCV camera axes in a z-up world, at 10 Hz.

use nalgebra::{Isometry3, Matrix3, Rotation3, Translation3, UnitQuaternion, Vector3};
use serde::{Deserialize, Serialize};
use submap::tum::StampedPose;

/// A path shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// A circle of radius 1.2 m at a constant height looking at its centre, 1.3 laps: the
    /// last third of a lap revisits the start.
    Orbit,
    /// Two laps of a 3 m x 1.2 m figure-eight, looking the same way throughout (with a slow
    /// sway): the crossing and the whole second lap revisit.
    FigureEight,
    /// 3 m along a corridor, a turn on the spot, back to the start, and a turn to face the way
    /// it first went: the end revisits the start, and each turn sees its surroundings twice.
    Corridor,
    /// The orbit's circle driven round and round, [`CIRCUIT_LAP_FRAMES`] frames a lap, as
    /// many laps as the frames make: a long run that revisits every place once a lap.
    Circuit,
}

/// Frames in one lap of [`PathKind::Circuit`] (20 s at 10 Hz).
pub const CIRCUIT_LAP_FRAMES: usize = 200;

impl PathKind {
    /// Every kind.
    pub const ALL: [PathKind; 4] = [
        Self::Orbit,
        Self::FigureEight,
        Self::Corridor,
        Self::Circuit,
    ];

    /// The kebab-case name (`orbit`, `figure-eight`, `corridor`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Orbit => "orbit",
            Self::FigureEight => "figure-eight",
            Self::Corridor => "corridor",
            Self::Circuit => "circuit",
        }
    }

    /// Parses a kebab-case name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A camera at `position` looking along `forward` (made horizontal-safe), z up.
fn looking(position: Vector3<f64>, forward: Vector3<f64>) -> Isometry3<f64> {
    let z = forward.normalize();
    let down = -Vector3::z();
    let y = (down - z * z.dot(&down)).normalize();
    let x = y.cross(&z);
    let rotation = Rotation3::from_matrix_unchecked(Matrix3::from_columns(&[x, y, z]));
    Isometry3::from_parts(
        Translation3::from(position),
        UnitQuaternion::from_rotation_matrix(&rotation),
    )
}

/// `frames` poses of a path, 0.1 s apart starting at `t0_s`. The first three kinds stretch
/// their shape over the frames; [`PathKind::Circuit`] goes at a fixed speed.
pub fn path(kind: PathKind, frames: usize, t0_s: f64) -> Vec<StampedPose> {
    let n = frames.max(2);
    let height = 1.4;
    (0..n)
        .map(|i| {
            let s = i as f64 / (n - 1) as f64;
            let world_from_cam = match kind {
                PathKind::Orbit => on_circle(s * 1.3 * std::f64::consts::TAU, height),
                PathKind::Circuit => on_circle(
                    i as f64 / CIRCUIT_LAP_FRAMES as f64 * std::f64::consts::TAU,
                    height,
                ),
                PathKind::FigureEight => {
                    let a = s * 2.0 * std::f64::consts::TAU;
                    let p = Vector3::new(1.5 * a.sin(), 0.6 * (2.0 * a).sin(), height);
                    let sway = 0.25 * (a * 0.5).sin();
                    looking(p, Vector3::new(sway.sin(), sway.cos(), -0.25))
                }
                PathKind::Corridor => corridor(s, height),
            };
            StampedPose {
                timestamp_s: t0_s + 0.1 * i as f64,
                world_from_cam,
            }
        })
        .collect()
}

/// On the orbit's circle (radius 1.2 m) at angle `a`, looking at a point a little beyond the
/// centre, slightly down.
fn on_circle(a: f64, height: f64) -> Isometry3<f64> {
    let p = Vector3::new(1.2 * a.cos(), 1.2 * a.sin(), height);
    looking(p, Vector3::new(0.0, 0.0, height - 0.4) - p)
}

/// The corridor: 40 % out along +x, 10 % turning, 40 % back, 10 % turning to face +x again.
fn corridor(s: f64, height: f64) -> Isometry3<f64> {
    let length = 3.0;
    let (x, yaw) = if s < 0.4 {
        (length * s / 0.4, 0.0)
    } else if s < 0.5 {
        (length, std::f64::consts::PI * (s - 0.4) / 0.1)
    } else if s < 0.9 {
        (length * (1.0 - (s - 0.5) / 0.4), std::f64::consts::PI)
    } else {
        (0.0, std::f64::consts::PI * (1.0 + (s - 0.9) / 0.1))
    };
    let p = Vector3::new(x, 0.05 * (7.0 * s).sin(), height);
    looking(p, Vector3::new(yaw.cos(), yaw.sin(), -0.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_back_to_where_they_started() {
        for kind in PathKind::ALL {
            let poses = path(kind, 200, 0.0);
            assert_eq!(poses.len(), 200);
            assert_eq!(PathKind::parse(kind.name()), Some(kind));
            let first = poses[0].world_from_cam;
            // Some pose in the last third is within 0.4 m of the start and looks within 40°.
            let revisit = poses[140..].iter().any(|p| {
                (p.world_from_cam.translation.vector - first.translation.vector).norm() < 0.4
                    && p.world_from_cam.rotation.angle_to(&first.rotation) < 40f64.to_radians()
            });
            assert!(revisit, "{kind:?} never comes back");
            // OpenCV axes: the camera's y axis points down in a z-up world.
            let y = first.rotation * Vector3::y();
            assert!(y.z < -0.5, "{kind:?}: camera y {y:?}");
            // Moves: the path is more than a metre long.
            let length: f64 = poses
                .windows(2)
                .map(|w| {
                    (w[1].world_from_cam.translation.vector
                        - w[0].world_from_cam.translation.vector)
                        .norm()
                })
                .sum();
            assert!(length > 1.0, "{kind:?}: {length} m");
        }
    }
}
