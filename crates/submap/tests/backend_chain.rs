//! Back-end on exact predictions: cameras inside an analytic box room, each window expressed in
//! its own random Sim(3) gauge. Chaining submaps through shared frames must recover the
//! trajectory exactly (up to the world gauge), and bad windows must be rejected with errors.

use std::sync::Arc;

use nalgebra::{Isometry3, Translation3, UnitQuaternion, Vector3};
use submap::backend::{Backend, BackendConfig, BackendError, GaugeModel};
use submap::eval::{ape, Alignment};
use submap::lie::Sim3;
use submap::prediction::{FramePrediction, Intrinsics, Map2, WindowPrediction};
use submap::tum::StampedPose;

const K: Intrinsics = Intrinsics {
    fx: 60.0,
    fy: 60.0,
    cx: 39.5,
    cy: 29.5,
};
const W: usize = 80;
const H: usize = 60;

fn true_pose(i: u64) -> Isometry3<f64> {
    let t = i as f64;
    Isometry3::from_parts(
        Translation3::new(0.15 * t, 0.05 * (0.7 * t).sin(), 0.03 * t),
        UnitQuaternion::from_euler_angles(0.02 * t, 0.05 * t, 0.01 * t),
    )
}

/// Depth along the optical axis to the walls of the room [-3, 3] x [-3, 3] x [-2, 6].
fn depth_map(world_from_cam: &Isometry3<f64>) -> Vec<f32> {
    let c = world_from_cam.translation.vector;
    let lo = Vector3::new(-3.0, -3.0, -2.0);
    let hi = Vector3::new(3.0, 3.0, 6.0);
    let mut out = Vec::with_capacity(W * H);
    for v in 0..H {
        for u in 0..W {
            let d = world_from_cam.rotation
                * Vector3::new((u as f64 - K.cx) / K.fx, (v as f64 - K.cy) / K.fy, 1.0);
            let mut t = f64::INFINITY;
            for a in 0..3 {
                if d[a] > 1e-12 {
                    t = t.min((hi[a] - c[a]) / d[a]);
                } else if d[a] < -1e-12 {
                    t = t.min((lo[a] - c[a]) / d[a]);
                }
            }
            out.push(t as f32);
        }
    }
    out
}

/// The exact prediction of frames `ids` in the gauge `window_from_world`.
fn window(ids: &[u64], window_from_world: &Sim3) -> WindowPrediction {
    window_along(ids, window_from_world, true_pose)
}

/// [`window`] with the cameras at `pose(id)`.
fn window_along(
    ids: &[u64],
    window_from_world: &Sim3,
    pose: fn(u64) -> Isometry3<f64>,
) -> WindowPrediction {
    let image = Arc::new(image::RgbImage::from_fn(W as u32, H as u32, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 4) as u8, ((x * y) % 255) as u8])
    }));
    let frames = ids
        .iter()
        .map(|&id| {
            let world_from_cam = pose(id);
            let depth_m = depth_map(&world_from_cam);
            // window_from_cam = window_from_world * world_from_cam, split into rigid part + scale.
            let s = window_from_world.scale;
            let window_from_cam_rigid = Isometry3::from_parts(
                Translation3::from(
                    window_from_world
                        .transform_point(&world_from_cam.translation.vector.into())
                        .coords,
                ),
                window_from_world.rotation * world_from_cam.rotation,
            );
            FramePrediction {
                frame_id: id,
                timestamp_s: id as f64 * 0.1,
                cam_from_window: window_from_cam_rigid.inverse(),
                intrinsics: K,
                depth: Map2 {
                    width: W,
                    height: H,
                    data: depth_m.iter().map(|d| d * s as f32).collect(),
                },
                depth_conf: Map2 {
                    width: W,
                    height: H,
                    data: vec![2.0; W * H],
                },
                points_in_window: None,
                image: Arc::clone(&image),
            }
        })
        .collect();
    WindowPrediction {
        frames,
        label: "exact".into(),
    }
}

fn gauge(k: u64) -> Sim3 {
    let k = k as f64;
    Sim3::new(
        UnitQuaternion::from_euler_angles(0.3 * k, -0.5 + 0.2 * k, 1.0 - 0.4 * k),
        Vector3::new(k, -2.0 * k, 0.5),
        0.5 + 0.7 * k,
    )
}

