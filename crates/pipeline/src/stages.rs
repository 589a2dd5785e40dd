//! The streaming stages and their channels.
//!
//! ```text
//! ingest -> keyframes -> windows -> inference -> back-end -> publish
//! ```
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
//! Later stages (windows, inference, back-end, publish) always block.
//!
//! Shutdown: the ingest stage polls the shared stop flag (set by SIGINT/SIGTERM) between frames and
//! then ends the stream; every later stage finishes what it holds, except that the window builder
//! abandons its partial window, so the run ends after at most the window in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};
use submap::prediction::{WindowFrame, WindowPrediction};

use crate::backend::{BackendStage, BackendStep, BuiltWindow, SharedPredictor, WindowBuilder};
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
    inference_ns: AtomicU64,
    backend_ns: AtomicU64,
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
            inference_s: s(&self.inference_ns),
            backend_s: s(&self.backend_ns),
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
    let _ = out.send(Flow::End);
    failure
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

/// A window of keyframes ready for the predictor.
#[derive(Debug, Clone)]
pub struct Window {
    /// Sequence number, from 0.
    pub index: u64,
    /// The keyframes, in capture order.
    pub frames: Vec<WindowFrame>,
    /// Per-frame neighbour lists for sparse attention (`None`: dense).
    pub neighbours: Option<Vec<Vec<usize>>>,
}

/// Groups keyframes into overlapping windows. At the end of the stream a partial window is
/// flushed unless the run was interrupted.
pub fn build_windows(
    mut builder: WindowBuilder,
    input: &Receiver<Flow<WindowFrame>>,
    out: &Sender<Flow<Window>>,
    stop: &AtomicBool,
) {
    let mut index = 0u64;
    let mut last_stamp = Instant::now();
    let mut emit = |window: Option<BuiltWindow>, stamp: Instant| {
        if let Some((frames, neighbours)) = window {
            tracing::debug!(window = index, frames = frames.len(), "window ready");
            let ok = out
                .send(Flow::Item(
                    Window {
                        index,
                        frames,
                        neighbours,
                    },
                    stamp,
                ))
                .is_ok();
            index += 1;
            return ok;
        }
        true
    };
    for message in input {
        match message {
            Flow::Item(frame, stamp) => {
                last_stamp = stamp;
                if !emit(builder.push(frame), stamp) {
                    return;
                }
            }
            Flow::End => break,
        }
    }
    if !stop.load(Ordering::Relaxed) {
        emit(builder.flush(), last_stamp);
    }
    let _ = out.send(Flow::End);
}

/// A prediction that passed the checks.
#[derive(Debug, Clone)]
pub struct Predicted {
    /// The window's sequence number.
    pub index: u64,
    /// The prediction.
    pub prediction: WindowPrediction,
}

/// Runs the predictor on each window; non-finite or failed predictions are rejected with a
/// warning. The predictor is locked per window (the back-end stage borrows it between windows
/// for loop verification).
pub fn infer(
    predictor: &SharedPredictor,
    input: &Receiver<Flow<Window>>,
    out: &Sender<Flow<Predicted>>,
    counters: &Counters,
) {
    for message in input {
        let (window, stamp) = match message {
            Flow::Item(window, stamp) => (window, stamp),
            Flow::End => break,
        };
        let span = tracing::debug_span!("window", index = window.index);
        let _guard = span.enter();
        let started = Instant::now();
        let result = {
            let mut predictor = predictor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            predictor.predict(&window.frames, window.neighbours.as_deref())
        };
        Counters::add_time(&counters.inference_ns, started);
        counters.windows_predicted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "predicted"
        );
        let prediction = match result {
            Ok(prediction) if prediction.is_finite() => prediction,
            Ok(_) => {
                counters.rejected_windows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    window = window.index,
                    "prediction has NaN/Inf values: window rejected"
                );
                continue;
            }
            Err(e) => {
                counters.rejected_windows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(window = window.index, error = %e, "predictor failed: window rejected");
                continue;
            }
        };
        if out
            .send(Flow::Item(
                Predicted {
                    index: window.index,
                    prediction,
                },
                stamp,
            ))
            .is_err()
        {
            return;
        }
    }
    let _ = out.send(Flow::End);
}

/// What the back-end stage hands to the publishers.
#[derive(Debug, Clone)]
pub struct Published {
    /// The window's sequence number.
    pub index: u64,
    /// What the back-end changed.
    pub step: BackendStep,
}

