//! A long run's memory stays flat: the daemon on laps of a circle (the synthetic renderer along
//! `datasets::paths::PathKind::Circuit`) with the simulated predictor at the real model's error
//! level, the recording played at its frame rate as a camera delivers it (`--realtime`), its
//! figures after every window from `--stats`. Once the back-end's kept maps reach
//! their bound (`backend.map.max_retained_mib`, set low here so that the bound is reached early),
//! the live heap must not grow: the revisited places give up their maps, not the process. What
//! still grows is each keyframe's pose, graph nodes and edges (a few KiB a keyframe); frames of
//! 320 x 240 keep the kept maps' share of the heap near the real model's (VGGT-1B's are larger
//! still), so that 1 % means what it would mean on a real run. `bench/soak` runs the same for
//! 1000 windows.

mod common;

use std::path::Path;

use common::*;

/// Frame rate of the recording, played at its rate (`--realtime`), as from a camera.
const FPS: f64 = 60.0;
/// Windows the run must reach.
const WINDOWS: usize = 50;
/// The bound on the back-end's kept maps and pixels, MiB.
const BOUND_MIB: f64 = 64.0;
/// Growth of the live heap per keyframe after warm-up that is still bookkeeping, not a leak (a
/// leaked frame would be 230 KB).
const MAX_BYTES_PER_KEYFRAME: f64 = 4096.0;

/// The last stats line of each window, in window order, with `live_floor_bytes` the lowest of
/// the window's lines: the floor over the whole window (each line's covers the time since the
/// line before).
fn per_window(stats: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(stats).expect("stats file");
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for line in text.lines() {
        let mut row: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if let Some(last) = rows
            .last_mut()
            .filter(|last| last["windows"] == row["windows"])
        {
            let floor = |r: &serde_json::Value| r["live_floor_bytes"].as_u64().expect("floor");
            row["live_floor_bytes"] = floor(last).min(floor(&row)).into();
            *last = row;
        } else {
            rows.push(row);
        }
    }
    rows
}

#[test]
fn live_memory_stays_flat_over_a_long_looping_run() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("circuit");
    // 1250 frames give ~63 windows: the 50 judged end well before the input does, so none of
    // them sees the queues drain at the end of the stream.
    let mut poses = datasets::paths::path(datasets::paths::PathKind::Circuit, 1250, 0.0);
    for (i, pose) in poses.iter_mut().enumerate() {
        pose.timestamp_s = i as f64 / FPS;
    }
    std::fs::create_dir_all(&data).expect("mkdir");
    let trajectory = data.join("circuit_path.txt");
    submap::tum::write_trajectory(&trajectory, &poses).expect("trajectory");
    let options = datasets::synth::SynthOptions {
        width: 320,
        height: 240,
        ..Default::default()
    };
    datasets::synth::render_dataset(&trajectory, &data, &options).expect("renders");
    let config = work.path().join("soak.toml");
    std::fs::write(
        &config,
        format!("[backend.map]\nmax_retained_mib = {BOUND_MIB}\n"),
    )
    .expect("config");
    let (out, stats) = (work.path().join("out"), work.path().join("stats.jsonl"));
    run_ok(
        vggtd()
            .args([
                "run",
                "--realtime",
                "--predictor",
                "simulated",
                "--sim-preset",
                "vggt",
            ])
            .arg("--input")
            .arg(&data)
            .arg("--output")
            .arg(&out)
            .arg("--config")
            .arg(&config)
            .arg("--stats")
            .arg(&stats),
    );
    let rows = per_window(&stats);
    assert!(rows.len() >= WINDOWS, "{} windows", rows.len());
    let rows = &rows[..WINDOWS];
    let bytes = |row: &serde_json::Value, key: &str| row[key].as_u64().expect(key) as f64;
    let bound = BOUND_MIB * 1024.0 * 1024.0;

    // The kept maps never exceed their bound, and reach it (else this proves nothing).
    for row in rows {
        assert!(bytes(row, "map_bytes") <= bound, "over the bound: {row}");
        for (queue, capacity) in [("frames", 8), ("keyframes", 16), ("publish", 8)] {
            let depth = row["queues"][queue].as_u64().expect("queue depth");
            assert!(depth <= capacity, "queue {queue}: {row}");
        }
    }
    let warm = rows
        .iter()
        .position(|row| bytes(row, "map_bytes") >= 0.99 * bound)
        .expect("the bound is reached");
    assert!(
        warm + 20 <= WINDOWS,
        "bound reached at window {warm}: too late to judge"
    );

    // Live heap after warm-up: each window's floor (the allocator's lowest live size while the
    // window was on its way, `live_floor_bytes`) is what stayed allocated throughout. The input
    // plays at its frame rate, as from a camera, so the queues hold no backlog whose depth would
    // follow the threads' timing (a full keyframe queue is 16 frames, ~8 MiB); what a stage
    // holds for a moment, and a kept map released on a revisit before the next is added, still
    // moves single floors, so the median floor of the first and of the last ten windows must
    // agree within 1 %.
    let live: Vec<f64> = rows[warm..]
        .iter()
        .map(|r| bytes(r, "live_floor_bytes"))
        .collect();
    assert!(live[0] > 0.0, "vggtd counts its allocations");
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let early = median(&live[..10]);
    let late = median(&live[live.len() - 10..]);
    let growth = (late - early) / early;
    eprintln!(
        "windows {warm}..{WINDOWS}: live heap {:.2} -> {:.2} MiB ({:+.2} %), kept maps {:.2} MiB, {} keyframes",
        early / 1048576.0,
        late / 1048576.0,
        growth * 100.0,
        bytes(&rows[WINDOWS - 1], "map_bytes") / 1048576.0,
        rows[WINDOWS - 1]["keyframes"]
    );
    let mib: Vec<String> = live
        .iter()
        .map(|b| format!("{:.2}", b / 1048576.0))
        .collect();
    eprintln!("floors, MiB: {}", mib.join(" "));
    assert!(
        growth.abs() <= 0.01,
        "live heap {early} -> {late} bytes after warm-up ({:+.2} %)",
        growth * 100.0
    );
    let keyframes = |row: &serde_json::Value| row["keyframes"].as_u64().expect("keyframes") as f64;
    let added = keyframes(&rows[WINDOWS - 5]) - keyframes(&rows[warm + 5]);
    let per_keyframe = (late - early) / added;
    assert!(
        per_keyframe <= MAX_BYTES_PER_KEYFRAME,
        "{per_keyframe:.0} bytes more per keyframe after warm-up"
    );

    // Revisits gave up their maps, and the run still closes loops with what is kept.
    let s = summary(&out);
    let released = &s["backend"]["released_keyframes"];
    assert!(released["revisits"].as_u64().expect("revisits") > 0, "{s}");
    assert!(s["loops"].as_u64().expect("loops") >= 1, "{s}");
}
