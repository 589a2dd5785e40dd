//! The one synchronous core of the back-end: keyframes in, prediction requests out, predictions
//! back in, submaps, loops and the map updated.
//!
//! [`Mapper`] owns window assembly ([`WindowAssembler`]), the back-end ([`Backend`], with the one
//! covisibility graph every keyframe enters as it arrives, so attention lists of later windows
//! see loop edges), the metric-scale fit and the queue of loop checks. It never calls a
//! predictor itself: [`Mapper::next_request`] hands out one request at a time (a window, or the
//! small window of a loop candidate) and [`Mapper::complete`] takes its answer. Loop checks that
//! a window raised are asked for before the next window, so the order of requests, and with a
//! deterministic predictor every output, depends only on the input, never on thread timing.
//! A loop check that passes verification waits until no check is queued or in flight; the
//! loops that passed are then closed together ([`Backend::close_loops`]: one pose-graph solve
//! for a window's loops where they agree, one by one where they do not). `complete` is
//! [`Mapper::receive`] then [`Mapper::process`]: after a loop check's answer is received the next
//! request is ready at once, so a caller can keep the predictor busy while the check is verified
//! and the loops are solved; the back-end sees the same operations in the same order.
//! The daemon runs it on one thread and the predictor on another; [`crate::session::Session`]
//! runs both in one loop for tests and offline use.
//!
//! Error policy: a window whose prediction fails, is not finite, or that the back-end rejects is
//! reported as [`MapperEvent::WindowFailed`] and its new keyframes are dropped; the next window
//! overlaps the last good one. A loop check that fails is a rejected loop. Nothing stops the run.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::backend::{
    Backend, BackendConfig, BackendError, LoopCandidate, LoopCheck, LoopRejection, LoopUpdate,
    VerifiedLoop, WindowUpdate,
};
use crate::prediction::{PredictError, WindowFrame, WindowPrediction};
use crate::window::{PlannedWindow, WindowAssembler, WindowConfig, WindowError};

/// Where the metric scale comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricSource {
    /// None: the map has the first window's arbitrary scale.
    #[default]
    None,
    /// Each window's scale is fitted to the frames' depth-sensor images.
    Depth,
}

/// Fitting each window's scale to a depth sensor (`--metric-scale depth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricScaleConfig {
    /// `none` or `depth` (fit every window's scale to the frames' metric depth). Default
    /// `none`.
    pub source: MetricSource,
    /// Sensor readings below this are ignored, metres. Default 0.1.
    pub min_depth_m: f64,
    /// Sensor readings above this are ignored, metres. Default 8.
    pub max_depth_m: f64,
    /// Only predicted pixels whose confidence is at least this quantile of their frame's take
    /// part. Default 0.5.
    pub conf_quantile: f64,
    /// A window needs at least this fraction of its sampled pixels with a valid sensor reading;
    /// otherwise it keeps the previous window's scale. Default 0.05.
    pub min_valid_fraction: f64,
    /// Pixel stride of the sampling. Default 4.
    pub pixel_stride: usize,
}

impl MetricScaleConfig {
    /// True when windows are scaled to a depth sensor.
    pub fn enabled(&self) -> bool {
        self.source == MetricSource::Depth
    }
}

impl Default for MetricScaleConfig {
    fn default() -> Self {
        Self {
            source: MetricSource::None,
            min_depth_m: 0.1,
            max_depth_m: 8.0,
            conf_quantile: 0.5,
            min_valid_fraction: 0.05,
            pixel_stride: 4,
        }
    }
}

/// Settings of the core.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MapperConfig {
    /// Window geometry.
    pub window: WindowConfig,
    /// Back-end.
    pub backend: BackendConfig,
    /// When set, each frame of a window attends to itself and at most this many others chosen
    /// by the covisibility graph; `None` means dense attention.
    pub attention_k: Option<usize>,
    /// Metric scale from a depth sensor.
    pub metric_scale: MetricScaleConfig,
}

/// What the predictor is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// A window of keyframes, to become a submap.
    Window {
        /// Window index.
        index: usize,
    },
    /// The small window of a loop candidate.
    Loop {
        /// The new keyframe.
        query_frame: u64,
        /// The old keyframe.
        match_frame: u64,
    },
}