fn run(gauge_model: GaugeModel) -> (Backend, f64) {
    let mut backend = Backend::new(BackendConfig {
        gauge: gauge_model,
        ..BackendConfig::default()
    });
    let windows: [&[u64]; 3] = [&[0, 1, 2, 3], &[2, 3, 4, 5], &[4, 5, 6, 7]];
    for (k, ids) in windows.iter().enumerate() {
        let update = backend
            .push_window(window(ids, &gauge(k as u64 + 1)))
            .expect("window accepted");
        assert_eq!(update.submap, k);
        assert_eq!(update.new_keyframes.len(), if k == 0 { 4 } else { 2 });
        if let Some(a) = update.alignment {
            assert!(a.inliers as f64 > 0.95 * a.total as f64, "{a:?}");
        }
    }
    let est: Vec<StampedPose> = backend
        .trajectory()
        .iter()
        .map(|k| StampedPose {
            timestamp_s: k.timestamp_s,
            world_from_cam: k.world_from_cam,
        })
        .collect();
    let gt: Vec<StampedPose> = (0..8)
        .map(|i| StampedPose {
            timestamp_s: i as f64 * 0.1,
            world_from_cam: true_pose(i),
        })
        .collect();
    let err = ape(&gt, &est, Alignment::Sim3, 0.01).expect("ape");
    assert_eq!(err.stats.pairs, 8);
    (backend, err.stats.rmse)
}

#[test]
fn exact_windows_chain_to_the_true_trajectory_sim3() {
    let (backend, rmse) = run(GaugeModel::Sim3);
    assert!(rmse < 1e-5, "Sim(3)-aligned RMSE {rmse}");
    // World = gauge of window 0: its transform is the identity, others carry the gauge change.
    let transforms = backend.submap_transforms();
    assert_eq!(transforms.len(), 3);
    let expected = gauge(1) * gauge(2).inverse();
    let got = transforms[1].world_from_submap;
    assert!(
        (got - expected.to_homogeneous()).abs().max() < 1e-6,
        "{got:?} vs {expected:?}"
    );
    // One node per keyframe copy: 4 + 4 + 4; intra edges 3 per window, and one inter edge per
    // shared keyframe (2 per link).
    assert_eq!(backend.graph_size(), (12, 3 * 3 + 2 * 2));
    let residuals = backend.residuals();
    assert!(
        residuals.by_kind.iter().all(|k| k.max_whitened < 1e-6),
        "{residuals:?}"
    );
    let map = backend.map();
    assert!(!map.points_in_world.is_empty() && map.voxel_size > 0.0);
}

#[test]
fn exact_windows_chain_to_the_true_trajectory_sl4() {
    let (_, rmse) = run(GaugeModel::Sl4);
    assert!(rmse < 1e-4, "Sim(3)-aligned RMSE {rmse}");
}

#[test]
fn bad_windows_are_rejected() {
    let mut backend = Backend::new(BackendConfig::default());
    assert!(matches!(
        backend.push_window(WindowPrediction {
            frames: vec![],
            label: String::new()
        }),
        Err(BackendError::InvalidPrediction { .. })
    ));
    backend
        .push_window(window(&[0, 1, 2], &gauge(1)))
        .expect("first");
    let err = backend
        .push_window(window(&[5, 6, 7], &gauge(2)))
        .expect_err("no shared frame");
    assert!(
        matches!(err, BackendError::NoOverlap { previous: 0, .. }),
        "{err}"
    );
    let mut nan = window(&[2, 3], &gauge(2));
    nan.frames[0].depth.data[0] = f32::NAN;
    assert!(matches!(
        backend.push_window(nan),
        Err(BackendError::InvalidPrediction { .. })
    ));
    assert_eq!(backend.num_submaps(), 1, "rejected windows leave no trace");
}

