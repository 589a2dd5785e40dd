//! The streaming stages and their channels.
//!
//! ```text
//! ingest -> keyframes -> core <-> inference
//!                          \-> publish
//! ```
//! The core stage (window assembly, alignment, loops, pose graph, map: one
//! [`submap::mapper::Mapper`]) hands the inference stage one request at a time, a window or a
//! loop check, and integrates each answer before the next, so the result depends only on the
//! input, never on thread timing.
//! Each stage is a named thread; stages are joined by bounded crossbeam channels whose depths come
//! from [`QueueConfig`](crate::config::QueueConfig). Every message is a [`Flow`]: items, then
//! exactly one `End`, after which the sender is dropped. Order is preserved end to end.
//!
//! Back-pressure, file sources ([`KeyframeOutput::Block`]): every stage blocks when the next queue
//! is full, so the source waits for inference and nothing is lost.
//!
//! Back-pressure, live sources ([`KeyframeOutput::Backlog`]): the camera is never blocked, and
//! dropping happens behind keyframe selection, not in front of it:
//! - ingest hands frames to keyframe selection with a non-blocking send; a frame is dropped there
//!   (counted in [`Counters::dropped_frames`]) only when selection itself, which is cheap, cannot
//!   keep up with the camera. Selection never waits for inference, so it sees every frame it has
//!   the time to look at.
//! - keyframe selection never blocks on the window builder: keyframes that cannot be forwarded
//!   yet wait, in capture order, in a backlog of at most `capacity` keyframes, which is drained as
//!   soon as the window builder takes them. Non-keyframes are discarded by selection as usual.
//! - guarantee: as long as the backlog does not overflow, every keyframe selected reaches the
//!   window builder, in order. When inference is so far behind that the backlog is full, the
//!   oldest waiting keyframe is dropped to make room for the newest (counted in
//!   [`Counters::dropped_keyframes`], with a warning), so memory stays bounded and the map keeps
//!   following the camera.
//!
//! Later stages (core, inference, publish) always block.
//!
//! Shutdown: the ingest stage polls the shared stop flag (set by SIGINT/SIGTERM) between frames and
//! then ends the stream; the core drops the keyframes and loop checks that wait, so the run ends
//! after at most the request in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};
use submap::mapper::{Request, RequestKind};
use submap::prediction::{PredictError, Predictor, WindowFrame, WindowPrediction};

use crate::backend::{BackendStep, CoreStage};
use crate::outputs::PhaseTimes;
use crate::source::{FrameSource, Pacer, SourceError};

/// A message between stages: items, then one `End`.
#[derive(Debug)]
pub enum Flow<T> {
    /// One item, stamped with the wall time it entered the pipeline.
    Item(T, Instant),
    /// No more items.
    End,
}

/// Counters shared by all stages (read by the publisher and the summary).
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames read from the source (after stride), corrupt ones included.
    pub frames: AtomicU64,
    /// Corrupt frames skipped.
    pub corrupt_frames: AtomicU64,
    /// Frames dropped by a live source because keyframe selection could not keep up.
    pub dropped_frames: AtomicU64,
    /// Frames sent to vggtd that never reached it (a network source's sequence gaps).
    pub missed_frames: AtomicU64,
    /// Keyframes dropped from a full live backlog (inference far behind).
    pub dropped_keyframes: AtomicU64,
    /// Keyframes selected.
    pub keyframes: AtomicU64,
    /// Windows sent to the predictor.
    pub windows_predicted: AtomicU64,
    /// Windows accepted by the back-end.
    pub windows: AtomicU64,
    /// Windows rejected (non-finite or failed).
    pub rejected_windows: AtomicU64,
    /// Loop closures.
    pub loops: AtomicU64,
    ingest_ns: AtomicU64,
    keyframe_ns: AtomicU64,
    window_ns: AtomicU64,
    inference_ns: AtomicU64,
    backend_ns: AtomicU64,
    loops_ns: AtomicU64,
    overlapped_ns: AtomicU64,
    model_idle_ns: AtomicU64,
    input_wait_ns: AtomicU64,
    publish_ns: AtomicU64,
}

