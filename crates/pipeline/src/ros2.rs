//! The ROS 2 network: one Zenoh session laid out as `rmw_zenoh` lays out its nodes (key
//! expressions `<domain>/<topic>/<type>/<RIHS01 hash>`, liveliness tokens for the graph, the
//! attachment with sequence number, time and publisher id), through hiroz. The `--ros2` topics
//! ([`crate::sinks::Ros2Wire`]) and the `ros2://TOPIC` input ([`crate::source::Ros2Source`]) each
//! open one.
//!
//! The session is a peer that connects to `ros2.connect` (rmw_zenoh's router on this machine by
//! default) and retries in the background while nothing answers there, so vggtd can start
//! before the router and survives its restarts; a thread of the link says when the connection
//! goes and comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hiroz::context::{ZContext, ZContextBuilder};
use hiroz::node::ZNode;
use hiroz::qos::{QosDurability, QosHistory, QosProfile, QosReliability};
use hiroz::Builder;
use zenoh::{Session, Wait};

use crate::config::Ros2Config;

/// How long opening waits for a router or peer before going on without one.
const FIRST_CONTACT: Duration = Duration::from_secs(2);
/// Time between two looks at the connection.
const WATCH_PERIOD: Duration = Duration::from_millis(250);

/// An open Zenoh session with one ROS 2 node on it, and a thread that says when the router or
/// peer goes away and comes back.
pub struct Link {
    // The session closes when the last of its holders (node, context, publishers) goes.
    node: ZNode,
    context: ZContext,
    endpoints: String,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("endpoints", &self.endpoints)
            .field("domain_id", &self.context.domain_id())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Link {
    /// Opens the session of `config` with a node `node_name`, then waits up to two seconds for
    /// a router or peer to answer (it goes on without one, with a warning, and keeps trying:
    /// after 0.5 s, then twice as long each time up to 4 s, as after a lost connection).
    pub fn open(config: &Ros2Config, node_name: &str) -> Result<Self, String> {
        let endpoints = config.connect.join(", ");
        let mut builder = ZContextBuilder::default()
            .with_mode("peer")
            .disable_multicast_scouting()
            .with_connect_endpoints(config.connect.iter().cloned())
            .with_listen_endpoints(config.listen.iter().cloned())
            .with_json(
                "connect/retry",
                serde_json::json!({
                    "period_init_ms": 500,
                    "period_max_ms": 4000,
                    "period_increase_factor": 2.0,
                }),
            );
        if let Some(id) = config.domain_id {
            builder = builder.with_domain_id(id as usize);
        }
        let context = builder.build().map_err(|e| {
            format!(
                "cannot open a Zenoh session (connect [{endpoints}], listen [{}]): {e}",
                config.listen.join(", ")
            )
        })?;
        let node = context
            .create_node(node_name)
            .build()
            .map_err(|e| format!("cannot create the ROS 2 node {node_name}: {e}"))?;
        let session = node.session().clone();
        let deadline = Instant::now() + FIRST_CONTACT;
        while !connected(&session) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let up = connected(&session);
        if up {
            tracing::info!(
                connect = %endpoints,
                domain_id = context.domain_id(),
                "ROS 2: connected over Zenoh"
            );
        } else {
            tracing::warn!(
                connect = %endpoints,
                "ROS 2: no Zenoh router or peer answers yet (start one with `ros2 run \
                 rmw_zenoh_cpp rmw_zenohd`, or set ros2.connect); vggtd keeps trying"
            );
        }
        let connected_now = Arc::new(AtomicBool::new(up));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (connected_now, stop, endpoints) =
                (connected_now.clone(), stop.clone(), endpoints.clone());
            std::thread::Builder::new()
                .name("ros2-link".into())
                .spawn(move || watch(&session, &connected_now, &stop, &endpoints))
                .map_err(|e| format!("cannot start the connection watcher: {e}"))?
        };
        Ok(Self {
            node,
            context,
            endpoints,
            connected: connected_now,
            stop,
            watcher: Some(watcher),
        })
    }

    /// The node.
    pub fn node(&self) -> &ZNode {
        &self.node
    }

    /// Whether a router or a peer was connected at the last look.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Stops the watcher and closes the session, which first writes out what is still queued.
    pub fn close(&mut self) -> Result<(), String> {
        self.stop_watching();
        self.context
            .shutdown()
            .map_err(|e| format!("closing the Zenoh session: {e}"))
    }

    fn stop_watching(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop_watching();
    }
}

/// Whether a router or a peer is connected to `session` now.
fn connected(session: &Session) -> bool {
    let info = session.info();
    info.routers_zid().wait().next().is_some() || info.peers_zid().wait().next().is_some()
}

/// Looks at the connection every [`WATCH_PERIOD`] until `stop`, and says when it changes.
fn watch(session: &Session, up: &AtomicBool, stop: &AtomicBool, endpoints: &str) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(WATCH_PERIOD);
        let now = connected(session);
        if now == up.swap(now, Ordering::Relaxed) {
            continue;
        }
        if now {
            tracing::info!(connect = %endpoints, "ROS 2: connected over Zenoh");
        } else {
            tracing::warn!(
                connect = %endpoints,
                "ROS 2: lost the Zenoh router or peer; reconnecting in the background \
                 (messages until then are not delivered)"
            );
        }
    }
}

/// A reliable keep-last profile of `depth` messages, transient local (late joiners get them) or
/// volatile.
pub fn qos(depth: u32, transient_local: bool) -> QosProfile {
    QosProfile {
        reliability: QosReliability::Reliable,
        durability: if transient_local {
            QosDurability::TransientLocal
        } else {
            QosDurability::Volatile
        },
        history: QosHistory::KeepLast(
            std::num::NonZeroUsize::new(depth as usize).unwrap_or(std::num::NonZeroUsize::MIN),
        ),
        ..QosProfile::default()
    }
}
