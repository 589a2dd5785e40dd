//! Planted wrong loop candidates are never accepted, and leave the map as it was; a true revisit
//! proposed the same way is accepted. Revisits proposed together are closed in one solve once
//! the last of them is answered, and one left waiting at a stop is closed by `abandon`; the next
//! request may go out before a check's answer is processed, and an answer taken and not
//! processed is processed before anything else changes the back-end.
//!
//! The corridor (out 3 m, turn, back, turn) is mapped under the `vggt` preset with the core's own
//! loop search off; then pairs of keyframes are proposed as loops the way an external place
//! recognition would, and their loop windows answered by a predictor that is fooled:
//! - *repeated texture*: the model registers the new frame onto the old one's pose, but sees its
//!   own surfaces (its depth is its own);
//! - *look-alike place*: the model answers the new frame with the old frame's geometry exactly
//!   (pose, depth and confidence), as for two identical rooms;
//! - *reversed view*: two frames at the same spot facing opposite ways, registered onto each
//!   other.

use std::path::PathBuf;

use datasets::harness::{render, Trajectory};
use datasets::paths::PathKind;
use datasets::sim::{SimConfig, SimPreset, SimulatedPredictor};
use submap::backend::{LoopOutcome, LoopRejection, LoopUpdate};
use submap::keyframe::{KeyframeConfig, KeyframeDecision, KeyframeSelector};
use submap::mapper::{Mapper, MapperConfig, MapperEvent, RequestKind};
use submap::prediction::{Predictor, WindowPrediction};
use submap::tum::StampedPose;

fn drain(mapper: &mut Mapper, predictor: &mut SimulatedPredictor) {
    while let Some(request) = mapper.next_request() {
        let answer = predictor.predict(&request.frames, request.neighbours.as_deref());
        mapper.complete(request.id, answer).expect("in step");
    }
}

/// Which way the planted answer is wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fooled {
    /// Honest answer (a true revisit).
    No,
    /// New frames posed like the old ones, own depth.
    RepeatedTexture,
    /// New frames answered with the old ones' pose and depth.
    LookAlike,
}

/// Answers a loop window `[m, m+1, q-1, q]` (old frames first) honestly or fooled.
fn answer(
    predictor: &mut SimulatedPredictor,
    request: &submap::mapper::Request,
    fooled: Fooled,
) -> WindowPrediction {
    let mut p = predictor.predict(&request.frames, None).expect("simulated");
    let n = p.frames.len();
    if fooled == Fooled::No || n < 2 {
        return p;
    }
    // The old frames come first; pair the newest with the oldest, and so on inwards.
    let old: Vec<_> = p.frames[..n / 2].to_vec();
    for (k, new) in p.frames[n / 2..].iter_mut().rev().enumerate() {
        let Some(twin) = old.get(k) else { break };
        new.cam_from_window = twin.cam_from_window;
        if fooled == Fooled::LookAlike {
            new.depth = twin.depth.clone();
            new.depth_conf = twin.depth_conf.clone();
        }
    }
    p
}