impl Counters {
    fn add_time(slot: &AtomicU64, since: Instant) {
        slot.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Per-phase wall times so far.
    pub fn phase_times(&self, total: Duration) -> PhaseTimes {
        let s = |slot: &AtomicU64| slot.load(Ordering::Relaxed) as f64 * 1e-9;
        PhaseTimes {
            ingest_s: s(&self.ingest_ns),
            keyframe_s: s(&self.keyframe_ns),
            window_s: s(&self.window_ns),
            inference_s: s(&self.inference_ns),
            backend_s: s(&self.backend_ns),
            loops_s: s(&self.loops_ns),
            overlapped_s: s(&self.overlapped_ns),
            model_idle_s: s(&self.model_idle_ns),
            input_wait_s: s(&self.input_wait_ns),
            publish_s: s(&self.publish_ns),
            total_s: total.as_secs_f64(),
        }
    }

    /// Adds publisher time.
    pub fn add_publish_time(&self, since: Instant) {
        Self::add_time(&self.publish_ns, since);
    }
}

/// Settings of the ingest stage.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Drop instead of blocking when the frame queue is full.
    pub drop_when_full: bool,
    /// Pace at the recorded rate.
    pub realtime: bool,
    /// Keep one frame in `stride`.
    pub stride: u64,
    /// Stop after this many frames (0: all).
    pub max_frames: u64,
}

/// Runs the source until its end, the frame limit or the stop flag. Returns the error that ended
/// the stream early, if any.
pub fn ingest(
    mut source: Box<dyn FrameSource>,
    settings: &IngestSettings,
    out: &Sender<Flow<WindowFrame>>,
    stop: &AtomicBool,
    counters: &Counters,
    progress: &indicatif::ProgressBar,
) -> Option<SourceError> {
    let mut pacer = Pacer::new();
    let mut missed = MissedFrames::default();
    let name = source.describe();
    let mut index = 0u64;
    let mut kept = 0u64;
    let mut failure = None;
    loop {
        if stop.load(Ordering::Relaxed) || (settings.max_frames > 0 && kept >= settings.max_frames)
        {
            break;
        }
        let started = Instant::now();
        let item = source.next_frame();
        Counters::add_time(&counters.ingest_ns, started);
        missed.add(source.missed(), counters, &name);
        let Some(item) = item else { break };
        index += 1;
        progress.inc(1);
        if !(index - 1).is_multiple_of(settings.stride) {
            continue;
        }
        let frame = match item {
            Ok(frame) => frame,
            Err(SourceError::Corrupt { what, reason }) => {
                kept += 1;
                counters.frames.fetch_add(1, Ordering::Relaxed);
                counters.corrupt_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%what, %reason, "corrupt frame skipped");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "input ended with an error; keeping what was processed");
                failure = Some(e);
                break;
            }
        };
        kept += 1;
        counters.frames.fetch_add(1, Ordering::Relaxed);
        if settings.realtime {
            pacer.wait_for(frame.timestamp_s);
        }
        tracing::trace!(
            frame_id = frame.frame_id,
            timestamp_s = frame.timestamp_s,
            "frame"
        );
        let message = Flow::Item(frame, Instant::now());
        if settings.drop_when_full {
            if let Err(crossbeam_channel::TrySendError::Full(_)) = out.try_send(message) {
                counters.dropped_frames.fetch_add(1, Ordering::Relaxed);
            }
        } else if out.send(message).is_err() {
            break;
        }
    }
    missed.add(source.missed(), counters, &name);
    missed.warn(counters, &name);
    let _ = out.send(Flow::End);
    failure
}

/// Frames a source says never reached vggtd: counted, and warned at most every
/// [`MissedFrames::PERIOD`] with how many since the last warning.
#[derive(Debug, Default)]
struct MissedFrames {
    unreported: u64,
    warned: Option<Instant>,
}

impl MissedFrames {
    const PERIOD: Duration = Duration::from_secs(10);

