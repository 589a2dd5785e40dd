//! Timings of the back-end's hot spots (run with `cargo bench -p submap`): robust Sim(3) and
//! SL(4) alignment of 2 400 correspondences (two overlap frames at stride 4 of 160x120), a
//! Sim(3) alignment of 4096 pairs with per-pair scales and outliers (as two windows are aligned), a
//! pose-graph optimisation of a 30-submap loop, keyframe selection on a 320x240 camera
//! panning over a texture, and a keyframe joining a covisibility graph of 1000. Prints mean wall time per call. Arguments are filters: `cargo bench
//! -p submap --bench geometry -- keyframe` times only what names "keyframe".

use std::hint::black_box;
use std::time::Instant;

use nalgebra::{Point3, UnitQuaternion, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use submap::align::{align_sim3, align_sl4, Correspondences, RobustConfig};
use submap::covis::{thumbnail_descriptor, CovisConfig, CovisGraph};
use submap::keyframe::{KeyframeConfig, KeyframeSelector};
use submap::lie::Sim3;
use submap::pose_graph::{Constraint, ConstraintKind, Information, Kernel, LmConfig, PoseGraph};

fn time<R>(name: &str, reps: u32, mut f: impl FnMut() -> R) {
    // `cargo bench` passes `--bench` too.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        return;
    }
    black_box(f());
    let t = Instant::now();
    for _ in 0..reps {
        black_box(f());
    }
    println!(
        "{name:<40} {:>10.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(reps)
    );
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let src: Vec<Point3<f64>> = (0..2400)
        .map(|_| {
            Point3::new(
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(1.0..3.0),
            )
        })
        .collect();
    let truth = Sim3::new(
        UnitQuaternion::from_euler_angles(0.1, 0.2, 0.3),
        Vector3::new(0.5, 0.0, -1.0),
        1.7,
    );
    let dst: Vec<Point3<f64>> = src
        .iter()
        .map(|p| {
            let q = truth.transform_point(p);
            Point3::new(q.x + rng.random_range(-0.01..0.01), q.y, q.z)
        })
        .collect();
    let w = vec![1.0; src.len()];
    let cfg = RobustConfig::default();
    time("align_sim3 (2400 points)", 20, || {
        align_sim3(&src, &dst, &w, true, &cfg)
    });
    time("align_sl4 (2400 points)", 5, || {
        align_sl4(&src, &dst, &w, &cfg)
    });
    // As the back-end aligns two windows: 4096 pairs (its `max_align_points`), each with its
    // depth as error scale, noise of 1 % of the depth and a tenth of the pairs wrong.
    let mut pairs = Correspondences::default();
    for _ in 0..4096 {
        let p = Point3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(1.0..3.0),
        );
        let q = truth.transform_point(&p);
        let depth = q.z.abs().max(0.1);
        let noise = Vector3::new(
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
            rng.random_range(-1.0..1.0),
        ) * (0.017 * depth);
        let q = if rng.random_range(0.0..1.0) < 0.1 {
            q + Vector3::new(0.0, 0.0, rng.random_range(0.2..1.0) * depth)
        } else {
            q + noise
        };
        pairs.push(p, q, rng.random_range(0.5..2.0), depth);
    }
    time("align_sim3 scaled (4096 pairs, 10 % wrong)", 50, || {
        pairs.align_sim3(true, &cfg)
    });

    let n = 30;
    let step = Sim3::new(
        UnitQuaternion::from_euler_angles(0.0, 0.0, std::f64::consts::TAU / n as f64),
        Vector3::new(1.0, 0.0, 0.0),
        1.0,
    );
    let bias = Sim3::new(
        UnitQuaternion::from_euler_angles(0.01, 0.0, 0.0),
        Vector3::new(0.01, 0.0, 0.0),
        1.005,
    );
    time("pose graph LM, Sim(3), 30 nodes + loop", 5, || {
        let mut g = PoseGraph::new();
        let mut chain = Sim3::identity();
        g.add_node(chain);
        for i in 1..n {
            chain = chain * step * bias;
            g.add_node(chain);
            let c = Constraint {
                a: i - 1,
                b: i,
                a_from_b: step * bias,
                information: Information::isotropic(1.0),
                kernel: Kernel::Huber(3.0),
                kind: ConstraintKind::Intra,
            };
            g.add_constraint(c).expect("valid edge");
        }
        let loop_edge = Constraint {
            a: 0,
            b: n - 1,
            a_from_b: step.inverse(),
            information: Information::isotropic(1.0),
            kernel: Kernel::Cauchy(2.0),
            kind: ConstraintKind::Loop,
        };
        g.add_constraint(loop_edge).expect("valid edge");
        g.optimize(&LmConfig::default())
    });
    // A loop solve as the back-end runs one at ~1100 keyframes on a circuit lapped 18 times:
    // 60 keyframes a lap, odometry with 1 % noise, every window of 14 new keyframes tied by two
    // loops to the laps before. The graph before the newest window is solved already; the
    // timing is the solve after that window and its two loops join.
    let lap = 60;
    let window = 14;
    let total = 1106;
    let place = |i: usize| {
        let angle = std::f64::consts::TAU * (i % lap) as f64 / lap as f64;
        Sim3::new(
            UnitQuaternion::from_euler_angles(0.0, 0.0, angle),
            Vector3::new(angle.cos(), angle.sin(), 0.0),
            1.0,
        )
    };
    let mut noisy = |rel: Sim3| {
        let mut r = || rng.random_range(-1.0..1.0);
        rel * Sim3::new(
            UnitQuaternion::from_scaled_axis(Vector3::new(r(), r(), r()) * 0.01),
            Vector3::new(r(), r(), r()) * 0.01,
            1.0 + 0.005 * r(),
        )
    };
    let information = Information::from_sigmas(0.01, 0.01, 0.005);
    let mut edges = Vec::new();
    for i in 1..total {
        edges.push((
            i - 1,
            i,
            noisy(place(i - 1).inverse() * place(i)),
            ConstraintKind::Intra,
        ));
        if i >= lap && i % window == 0 {
            for (k, laps) in [(3, 1), (10, 2)] {
                let q = i + k;
                if q < total && q >= laps * lap {
                    let m = q - laps * lap;
                    let rel = noisy(place(m).inverse() * place(q));
                    edges.push((m, q, rel, ConstraintKind::Loop));
                }
            }
        }
    }
    let build = |nodes: usize, graph: Option<&PoseGraph<Sim3>>| {
        let mut g = PoseGraph::new();
        let mut chain = Sim3::identity();
        for i in 0..nodes {
            if let Some(solved) = graph.filter(|s| i < s.nodes().len()) {
                chain = solved.nodes()[i];
            } else if i > 0 {
                let odometry = edges
                    .iter()
                    .find(|e| e.0 == i - 1 && e.1 == i)
                    .expect("chain");
                chain = chain * odometry.2;
            }
            g.add_node(chain);
        }
        for &(a, b, rel, kind) in edges.iter().filter(|e| e.1 < nodes) {
            let kernel = Kernel::Huber(3.0);
            g.add_constraint(Constraint {
                a,
                b,
                a_from_b: rel,
                information,
                kernel,
                kind,
            })
            .expect("valid edge");
        }
        g
    };
    let mut before = build(total - window, None);
    before.optimize(&LmConfig::default());
    let after = build(total, Some(&before));
    time(
        "pose graph LM, Sim(3), 1106 keyframes, a window's loops",
        20,
        || {
            let mut g = after.clone();
            g.optimize(&LmConfig::default())
        },
    );
    // A 640x480 texture of blobs; each frame is a 320x240 view 3 pixels further right.
    let (tw, th) = (640u32, 480u32);
    let blobs: Vec<(f64, f64, f64, [f64; 3])> = (0..400)
        .map(|_| {
            (
                rng.random_range(0.0..f64::from(tw)),
                rng.random_range(0.0..f64::from(th)),
                rng.random_range(3.0..20.0),
                [
                    rng.random_range(0.0..255.0),
                    rng.random_range(0.0..255.0),
                    rng.random_range(0.0..255.0),
                ],
            )
        })
        .collect();
    let texture = image::RgbImage::from_fn(tw, th, |x, y| {
        let mut c = [60.0; 3];
        for &(bx, by, r, colour) in &blobs {
            let d2 = (f64::from(x) - bx).powi(2) + (f64::from(y) - by).powi(2);
            if d2 < r * r {
                c = colour;
            }
        }
        image::Rgb(c.map(|v| v as u8))
    });
    let frames: Vec<image::RgbImage> = (0..60)
        .map(|i| image::imageops::crop_imm(&texture, 3 * i, 40, 320, 240).to_image())
        .collect();
    time("keyframe selection, 60 frames of 320x240", 20, || {
        let mut selector = KeyframeSelector::new(KeyframeConfig::default());
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| selector.push(f, i as f64 / 30.0))
            .filter(|d| *d == submap::keyframe::KeyframeDecision::Keyframe)
            .count()
    });

    // The covisibility graph of 1000 keyframes (views of the texture along a loop), then what
    // each new keyframe costs: its thumbnail descriptor, joining the graph (similarity to every
    // keyframe before it), and appearance retrieval of its loop candidates.
    let view = |i: u32| {
        let a = f64::from(i) * 0.05;
        let x = (160.0 + 150.0 * a.cos()) as u32;
        let y = (120.0 + 110.0 * a.sin()) as u32;
        image::imageops::crop_imm(&texture, x, y, 320, 240).to_image()
    };
    let mut graph = CovisGraph::new(CovisConfig::default());
    for i in 0..1000u32 {
        graph
            .add_keyframe(u64::from(i), &thumbnail_descriptor(&view(i)))
            .expect("descriptor");
    }
    let new_view = view(1000);
    time("covisibility: thumbnail of 320x240", 200, || {
        thumbnail_descriptor(&new_view)
    });
    let descriptor = thumbnail_descriptor(&new_view);
    // 201 keyframes join in turn (the graph grows from 1000 to 1201).
    let mut joined = graph.clone();
    let mut id = 1000;
    time("covisibility: a keyframe joins 1000-1200", 200, || {
        id += 1;
        joined.add_keyframe(id, &descriptor).expect("descriptor")
    });
    time("covisibility: retrieval at 1000 keyframes", 200, || {
        graph.retrieve(999, 30, 0.0, 3).expect("known")
    });
}
