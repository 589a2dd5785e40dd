//! The simulated predictor's error model, measured on its output: presets and overrides,
//! determinism, and error statistics of predicted windows against the ground truth of a small
//! synthetic rendering (the synthetic room along the TUM `freiburg1_xyz` ground truth, every
//! 10th pose, 40 frames at 160x120).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datasets::sim::{vggt1b_h100_seconds, SimConfig, SimNoise, SimPreset, SimulatedPredictor};
use datasets::synth::{render_dataset, SynthOptions};
use datasets::{DatasetError, Sequence};
use nalgebra::Vector3;
use submap::prediction::{FramePrediction, Predictor, WindowFrame, WindowPrediction};

const GT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/trajectories/freiburg1_xyz-groundtruth.txt"
);

/// Frames per window in these tests (the back-end's default window size).
const WINDOW: usize = 8;

fn dataset() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sim_noise_fr1_xyz_s10_n40");
        let options = SynthOptions {
            seed: 3,
            width: 160,
            height: 120,
            stride: 10,
            max_frames: Some(40),
            ..SynthOptions::default()
        };
        let summary = render_dataset(Path::new(GT), &dir, &options).expect("render");
        assert_eq!(summary.frames, 40);
        dir
    })
}

fn sequence() -> &'static Sequence {
    static SEQ: OnceLock<Sequence> = OnceLock::new();
    SEQ.get_or_init(|| datasets::tum::read(dataset()).expect("read"))
}

fn predictor(config: SimConfig) -> SimulatedPredictor {
    SimulatedPredictor::new(sequence().clone(), config).expect("predictor")
}

fn window_frames(start: usize, len: usize) -> Vec<WindowFrame> {
    (start..start + len)
        .map(|i| sequence().window_frame(i).expect("frame"))
        .collect()
}

fn predict(p: &mut SimulatedPredictor, start: usize) -> WindowPrediction {
    p.predict(&window_frames(start, WINDOW), None)
        .expect("predict")
}

/// Toy preset with every error term set to zero, to switch single terms on.
fn silent() -> SimConfig {
    SimConfig {
        depth_noise_rel: Some(0.0),
        outlier_fraction: Some(0.0),
        rotation_noise_deg: Some(0.0),
        translation_noise_m: Some(0.0),
        with_points: false,
        ..SimConfig::default()
    }
}

/// One valid pixel's relative depth error (after removing the frame's median depth ratio,
/// which holds the gauge and the depth scale error), its depth over the frame's median depth,
/// and its confidence.
#[derive(Debug, Clone, Copy)]
struct PixelError {
    e: f64,
    r: f64,
    conf: f64,
}