#[test]
fn retired_submaps_keep_bounded_maps_and_the_same_points() {
    let mut backend = Backend::new(BackendConfig::default());
    let step = backend.retained_step();
    assert_eq!(step, 2, "gcd of the default map and alignment strides");
    let full_frame_bytes = W * H * 2 * std::mem::size_of::<f32>();
    let retired_frame_bytes = W.div_ceil(step) * H.div_ceil(step) * 2 * std::mem::size_of::<f32>();
    let mut fresh_points = Vec::new();
    let mut previous_held = 0;
    let windows = 9u64;
    for k in 0..windows {
        let ids: Vec<u64> = (2 * k..2 * k + 4).collect();
        let update = backend
            .push_window(window(&ids, &gauge(k + 1)))
            .expect("window accepted");
        fresh_points.push(backend.submap_points(update.submap));
        // The latest submap holds its 4 frames at full size; every keyframe placed by an older
        // submap one decimated depth/confidence pair.
        let keyframes = backend.trajectory().len();
        let older = keyframes - update.new_keyframes.len();
        let bound = 4 * full_frame_bytes + older * retired_frame_bytes;
        let held = backend.retained_map_bytes();
        assert!(
            held <= bound,
            "window {k}: {held} bytes held, bound {bound}"
        );
        // From the second window on, each window adds 2 keyframes and exactly 2 decimated
        // pairs: the memory per keyframe does not grow with the run.
        if k >= 2 {
            assert_eq!(held - previous_held, 2 * retired_frame_bytes, "window {k}");
        }
        previous_held = held;
    }
    let held = backend.retained_map_bytes();
    let keyframes = backend.trajectory().len();
    assert!(
        held < keyframes * full_frame_bytes / 2,
        "{held} bytes for {keyframes} keyframes"
    );
    // The exact chain recovers the truth through retired submaps too.
    let est: Vec<StampedPose> = backend.trajectory_stamped();
    let gt: Vec<StampedPose> = (0..2 * windows + 2)
        .map(|i| StampedPose {
            timestamp_s: i as f64 * 0.1,
            world_from_cam: true_pose(i),
        })
        .collect();
    let err = ape(&gt, &est, Alignment::Sim3, 0.01).expect("ape");
    assert!(err.stats.rmse < 1e-5, "{}", err.stats.rmse);
    // Retiring keeps exactly the pixels the map samples: same points, same colours.
    for (s, (points, colors)) in fresh_points.iter().enumerate() {
        let (now_points, now_colors) = backend.submap_points(s);
        // The cloud thinned as it is made is the thinned cloud.
        let voxel = 0.02 * backend.submap_median_depth(s).expect("depth");
        let thinned = submap::map::voxel_downsample(&now_points, &now_colors, voxel);
        let streamed = backend.submap_cloud(s, voxel);
        assert!(
            streamed.0.len() < now_points.len(),
            "submap {s}: nothing merged"
        );
        assert_eq!(streamed, thinned, "submap {s}");
        assert_eq!(&now_colors, colors, "submap {s}");
        assert_eq!(now_points.len(), points.len(), "submap {s}");
        for (a, b) in now_points.iter().zip(points) {
            assert!(
                (a - b).norm() <= 1e-5 * b.coords.norm().max(1.0),
                "submap {s}"
            );
        }
    }
}

/// Out along the first ten poses of [`true_pose`] and back over the same ones, again and again.
fn back_and_forth(i: u64) -> Isometry3<f64> {
    let j = i % 20;
    true_pose(if j < 10 { j } else { 19 - j })
}

/// Pushes 30 windows of 4 frames (2 shared) along `pose` under a bound of `bound_mib`; checks
/// the bound after every window and that every keyframe stays in the trajectory.
fn bounded_run(pose: fn(u64) -> Isometry3<f64>, bound_mib: f64) -> Backend {
    let mut config = BackendConfig::default();
    config.map.max_retained_mib = bound_mib;
    config.loops.enabled = false;
    let mut backend = Backend::new(config);
    let bound = (bound_mib * 1024.0 * 1024.0) as usize;
    for k in 0..30u64 {
        let ids: Vec<u64> = (2 * k..2 * k + 4).collect();
        backend
            .push_window(window_along(&ids, &gauge(k + 1), pose))
            .expect("window accepted");
        if k >= 1 && bound > 0 {
            let held = backend.retained_bytes();
            assert!(
                held <= bound,
                "window {k}: {held} bytes held, bound {bound}"
            );
        }
    }
    assert_eq!(
        backend.trajectory().len(),
        62,
        "released keyframes keep their poses"
    );
    backend
}

