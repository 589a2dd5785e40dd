//! `--input ros2:///camera/image_raw`: a remote camera on the ROS 2 network, through the Zenoh
//! session of `[ros2]` (see [`crate::ros2`]). The topic carries `sensor_msgs/msg/Image` (rgb8,
//! bgr8, rgba8, bgra8, mono8, mono16), or `sensor_msgs/msg/CompressedImage` (jpeg, png) when its
//! name ends in `/compressed`, as `image_transport` names them. Frame times are the header stamps
//! (the arrival time when a camera sends zero stamps).
//!
//! A live source: the subscription keeps the newest few images and drops older ones when vggtd
//! falls behind, and the publisher is never slowed. The publishers' sequence numbers (rmw_zenoh's
//! attachment) tell how many images never reached vggtd, lost on the way or dropped from that
//! queue ([`FrameSource::missed`]). An image that does not decode is a corrupt
//! frame (warned, skipped). While no image arrives vggtd says why (after five seconds, then every
//! half minute): nobody publishes the topic (with the topics that are there), it is published
//! with another type or type hash, or no router is connected (retried in the background). The
//! stream ends when the run is stopped (Ctrl-C, `--max-frames`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hiroz::attachment::{Attachment, GidArray};
use hiroz::entity::{entity_get_endpoint, EndpointKind, TypeInfo};
use hiroz::msg::ZMessage;
use hiroz::{Builder, WithTypeInfo};
use hiroz_msgs::sensor_msgs;
use submap::prediction::WindowFrame;

use super::bag::{decode, ImageKind};
use super::{make_frame, FrameSource, SourceError};
use crate::config::Ros2Config;
use crate::ros2::{qos, Link};
use crate::ros_msgs::{COMPRESSED_IMAGE, IMAGE};

/// Images the subscription holds for a reader that fell behind (older ones are dropped).
const QUEUE: u32 = 4;
/// How long one wait for an image lasts before the stop flag is looked at again.
const POLL: Duration = Duration::from_millis(200);
/// Time without images before the first explanation.
const FIRST_QUIET: Duration = Duration::from_secs(5);
/// Time between two more explanations.
const QUIET: Duration = Duration::from_secs(30);

/// Waits up to the given time for the next message (its payload is the CDR bytes).
type Receive = Box<dyn Fn(Duration) -> Option<zenoh::sample::Sample> + Send>;

/// How a topic's name says its images travel.
fn kind_of(topic: &str) -> ImageKind {
    if topic.ends_with("/compressed") {
        ImageKind::Compressed
    } else {
        ImageKind::Raw
    }
}

/// Images of one ROS 2 topic.
pub struct Ros2Source {
    // Declared before the link: the subscription goes first.
    receive: Receive,
    link: Link,
    topic: String,
    kind: ImageKind,
    expected: TypeInfo,
    stop: Arc<AtomicBool>,
    next_id: u64,
    waiting_since: Instant,
    explained: Option<Instant>,
    zero_stamps_said: bool,
    gaps: SequenceGaps,
}

/// Images a subscription never received, from its publishers' sequence numbers, as the reader
/// sees them: after the subscription's queue (hiroz's own loss tracking looks on arrival, before
/// the queue, so it misses what the queue drops).
#[derive(Debug, Default)]
struct SequenceGaps {
    /// Highest sequence number seen from each publisher.
    last: HashMap<GidArray, i64>,
    /// Images skipped since [`SequenceGaps::take`].
    missed: u64,
}

impl SequenceGaps {
    /// Counts the images a message skipped since the last one from the same publisher. Only
    /// forward moves count: a number at or below the highest seen is a replay or a publisher
    /// that started again, not a loss, and a publisher's first message has nothing to compare
    /// with.
    fn observe(&mut self, publisher: GidArray, sequence: i64) {
        match self.last.get_mut(&publisher) {
            None => {
                self.last.insert(publisher, sequence);
            }
            Some(last) if sequence > *last => {
                let skipped = sequence.saturating_sub(*last).saturating_sub(1);
                self.missed = self.missed.saturating_add(skipped.unsigned_abs());
                *last = sequence;
            }
            Some(_) => {}
        }
    }

