//! `--stats FILE`: one JSON line of the run's figures after every step (each window, each loop
//! check that changed the map), for watching a long run's memory and where its time goes.
//!
//! A line:
//! `{"step":12,"t_s":3.2,"frames":240,"keyframes":80,"windows":12,"loops":1,`
//! `"rss_bytes":…,"live_bytes":…,"live_floor_bytes":…,"map_bytes":…,"latency_ms":…,`
//! `"queues":{"frames":0,"keyframes":2,"publish":0},`
//! `"ms":{"ingest":…,"keyframes":…,"windows":…,"inference":…,"backend":…,"loops":…,`
//! `"overlapped":…,"model_idle":…,"input_wait":…,"publish":…},`
//! `"sink_ms":{"files":…,…}}`.
//! `ms` and `sink_ms` are the time spent since the previous line: each stage's busy time on its
//! own thread (`ingest` reads and decodes frames, `keyframes` selects them, `windows` assembles
//! windows, `backend` integrates answers, of which `loops` is loop checks and the pose graph and
//! `overlapped` the part done while the predictor worked on the next request, `publish` drives
//! the outputs, of which `sink_ms` is each output); `model_idle` is the time the predictor
//! waited for its next request after answering one, of which `input_wait` the core spent
//! waiting for keyframes with nothing to ask (so `model_idle - input_wait` is what the
//! daemon's own work held the model up). `live_bytes` is the
//! allocator's live heap (0 where the binary does not count it) when the line is written,
//! `live_floor_bytes` its lowest value since the previous line (what stayed allocated
//! throughout: a leak raises it, frames and scratch in flight in other stages do not),
//! `map_bytes` what the back-end
//! keeps for the map (bounded by `map.max_retained_mib`). The file is flushed after every line,
//! so it can be followed while the run goes; it is written in place, not with the outputs.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use super::{Metrics, Sink, SinkError, SinkResult};
use crate::outputs::PhaseTimes;

const NAME: &str = "stats";

/// Writes the lines.
pub struct StatsSink {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    steps: u64,
    last_phases: PhaseTimes,
    last_sinks: Vec<(&'static str, f64)>,
}

impl StatsSink {
    /// Creates (or truncates) `path`; an error when it cannot be written.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let file = std::fs::File::create(path)
            .map_err(|e| SinkError::new(NAME, format!("cannot write {}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_owned(),
            out: std::io::BufWriter::new(file),
            steps: 0,
            last_phases: PhaseTimes::default(),
            last_sinks: Vec::new(),
        })
    }

    /// The line for `m`, with the times since the previous one.
    fn line(&self, m: &Metrics) -> Value {
        let (now, was) = (&m.phase_times, &self.last_phases);
        let ms = |a: f64, b: f64| ((a - b) * 1e3).max(0.0);
        let mut sink_ms = Map::new();
        for (name, s) in &m.sink_s {
            let before = self
                .last_sinks
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, s)| *s);
            sink_ms.insert((*name).to_owned(), json!(ms(*s, before)));
        }
        let queues: Map<String, Value> = m
            .queues
            .iter()
            .map(|(name, depth)| ((*name).to_owned(), json!(depth)))
            .collect();
        json!({
            "step": self.steps + 1,
            "t_s": now.total_s,
            "frames": m.frames,
            "keyframes": m.keyframes,
            "windows": m.windows,
            "loops": m.loops,
            "rss_bytes": m.rss_bytes,
            "live_bytes": m.live_bytes,
            "live_floor_bytes": m.live_floor_bytes,
            "map_bytes": m.map_bytes,
            "latency_ms": m.latency_ms,
            "queues": queues,
            "ms": {
                "ingest": ms(now.ingest_s, was.ingest_s),
                "keyframes": ms(now.keyframe_s, was.keyframe_s),
                "windows": ms(now.window_s, was.window_s),
                "inference": ms(now.inference_s, was.inference_s),
                "backend": ms(now.backend_s, was.backend_s),
                "loops": ms(now.loops_s, was.loops_s),
                "overlapped": ms(now.overlapped_s, was.overlapped_s),
                "model_idle": ms(now.model_idle_s, was.model_idle_s),
                "input_wait": ms(now.input_wait_s, was.input_wait_s),
                "publish": ms(now.publish_s, was.publish_s),
            },
            "sink_ms": sink_ms,
        })
    }
}

impl Sink for StatsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn metrics(&mut self, metrics: &Metrics) -> SinkResult {
        let line = self.line(metrics);
        let write = |out: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            out.flush()
        };
        write(&mut self.out).map_err(|e| {
            SinkError::new(NAME, format!("cannot write {}: {e}", self.path.display()))
        })?;
        self.steps += 1;
        self.last_phases = metrics.phase_times.clone();
        self.last_sinks.clone_from(&metrics.sink_s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_holds_the_times_since_the_previous_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stats.jsonl");
        let mut sink = StatsSink::open(&path).expect("opens");
        let mut m = Metrics {
            windows: 1,
            map_bytes: 1000,
            live_bytes: 2000,
            live_floor_bytes: 1500,
            phase_times: PhaseTimes {
                backend_s: 0.5,
                total_s: 1.0,
                ..PhaseTimes::default()
            },
            sink_s: vec![("files", 0.25)],
            queues: [("frames", 0), ("keyframes", 3), ("publish", 0)],
            ..Metrics::default()
        };
        sink.metrics(&m).expect("first line");
        m.windows = 2;
        m.phase_times.backend_s = 0.75;
        m.sink_s = vec![("files", 0.5)];
        sink.metrics(&m).expect("second line");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["step"], 1);
        assert_eq!(lines[1]["windows"], 2);
        assert_eq!(lines[1]["map_bytes"], 1000);
        assert_eq!(lines[1]["live_bytes"], 2000);
        assert_eq!(lines[1]["live_floor_bytes"], 1500);
        let close = |v: &Value, want: f64| (v.as_f64().expect("number") - want).abs() < 1e-9;
        assert!(close(&lines[0]["ms"]["backend"], 500.0), "{}", lines[0]);
        assert!(close(&lines[1]["ms"]["backend"], 250.0), "{}", lines[1]);
        assert!(close(&lines[1]["sink_ms"]["files"], 250.0), "{}", lines[1]);
        assert_eq!(lines[1]["queues"]["keyframes"], 3);
    }

    #[test]
    fn an_unwritable_path_is_an_error_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = StatsSink::open(&dir.path().join("missing/stats.jsonl"))
            .err()
            .expect("an error");
        assert!(err.to_string().contains("missing/stats.jsonl"), "{err}");
    }
}