/// One prediction request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Identifies the answer in [`Mapper::complete`].
    pub id: u64,
    /// What it is for.
    pub kind: RequestKind,
    /// Frames to predict together.
    pub frames: Vec<WindowFrame>,
    /// Sparse-attention lists (indices into `frames`), `None` for dense attention.
    pub neighbours: Option<Vec<Vec<usize>>>,
}

/// Why a window did not become a submap.
#[derive(Debug)]
pub enum WindowFailure {
    /// The predictor failed.
    Prediction(PredictError),
    /// The prediction holds NaN or infinite values.
    NonFinite,
    /// The back-end rejected the prediction.
    Backend(BackendError),
}

impl std::fmt::Display for WindowFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Prediction(e) => write!(f, "{e}"),
            Self::NonFinite => write!(f, "the prediction has NaN/Inf values"),
            Self::Backend(e) => write!(f, "{e}"),
        }
    }
}

/// The metric scale a window got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricFit {
    /// Metres per window unit applied to the window.
    pub scale: f64,
    /// Pixels that took part.
    pub samples: usize,
    /// Why the previous window's scale was kept instead of a fit, if it was.
    pub fallback: Option<String>,
}

/// Something the core did.
#[derive(Debug)]
pub enum MapperEvent {
    /// A window became a submap.
    Window {
        /// Window index.
        index: usize,
        /// What the back-end changed.
        update: WindowUpdate,
        /// Its metric scale, with `--metric-scale depth`.
        metric: Option<MetricFit>,
    },
    /// A window was dropped.
    WindowFailed {
        /// Window index.
        index: usize,
        /// Its keyframes.
        frame_ids: Vec<u64>,
        /// Why.
        reason: WindowFailure,
    },
    /// A loop candidate was checked.
    Loop(LoopUpdate),
}

/// Error of the core's own bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    /// An answer arrived for a request that is not the one in flight.
    #[error("answer for request {got} but request {expected:?} is in flight")]
    UnexpectedAnswer {
        /// The id answered.
        got: u64,
        /// The id in flight.
        expected: Option<u64>,
    },
}

/// Counts of what happened, for summaries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapperStats {
    /// Windows that became submaps.
    pub windows: u64,
    /// Windows dropped.
    pub failed_windows: u64,
    /// Loop candidates checked.
    pub loop_checks: u64,
    /// Loops closed.
    pub loops: u64,
    /// Windows that kept the previous metric scale (no or too little sensor depth).
    pub metric_fallbacks: u64,
}

#[derive(Debug)]
enum InFlight {
    Window(PlannedWindow),
    Loop(LoopCandidate),
}

/// The synchronous core.
#[derive(Debug)]
pub struct Mapper {
    config: MapperConfig,
    assembler: WindowAssembler,
    backend: Backend,
    loop_queue: VecDeque<LoopCandidate>,
    /// Loops verified while more checks were queued or in flight, to be closed together.
    verified: Vec<VerifiedLoop>,
    /// Events of an answer processed by a call that returns none, for the next call that does.
    pending_events: Vec<MapperEvent>,
    /// An answer taken by [`Mapper::receive`] and not yet processed.
    received: Option<(InFlight, Result<WindowPrediction, PredictError>)>,
    in_flight: Option<(u64, InFlight)>,
    next_id: u64,
    ended: bool,
    metric_scale: Option<f64>,
    stats: MapperStats,
}

impl Mapper {
    /// A core with no keyframes yet.
    pub fn new(config: MapperConfig) -> Result<Self, WindowError> {
        let mut backend_config = config.backend.clone();
        backend_config.known_scale = config.metric_scale.enabled();
        Ok(Self {
            assembler: WindowAssembler::new(config.window)?,
            backend: Backend::new(backend_config),
            loop_queue: VecDeque::new(),
            verified: Vec::new(),
            pending_events: Vec::new(),
            received: None,
            in_flight: None,
            next_id: 0,
            ended: false,
            metric_scale: None,
            stats: MapperStats::default(),
            config,
        })
    }

    /// The back-end state.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Counts so far.
    pub fn stats(&self) -> &MapperStats {
        &self.stats
    }