    /// The images skipped since the last call.
    fn take(&mut self) -> u64 {
        std::mem::take(&mut self.missed)
    }
}

impl std::fmt::Debug for Ros2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ros2Source")
            .field("topic", &self.topic)
            .field("link", &self.link)
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl Ros2Source {
    /// Subscribes to `topic` through the session of `config`; the stream ends once `stop` is
    /// set.
    pub fn open(
        topic: &str,
        config: &Ros2Config,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        let open_error = |reason: String| SourceError::Open {
            path: format!("ros2://{topic}").into(),
            reason,
        };
        let link = Link::open(config, "vggtd_input").map_err(open_error)?;
        let kind = kind_of(topic);
        let (receive, expected) = match kind {
            ImageKind::Raw => subscribe::<sensor_msgs::Image>(&link, topic),
            ImageKind::Compressed => subscribe::<sensor_msgs::CompressedImage>(&link, topic),
        }
        .map_err(|e| open_error(format!("cannot subscribe: {e}")))?;
        tracing::info!(
            topic,
            r#type = kind.type_name(),
            "ROS 2: waiting for images"
        );
        Ok(Self {
            receive,
            link,
            topic: topic.to_owned(),
            kind,
            expected,
            stop,
            next_id: 0,
            waiting_since: Instant::now(),
            explained: None,
            zero_stamps_said: false,
            gaps: SequenceGaps::default(),
        })
    }

    /// Says why no image arrived ([`FIRST_QUIET`] after the last one, then every [`QUIET`]).
    fn explain_silence(&mut self) {
        let now = Instant::now();
        let due = match self.explained {
            Some(last) => now.duration_since(last) >= QUIET,
            None => now.duration_since(self.waiting_since) >= FIRST_QUIET,
        };
        if !due {
            return;
        }
        self.explained = Some(now);
        let quiet_s = now.duration_since(self.waiting_since).as_secs();
        if !self.link.is_connected() {
            tracing::warn!(
                topic = %self.topic,
                quiet_s,
                "ROS 2: no image yet: no Zenoh router or peer is connected"
            );
            return;
        }
        let graph = self.link.node().graph();
        let publishers: Vec<TypeInfo> = graph
            .get_entities_by_topic(EndpointKind::Publisher, &self.topic)
            .iter()
            .filter_map(|e| entity_get_endpoint(e).and_then(|ep| ep.type_info.clone()))
            .collect();
        let others: Vec<String> = publishers
            .iter()
            .filter(|t| **t != self.expected)
            .map(|t| format!("{} ({})", ros_name(&t.name), t.hash.to_rihs_string()))
            .collect();
        if publishers.is_empty() {
            let mut topics: Vec<String> = graph
                .get_topic_names_and_types()
                .into_iter()
                .filter(|(name, _)| *name != self.topic)
                .map(|(name, ty)| format!("{name} ({})", ros_name(&ty)))
                .collect();
            topics.sort();
            tracing::warn!(
                topic = %self.topic,
                quiet_s,
                "ROS 2: no image yet: nobody publishes this topic; topics on the graph: {}",
                if topics.is_empty() {
                    "none".to_owned()
                } else {
                    topics.join(", ")
                }
            );
        } else if !others.is_empty() {
            tracing::warn!(
                topic = %self.topic,
                quiet_s,
                "ROS 2: no image yet: the topic is published as {}, and vggtd reads {} ({}) \
                 there ({} on topics ending in /compressed, {} on the others; a different hash \
                 is another ROS 2 distribution's definition)",
                others.join(", "),
                self.kind.type_name(),
                self.expected.hash.to_rihs_string(),
                COMPRESSED_IMAGE.name,
                IMAGE.name,
            );
        } else {
            tracing::warn!(
                topic = %self.topic,
                quiet_s,
                publishers = publishers.len(),
                "ROS 2: no image yet, though the topic has publishers of the right type"
            );
        }
    }

    /// The frame time of a message stamped `stamp_s` (the arrival time for zero stamps).
    fn frame_time(&mut self, stamp_s: f64) -> f64 {
        if stamp_s > 0.0 {
            return stamp_s;
        }
        if !self.zero_stamps_said {
            self.zero_stamps_said = true;
            tracing::warn!(
                topic = %self.topic,
                "the images carry zero header stamps: their frame times are their arrival times"
            );
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

/// A subscription to `topic` typed `T` (its key expression carries T's name and hash).
fn subscribe<T>(link: &Link, topic: &str) -> Result<(Receive, TypeInfo), String>
where
    T: ZMessage + WithTypeInfo + Send + Sync + 'static,
    T::Serdes: Send + 'static,
{
    let subscriber = link
        .node()
        .create_sub::<T>(topic)
        .with_qos(qos(QUEUE, false))
        .build()
        .map_err(|e| e.to_string())?;
    let receive: Receive =
        Box::new(move |timeout| subscriber.recv_serialized_timeout(timeout).ok());
    Ok((receive, T::type_info()))
}

/// A ROS 2 type name from its DDS form (`sensor_msgs::msg::dds_::Image_` ->
/// `sensor_msgs/msg/Image`); other forms unchanged.
fn ros_name(name: &str) -> String {
    match name.split_once("::dds_::") {
        Some((package, ty)) => format!(
            "{}/{}",
            package.replace("::", "/"),
            ty.strip_suffix('_').unwrap_or(ty)
        ),
        None => name.to_owned(),
    }
}

impl FrameSource for Ros2Source {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            let Some(sample) = (self.receive)(POLL) else {
                self.explain_silence();
                continue;
            };
            if let Some(a) = sample
                .attachment()
                .and_then(|a| Attachment::try_from(a).ok())
            {
                self.gaps.observe(a.source_gid, a.sequence_number);
            }
            // Decoded where the payload lies (one contiguous buffer for a whole message).
            let data = sample.payload().to_bytes();
            self.waiting_since = Instant::now();
            self.explained = None;
            let id = self.next_id;
            self.next_id += 1;
            return Some(match decode(self.kind, &data) {
                Ok((stamp_s, image)) => Ok(make_frame(id, self.frame_time(stamp_s), image)),
                Err(reason) => Err(SourceError::Corrupt {
                    what: format!("message {id} of {}", self.topic),
                    reason,
                }),
            });
        }
    }

    fn missed(&mut self) -> u64 {
        self.gaps.take()
    }

    fn is_live(&self) -> bool {
        true
    }

    fn len_hint(&self) -> Option<u64> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "ROS 2 topic {} ({}) over Zenoh",
            self.topic,
            self.kind.type_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_in_each_publishers_sequence_are_counted_once() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let mut gaps = SequenceGaps::default();
        for (publisher, sequence) in [(a, 5), (a, 6), (b, 100), (a, 9), (b, 101), (b, 104)] {
            gaps.observe(publisher, sequence);
        }
        // a skipped 7 and 8, b 102 and 103; the first message of each counts nothing.
        assert_eq!(gaps.take(), 4);
        assert_eq!(gaps.take(), 0, "taken once");
        // A replay, or a publisher numbering from the start again, is no loss.
        for sequence in [7, 3, 9, 10] {
            gaps.observe(a, sequence);
        }
        assert_eq!(gaps.take(), 0);
        gaps.observe(a, 12);
        assert_eq!(gaps.take(), 1);
    }

    #[test]
    fn topic_names_say_how_images_travel() {
        assert_eq!(kind_of("/camera/image_raw"), ImageKind::Raw);
        assert_eq!(
            kind_of("/camera/image_raw/compressed"),
            ImageKind::Compressed
        );
    }

    #[test]
    fn dds_type_names_read_as_ros_names() {
        assert_eq!(
            ros_name("sensor_msgs::msg::dds_::CompressedImage_"),
            "sensor_msgs/msg/CompressedImage"
        );
        assert_eq!(ros_name("sensor_msgs/msg/Image"), "sensor_msgs/msg/Image");
    }
}