    /// Counts `n` more, and warns when the last warning is [`MissedFrames::PERIOD`] old.
    fn add(&mut self, n: u64, counters: &Counters, source: &str) {
        if n == 0 {
            return;
        }
        counters.missed_frames.fetch_add(n, Ordering::Relaxed);
        self.unreported += n;
        if self.warned.is_none_or(|t| t.elapsed() >= Self::PERIOD) {
            self.warn(counters, source);
        }
    }

    /// Warns about the frames not reported yet, if any.
    fn warn(&mut self, counters: &Counters, source: &str) {
        if self.unreported == 0 {
            return;
        }
        tracing::warn!(
            missed = self.unreported,
            total = counters.missed_frames.load(Ordering::Relaxed),
            "{source}: frames never reached vggtd (lost on the network, or dropped before vggtd \
             read them while it read too slowly)"
        );
        self.unreported = 0;
        self.warned = Some(Instant::now());
    }
}

/// How keyframe selection hands keyframes to the window builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeOutput {
    /// Block until the window builder takes the keyframe (file sources: lose nothing).
    Block,
    /// Never block: keyframes wait in a backlog of at most `capacity` keyframes (live sources).
    Backlog {
        /// Most keyframes waiting for the window builder; at least 1.
        capacity: usize,
    },
}

/// Keyframe backlog of a live run: enough for minutes of slow inference at usual keyframe rates,
/// while the images it holds stay within a few hundred MiB.
pub const LIVE_KEYFRAME_BACKLOG: usize = 256;

/// Keyframe selection: forwards the frames the selector keeps, in order, as `output` says.
///
/// With [`KeyframeOutput::Backlog`] the stage waits on its input and on room in `out` at once,
/// so a slow window builder never stops it from reading frames. At the end of the stream the
/// backlog is handed over in full (blocking), unless `stop` is set: an interrupted run abandons
/// it so that shutdown waits for at most the window in flight.
pub fn select_keyframes(
    mut is_keyframe: impl FnMut(&WindowFrame) -> bool,
    output: KeyframeOutput,
    input: &Receiver<Flow<WindowFrame>>,
    out: &Sender<Flow<WindowFrame>>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let capacity = match output {
        KeyframeOutput::Block => 0,
        KeyframeOutput::Backlog { capacity } => capacity.max(1),
    };
    let mut backlog: VecDeque<(WindowFrame, Instant)> = VecDeque::new();
    loop {
        let message = if backlog.is_empty() {
            match input.recv() {
                Ok(message) => message,
                Err(_) => Flow::End,
            }
        } else {
            let mut select = Select::new();
            let recv_index = select.recv(input);
            let send_index = select.send(out);
            let operation = select.select();
            if operation.index() == send_index {
                let Some((frame, stamp)) = backlog.pop_front() else {
                    unreachable!("the backlog is not empty")
                };
                if operation.send(out, Flow::Item(frame, stamp)).is_err() {
                    return;
                }
                continue;
            }
            debug_assert_eq!(operation.index(), recv_index);
            operation.recv(input).unwrap_or(Flow::End)
        };
        let (frame, stamp) = match message {
            Flow::Item(frame, stamp) => (frame, stamp),
            Flow::End => break,
        };
        let started = Instant::now();
        let keep = is_keyframe(&frame);
        Counters::add_time(&counters.keyframe_ns, started);
        if !keep {
            continue;
        }
        counters.keyframes.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(frame_id = frame.frame_id, "keyframe");
        if capacity == 0 {
            if out.send(Flow::Item(frame, stamp)).is_err() {
                return;
            }
            continue;
        }
        if backlog.is_empty() {
            match out.try_send(Flow::Item(frame, stamp)) {
                Ok(()) => continue,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(Flow::Item(frame, stamp))) => {
                    backlog.push_back((frame, stamp))
                }
                Err(TrySendError::Full(Flow::End)) => unreachable!("an item was sent"),
            }
        } else {
            backlog.push_back((frame, stamp));
        }
        if backlog.len() > capacity {
            if let Some((dropped, _)) = backlog.pop_front() {
                counters.dropped_keyframes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    frame_id = dropped.frame_id,
                    capacity,
                    "inference is far behind: oldest waiting keyframe dropped"
                );
            }
        }
    }
    if stop.load(Ordering::Relaxed) {
        if !backlog.is_empty() {
            tracing::info!(
                keyframes = backlog.len(),
                "interrupted: waiting keyframes abandoned"
            );
        }
    } else {
        for (frame, stamp) in backlog {
            if out.send(Flow::Item(frame, stamp)).is_err() {
                return;
            }
        }
    }
    let _ = out.send(Flow::End);
}

