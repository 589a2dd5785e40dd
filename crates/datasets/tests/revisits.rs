//! Loop closure on trajectories that leave a place and come back, under the `vggt` noise preset
//! (window-correlated drift, depth errors that grow with distance and come in smooth blobs,
//! per-window scale error, outliers): the simulated predictor over synthetic renders along an
//! orbit, a figure-eight, a corridor walked there and back, and the real `freiburg1_xyz`
//! ground truth (every 7th pose). Each revisit must close at least one loop, the Sim(3)-aligned
//! ATE must stay under 4 cm, and with `--metric-scale depth` under 6 cm with SE(3) alignment
//! only. Figures are printed (`cargo test -p datasets --test revisits -- --nocapture`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datasets::harness::{render, run, SimRun, Trajectory};
use datasets::paths::PathKind;
use datasets::sim::{SimConfig, SimPreset};
use submap::mapper::MetricSource;
use submap::session::SessionConfig;

const FRAMES: usize = 400;

fn root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("revisits"))
}

fn dataset(trajectory: &Trajectory) -> PathBuf {
    render(trajectory, root(), 160, 120).expect("render")
}

fn vggt() -> SimConfig {
    SimConfig {
        preset: SimPreset::Vggt,
        ..SimConfig::default()
    }
}

fn evaluate(trajectory: &Trajectory, metric: bool) -> SimRun {
    let mut config = SessionConfig::default();
    if metric {
        config.metric_scale.source = MetricSource::Depth;
    }
    let r = run(&dataset(trajectory), &config, &vggt()).expect("run");
    println!(
        "{} (vggt preset{}): ATE {:.1} mm Sim(3), {:.1} mm SE(3); {} keyframes, {} windows, {} of {} loop checks closed",
        trajectory.name(),
        if metric { ", metric scale" } else { "" },
        1000.0 * r.ate_sim3_m,
        1000.0 * r.ate_se3_m,
        r.keyframes,
        r.stats.windows,
        r.stats.loops,
        r.stats.loop_checks
    );
    r
}

/// True when some accepted loop joins a new keyframe in `revisit` (fractions of the sequence)
/// to an old one in `place`.
fn closes(r: &SimRun, frames: usize, place: (f64, f64), revisit: (f64, f64)) -> bool {
    let at = |id: u64| id as f64 / frames as f64;
    let inside = |x: f64, (a, b): (f64, f64)| x >= a && x <= b;
    r.closures
        .iter()
        .any(|&(m, q)| inside(at(m), place) && inside(at(q), revisit))
}

fn path(kind: PathKind) -> Trajectory {
    Trajectory::Path {
        kind,
        frames: FRAMES,
    }
}

#[test]
fn orbit_closes_the_lap() {
    let r = evaluate(&path(PathKind::Orbit), false);
    // 1.3 laps: the last 0.3 lap flies over the first.
    assert!(
        closes(&r, FRAMES, (0.0, 0.25), (0.77, 1.0)),
        "no loop from the last part of the lap to its start: {:?}",
        r.closures
    );
    assert!(r.ate_sim3_m < 0.04, "ATE {} m", r.ate_sim3_m);
}

#[test]
fn figure_eight_closes_the_second_lap() {
    let r = evaluate(&path(PathKind::FigureEight), false);
    assert!(
        closes(&r, FRAMES, (0.0, 0.5), (0.5, 1.0)),
        "no loop from the second lap to the first: {:?}",
        r.closures
    );
    assert!(r.ate_sim3_m < 0.04, "ATE {} m", r.ate_sim3_m);
}

#[test]
fn corridor_there_and_back_closes_at_the_start() {
    let r = evaluate(&path(PathKind::Corridor), false);
    assert!(
        closes(&r, FRAMES, (0.0, 0.1), (0.9, 1.0)),
        "no loop from the end back to the start: {:?}",
        r.closures
    );
    assert!(r.ate_sim3_m < 0.04, "ATE {} m", r.ate_sim3_m);
}

#[test]
fn freiburg1_xyz_every_7th_pose() {
    let trajectory = Trajectory::File {
        path: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/trajectories/freiburg1_xyz-groundtruth.txt"
        )),
        stride: 7,
    };
    let r = evaluate(&trajectory, false);
    assert!(
        r.stats.loops >= 5,
        "the camera hovers over one desk: {:?}",
        r.stats
    );
    assert!(r.ate_sim3_m < 0.04, "ATE {} m", r.ate_sim3_m);
}

#[test]
fn metric_scale_needs_no_scale_alignment() {
    for kind in [PathKind::Orbit, PathKind::Corridor] {
        let r = evaluate(&path(kind), true);
        assert_eq!(r.stats.metric_fallbacks, 0, "{kind:?}: {:?}", r.stats);
        assert!(r.ate_se3_m < 0.06, "{kind:?}: SE(3) ATE {} m", r.ate_se3_m);
    }
}
