//! End to end on simulation: render the synthetic room along the real TUM `freiburg1_xyz`
//! ground truth (every 10th pose: 300 frames at 10 Hz, 160x120), select keyframes on the rendered
//! pixels, plan windows, answer them with the simulated predictor (ground truth in a random
//! per-window gauge plus default noise), run the back-end with loop closure, and evaluate the
//! keyframe trajectory against the ground truth with Sim(3) Umeyama alignment (evo `-as`,
//! association 0.01 s). The figures are printed (`cargo test -- --nocapture`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datasets::sim::{SimConfig, SimulatedPredictor};
use datasets::synth::{render_dataset, SynthOptions};
use submap::backend::{BackendConfig, GaugeModel};
use submap::eval::{ape, Alignment};
use submap::mapper::MapperEvent;
use submap::session::{Session, SessionConfig, SessionEvent};
use submap::tum::{read_trajectory, StampedPose};

const GT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/trajectories/freiburg1_xyz-groundtruth.txt"
);

/// The rendered dataset, shared by the tests of this file (rendered once per run).
fn dataset() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synth_freiburg1_xyz_160x120_s10");
        let options = SynthOptions {
            seed: 1,
            width: 160,
            height: 120,
            stride: 10,
            max_frames: None,
            ..SynthOptions::default()
        };
        let summary = render_dataset(Path::new(GT), &dir, &options).expect("render");
        assert_eq!(summary.frames, 300);
        assert!(
            summary.coverage > 0.99,
            "room coverage {}",
            summary.coverage
        );
        dir
    })
}

struct RunResult {
    ate_sim3_m: f64,
    keyframes: usize,
    submaps: usize,
    loops: usize,
    map_points: usize,
}

fn run(dir: &Path, config: SessionConfig, sim: SimConfig) -> RunResult {
    let predictor = SimulatedPredictor::from_tum_dir(dir, sim).expect("simulated predictor");
    let sequence = predictor.sequence().clone();
    let mut session = Session::new(config, predictor).expect("session");
    let mut loops = 0;
    for i in 0..sequence.frames.len() {
        let frame = sequence.window_frame(i).expect("frame");
        for event in session.push_frame(frame).expect("push") {
            if let SessionEvent::Mapper(event) = event {
                if let MapperEvent::Loop(update) = *event {
                    loops += usize::from(update.closure().is_some());
                }
            }
        }
    }
    session.finish().expect("finish");
    let backend = session.backend();
    let estimate: Vec<StampedPose> = backend
        .trajectory()
        .iter()
        .map(|k| StampedPose {
            timestamp_s: k.timestamp_s,
            world_from_cam: k.world_from_cam,
        })
        .collect();
    let gt = read_trajectory(&dir.join("groundtruth.txt")).expect("gt");
    let result = ape(&gt, &estimate, Alignment::Sim3, 0.01).expect("ape");
    assert_eq!(
        result.stats.pairs,
        estimate.len(),
        "every keyframe matches a ground-truth stamp"
    );
    RunResult {
        ate_sim3_m: result.stats.rmse,
        keyframes: estimate.len(),
        submaps: backend.num_submaps(),
        loops,
        map_points: backend.map().points_in_world.len(),
    }
}

#[test]
fn simulated_freiburg1_xyz_sim3_ate_below_1cm() {
    let r = run(dataset(), SessionConfig::default(), SimConfig::default());
    println!(
        "Sim(3) back-end: ATE RMSE (sim3-aligned) {:.4} m over {} keyframes, {} submaps, {} verified loops, {} map points",
        r.ate_sim3_m, r.keyframes, r.submaps, r.loops, r.map_points
    );
    assert!(r.keyframes >= 20, "too few keyframes: {}", r.keyframes);
    assert!(r.submaps >= 3, "too few submaps: {}", r.submaps);
    assert!(
        r.loops >= 1,
        "fr1_xyz revisits its start: expected a verified loop"
    );
    assert!(r.map_points > 1000);
    assert!(r.ate_sim3_m < 0.01, "Sim(3) ATE RMSE {} m", r.ate_sim3_m);
}

#[test]
fn simulated_freiburg1_xyz_sl4_on_projectively_distorted_point_maps() {
    let config = SessionConfig {
        backend: BackendConfig {
            gauge: GaugeModel::Sl4,
            ..BackendConfig::default()
        },
        ..SessionConfig::default()
    };
    let r = run(
        dataset(),
        config,
        SimConfig {
            projective_tilt: Some(0.02),
            ..SimConfig::default()
        },
    );
    println!(
        "SL(4) back-end, tilted point maps: ATE RMSE (sim3-aligned) {:.4} m over {} keyframes, {} submaps, {} verified loops",
        r.ate_sim3_m, r.keyframes, r.submaps, r.loops
    );
    assert!(r.ate_sim3_m < 0.01, "SL(4) ATE RMSE {} m", r.ate_sim3_m);
}