/// An answered request: its id and the predictor's answer.
pub type Answer = (u64, Result<WindowPrediction, PredictError>);

/// Runs the predictor on each request (a window, or the small window of a loop check), in the
/// order the core hands them out, and sends the answers back.
pub fn infer(
    mut predictor: Box<dyn Predictor>,
    input: &Receiver<Request>,
    out: &Sender<Answer>,
    counters: &Counters,
) {
    // Set once an answer went out: from then until the next request the predictor is idle.
    let mut idle_since: Option<Instant> = None;
    for request in input {
        if let Some(since) = idle_since.take() {
            Counters::add_time(&counters.model_idle_ns, since);
        }
        let span = tracing::debug_span!("request", id = request.id);
        let _guard = span.enter();
        let started = Instant::now();
        let answer = predictor.predict(&request.frames, request.neighbours.as_deref());
        Counters::add_time(&counters.inference_ns, started);
        if matches!(request.kind, RequestKind::Window { .. }) {
            counters.windows_predicted.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            kind = ?request.kind,
            frames = request.frames.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "predicted"
        );
        if out.send((request.id, answer)).is_err() {
            return;
        }
        idle_since = Some(Instant::now());
    }
}

/// What the core stage hands to the publishers.
#[derive(Debug, Clone)]
pub struct Published {
    /// Requests answered so far.
    pub index: u64,
    /// What the back-end changed.
    pub step: BackendStep,
}

