//! APE against the figures of the `evo` tool stored in `fixtures/trajectories/evo_reference.json`
//! (generated with `evo_ape tum GT EST [-a | -as]`, default association 0.01 s). Tolerance 1e-6 m.

use std::path::PathBuf;

use submap::eval::{ape_from_files, Alignment};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/trajectories"
    ))
    .join(name)
}

#[test]
fn ape_matches_evo_reference() {
    let text = std::fs::read_to_string(fixture("evo_reference.json")).expect("reference json");
    let reference: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    let entries = reference.as_object().expect("object");
    assert!(
        entries.len() >= 9,
        "expected 9 reference entries, got {}",
        entries.len()
    );
    for (key, want) in entries {
        let (file, align) = key.split_once('|').expect("key ESTIMATE|ALIGN");
        let alignment: Alignment = align.parse().expect("alignment name");
        let got = ape_from_files(
            &fixture("freiburg1_xyz-groundtruth.txt"),
            &fixture(file),
            alignment,
            0.01,
        )
        .expect("ape");
        println!(
            "{key}: rmse {:.6} mean {:.6} median {:.6} max {:.6} pairs {}",
            got.rmse, got.mean, got.median, got.max, got.pairs
        );
        assert_eq!(
            got.pairs as u64,
            want["pairs"].as_u64().expect("pairs"),
            "{key}: pairs"
        );
        for (name, value) in [
            ("rmse", got.rmse),
            ("mean", got.mean),
            ("median", got.median),
            ("max", got.max),
        ] {
            let w = want[name].as_f64().expect("number");
            assert!((value - w).abs() < 1e-6, "{key}: {name} {value} vs evo {w}");
        }
    }
}
