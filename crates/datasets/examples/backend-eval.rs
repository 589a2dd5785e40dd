//! `backend-eval`: the back-end on simulated predictions along several trajectories and noise
//! levels; prints one JSON line per run (ATE, loops, residuals). See `bench/RESULTS.md`.
//!
//! ```text
//! cargo run --release -p datasets --example backend-eval -- \
//!     [--paths fr1-xyz,orbit,figure-eight,corridor]
//!     [--noise toy,vggt,vggt-tilt,hard,row2,row3,row3-tilt]
//!     [--gauge sim3|sl4] [--metric] [--backend-json '{"loops": {...}}']
//!     [--sim-json '{"scale_error_rel": 0.0}'] [--seeds N] [--out DIR]
//! ```

use std::path::PathBuf;

use datasets::harness::{render, run, Trajectory};
use datasets::paths::PathKind;
use datasets::sim::{SimConfig, SimPreset};
use submap::backend::GaugeModel;
use submap::session::SessionConfig;

/// A noise level: a preset, or one of the rows of white noise the first measurements used
/// (depth / rotation / translation / outliers, optional projective tilt).
fn noise(name: &str) -> Option<SimConfig> {
    let row = |d: f64, r: f64, t: f64, o: f64, tilt: f64| SimConfig {
        depth_noise_rel: Some(d),
        rotation_noise_deg: Some(r),
        translation_noise_m: Some(t),
        outlier_fraction: Some(o),
        projective_tilt: Some(tilt),
        ..SimConfig::default()
    };
    let preset = |p: SimPreset, tilt: f64| SimConfig {
        preset: p,
        projective_tilt: Some(tilt),
        ..SimConfig::default()
    };
    Some(match name {
        "toy" => preset(SimPreset::Toy, 0.0),
        "vggt" => preset(SimPreset::Vggt, 0.0),
        "vggt-tilt" => preset(SimPreset::Vggt, 0.02),
        "hard" => preset(SimPreset::Hard, 0.0),
        "row2" => row(0.02, 0.3, 0.005, 0.02, 0.0),
        "row3" => row(0.05, 1.0, 0.02, 0.05, 0.0),
        "row3-tilt" => row(0.05, 1.0, 0.02, 0.05, 0.02),
        _ => return None,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut paths = "fr1-xyz,orbit,figure-eight,corridor".to_string();
    let mut noises = "toy,vggt,hard,row2,row3,row3-tilt".to_string();
    let mut gauge = GaugeModel::Sim3;
    let mut metric = false;
    let mut out = PathBuf::from("target/backend-eval");
    let mut backend_json = String::from("{}");
    let mut sim_json = String::new();
    let mut seeds = 1u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--paths" => paths = args.next().unwrap_or_default(),
            "--noise" => noises = args.next().unwrap_or_default(),
            "--gauge" => {
                gauge = match args.next().as_deref() {
                    Some("sl4") => GaugeModel::Sl4,
                    _ => GaugeModel::Sim3,
                }
            }
            "--metric" => metric = true,
            "--backend-json" => backend_json = args.next().unwrap_or_default(),
            "--sim-json" => sim_json = args.next().unwrap_or_default(),
            "--seeds" => seeds = args.next().and_then(|v| v.parse().ok()).unwrap_or(1),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let fr1 = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/trajectories/freiburg1_xyz-groundtruth.txt"
    ));
    for name in paths.split(',') {
        let trajectory = match name {
            "fr1-xyz" => Trajectory::File {
                path: fr1.clone(),
                stride: 7,
            },
            other => match PathKind::parse(other) {
                Some(kind) => Trajectory::Path { kind, frames: 400 },
                None => {
                    eprintln!("unknown path {other}");
                    std::process::exit(2);
                }
            },
        };
        let dir = match render(&trajectory, &out, 160, 120) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{name}: {e}");
                std::process::exit(1);
            }
        };
        for level in noises.split(',') {
            let Some(mut sim) = noise(level) else {
                eprintln!("unknown noise {level}");
                std::process::exit(2);
            };
            if !sim_json.is_empty() {
                // Explicit terms on top of the level: merge the JSON objects.
                let mut base = serde_json::to_value(&sim).unwrap_or_default();
                let extra: serde_json::Value = serde_json::from_str(&sim_json).unwrap_or_default();
                if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
                    for (k, v) in e {
                        b.insert(k.clone(), v.clone());
                    }
                }
                sim = match serde_json::from_value(base) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("--sim-json: {e}");
                        std::process::exit(2);
                    }
                };
            }
            let backend: submap::backend::BackendConfig = match serde_json::from_str(&backend_json)
            {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("--backend-json: {e}");
                    std::process::exit(2);
                }
            };
            for seed in 0..seeds {
                sim.seed = seed;
                let mut config = SessionConfig {
                    backend: backend.clone(),
                    ..SessionConfig::default()
                };
                config.backend.gauge = gauge;
                if metric {
                    config.metric_scale.source = submap::mapper::MetricSource::Depth;
                }
                let started = std::time::Instant::now();
                match run(&dir, &config, &sim) {
                    Ok(r) => {
                        let kinds: Vec<String> = r
                            .residuals
                            .by_kind
                            .iter()
                            .map(|k| {
                                format!(
                                    "\"{:?}\": [{}, {:.2}, {:.2}]",
                                    k.kind, k.edges, k.rms_whitened, k.max_whitened
                                )
                            })
                            .collect();
                        println!(
                        "{{\"path\": \"{name}\", \"noise\": \"{level}\", \"seed\": {seed}, \"keyframes\": {}, \"windows\": {}, \"failed\": {}, \"loop_checks\": {}, \"loops\": {}, \"ate_sim3_m\": {:.4}, \"ate_se3_m\": {:.4}, \"residuals\": {{{}}}, \"seconds\": {:.1}}}",
                        r.keyframes,
                        r.stats.windows,
                        r.stats.failed_windows,
                        r.stats.loop_checks,
                        r.stats.loops,
                        r.ate_sim3_m,
                        r.ate_se3_m,
                        kinds.join(", "),
                        started.elapsed().as_secs_f64()
                    );
                        let est = dir.join(format!("estimate-{level}.txt"));
                        if let Err(e) = submap::tum::write_trajectory(&est, &r.trajectory) {
                            eprintln!("{}: {e}", est.display());
                        }
                        if std::env::var_os("VERBOSE").is_some() {
                            for line in &r.rejections {
                                eprintln!("  rejected {line}");
                            }
                        }
                    }
                    Err(e) => {
                        println!(
                            "{{\"path\": \"{name}\", \"noise\": \"{level}\", \"error\": \"{e}\"}}"
                        )
                    }
                }
            }
        }
    }
}