#[test]
fn planted_wrong_loops_are_rejected_and_a_true_one_is_not() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("revisits");
    let dir = render(
        &Trajectory::Path {
            kind: PathKind::Corridor,
            frames: 400,
        },
        &root,
        160,
        120,
    )
    .expect("render");
    let sim = SimConfig {
        preset: SimPreset::Vggt,
        ..SimConfig::default()
    };
    let mut predictor = SimulatedPredictor::from_tum_dir(&dir, sim).expect("simulated");
    let sequence = predictor.sequence().clone();
    let mut config = MapperConfig::default();
    config.backend.loops.enabled = false;
    let mut mapper = Mapper::new(config).expect("mapper");
    let mut selector = KeyframeSelector::new(KeyframeConfig::default());
    for i in 0..sequence.frames.len() {
        let frame = sequence.window_frame(i).expect("frame");
        if selector.push(&frame.image, frame.timestamp_s) == KeyframeDecision::Keyframe {
            mapper.push_keyframe(frame).expect("keyframe");
            drain(&mut mapper, &mut predictor);
        }
    }
    mapper.finish();
    drain(&mut mapper, &mut predictor);
    assert!(mapper.backend().loops().is_empty(), "loop search was off");

    // Keyframes with their true poses.
    let truth: Vec<(u64, StampedPose)> = mapper
        .backend()
        .trajectory()
        .iter()
        .map(|k| {
            let f = &sequence.frames[k.frame_id as usize];
            (
                k.frame_id,
                StampedPose {
                    timestamp_s: f.timestamp_s,
                    world_from_cam: f.world_from_cam.expect("ground truth"),
                },
            )
        })
        .collect();
    let n = sequence.frames.len() as f64;
    let find = |from: f64, to: f64, x: f64, heading: f64| -> u64 {
        truth
            .iter()
            .filter(|(id, _)| (from..to).contains(&(*id as f64 / n)))
            .min_by(|a, b| {
                let cost = |p: &StampedPose| {
                    let t = p.world_from_cam.translation.vector;
                    let z = p.world_from_cam.rotation * nalgebra::Vector3::z();
                    (t.x - x).abs() + (z.y.atan2(z.x) - heading).abs().min(1.0)
                };
                cost(&a.1).total_cmp(&cost(&b.1))
            })
            .map(|(id, _)| *id)
            .expect("a keyframe in range")
    };
    let pi = std::f64::consts::PI;
    // (query, match, what): the same heading 1 m and 2.2 m apart along the way out, and the same
    // spot on the way back facing the other way; each answered fooled both ways.
    let planted = [
        (
            find(0.2, 0.4, 2.0, 0.0),
            find(0.0, 0.2, 1.0, 0.0),
            "1 m apart",
        ),
        (
            find(0.25, 0.4, 2.8, 0.0),
            find(0.0, 0.15, 0.6, 0.0),
            "2.2 m apart",
        ),
        (
            find(0.6, 0.8, 1.5, pi),
            find(0.1, 0.3, 1.5, 0.0),
            "reversed",
        ),
    ];
    for (query, matched, what) in planted {
        for fooled in [Fooled::RepeatedTexture, Fooled::LookAlike] {
            let before = mapper.backend().trajectory_stamped();
            let update = check(&mut mapper, &mut predictor, query, matched, fooled);
            let LoopOutcome::Rejected(why) = &update.outcome else {
                panic!(
                    "{what}, {fooled:?} ({query} -> {matched}) was accepted: {:?}",
                    update.outcome
                )
            };
            println!("{what}, {fooled:?}: {query} -> {matched} rejected: {why}");
            assert!(
                !matches!(why, LoopRejection::Prediction(_)),
                "{what}: {why}"
            );
            assert_eq!(
                mapper.backend().trajectory_stamped(),
                before,
                "{what}: a rejected loop leaves the map as it was"
            );
        }
    }
    assert!(mapper.backend().loops().is_empty(), "no false loop");

    // The true revisit: the end of the run faces the way the start did, at the start.
    let (query, matched) = (find(0.93, 1.0, 0.0, 0.0), find(0.0, 0.05, 0.0, 0.0));
    let update = check(&mut mapper, &mut predictor, query, matched, Fooled::No);
    assert!(
        update.closure().is_some(),
        "true revisit {query} -> {matched}: {:?}",
        update.outcome
    );

    // Revisits proposed together: a verified one waits for the last queued check, then they are
    // closed in one solve. After a stop, a verified loop still waiting is closed by `abandon`.
    let revisit = |x: f64| (find(0.9, 1.0, x, 0.0), find(0.0, 0.1, x, 0.0));
    let propose = |mapper: &mut Mapper, pairs: [(u64, u64); 2]| {
        for (query, matched) in pairs {
            assert!(
                mapper.propose_loop(query, matched),
                "candidate {query} -> {matched}"
            );
        }
    };
    propose(&mut mapper, [revisit(0.15), revisit(0.3)]);
    let honest = |mapper: &mut Mapper, predictor: &mut SimulatedPredictor| {
        let request = mapper.next_request().expect("a loop check");
        let prediction = answer(predictor, &request, Fooled::No);
        mapper
            .complete(request.id, Ok(prediction))
            .expect("in step")
    };
    let waiting = honest(&mut mapper, &mut predictor);
    assert!(waiting.is_empty(), "verified, waiting: {waiting:?}");
    let closed = honest(&mut mapper, &mut predictor);
    assert_eq!(closed.len(), 2, "{closed:?}");
    let reports: Vec<_> = closed
        .iter()
        .map(|e| match e {
            MapperEvent::Loop(update) => {
                assert!(update.closure().is_some(), "{:?}", update.outcome);
                update.optimisation.as_ref().expect("solved").final_cost
            }
            other => panic!("a loop outcome expected, got {other:?}"),
        })
        .collect();
    assert_eq!(reports[0], reports[1], "one solve for both");
    // As the daemon runs: the next request goes out before a loop check's answer is processed
    // (verified); the last answer's processing closes the pair, both loops from one solve.
    propose(&mut mapper, [revisit(0.2), revisit(0.35)]);
    let first = mapper.next_request().expect("a loop check");
    let prediction = answer(&mut predictor, &first, Fooled::No);
    mapper.receive(first.id, Ok(prediction)).expect("in step");
    let second = mapper
        .next_request()
        .expect("the second check goes out before the first is verified");
    assert!(
        mapper.process().is_empty(),
        "verified, waiting for the check in flight"
    );
    let prediction = answer(&mut predictor, &second, Fooled::No);
    mapper.receive(second.id, Ok(prediction)).expect("in step");
    let loops_before = mapper.backend().loops().len();
    let closed = mapper.process();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed
        .iter()
        .all(|e| matches!(e, MapperEvent::Loop(u) if u.closure().is_some())));
    assert_eq!(mapper.backend().loops().len(), loops_before + 2);
    assert!(mapper.process().is_empty(), "nothing left to process");
    // An answer taken and not processed is processed before anything else changes the
    // back-end (a new proposal here), and its events come with the next call that returns
    // events.
    propose(&mut mapper, [revisit(0.25), revisit(0.4)]);
    let request = mapper.next_request().expect("a loop check");
    let prediction = answer(&mut predictor, &request, Fooled::No);
    assert!(mapper
        .complete(request.id, Ok(prediction))
        .expect("in step")
        .is_empty());
    let request = mapper.next_request().expect("a loop check");
    let prediction = answer(&mut predictor, &request, Fooled::No);
    mapper.receive(request.id, Ok(prediction)).expect("in step");
    let loops_before = mapper.backend().loops().len();
    propose(&mut mapper, [revisit(0.5), revisit(0.55)]);
    assert_eq!(
        mapper.backend().loops().len(),
        loops_before + 2,
        "closed before the proposal"
    );
    let closed = mapper.process();
    assert_eq!(closed.len(), 2, "the earlier pair's events: {closed:?}");
    let mut last_events = Vec::new();
    for _ in 0..2 {
        let request = mapper.next_request().expect("a loop check");
        let prediction = answer(&mut predictor, &request, Fooled::No);
        last_events = mapper
            .complete(request.id, Ok(prediction))
            .expect("in step");
    }
    assert_eq!(last_events.len(), 2, "{last_events:?}");

    propose(&mut mapper, [revisit(0.45), revisit(0.6)]);
    assert!(
        honest(&mut mapper, &mut predictor).is_empty(),
        "the first waits for the second"
    );
    let loops_before = mapper.backend().loops().len();
    let at_stop = mapper.abandon();
    assert_eq!(at_stop.len(), 1, "{at_stop:?}");
    assert_eq!(mapper.backend().loops().len(), loops_before + 1);
    assert!(
        mapper.next_request().is_none(),
        "the second check was dropped"
    );
    assert!(mapper.is_done());
}

/// Proposes `query -> matched`, answers its loop window (fooled or not) and returns the outcome.
fn check(
    mapper: &mut Mapper,
    predictor: &mut SimulatedPredictor,
    query: u64,
    matched: u64,
    fooled: Fooled,
) -> LoopUpdate {
    assert!(
        mapper.propose_loop(query, matched),
        "candidate {query} -> {matched}"
    );
    let request = mapper.next_request().expect("the loop check");
    assert!(matches!(request.kind, RequestKind::Loop { .. }));
    let prediction = answer(predictor, &request, fooled);
    let mut events = mapper
        .complete(request.id, Ok(prediction))
        .expect("in step");
    assert_eq!(events.len(), 1, "{events:?}");
    match events.pop() {
        Some(MapperEvent::Loop(update)) => update,
        other => panic!("a loop outcome expected, got {other:?}"),
    }
}