/// Per pixel (row-major), `None` where the ground truth has no depth.
fn pixel_errors(pred: &FramePrediction) -> Vec<Option<PixelError>> {
    let i = pred.frame_id as usize;
    let gt = sequence()
        .load_depth_m(i)
        .expect("depth")
        .expect("has depth");
    assert_eq!(gt.data.len(), pred.depth.data.len());
    let ratios: Vec<f64> = gt
        .data
        .iter()
        .zip(&pred.depth.data)
        .filter(|(&g, _)| g > 0.0)
        .map(|(&g, &p)| f64::from(p) / f64::from(g))
        .collect();
    let depths: Vec<f64> = gt
        .data
        .iter()
        .filter(|&&g| g > 0.0)
        .map(|&g| f64::from(g))
        .collect();
    let m_ratio = median(&ratios);
    let m_depth = median(&depths);
    gt.data
        .iter()
        .zip(&pred.depth.data)
        .zip(&pred.depth_conf.data)
        .map(|((&g, &p), &c)| {
            (g > 0.0).then(|| PixelError {
                e: f64::from(p) / f64::from(g) / m_ratio - 1.0,
                r: f64::from(g) / m_depth,
                conf: f64::from(c),
            })
        })
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rms(values: &[f64]) -> f64 {
    (values.iter().map(|v| v * v).sum::<f64>() / values.len() as f64).sqrt()
}

fn std_dev(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// Median ratio of predicted to ground-truth depth of a frame (its depth scale in the window).
fn depth_scale(pred: &FramePrediction) -> f64 {
    let gt = sequence()
        .load_depth_m(pred.frame_id as usize)
        .expect("depth")
        .expect("has depth");
    let ratios: Vec<f64> = gt
        .data
        .iter()
        .zip(&pred.depth.data)
        .filter(|(&g, _)| g > 0.0)
        .map(|(&g, &p)| f64::from(p) / f64::from(g))
        .collect();
    median(&ratios)
}

fn gt_cam_from_world(i: usize) -> nalgebra::Isometry3<f64> {
    sequence().frames[i]
        .world_from_cam
        .expect("ground truth")
        .inverse()
}

/// Angle (radians) of the error of the relative rotation between two predicted frames.
fn relative_rotation_error(a: &FramePrediction, b: &FramePrediction) -> f64 {
    let pred = a.cam_from_window.rotation * b.cam_from_window.rotation.inverse();
    let gt = gt_cam_from_world(a.frame_id as usize).rotation
        * gt_cam_from_world(b.frame_id as usize).rotation.inverse();
    (pred * gt.inverse()).angle()
}

/// Camera centre of a predicted frame in window coordinates.
fn centre(p: &FramePrediction) -> Vector3<f64> {
    p.cam_from_window.inverse().translation.vector
}

fn gt_centre(i: usize) -> Vector3<f64> {
    sequence().frames[i]
        .world_from_cam
        .expect("ground truth")
        .translation
        .vector
}

fn noise_fields(n: &SimNoise) -> [f64; 14] {
    [
        n.depth_noise_rel,
        n.depth_noise_far_rel,
        n.depth_field_rel,
        n.outlier_fraction,
        n.confidence_noise,
        n.outlier_confident_fraction,
        n.rotation_noise_deg,
        n.rotation_drift_deg,
        n.translation_noise_m,
        n.translation_drift_m,
        n.scale_error_rel,
        n.scale_drift_rel,
        n.projective_tilt,
        f64::from(n.depth_field_cells),
    ]
}

#[test]
fn presets_resolve_as_documented_and_explicit_values_override() {
    // The default is the toy preset, which keeps the simulation's original white noise.
    let toy = SimConfig::default().resolved().expect("toy");
    assert_eq!(toy, SimPreset::Toy.noise());
    assert_eq!(
        (
            toy.depth_noise_rel,
            toy.rotation_noise_deg,
            toy.translation_noise_m,
            toy.outlier_fraction,
            toy.projective_tilt,
        ),
        (0.005, 0.05, 0.001, 0.01, 0.0)
    );
    assert_eq!(
        (
            toy.depth_noise_far_rel,
            toy.depth_field_rel,
            toy.rotation_drift_deg,
            toy.translation_drift_m,
            toy.scale_error_rel,
            toy.scale_drift_rel,
            toy.informative_confidence,
        ),
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, false)
    );
    for preset in SimPreset::ALL {
        let config = SimConfig {
            preset,
            ..SimConfig::default()
        };
        assert_eq!(config.resolved().expect("resolves"), preset.noise());
        assert!(!config.has_overrides());
        assert_eq!(preset.name().parse::<SimPreset>().expect("name"), preset);
    }
    // vggt and hard model the correlated terms; hard is at least vggt on every term.
    let (vggt, hard) = (SimPreset::Vggt.noise(), SimPreset::Hard.noise());
    assert!(vggt.informative_confidence && hard.informative_confidence);
    for (v, h) in noise_fields(&vggt).iter().zip(noise_fields(&hard)) {
        assert!(h >= *v, "hard {h} below vggt {v}");
    }
    for v in [
        vggt.depth_noise_far_rel,
        vggt.depth_field_rel,
        vggt.rotation_drift_deg,
        vggt.translation_drift_m,
        vggt.scale_error_rel,
        vggt.scale_drift_rel,
    ] {
        assert!(v > 0.0);
    }

    // Explicit values override the preset, the rest stays the preset's.
    let config = SimConfig {
        preset: SimPreset::Vggt,
        depth_noise_rel: Some(0.07),
        informative_confidence: Some(false),
        depth_field_cells: Some(9),
        ..SimConfig::default()
    };
    assert!(config.has_overrides());
    let expected = SimNoise {
        depth_noise_rel: 0.07,
        informative_confidence: false,
        depth_field_cells: 9,
        ..vggt
    };
    assert_eq!(config.resolved().expect("resolves"), expected);
}

#[test]
fn config_files_name_presets_and_bad_values_are_errors() {
    let parse = |text: &str| toml::from_str::<SimConfig>(text);
    let config = parse("preset = \"hard\"\nrotation_noise_deg = 2.5\nseed = 4\n").expect("parses");
    assert_eq!(config.preset, SimPreset::Hard);
    assert_eq!(config.seed, 4);
    let resolved = config.resolved().expect("resolves");
    assert_eq!(
        resolved,
        SimNoise {
            rotation_noise_deg: 2.5,
            ..SimPreset::Hard.noise()
        }
    );

    // The defaults print as the preset and the non-noise settings only, and read back.
    let text = toml::to_string(&SimConfig::default()).expect("serialises");
    assert!(text.contains("preset = \"toy\""), "{text}");
    assert!(!text.contains("depth_noise_rel"), "{text}");
    assert_eq!(parse(&text).expect("reads back"), SimConfig::default());

    let err = parse("preset = \"vgg\"\n").expect_err("unknown preset");
    assert!(err.to_string().contains("unknown variant"), "{err}");
    let err = parse("depth_noise = 0.1\n").expect_err("unknown key");
    assert!(err.to_string().contains("unknown field"), "{err}");
    let err = "VGGT"
        .parse::<SimPreset>()
        .expect_err("names are lowercase");
    assert!(err.to_string().contains("toy, vggt or hard"), "{err}");

    for (text, key) in [
        ("depth_noise_rel = -0.01", "sim.depth_noise_rel"),
        ("rotation_drift_deg = nan", "sim.rotation_drift_deg"),
        ("translation_noise_m = inf", "sim.translation_noise_m"),
        ("scale_error_rel = -1.0", "sim.scale_error_rel"),
        ("outlier_fraction = 1.5", "sim.outlier_fraction"),
        (
            "outlier_confident_fraction = -0.1",
            "sim.outlier_confident_fraction",
        ),
        ("depth_field_cells = 0", "sim.depth_field_cells"),
        ("depth_field_cells = 100000", "sim.depth_field_cells"),
        ("projective_tilt = -0.02", "sim.projective_tilt"),
        ("max_gauge_scale = 0.5", "sim.max_gauge_scale"),
        ("timestamp_tolerance_s = -1.0", "sim.timestamp_tolerance_s"),
        ("model_pace = -1.0", "sim.model_pace"),
        ("model_pace = inf", "sim.model_pace"),
    ] {
        let config = parse(&format!("preset = \"vggt\"\n{text}\n")).expect("parses");
        match config.resolved() {
            Err(DatasetError::InvalidOption { name, .. }) => assert_eq!(name, key, "{text}"),
            other => panic!("{text}: expected an invalid-option error, got {other:?}"),
        }
        let err = SimulatedPredictor::new(sequence().clone(), config)
            .err()
            .unwrap_or_else(|| panic!("{text}: the predictor accepted a bad value"));
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn the_published_model_times_are_interpolated_between_their_frame_counts() {
    for (frames, seconds) in [(1, 0.04), (4, 0.07), (10, 0.14), (20, 0.31), (200, 8.75)] {
        assert!(
            (vggt1b_h100_seconds(frames) - seconds).abs() < 1e-12,
            "{frames}"
        );
    }
    // 16 frames: 0.6 of the way from 10 (0.14 s) to 20 (0.31 s).
    assert!((vggt1b_h100_seconds(16) - 0.242).abs() < 1e-12);
    assert_eq!(vggt1b_h100_seconds(0), vggt1b_h100_seconds(1));
    // Beyond the table along its last segment: 5.63 s per 100 frames.
    assert!((vggt1b_h100_seconds(300) - 14.38).abs() < 1e-9);
}

#[test]
fn a_paced_simulation_answers_no_sooner_than_the_model_would_and_the_same() {
    // 8 frames at 5 times an H100's aggregator: at least 0.55 s.
    let frames = window_frames(0, WINDOW);
    let due = 5.0 * vggt1b_h100_seconds(WINDOW);
    let config = SimConfig {
        preset: SimPreset::Vggt,
        ..SimConfig::default()
    };
    let started = std::time::Instant::now();
    let paced = predictor(SimConfig {
        model_pace: 5.0,
        ..config.clone()
    })
    .predict(&frames, None)
    .expect("predict");
    assert!(
        started.elapsed().as_secs_f64() >= due,
        "{:?}",
        started.elapsed()
    );
    assert_bit_identical(
        &paced,
        &predictor(config).predict(&frames, None).expect("predict"),
    );
}

fn assert_bit_identical(a: &WindowPrediction, b: &WindowPrediction) {
    assert_eq!(a.frames.len(), b.frames.len());
    for (x, y) in a.frames.iter().zip(&b.frames) {
        assert_eq!(x.frame_id, y.frame_id);
        let pose = |p: &FramePrediction| {
            let m = p.cam_from_window.to_homogeneous();
            m.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(pose(x), pose(y), "pose of frame {}", x.frame_id);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&x.depth.data), bits(&y.depth.data));
        assert_eq!(bits(&x.depth_conf.data), bits(&y.depth_conf.data));
        let points = |p: &FramePrediction| {
            p.points_in_window.as_deref().map(|(m, c)| {
                (
                    m.data
                        .iter()
                        .flatten()
                        .map(|f| f.to_bits())
                        .collect::<Vec<_>>(),
                    bits(&c.data),
                )
            })
        };
        assert_eq!(points(x), points(y));
        assert_eq!(x.intrinsics, y.intrinsics);
    }
}

#[test]
fn same_window_gives_the_same_output_whatever_came_before() {
    let config = SimConfig {
        preset: SimPreset::Vggt,
        seed: 11,
        projective_tilt: Some(0.02),
        ..SimConfig::default()
    };
    let mut first = predictor(config.clone());
    let a = predict(&mut first, 4);
    // Other windows in between, then the same window again.
    let _ = predict(&mut first, 0);
    let b_other = predict(&mut first, 5);
    let again = predict(&mut first, 4);
    assert_bit_identical(&a, &again);
    // A fresh predictor that has predicted nothing else.
    let mut fresh = predictor(config.clone());
    assert_bit_identical(&a, &predict(&mut fresh, 4));
    assert_eq!(first.windows_predicted(), 4);

    // A different window (shifted by one frame) gives other noise on the frames it shares.
    assert_eq!(b_other.frames[0].frame_id, a.frames[1].frame_id);
    assert_ne!(b_other.frames[0].depth.data, a.frames[1].depth.data);
    assert_ne!(
        b_other.frames[0].depth_conf.data,
        a.frames[1].depth_conf.data
    );
    // The same frames in another order are another window.
    let mut reversed = window_frames(4, WINDOW);
    reversed.reverse();
    let r = first.predict(&reversed, None).expect("predict");
    assert_ne!(r.frames[WINDOW - 1].depth.data, a.frames[0].depth.data);
    // Another seed gives other noise.
    let mut other_seed = predictor(SimConfig { seed: 12, ..config });
    let c = predict(&mut other_seed, 4);
    assert_ne!(c.frames[0].depth.data, a.frames[0].depth.data);
}

#[test]
fn depth_noise_grows_with_distance_as_configured() {
    let (a, b) = (0.01, 0.03);
    let mut p = predictor(SimConfig {
        depth_noise_rel: Some(a),
        depth_noise_far_rel: Some(b),
        ..silent()
    });
    let mut near = Vec::new();
    let mut far = Vec::new();
    let mut total = 0usize;
    for start in [0, 16] {
        for frame in &predict(&mut p, start).frames {
            for px in pixel_errors(frame).into_iter().flatten() {
                total += 1;
                if px.r < 0.8 {
                    near.push(px);
                } else if px.r > 1.25 {
                    far.push(px);
                }
            }
        }
    }
    assert!(
        near.len() * 20 > total && far.len() * 20 > total,
        "depth spread too small"
    );
    let measured = |bin: &[PixelError]| rms(&bin.iter().map(|p| p.e).collect::<Vec<_>>());
    let expected = |bin: &[PixelError]| rms(&bin.iter().map(|p| a + b * p.r).collect::<Vec<_>>());
    let (m_near, m_far) = (measured(&near), measured(&far));
    let (e_near, e_far) = (expected(&near), expected(&far));
    println!("relative depth error: near {m_near:.4} (model {e_near:.4}), far {m_far:.4} (model {e_far:.4})");
    assert!(m_far > 1.3 * m_near, "far {m_far} vs near {m_near}");
    assert!(
        (m_near / e_near - 1.0).abs() < 0.1,
        "near {m_near} vs {e_near}"
    );
    assert!((m_far / e_far - 1.0).abs() < 0.1, "far {m_far} vs {e_far}");
}

#[test]
fn confidence_is_informative_but_no_oracle() {
    // Mean confidence of the worst and best error deciles, and how often a worst-decile pixel
    // is more confident than the median pixel.
    let deciles = |preset: SimPreset| {
        let mut p = predictor(SimConfig {
            preset,
            with_points: false,
            ..SimConfig::default()
        });
        let mut pixels: Vec<PixelError> = predict(&mut p, 8)
            .frames
            .iter()
            .flat_map(|f| pixel_errors(f).into_iter().flatten())
            .collect();
        assert!(pixels.iter().all(|px| px.conf >= 1.0), "confidence below 1");
        let median_conf = median(&pixels.iter().map(|px| px.conf).collect::<Vec<_>>());
        pixels.sort_by(|x, y| x.e.abs().total_cmp(&y.e.abs()));
        let tenth = pixels.len() / 10;
        let mean = |s: &[PixelError]| s.iter().map(|px| px.conf).sum::<f64>() / s.len() as f64;
        let worst = &pixels[pixels.len() - tenth..];
        let confident_worst =
            worst.iter().filter(|px| px.conf > median_conf).count() as f64 / tenth as f64;
        (mean(&pixels[..tenth]), mean(worst), confident_worst)
    };
    let (best, worst, confident_worst) = deciles(SimPreset::Vggt);
    println!("vggt: best-decile confidence {best:.2}, worst {worst:.2}, worst above median {confident_worst:.3}");
    assert!(worst < 0.6 * best, "worst {worst} vs best {best}");
    assert!(confident_worst > 0.02, "confidence is a perfect oracle");
    // Without informative confidence (toy) the deciles are alike.
    let (best, worst, _) = deciles(SimPreset::Toy);
    println!("toy: best-decile confidence {best:.2}, worst {worst:.2}");
    assert!(
        (worst / best - 1.0).abs() < 0.1,
        "worst {worst} vs best {best}"
    );
}

#[test]
fn outliers_have_the_configured_rate_and_mostly_low_confidence() {
    let (fraction, confident) = (0.05, 0.2);
    let mut p = predictor(SimConfig {
        outlier_fraction: Some(fraction),
        informative_confidence: Some(true),
        outlier_confident_fraction: Some(confident),
        ..silent()
    });
    let pixels: Vec<PixelError> = predict(&mut p, 20)
        .frames
        .iter()
        .flat_map(|f| pixel_errors(f).into_iter().flatten())
        .collect();
    // Outlier factors are uniform in [0.5, 1.5): 96 % of them are more than 2 % off.
    let gross: Vec<&PixelError> = pixels.iter().filter(|px| px.e.abs() > 0.02).collect();
    let rate = gross.len() as f64 / pixels.len() as f64;
    let confident_rate =
        gross.iter().filter(|px| px.conf >= 2.0).count() as f64 / gross.len() as f64;
    let clean_confident = pixels
        .iter()
        .filter(|px| px.e.abs() <= 0.02 && px.conf >= 2.0)
        .count() as f64
        / (pixels.len() - gross.len()) as f64;
    println!("gross rate {rate:.4}, confident outliers {confident_rate:.3}, confident inliers {clean_confident:.3}");
    assert!((rate / (0.96 * fraction) - 1.0).abs() < 0.15, "rate {rate}");
    assert!(
        (confident_rate - confident).abs() < 0.06,
        "{confident_rate}"
    );
    assert!(clean_confident > 0.95, "{clean_confident}");
}

#[test]
fn depth_error_field_is_smooth_and_white_noise_is_not() {
    // Correlation of horizontally adjacent relative errors, and their spread.
    let stats = |config: SimConfig| {
        let mut p = predictor(config);
        let mut pairs = Vec::new();
        let mut all = Vec::new();
        for start in [0, 24] {
            for frame in &predict(&mut p, start).frames {
                let errors = pixel_errors(frame);
                let w = frame.depth.width;
                for (i, px) in errors.iter().enumerate() {
                    if let Some(px) = px {
                        all.push(px.e);
                        if (i + 1) % w != 0 {
                            if let Some(next) = &errors[i + 1] {
                                pairs.push((px.e, next.e));
                            }
                        }
                    }
                }
            }
        }
        let (xs, ys): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (mx, my) = (mean(&xs), mean(&ys));
        let cov = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / xs.len() as f64;
        (cov / (std_dev(&xs) * std_dev(&ys)), std_dev(&all))
    };
    let sigma = 0.03;
    let (corr, spread) = stats(SimConfig {
        depth_field_rel: Some(sigma),
        ..silent()
    });
    println!("field: neighbour correlation {corr:.3}, spread {spread:.4}");
    assert!(corr > 0.9, "field correlation {corr}");
    assert!(
        spread > 0.6 * sigma && spread < 1.5 * sigma,
        "field spread {spread}"
    );
    let (corr, _) = stats(SimConfig {
        depth_noise_rel: Some(sigma),
        ..silent()
    });
    println!("white: neighbour correlation {corr:.3}");
    assert!(corr.abs() < 0.05, "white correlation {corr}");
}

#[test]
fn pose_drift_starts_at_the_first_frame_and_grows_through_the_window() {
    let (rot_rate_deg, t_rate_m) = (0.2, 0.003);
    let mut p = predictor(SimConfig {
        rotation_drift_deg: Some(rot_rate_deg),
        translation_drift_m: Some(t_rate_m),
        ..silent()
    });
    let last = WINDOW - 1;
    let mut rot_err = vec![Vec::new(); WINDOW];
    let mut pos_err = vec![Vec::new(); WINDOW];
    for start in (0..=40 - WINDOW).step_by(2) {
        let w = predict(&mut p, start);
        let f0 = &w.frames[0];
        // No depth noise: the frame's depth ratio is the gauge scale exactly.
        let s = depth_scale(f0);
        let r0 = f0.cam_from_window.rotation;
        let gt0 = gt_cam_from_world(start).rotation;
        for (k, fk) in w.frames.iter().enumerate().skip(1) {
            rot_err[k].push(relative_rotation_error(fk, f0));
            let pred = r0 * (centre(fk) - centre(f0)) / s;
            let gt = gt0 * (gt_centre(start + k) - gt_centre(start));
            pos_err[k].push((pred - gt).norm());
        }
        // Linear in the frame index: frame k's error is k times frame 1's.
        let (r1, rl) = (rot_err[1].last().copied(), rot_err[last].last().copied());
        let (r1, rl) = (r1.expect("k = 1"), rl.expect("last"));
        assert!((rl / (last as f64 * r1) - 1.0).abs() < 0.01, "{rl} vs {r1}");
        let (t1, tl) = (pos_err[1].last().copied(), pos_err[last].last().copied());
        let (t1, tl) = (t1.expect("k = 1"), tl.expect("last"));
        assert!((tl / (last as f64 * t1) - 1.0).abs() < 0.01, "{tl} vs {t1}");
    }
    let expected_rot = |k: usize| (rot_rate_deg * k as f64).to_radians() * 3f64.sqrt();
    let expected_pos = |k: usize| t_rate_m * k as f64 * 3f64.sqrt();
    for k in [1, 4, last] {
        let (r, t) = (rms(&rot_err[k]), rms(&pos_err[k]));
        println!(
            "frame {k}: rotation error {:.3}° (model {:.3}°), position error {:.1} mm (model {:.1} mm)",
            r.to_degrees(),
            expected_rot(k).to_degrees(),
            t * 1e3,
            expected_pos(k) * 1e3
        );
        assert!(
            r > 0.6 * expected_rot(k) && r < 1.5 * expected_rot(k),
            "rotation at {k}: {r}"
        );
        assert!(
            t > 0.6 * expected_pos(k) && t < 1.5 * expected_pos(k),
            "position at {k}: {t}"
        );
    }
    assert!(rms(&rot_err[last]) > rms(&rot_err[1]) && rms(&pos_err[last]) > rms(&pos_err[1]));
}

#[test]
fn white_rotation_noise_has_the_configured_size() {
    let sigma_deg = 0.5;
    let mut p = predictor(SimConfig {
        rotation_noise_deg: Some(sigma_deg),
        ..silent()
    });
    let mut errors = Vec::new();
    for start in [0, 10, 20, 30] {
        let w = predict(&mut p, start);
        for a in 0..WINDOW {
            for b in a + 1..WINDOW {
                errors.push(relative_rotation_error(&w.frames[a], &w.frames[b]));
            }
        }
    }
    // Two frames' independent errors of `sigma` per axis: RMS angle sigma * sqrt(6).
    let per_axis = rms(&errors).to_degrees() / 6f64.sqrt();
    println!("rotation noise per axis {per_axis:.3}° (configured {sigma_deg}°)");
    assert!(
        per_axis > 0.75 * sigma_deg && per_axis < 1.33 * sigma_deg,
        "{per_axis}"
    );
}

#[test]
fn scale_error_separates_depth_from_camera_translations() {
    // Depth scale over the scale of the camera baselines, per window (log).
    let log_mismatch = |config: SimConfig| {
        let mut p = predictor(config);
        (0..=40 - WINDOW)
            .step_by(2)
            .map(|start| {
                let w = predict(&mut p, start);
                let (f0, fl) = (&w.frames[0], &w.frames[WINDOW - 1]);
                let pose_scale = (centre(fl) - centre(f0)).norm()
                    / (gt_centre(start + WINDOW - 1) - gt_centre(start)).norm();
                (depth_scale(f0) / pose_scale).ln()
            })
            .collect::<Vec<f64>>()
    };
    // Without a scale error the gauge scales depth and cameras alike.
    let none = log_mismatch(silent());
    assert!(none.iter().all(|l| l.abs() < 1e-4), "{none:?}");
    let sigma = 0.05;
    let with = log_mismatch(SimConfig {
        scale_error_rel: Some(sigma),
        ..silent()
    });
    let spread = std_dev(&with);
    println!("log depth/pose scale: spread {spread:.4} (configured {sigma})");
    assert!(spread > 0.6 * sigma && spread < 1.6 * sigma, "{spread}");

    // Scale drift: the depth scale changes by the same factor every frame step.
    let rate = 0.01;
    let mut p = predictor(SimConfig {
        scale_drift_rel: Some(rate),
        ..silent()
    });
    let mut first_steps = Vec::new();
    for start in (0..=40 - WINDOW).step_by(2) {
        let w = predict(&mut p, start);
        let logs: Vec<f64> = w.frames.iter().map(depth_scale).map(f64::ln).collect();
        let step = logs[1] - logs[0];
        let span = logs[WINDOW - 1] - logs[0];
        assert!(
            (span - (WINDOW - 1) as f64 * step).abs() < 1e-4,
            "{span} vs {step}"
        );
        first_steps.push(step);
    }
    let spread = std_dev(&first_steps);
    println!("log depth scale per frame step: spread {spread:.4} (configured {rate})");
    assert!(spread > 0.6 * rate && spread < 1.6 * rate, "{spread}");
}

/// Overall error of a configuration on the same windows, as four numbers comparable with the
/// white-noise rows of issue #11: depth (robust spread of the relative error), outlier rate,
/// rotation (per axis, from relative rotations) and translation (per axis, from camera
/// distances; the gauge scale is pinned to 1 so distances are metric).
fn overall_error(config: SimConfig) -> [f64; 4] {
    let mut p = predictor(SimConfig {
        max_gauge_scale: 1.0,
        with_points: false,
        ..config
    });
    let (mut abs_e, mut rot, mut dist) = (Vec::new(), Vec::new(), Vec::new());
    for start in [0, 8, 16, 24, 32] {
        let w = predict(&mut p, start);
        for f in &w.frames {
            abs_e.extend(pixel_errors(f).into_iter().flatten().map(|px| px.e.abs()));
        }
        for a in 0..WINDOW {
            for b in a + 1..WINDOW {
                let (fa, fb) = (&w.frames[a], &w.frames[b]);
                rot.push(relative_rotation_error(fa, fb));
                let gt = (gt_centre(start + b) - gt_centre(start + a)).norm();
                dist.push((centre(fb) - centre(fa)).norm() - gt);
            }
        }
    }
    let depth = 1.4826 * median(&abs_e);
    // Outlier factors are uniform in [0.5, 1.5): half of them are more than 25 % off.
    let outliers = 2.0 * abs_e.iter().filter(|&&e| e > 0.25).count() as f64 / abs_e.len() as f64;
    let rotation = rms(&rot).to_degrees() / 6f64.sqrt();
    let translation = rms(&dist) / 2f64.sqrt();
    [depth, outliers, rotation, translation]
}

#[test]
fn vggt_sits_between_the_second_and_third_issue_rows_and_hard_above_the_third() {
    let row = |depth: f64, rot: f64, trans: f64, outliers: f64| SimConfig {
        depth_noise_rel: Some(depth),
        rotation_noise_deg: Some(rot),
        translation_noise_m: Some(trans),
        outlier_fraction: Some(outliers),
        ..SimConfig::default()
    };
    let preset = |preset: SimPreset| SimConfig {
        preset,
        ..SimConfig::default()
    };
    let ladder = [
        ("toy", overall_error(preset(SimPreset::Toy))),
        ("row 2", overall_error(row(0.02, 0.3, 0.005, 0.02))),
        ("vggt", overall_error(preset(SimPreset::Vggt))),
        ("row 3", overall_error(row(0.05, 1.0, 0.02, 0.05))),
        ("hard", overall_error(preset(SimPreset::Hard))),
    ];
    for (name, e) in &ladder {
        println!(
            "{name:>6}: depth {:.4}, outliers {:.4}, rotation {:.3}°, translation {:.1} mm",
            e[0],
            e[1],
            e[2],
            e[3] * 1e3
        );
    }
    let names = ["depth", "outliers", "rotation", "translation"];
    for pair in ladder.windows(2) {
        let ((lo_name, lo), (hi_name, hi)) = (&pair[0], &pair[1]);
        for m in 0..4 {
            assert!(
                hi[m] > lo[m],
                "{}: {hi_name} {} is not above {lo_name} {}",
                names[m],
                hi[m],
                lo[m]
            );
        }
    }
    // The toy preset measures as the first row it was defined by.
    let toy = ladder[0].1;
    assert!((toy[0] / 0.005 - 1.0).abs() < 0.1, "toy depth {}", toy[0]);
    assert!(
        (toy[2] / 0.05 - 1.0).abs() < 0.25,
        "toy rotation {}",
        toy[2]
    );
}

#[test]
fn predicted_windows_are_finite_under_every_preset() {
    for preset in SimPreset::ALL {
        let mut p = predictor(SimConfig {
            preset,
            projective_tilt: Some(0.02),
            ..SimConfig::default()
        });
        let w = predict(&mut p, 30);
        assert!(w.is_finite(), "{preset}");
        assert!(w.label.contains(preset.name()), "{}", w.label);
        for f in &w.frames {
            let valid = f.depth.data.iter().filter(|&&d| d > 0.0).count();
            let confident = f.depth_conf.data.iter().filter(|&&c| c >= 1.0).count();
            assert_eq!(
                valid, confident,
                "{preset}: a valid pixel without confidence"
            );
        }
    }
}
