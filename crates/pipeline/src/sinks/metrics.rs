//! `--metrics ADDR`: the run's figures as Prometheus text at `http://ADDR/metrics` (loopback
//! unless an address says otherwise), for health checks and dashboards of a long-running daemon:
//! frames, keyframes, windows, loops, frame rate, latency, memory, queue depths, each stage's busy
//! time and the predictor's idle time, updated after every step. `/health` answers `ok` while the run goes.

use std::sync::{Arc, Mutex};

use super::{Metrics, RunEnd, Sink, SinkError, SinkResult};

const NAME: &str = "metrics endpoint";

/// The address `--metrics` takes: `PORT` (on 127.0.0.1) or `HOST:PORT`.
pub fn parse_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let full = if text.chars().all(|c| c.is_ascii_digit()) {
        format!("127.0.0.1:{text}")
    } else {
        text.to_owned()
    };
    full.parse()
        .map_err(|_| format!("`{text}`: expected PORT or HOST:PORT, e.g. 9184 or 127.0.0.1:9184"))
}

#[derive(Debug, Default, Clone)]
struct Figures {
    metrics: Metrics,
    loops: u64,
    steps: u64,
}

/// The endpoint and the figures it serves.
pub struct MetricsSink {
    figures: Arc<Mutex<Figures>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsSink {
    /// Starts serving on `address` (an error when the port is taken).
    pub fn open(address: &str) -> Result<Self, SinkError> {
        let address = parse_address(address).map_err(|e| SinkError::new(NAME, e))?;
        let server = tiny_http::Server::http(address)
            .map_err(|e| SinkError::new(NAME, format!("cannot listen on {address}: {e}")))?;
        let server = Arc::new(server);
        let bound = server.server_addr().to_ip().unwrap_or(address);
        tracing::info!(url = %format!("http://{bound}/metrics"), "serving metrics");
        let figures = Arc::new(Mutex::new(Figures::default()));
        let thread = {
            let (server, figures) = (server.clone(), figures.clone());
            std::thread::Builder::new()
                .name("vggtd-metrics".into())
                .spawn(move || serve(&server, &figures))
                .map_err(|e| SinkError::new(NAME, e))?
        };
        Ok(Self {
            figures,
            server,
            thread: Some(thread),
        })
    }

    fn update(&self, change: impl FnOnce(&mut Figures)) {
        let mut figures = self.figures.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut figures);
    }
}

fn serve(server: &tiny_http::Server, figures: &Mutex<Figures>) {
    for request in server.incoming_requests() {
        let response = match request.url() {
            "/metrics" => {
                let text = exposition(&figures.lock().unwrap_or_else(|e| e.into_inner()));
                tiny_http::Response::from_string(text).with_header(
                    tiny_http::Header::from_bytes(
                        "Content-Type",
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                    .unwrap_or_else(|()| unreachable!("a valid header")),
                )
            }
            "/health" => tiny_http::Response::from_string("ok\n"),
            _ => tiny_http::Response::from_string("not found: try /metrics or /health\n")
                .with_status_code(404),
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "metrics client went away");
        }
    }
}