    /// Adds a keyframe (in time order). Its thumbnail joins the covisibility graph at once; a
    /// featureless frame (a blank image) still joins its window but takes no part in retrieval.
    /// A frame id seen before is refused.
    pub fn push_keyframe(&mut self, frame: WindowFrame) -> Result<(), BackendError> {
        self.settle();
        match self.backend.add_keyframe(&frame) {
            Ok(()) | Err(BackendError::Covis(crate::covis::CovisError::BadDescriptor { .. })) => {
                self.assembler.push(frame);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// True while taking more keyframes keeps memory bounded: fewer than two windows' worth
    /// wait. Callers that can wait (file sources) hold keyframes back otherwise.
    pub fn wants_keyframes(&self) -> bool {
        self.assembler.pending() < 2 * self.config.window.size
    }

    /// No more keyframes: the keyframes still waiting get a last window.
    pub fn finish(&mut self) {
        self.ended = true;
    }

    /// Queues a loop check between two keyframes from a place recognition of the caller's own;
    /// false when either keyframe has no submap yet or both share one.
    pub fn propose_loop(&mut self, query_frame: u64, match_frame: u64) -> bool {
        self.settle();
        match self.backend.propose_loop(
            query_frame,
            match_frame,
            crate::backend::CandidateSource::External,
        ) {
            Some(candidate) => {
                self.loop_queue.push_back(candidate);
                true
            }
            None => false,
        }
    }

    /// Ends the stream without predicting what waits: keyframes not yet in a window and loop
    /// checks not yet asked for are dropped; the request in flight is still taken. Loops already
    /// verified are closed now (returned), or with the loop check in flight.
    pub fn abandon(&mut self) -> Vec<MapperEvent> {
        let mut events = self.process();
        self.ended = true;
        self.loop_queue.clear();
        self.assembler.discard_pending();
        events.extend(self.close_if_checks_done());
        events
    }

    /// Processes an answer taken and not processed before anything else changes the back-end,
    /// keeping its events for the next call that returns events.
    fn settle(&mut self) {
        let events = self.process();
        self.pending_events.extend(events);
    }

    /// True when the stream ended and every request was answered.
    pub fn is_done(&self) -> bool {
        self.ended
            && self.in_flight.is_none()
            && self.loop_queue.is_empty()
            && self.verified.is_empty()
            && self.pending_events.is_empty()
            && self.received.is_none()
            && self.assembler.pending() == 0
    }

    /// True while a request waits for its answer.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The next request, or `None` while one is in flight or nothing is ready. Loop checks go
    /// before the next window.
    pub fn next_request(&mut self) -> Option<Request> {
        // A window's answer decides the loop checks that go next; a loop check's answer
        // changes no request.
        if self.in_flight.is_some() || matches!(self.received, Some((InFlight::Window(_), _))) {
            return None;
        }
        let id = self.next_id;
        let request = if let Some(candidate) = self.loop_queue.pop_front() {
            let request = Request {
                id,
                kind: RequestKind::Loop {
                    query_frame: candidate.query_frame,
                    match_frame: candidate.match_frame,
                },
                frames: candidate.window.clone(),
                neighbours: None,
            };
            self.in_flight = Some((id, InFlight::Loop(candidate)));
            request
        } else {
            let window = match self.assembler.next_window() {
                Some(w) => w,
                None if self.ended => match self.assembler.flush() {
                    Some(w) => w,
                    None => {
                        // A single keyframe and no window before it: nothing to predict.
                        self.assembler.discard_pending();
                        return None;
                    }
                },
                None => return None,
            };
            let ids = window.frame_ids();
            let neighbours = self
                .config
                .attention_k
                .map(|k| self.backend.covisibility().neighbours_within(&ids, k));
            let request = Request {
                id,
                kind: RequestKind::Window {
                    index: window.index,
                },
                frames: window.frames.clone(),
                neighbours,
            };
            self.in_flight = Some((id, InFlight::Window(window)));
            request
        };
        self.next_id += 1;
        Some(request)
    }

    /// Takes the answer to the request in flight: [`Mapper::receive`], then
    /// [`Mapper::process`].
    pub fn complete(
        &mut self,
        id: u64,
        answer: Result<WindowPrediction, PredictError>,
    ) -> Result<Vec<MapperEvent>, MapperError> {
        self.receive(id, answer)?;
        Ok(self.process())
    }

    /// Takes the answer to the request in flight without processing it yet. After a loop
    /// check's answer, [`Mapper::next_request`] already gives the next request, so a caller can
    /// keep the predictor busy while [`Mapper::process`] verifies the loop; after a window's, the
    /// next request waits for the processing (it proposes the loop checks). Anything else that
    /// changes the back-end processes the answer first.
    pub fn receive(
        &mut self,
        id: u64,
        answer: Result<WindowPrediction, PredictError>,
    ) -> Result<(), MapperError> {
        let Some((expected, job)) = self.in_flight.take() else {
            return Err(MapperError::UnexpectedAnswer {
                got: id,
                expected: None,
            });
        };
        if expected != id {
            self.in_flight = Some((expected, job));
            return Err(MapperError::UnexpectedAnswer {
                got: id,
                expected: Some(expected),
            });
        }
        // An answer received and not processed before this one came (the caller sent the next
        // request first) is processed now, in order.
        self.settle();
        self.received = Some((job, answer));
        Ok(())
    }

    /// Processes the answer taken by [`Mapper::receive`]: a window becomes a submap and
    /// proposes loop checks; a loop check is verified, and once no check is queued or in flight
    /// the window's verified loops are closed together. Returns the events so far, in order;
    /// empty when nothing was received.
    pub fn process(&mut self) -> Vec<MapperEvent> {
        let mut events = std::mem::take(&mut self.pending_events);
        let Some((job, answer)) = self.received.take() else {
            return events;
        };
        events.extend(match job {
            // No verified loop waits here: loops are asked for before windows, and the last
            // check's answer closed them.
            InFlight::Window(window) => vec![self.complete_window(window, answer)],
            InFlight::Loop(candidate) => {
                self.stats.loop_checks += 1;
                let rejected = |e: &dyn std::fmt::Display| {
                    LoopCheck::Rejected(LoopUpdate::rejected(
                        &candidate,
                        LoopRejection::Prediction(e.to_string()),
                    ))
                };
                let check = match answer {
                    Err(e) => rejected(&e),
                    Ok(prediction) => self
                        .backend
                        .verify_loop(&candidate, prediction)
                        .unwrap_or_else(|e| rejected(&e)),
                };
                let mut events = Vec::new();
                match check {
                    LoopCheck::Verified(verified) => self.verified.push(verified),
                    LoopCheck::Rejected(update) => events.push(MapperEvent::Loop(update)),
                }
                events.extend(self.close_if_checks_done());
                events
            }
        });
        events
    }

    /// Closes the verified loops ([`Mapper::close_verified`]) unless a loop check is still
    /// queued or in flight (the caller may have sent the next one before processing this one).
    fn close_if_checks_done(&mut self) -> Vec<MapperEvent> {
        let checking =
            !self.loop_queue.is_empty() || matches!(self.in_flight, Some((_, InFlight::Loop(_))));
        if checking {
            Vec::new()
        } else {
            self.close_verified()
        }
    }

    /// Closes the loops verified so far ([`Backend::close_loops`]).
    fn close_verified(&mut self) -> Vec<MapperEvent> {
        if self.verified.is_empty() {
            return Vec::new();
        }
        let verified = std::mem::take(&mut self.verified);
        self.backend
            .close_loops(verified)
            .into_iter()
            .map(|update| {
                self.stats.loops += u64::from(update.closure().is_some());
                MapperEvent::Loop(update)
            })
            .collect()
    }

    fn complete_window(
        &mut self,
        window: PlannedWindow,
        answer: Result<WindowPrediction, PredictError>,
    ) -> MapperEvent {
        let failed = |index, frame_ids, reason| MapperEvent::WindowFailed {
            index,
            frame_ids,
            reason,
        };
        let index = window.index;
        let mut prediction = match answer {
            Ok(p) if p.is_finite() => p,
            Ok(_) => {
                self.stats.failed_windows += 1;
                return failed(index, window.frame_ids(), WindowFailure::NonFinite);
            }
            Err(e) => {
                self.stats.failed_windows += 1;
                return failed(index, window.frame_ids(), WindowFailure::Prediction(e));
            }
        };
        let metric = self
            .config
            .metric_scale
            .enabled()
            .then(|| self.apply_metric_scale(&window, &mut prediction));
        match self.backend.push_finite_window(prediction) {
            Ok(update) => {
                self.assembler.integrated(&window);
                self.stats.windows += 1;
                self.loop_queue
                    .extend(update.loop_candidates.iter().cloned());
                MapperEvent::Window {
                    index,
                    update,
                    metric,
                }
            }
            Err(e) => {
                self.stats.failed_windows += 1;
                failed(index, window.frame_ids(), WindowFailure::Backend(e))
            }
        }
    }

    /// Scales a window's prediction to metres from its frames' sensor depth (or with the last
    /// window's scale when it has too little).
    fn apply_metric_scale(
        &mut self,
        window: &PlannedWindow,
        prediction: &mut WindowPrediction,
    ) -> MetricFit {
        let fit = fit_metric_scale(&self.config.metric_scale, window, prediction);
        let (scale, samples, fallback) = match fit {
            Ok((scale, samples)) => {
                self.metric_scale = Some(scale);
                (scale, samples, None)
            }
            Err(why) => {
                self.stats.metric_fallbacks += 1;
                let why = match self.metric_scale {
                    Some(_) => format!("{why}: kept the previous window's scale"),
                    None => format!("{why}: no earlier scale either, window left unscaled"),
                };
                (self.metric_scale.unwrap_or(1.0), 0, Some(why))
            }
        };
        scale_prediction(prediction, scale);
        MetricFit {
            scale,
            samples,
            fallback,
        }
    }
}

/// Metres per window unit from the median ratio of sensor to predicted depth at confident
/// pixels; `Err` says why there is no fit.
fn fit_metric_scale(
    config: &MetricScaleConfig,
    window: &PlannedWindow,
    prediction: &WindowPrediction,
) -> Result<(f64, usize), String> {
    let mut ratios = Vec::new();
    let mut sampled = 0usize;
    let mut with_depth = 0usize;
    for f in &prediction.frames {
        let Some(sensor) = window
            .frames
            .iter()
            .find(|w| w.frame_id == f.frame_id)
            .and_then(|w| w.depth_m.as_ref())
        else {
            continue;
        };
        if sensor.width == 0 || sensor.height == 0 {
            continue;
        }
        with_depth += 1;
        let pixels = crate::map::confident_pixels(
            f,
            config.pixel_stride,
            config.conf_quantile.clamp(0.0, 1.0),
        );
        let (wp, hp) = (f.depth.width, f.depth.height);
        sampled += pixels.len();
        for (u, v, d, _) in pixels {
            // Pixel centres map proportionally between the two resolutions.
            let us = (((u as f64 + 0.5) * sensor.width as f64 / wp as f64) as usize)
                .min(sensor.width - 1);
            let vs = (((v as f64 + 0.5) * sensor.height as f64 / hp as f64) as usize)
                .min(sensor.height - 1);
            let ds = f64::from(sensor.at(us, vs));
            if ds.is_finite() && ds >= config.min_depth_m && ds <= config.max_depth_m {
                ratios.push(ds / d);
            }
        }
    }
    if with_depth == 0 {
        return Err("no frame of the window has sensor depth".into());
    }
    let needed = ((sampled as f64 * config.min_valid_fraction).ceil() as usize).max(10);
    if ratios.len() < needed {
        return Err(format!(
            "{} valid sensor depths, need {needed}",
            ratios.len()
        ));
    }
    let n = ratios.len();
    let scale = crate::align::median_in_place(&mut ratios);
    if scale.is_finite() && scale > 0.0 {
        Ok((scale, n))
    } else {
        Err("sensor and predicted depth do not give a positive scale".into())
    }
}

/// Multiplies every length of a prediction by `s`.
fn scale_prediction(prediction: &mut WindowPrediction, s: f64) {
    if s == 1.0 {
        return;
    }
    for f in &mut prediction.frames {
        f.cam_from_window.translation.vector *= s;
        f.depth.data.iter_mut().for_each(|d| *d *= s as f32);
        if let Some((points, _)) = f.points_in_window.as_deref_mut() {
            points
                .data
                .iter_mut()
                .for_each(|p| p.iter_mut().for_each(|x| *x *= s as f32));
        }
    }
}