/// Feeds predictions to the back-end; returns it at the end of the stream for the outputs.
pub fn run_backend(
    mut backend: BackendStage,
    input: &Receiver<Flow<Predicted>>,
    out: &Sender<Flow<Published>>,
    counters: &Counters,
) -> BackendStage {
    for message in input {
        let (predicted, stamp) = match message {
            Flow::Item(predicted, stamp) => (predicted, stamp),
            Flow::End => break,
        };
        let started = Instant::now();
        let index = predicted.index;
        let step = backend.push(predicted.prediction);
        Counters::add_time(&counters.backend_ns, started);
        match step {
            Ok(step) => {
                counters.windows.fetch_add(1, Ordering::Relaxed);
                counters
                    .loops
                    .fetch_add(step.new_loops.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    window = index,
                    submap = step.submap,
                    new_poses = step.new_poses.len(),
                    moved = step.moved_poses.len(),
                    "integrated"
                );
                if out
                    .send(Flow::Item(Published { index, step }, stamp))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => {
                counters.rejected_windows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(window = index, error = %e, "back-end rejected the window");
            }
        }
    }
    let _ = out.send(Flow::End);
    backend
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use nalgebra::Isometry3;
    use submap::prediction::{FramePrediction, Intrinsics, Map2, PredictError, Predictor};

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
            let map = |v: f32| Map2 {
                width: 2,
                height: 2,
                data: vec![v; 4],
            };
            let frames = frames
                .iter()
                .map(|f| FramePrediction {
                    frame_id: f.frame_id,
                    timestamp_s: f.timestamp_s,
                    cam_from_window: Isometry3::identity(),
                    intrinsics: Intrinsics {
                        fx: 1.0,
                        fy: 1.0,
                        cx: 1.0,
                        cy: 1.0,
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

    fn run_windows(depth_value: f32, windows: u64) -> (Vec<Flow<Predicted>>, Counters) {
        let predictor: SharedPredictor =
            Arc::new(Mutex::new(Box::new(ConstantPredictor { depth_value })));
        let (windows_tx, windows_rx) = crossbeam_channel::bounded(4);
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let frame = WindowFrame {
            frame_id: 0,
            timestamp_s: 0.0,
            image: Arc::new(image::RgbImage::new(2, 2)),
        };
        for index in 0..windows {
            windows_tx
                .send(Flow::Item(
                    Window {
                        index,
                        frames: vec![frame.clone()],
                        neighbours: None,
                    },
                    Instant::now(),
                ))
                .expect("send");
        }
        windows_tx.send(Flow::End).expect("send end");
        let counters = Counters::default();
        infer(&predictor, &windows_rx, &out_tx, &counters);
        drop(out_tx);
        (out_rx.iter().collect(), counters)
    }

    #[test]
    fn non_finite_predictions_are_rejected_and_the_stream_goes_on() {
        let (out, counters) = run_windows(f32::NAN, 2);
        assert_eq!(out.len(), 1, "only End is forwarded");
        assert!(matches!(out[0], Flow::End));
        assert_eq!(counters.rejected_windows.load(Ordering::Relaxed), 2);
        let (out, counters) = run_windows(f32::INFINITY, 1);
        assert_eq!(
            (out.len(), counters.rejected_windows.load(Ordering::Relaxed)),
            (1, 1)
        );
    }

    #[test]
    fn finite_predictions_pass_in_order() {
        let (out, counters) = run_windows(1.5, 3);
        let indices: Vec<u64> = out
            .iter()
            .filter_map(|m| match m {
                Flow::Item(p, _) => Some(p.index),
                Flow::End => None,
            })
            .collect();
        assert_eq!(indices, [0, 1, 2]);
        assert!(matches!(out.last(), Some(Flow::End)));
        assert_eq!(counters.rejected_windows.load(Ordering::Relaxed), 0);
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
        let predictor: SharedPredictor = Arc::new(Mutex::new(Box::new(SlowPredictor {
            delay,
            seen: seen.clone(),
            inner: ConstantPredictor { depth_value: 1.0 },
        })));
        let camera = FastCamera {
            next: 0,
            count: FRAMES,
            interval: Duration::from_micros(500),
        };
        let builder = WindowBuilder::new(
            submap::window::WindowConfig::default(),
            &submap::backend::BackendConfig::default(),
            None,
        )
        .expect("window geometry");
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        // The default depths downstream of selection: a blocking chain would stall the camera.
        let (frames_tx, frames_rx) = crossbeam_channel::bounded(64);
        let (keyframes_tx, keyframes_rx) = crossbeam_channel::bounded(16);
        let (windows_tx, windows_rx) = crossbeam_channel::bounded(2);
        let (predicted_tx, predicted_rx) = crossbeam_channel::unbounded();

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
        let windows = {
            let stop = stop.clone();
            std::thread::spawn(move || build_windows(builder, &keyframes_rx, &windows_tx, &stop))
        };
        let inference = {
            let counters = counters.clone();
            std::thread::spawn(move || infer(&predictor, &windows_rx, &predicted_tx, &counters))
        };
        let (clean_end, camera_elapsed) = ingest.join().expect("ingest");
        select.join().expect("select");
        windows.join().expect("windows");
        inference.join().expect("inference");
        let predicted = predicted_rx
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