/// The Prometheus text exposition of the figures.
fn exposition(figures: &Figures) -> String {
    let m = &figures.metrics;
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        text.push_str(&format!(
            "# HELP vggtd_{name} {help}\n# TYPE vggtd_{name} {kind}\nvggtd_{name} {value}\n"
        ));
    };
    metric("frames_total", "counter", "Frames read.", m.frames as f64);
    metric(
        "keyframes_total",
        "counter",
        "Keyframes selected.",
        m.keyframes as f64,
    );
    metric(
        "windows_total",
        "counter",
        "Windows predicted and accepted.",
        m.windows as f64,
    );
    metric(
        "loops_total",
        "counter",
        "Loop closures accepted.",
        figures.loops as f64,
    );
    metric(
        "steps_total",
        "counter",
        "Back-end steps published.",
        figures.steps as f64,
    );
    metric(
        "frames_per_second",
        "gauge",
        "Frames read per second since the start.",
        m.fps,
    );
    metric(
        "latency_ms",
        "gauge",
        "Time from the last request to its publication, milliseconds.",
        m.latency_ms,
    );
    metric(
        "memory_mib",
        "gauge",
        "Resident memory of the process, MiB.",
        m.memory_mib(),
    );
    metric(
        "model_idle_seconds_total",
        "counter",
        "Time the predictor waited for its next request after answering one.",
        m.phase_times.model_idle_s,
    );
    metric(
        "input_wait_seconds_total",
        "counter",
        "Part of the predictor's wait in which the core waited for keyframes.",
        m.phase_times.input_wait_s,
    );
    let t = &m.phase_times;
    text.push_str("# HELP vggtd_stage_seconds_total Busy time of each stage on its thread.\n");
    text.push_str("# TYPE vggtd_stage_seconds_total counter\n");
    for (stage, seconds) in [
        ("ingest", t.ingest_s),
        ("keyframes", t.keyframe_s),
        ("windows", t.window_s),
        ("inference", t.inference_s),
        ("backend", t.backend_s),
        ("publish", t.publish_s),
    ] {
        text.push_str(&format!(
            "vggtd_stage_seconds_total{{stage=\"{stage}\"}} {seconds}\n"
        ));
    }
    text.push_str("# HELP vggtd_queue_depth Items waiting in a queue.\n");
    text.push_str("# TYPE vggtd_queue_depth gauge\n");
    for (queue, depth) in m.queues {
        text.push_str(&format!("vggtd_queue_depth{{queue=\"{queue}\"}} {depth}\n"));
    }
    text
}

impl Sink for MetricsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn loops(
        &mut self,
        edges: &[(nalgebra::Isometry3<f64>, nalgebra::Isometry3<f64>)],
    ) -> SinkResult {
        self.update(|f| f.loops = edges.len() as u64);
        Ok(())
    }

    fn metrics(&mut self, metrics: &Metrics) -> SinkResult {
        self.update(|f| {
            f.metrics = metrics.clone();
            f.steps += 1;
        });
        Ok(())
    }

    fn finish(&mut self, _end: &mut RunEnd<'_>) -> SinkResult {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Ok(())
    }
}

impl Drop for MetricsSink {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    fn get(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(address).expect("connects");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer
    }

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(
            parse_address("9184").expect("port"),
            "127.0.0.1:9184".parse().expect("address")
        );
        assert!(parse_address("localhost:x").is_err());
    }

    #[test]
    fn the_endpoint_serves_the_latest_figures() {
        let mut sink = MetricsSink::open("127.0.0.1:0").expect("listens");
        let address = sink.server.server_addr().to_ip().expect("an IP address");
        sink.metrics(&Metrics {
            frames: 120,
            windows: 3,
            queues: [("frames", 2), ("keyframes", 1), ("publish", 0)],
            phase_times: crate::outputs::PhaseTimes {
                inference_s: 4.5,
                model_idle_s: 0.25,
                ..Default::default()
            },
            ..Metrics::default()
        })
        .expect("update");
        let answer = get(address, "/metrics");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.contains("\nvggtd_frames_total 120\n"), "{answer}");
        assert!(answer.contains("\nvggtd_windows_total 3\n"), "{answer}");
        assert!(
            answer.contains("\nvggtd_model_idle_seconds_total 0.25\n"),
            "{answer}"
        );
        assert!(
            answer.contains("vggtd_stage_seconds_total{stage=\"inference\"} 4.5\n"),
            "{answer}"
        );
        assert!(
            answer.contains("vggtd_queue_depth{queue=\"frames\"} 2\n"),
            "{answer}"
        );
        assert!(get(address, "/health").ends_with("ok\n"));
        assert!(get(address, "/nope").starts_with("HTTP/1.0 404"));
        // A second endpoint on a taken port is an error, not a panic.
        let taken = MetricsSink::open(&address.to_string())
            .err()
            .expect("port taken");
        assert!(taken.to_string().contains("cannot listen"), "{taken}");
    }
}