#[test]
fn the_memory_bound_releases_revisits_before_anything_else() {
    let unbounded = bounded_run(back_and_forth, 0.0);
    assert_eq!(unbounded.released_keyframes(), Default::default());
    let backend = bounded_run(back_and_forth, 0.5);
    let released = backend.released_keyframes();
    assert!(released.revisits > 0, "{released:?}");
    assert_eq!(
        released.oldest, 0,
        "the places seen once are all kept: {released:?}"
    );
    assert!(backend.retained_bytes() < unbounded.retained_bytes() / 2);
    // Released keyframes leave the cameras and the map, not the trajectory; the rest of the
    // map is where it was.
    let cameras = backend.keyframe_cameras();
    assert_eq!(cameras.len() as u64, 62 - released.revisits);
    assert!(cameras.iter().all(|c| !backend.is_released(c.frame_id)));
    let map = backend.map();
    assert!(!map.points_in_world.is_empty());
    assert!(map.points_in_world.len() <= unbounded.map().points_in_world.len());
    let exact: Vec<StampedPose> = (0..62)
        .map(|i| StampedPose {
            timestamp_s: i as f64 * 0.1,
            world_from_cam: back_and_forth(i),
        })
        .collect();
    let err = ape(&exact, &backend.trajectory_stamped(), Alignment::Sim3, 0.01).expect("ape");
    assert!(err.stats.rmse < 1e-5, "{}", err.stats.rmse);
}

/// Across the room and turning, never back: every place is seen once.
fn across(i: u64) -> Isometry3<f64> {
    let t = i as f64;
    Isometry3::from_parts(
        Translation3::new(-2.5 + 0.07 * t, 0.02 * (0.5 * t).sin(), 0.02 * t),
        UnitQuaternion::from_euler_angles(0.01 * t, 0.03 * t, 0.0),
    )
}

#[test]
fn under_a_tight_bound_the_oldest_keyframes_go_too() {
    // Room for the latest submap and about three retired keyframes.
    let backend = bounded_run(across, 0.25);
    let released = backend.released_keyframes();
    assert!(released.oldest > 0, "{released:?}");
    assert!(!backend.is_released(61), "the latest window keeps its maps");
}

/// Distance of a point inside the room from its nearest wall.
fn off_the_walls(p: &nalgebra::Point3<f64>) -> f64 {
    let lo = [-3.0, -3.0, -2.0];
    let hi = [3.0, 3.0, 6.0];
    (0..3)
        .map(|a| (p[a] - lo[a]).abs().min((hi[a] - p[a]).abs()))
        .fold(f64::INFINITY, f64::min)
}

/// What a viewer shows in the back-end's world: each keyframe's depth (in world units, under
/// its world pose) and each submap's points (under its world placement) must both land on the
/// room's walls, in windows predicted at scales 1.2 to 2.6.
#[test]
fn depth_and_points_agree_in_world_units() {
    let (backend, _) = run(GaugeModel::Sim3);
    // The world is window 0's gauge: true = gauge(1)^-1 * world.
    let true_from_world = gauge(1).inverse();
    let trajectory = backend.trajectory();
    let mut checked = 0;
    for kf in &trajectory {
        let depth = backend
            .keyframe_depth_world(kf.frame_id)
            .expect("a keyframe has depth");
        let step = (1..=W)
            .find(|s| W.div_ceil(*s) == depth.width && H.div_ceil(*s) == depth.height)
            .expect("a decimation step");
        let mut worst: f64 = 0.0;
        for v in (0..depth.height).step_by(3) {
            for u in (0..depth.width).step_by(3) {
                let d = f64::from(depth.data[v * depth.width + u]);
                let (px, py) = ((u * step) as f64, (v * step) as f64);
                let in_cam =
                    nalgebra::Point3::new((px - K.cx) / K.fx * d, (py - K.cy) / K.fy * d, d);
                let in_world = kf.world_from_cam * in_cam;
                worst = worst.max(off_the_walls(&true_from_world.transform_point(&in_world)));
                checked += 1;
            }
        }
        assert!(
            worst < 1e-3,
            "keyframe {}: depth off the walls by {worst}",
            kf.frame_id
        );
    }
    assert!(checked > 8 * 20, "{checked}");
    for placed in backend.submap_transforms() {
        let (points, _) = backend.submap_points(placed.index);
        assert!(!points.is_empty());
        let worst = points
            .iter()
            .map(|p| {
                let q = placed.world_from_submap
                    * nalgebra::Vector4::new(f64::from(p.x), f64::from(p.y), f64::from(p.z), 1.0);
                let in_world = nalgebra::Point3::new(q.x / q.w, q.y / q.w, q.z / q.w);
                off_the_walls(&true_from_world.transform_point(&in_world))
            })
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-3,
            "submap {}: points off the walls by {worst}",
            placed.index
        );
    }
}