/// The core stage: takes keyframes, hands one prediction request at a time to the inference
/// stage, integrates each answer, and publishes what changed. Returns the core at the end of
/// the stream for the outputs.
///
/// File sources lose nothing: keyframes are taken only while the core wants them (at most two
/// windows' worth wait), so the chain blocks behind inference. After a stop signal the core
/// drops what waits and ends once the request in flight is answered.
pub fn run_core(
    mut core: CoreStage,
    keyframes: &Receiver<Flow<WindowFrame>>,
    requests: Sender<Request>,
    answers: &Receiver<Answer>,
    out: &Sender<Flow<Published>>,
    stop: &AtomicBool,
    counters: &Counters,
) -> CoreStage {
    let mut input_open = true;
    let mut answered = 0u64;
    let mut last_stamp = Instant::now();
    // Sends a step to the publish stage; false once that stage is gone.
    let publish = |answered: u64, step: BackendStep, stamp: Instant| {
        out.send(Flow::Item(
            Published {
                index: answered,
                step,
            },
            stamp,
        ))
        .is_ok()
    };
    // Hands the core's next request, if one is ready, to the inference stage: `Some(sent)`, or
    // `None` once that stage is gone.
    let send_next = |core: &mut CoreStage| -> Option<bool> {
        let planning = Instant::now();
        let next = core.next_request();
        Counters::add_time(&counters.window_ns, planning);
        let Some(request) = next else {
            return Some(false);
        };
        if requests.send(request).is_err() {
            tracing::error!("inference stage ended early");
            return None;
        }
        Some(true)
    };
    loop {
        if stop.load(Ordering::Relaxed) && input_open {
            // Let the stream end upstream; nothing new is planned from here on.
            if let Some(step) = core.abandon() {
                if !publish(answered, step, last_stamp) {
                    break;
                }
            }
        }
        if send_next(&mut core).is_none() {
            break;
        }
        let in_flight = core.mapper().in_flight();
        if !input_open && !in_flight {
            break;
        }
        let mut select = Select::new();
        let answer_index = in_flight.then(|| select.recv(answers));
        let take_keyframes = input_open && (core.mapper().wants_keyframes() || !in_flight);
        let keyframe_index = take_keyframes.then(|| select.recv(keyframes));
        if answer_index.is_none() && keyframe_index.is_none() {
            break;
        }
        // With nothing in flight after the first answer, the predictor idles while the core
        // waits here for keyframes: that part of its idle time is the input's, not the core's.
        let waiting = Instant::now();
        let operation = select.select();
        if !in_flight && answered > 0 {
            Counters::add_time(&counters.input_wait_ns, waiting);
        }
        if Some(operation.index()) == answer_index {
            let Ok((id, answer)) = operation.recv(answers) else {
                tracing::error!("inference stage ended early");
                break;
            };
            answered += 1;
            let started = Instant::now();
            let loop_check = core.loop_in_flight();
            if let Err(e) = core.receive(id, answer) {
                tracing::error!(error = %e, "core out of step with the inference stage");
                break;
            }
            // After a loop check's answer the next request is ready before the check is
            // verified (the core decides): it goes out first, so the predictor works while the
            // check is verified and a window's loops are solved.
            let Some(sent_early) = send_next(&mut core) else {
                break;
            };
            let processing = Instant::now();
            let step = core.process();
            if sent_early {
                Counters::add_time(&counters.overlapped_ns, processing);
            }
            Counters::add_time(&counters.backend_ns, started);
            if loop_check {
                Counters::add_time(&counters.loops_ns, started);
            }
            let stats = core.mapper().stats();
            counters.windows.store(stats.windows, Ordering::Relaxed);
            counters
                .rejected_windows
                .store(stats.failed_windows, Ordering::Relaxed);
            counters.loops.store(stats.loops, Ordering::Relaxed);
            if let Some(step) = step {
                if !publish(answered, step, last_stamp) {
                    break;
                }
            }
        } else {
            match operation.recv(keyframes) {
                Ok(Flow::Item(frame, stamp)) => {
                    last_stamp = stamp;
                    let started = Instant::now();
                    core.push_keyframe(frame);
                    Counters::add_time(&counters.backend_ns, started);
                }
                Ok(Flow::End) | Err(_) => {
                    input_open = false;
                    if stop.load(Ordering::Relaxed) {
                        if let Some(step) = core.abandon() {
                            if !publish(answered, step, last_stamp) {
                                break;
                            }
                        }
                    } else {
                        core.finish();
                    }
                }
            }
        }
    }
    drop(requests);
    let _ = out.send(Flow::End);
    core
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use nalgebra::Isometry3;
    use submap::prediction::{FramePrediction, Intrinsics, Map2};

    use super::*;

    /// Answers every window with one frame whose depth holds `depth_value`.
    struct ConstantPredictor {
        depth_value: f32,
    }

    impl Predictor for ConstantPredictor {
        fn predict(
            &mut self,
            frames: &[WindowFrame],
            _: Option<&[Vec<usize>]>,
        ) -> Result<WindowPrediction, PredictError> {
            // Enough pixels for the back-end's 50-point alignments at stride 4.
            let map = |v: f32| Map2 {
                width: 40,
                height: 40,
                data: vec![v; 1600],
            };
            let frames = frames
                .iter()
                .map(|f| FramePrediction {
                    frame_id: f.frame_id,
                    timestamp_s: f.timestamp_s,
                    cam_from_window: Isometry3::identity(),
                    intrinsics: Intrinsics {
                        fx: 40.0,
                        fy: 40.0,
                        cx: 19.5,
                        cy: 19.5,
                    },
                    depth: map(self.depth_value),
                    depth_conf: map(2.0),
                    points_in_window: None,
                    image: f.image.clone(),
                })
                .collect();
            Ok(WindowPrediction {
                frames,
                label: "constant".into(),
            })
        }

        fn name(&self) -> &str {
            "constant"
        }
    }

    /// Runs ingest-free core + inference over `keyframes` frames with `predictor`.
    fn run_chain(predictor: Box<dyn Predictor>, keyframes: u64) -> (Vec<Published>, Counters) {
        run_chain_with(predictor, keyframes, true, Duration::ZERO)
    }

    /// [`run_chain`], with the submap clouds on or off, the keyframes arriving `gap` apart
    /// (all at once when zero).
    fn run_chain_with(
        predictor: Box<dyn Predictor>,
        keyframes: u64,
        clouds: bool,
        gap: Duration,
    ) -> (Vec<Published>, Counters) {
        let mut core = CoreStage::new(
            submap::mapper::MapperConfig {
                window: submap::window::WindowConfig {
                    size: 3,
                    overlap: 1,
                },
                ..Default::default()
            },
            0.01,
        )
        .expect("window geometry");
        core.set_clouds(clouds);
        let (keyframes_tx, keyframes_rx) = crossbeam_channel::unbounded();
        let source = std::thread::spawn(move || {
            for frame_id in 0..keyframes {
                std::thread::sleep(gap);
                let frame = WindowFrame {
                    frame_id,
                    timestamp_s: frame_id as f64,
                    image: Arc::new(image::RgbImage::from_fn(8, 8, |x, y| {
                        image::Rgb([(x * 30 + frame_id as u32 * 7) as u8, (y * 30) as u8, 9])
                    })),
                    depth_m: None,
                };
                keyframes_tx
                    .send(Flow::Item(frame, Instant::now()))
                    .expect("send");
            }
            keyframes_tx.send(Flow::End).expect("send end");
        });
        let counters = Arc::new(Counters::default());
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(1);
        let (answers_tx, answers_rx) = crossbeam_channel::bounded(1);
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let inference = {
            let counters = counters.clone();
            std::thread::spawn(move || infer(predictor, &requests_rx, &answers_tx, &counters))
        };
        let stop = AtomicBool::new(false);
        run_core(
            core,
            &keyframes_rx,
            requests_tx,
            &answers_rx,
            &out_tx,
            &stop,
            &counters,
        );
        inference.join().expect("inference");
        source.join().expect("source");
        drop(out_tx);
        let published = out_rx
            .iter()
            .filter_map(|m| match m {
                Flow::Item(p, _) => Some(p),
                Flow::End => None,
            })
            .collect();
        let counters = Arc::try_unwrap(counters).unwrap_or_else(|_| panic!("threads ended"));
        (published, counters)
    }

    #[test]
    fn non_finite_predictions_are_rejected_and_the_stream_goes_on() {
        // 7 keyframes in windows of 3 sharing 1, every answer NaN: a failed window has no
        // frames to share, so the next takes 3 new ones: 0-2 and 3-5; 6 alone is no window.
        let (out, counters) = run_chain(
            Box::new(ConstantPredictor {
                depth_value: f32::NAN,
            }),
            7,
        );
        assert!(out.is_empty(), "nothing to publish");
        assert_eq!(counters.windows_predicted.load(Ordering::Relaxed), 2);
        assert_eq!(counters.rejected_windows.load(Ordering::Relaxed), 2);
        assert_eq!(counters.windows.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn finite_predictions_pass_in_order() {
        let (out, counters) = run_chain(Box::new(ConstantPredictor { depth_value: 1.5 }), 7);
        let submaps: Vec<usize> = out
            .iter()
            .filter_map(|p| p.step.new_submap.as_ref().map(|c| c.submap))
            .collect();
        assert_eq!(submaps, [0, 1, 2]);
        assert_eq!(counters.rejected_windows.load(Ordering::Relaxed), 0);
        assert_eq!(counters.windows.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_predictor_waiting_for_keyframes_is_counted_as_the_inputs_wait() {
        // Keyframes 60 ms apart, windows of 3 sharing 1: after each answer the core waits
        // ~120 ms for the next window's two keyframes with nothing to ask. The constant
        // predictor answers at once and the core's own work is well under a millisecond, so
        // nearly all of the predictor's idle time is the input's.
        let (_, counters) = run_chain_with(
            Box::new(ConstantPredictor { depth_value: 1.5 }),
            9,
            false,
            Duration::from_millis(60),
        );
        assert_eq!(counters.windows.load(Ordering::Relaxed), 4);
        let t = counters.phase_times(Duration::ZERO);
        // Three waits between four windows.
        assert!(t.model_idle_s >= 3.0 * 0.1, "{t:?}");
        assert!(t.input_wait_s <= t.model_idle_s, "{t:?}");
        assert!(t.input_wait_s >= 0.9 * t.model_idle_s, "{t:?}");
        // Everything ready at once: no wait for the input.
        let (_, counters) = run_chain(Box::new(ConstantPredictor { depth_value: 1.5 }), 9);
        let t = counters.phase_times(Duration::ZERO);
        assert!(t.input_wait_s < 0.05, "{t:?}");
    }

    #[test]
    fn clouds_are_computed_only_when_asked_for() {
        let clouds = |on: bool| -> Vec<(usize, usize, Vec<u64>)> {
            let (out, _) = run_chain_with(
                Box::new(ConstantPredictor { depth_value: 1.5 }),
                7,
                on,
                Duration::ZERO,
            );
            out.iter()
                .filter_map(|p| {
                    let c = p.step.new_submap.as_ref()?;
                    let poses = p.step.new_poses.iter().map(|k| k.frame_id).collect();
                    Some((c.submap, c.points.len(), poses))
                })
                .collect()
        };
        let (on, off) = (clouds(true), clouds(false));
        assert_eq!(on.len(), 3);
        assert!(on.iter().all(|(_, n, _)| *n > 0), "{on:?}");
        assert!(off.iter().all(|(_, n, _)| *n == 0), "{off:?}");
        // Everything else about the steps is the same.
        let strip = |v: &[(usize, usize, Vec<u64>)]| -> Vec<(usize, Vec<u64>)> {
            v.iter().map(|(s, _, p)| (*s, p.clone())).collect()
        };
        assert_eq!(strip(&on), strip(&off));
    }

    /// A camera that hands out frames at a fixed short interval and never waits for anyone;
    /// it records how long the whole stream took.
    struct FastCamera {
        next: u64,
        count: u64,
        interval: Duration,
    }

    impl FrameSource for FastCamera {
        fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
            if self.next == self.count {
                return None;
            }
            std::thread::sleep(self.interval);
            let frame = WindowFrame {
                frame_id: self.next,
                timestamp_s: self.next as f64 * self.interval.as_secs_f64(),
                image: Arc::new(image::RgbImage::new(2, 2)),
                depth_m: None,
            };
            self.next += 1;
            Some(Ok(frame))
        }

        fn is_live(&self) -> bool {
            true
        }

        fn len_hint(&self) -> Option<u64> {
            None
        }

        fn describe(&self) -> String {
            "fast fake camera".into()
        }
    }

    /// Sleeps per window and records the frame ids it was asked about.
    struct SlowPredictor {
        delay: Duration,
        seen: Arc<Mutex<Vec<u64>>>,
        inner: ConstantPredictor,
    }

    impl Predictor for SlowPredictor {
        fn predict(
            &mut self,
            frames: &[WindowFrame],
            neighbours: Option<&[Vec<usize>]>,
        ) -> Result<WindowPrediction, PredictError> {
            std::thread::sleep(self.delay);
            self.seen
                .lock()
                .expect("lock")
                .extend(frames.iter().map(|f| f.frame_id));
            self.inner.predict(frames, neighbours)
        }

        fn name(&self) -> &str {
            "slow"
        }
    }

    #[test]
    fn live_source_with_slow_inference_loses_no_keyframe_and_never_waits() {
        const FRAMES: u64 = 400;
        const KEYFRAME_EVERY: u64 = 4;
        let delay = Duration::from_millis(60);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let predictor: Box<dyn Predictor> = Box::new(SlowPredictor {
            delay,
            seen: seen.clone(),
            inner: ConstantPredictor { depth_value: 1.0 },
        });
        let camera = FastCamera {
            next: 0,
            count: FRAMES,
            interval: Duration::from_micros(500),
        };
        let mut config = submap::mapper::MapperConfig::default();
        config.backend.loops.enabled = false;
        let core = CoreStage::new(config, 0.01).expect("window geometry");
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        // The default depths downstream of selection: a blocking chain would stall the camera.
        let (frames_tx, frames_rx) = crossbeam_channel::bounded(64);
        let (keyframes_tx, keyframes_rx) = crossbeam_channel::bounded(16);
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(1);
        let (answers_tx, answers_rx) = crossbeam_channel::bounded(1);
        let (published_tx, published_rx) = crossbeam_channel::unbounded();

        let started = Instant::now();
        let ingest = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                let settings = IngestSettings {
                    drop_when_full: true,
                    realtime: false,
                    stride: 1,
                    max_frames: 0,
                };
                let failure = ingest(
                    Box::new(camera),
                    &settings,
                    &frames_tx,
                    &stop,
                    &counters,
                    &indicatif::ProgressBar::hidden(),
                );
                (failure.is_none(), started.elapsed())
            })
        };
        let select = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                select_keyframes(
                    |frame| frame.frame_id.is_multiple_of(KEYFRAME_EVERY),
                    KeyframeOutput::Backlog {
                        capacity: LIVE_KEYFRAME_BACKLOG,
                    },
                    &frames_rx,
                    &keyframes_tx,
                    &stop,
                    &counters,
                )
            })
        };
        let core = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                run_core(
                    core,
                    &keyframes_rx,
                    requests_tx,
                    &answers_rx,
                    &published_tx,
                    &stop,
                    &counters,
                )
            })
        };
        let inference = {
            let counters = counters.clone();
            std::thread::spawn(move || infer(predictor, &requests_rx, &answers_tx, &counters))
        };
        let (clean_end, camera_elapsed) = ingest.join().expect("ingest");
        select.join().expect("select");
        core.join().expect("core");
        inference.join().expect("inference");
        let predicted = published_rx
            .iter()
            .filter(|m| matches!(m, Flow::Item(..)))
            .count();

        assert!(clean_end);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(load(&counters.frames), FRAMES);
        assert_eq!(load(&counters.dropped_frames), 0, "selection kept up");
        assert_eq!(load(&counters.dropped_keyframes), 0);
        let expected: Vec<u64> = (0..FRAMES).step_by(KEYFRAME_EVERY as usize).collect();
        assert_eq!(load(&counters.keyframes), expected.len() as u64);
        let mut seen = seen.lock().expect("lock").clone();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, expected, "every keyframe reached the predictor");
        // 100 keyframes in windows of 8 sharing 2: at least 16 windows of 60 ms each. The camera
        // finished long before inference did, so it never waited for it.
        assert!(predicted >= 16, "{predicted} windows");
        let inference_time = delay * predicted as u32;
        assert!(
            camera_elapsed * 2 < inference_time,
            "camera took {camera_elapsed:?} while inference needed {inference_time:?}"
        );
    }

    #[test]
    fn a_full_live_backlog_drops_its_oldest_keyframes() {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (in_tx, in_rx) = crossbeam_channel::unbounded();
        let (out_tx, out_rx) = crossbeam_channel::bounded(1);
        for frame_id in 0..10 {
            let frame = WindowFrame {
                frame_id,
                timestamp_s: frame_id as f64,
                image: Arc::new(image::RgbImage::new(2, 2)),
                depth_m: None,
            };
            in_tx.send(Flow::Item(frame, Instant::now())).expect("send");
        }
        in_tx.send(Flow::End).expect("send end");
        let stage = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::spawn(move || {
                select_keyframes(
                    |_| true,
                    KeyframeOutput::Backlog { capacity: 3 },
                    &in_rx,
                    &out_tx,
                    &stop,
                    &counters,
                )
            })
        };
        // Nobody reads until every frame went through selection: 0 sits in the channel, the
        // backlog keeps the 3 newest.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.dropped_keyframes.load(Ordering::Relaxed) < 6 {
            assert!(Instant::now() < deadline, "selection stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        let ids: Vec<Option<u64>> = out_rx
            .iter()
            .map(|m| match m {
                Flow::Item(frame, _) => Some(frame.frame_id),
                Flow::End => None,
            })
            .collect();
        stage.join().expect("stage");
        assert_eq!(ids, [Some(0), Some(7), Some(8), Some(9), None]);
        assert_eq!(counters.keyframes.load(Ordering::Relaxed), 10);
        assert_eq!(counters.dropped_keyframes.load(Ordering::Relaxed), 6);
    }
}
