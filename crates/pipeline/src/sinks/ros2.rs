//! `--ros2 [ENDPOINT]` (`ros2.publish`): the topics of [`super::ros`] on the ROS 2 network, as a
//! node `vggtd` whose publishers `rmw_zenoh` nodes on the same Zenoh router receive with no
//! bridge (see [`crate::ros2`]). Every topic is declared when the run starts, so `ros2 topic
//! list` shows them before the first message; each message is the CDR that the bag gets too.

use std::collections::HashMap;

use hiroz::msg::ZMessage;
use hiroz::{Builder, WithTypeInfo};
use hiroz_msgs::{geometry_msgs, nav_msgs, sensor_msgs, tf2_msgs};

use super::ros::{RosSink, RosWire, Topic, Topics};
use super::SinkError;
use crate::config::Ros2Config;
use crate::ros2::{qos, Link};
use crate::ros_msgs;

const NAME: &str = "ros2";

/// Sends one message's CDR bytes.
type PublishFn = Box<dyn Fn(Vec<u8>) -> zenoh::Result<()> + Send>;

/// The publishers of a run's topics on one Zenoh session.
pub struct Ros2Wire {
    // Declared before the link: the publishers go first.
    publishers: HashMap<String, PublishFn>,
    link: Link,
}

/// Opens the session and declares every topic (before any frame is read, so a bad setting
/// stops the run at its start).
pub fn open(config: &Ros2Config) -> Result<RosSink<Ros2Wire>, SinkError> {
    let link = Link::open(config, "vggtd").map_err(|e| SinkError::new(NAME, e))?;
    let mut publishers = HashMap::new();
    for topic in Topics::new(&config.namespace).all() {
        let send = declare(&link, topic)
            .map_err(|e| SinkError::new(NAME, format!("cannot declare {}: {e}", topic.name)))?;
        publishers.insert(topic.name.clone(), send);
    }
    tracing::info!(
        namespace = %config.namespace,
        topics = publishers.len(),
        "ROS 2: publishing"
    );
    Ok(RosSink::new(Ros2Wire { publishers, link }, config))
}

/// A publisher of `topic`, typed by its message so that its key expression and liveliness
/// token carry the type's name and RIHS01 hash.
fn declare(link: &Link, topic: &Topic) -> Result<PublishFn, String> {
    match topic.kind.name {
        n if n == ros_msgs::POSE_STAMPED.name => typed::<geometry_msgs::PoseStamped>(link, topic),
        n if n == ros_msgs::PATH.name => typed::<nav_msgs::Path>(link, topic),
        n if n == ros_msgs::TF_MESSAGE.name => typed::<tf2_msgs::TFMessage>(link, topic),
        n if n == ros_msgs::POINT_CLOUD2.name => typed::<sensor_msgs::PointCloud2>(link, topic),
        n if n == ros_msgs::IMAGE.name => typed::<sensor_msgs::Image>(link, topic),
        n if n == ros_msgs::CAMERA_INFO.name => typed::<sensor_msgs::CameraInfo>(link, topic),
        other => Err(format!("no publisher for {other}")),
    }
}

fn typed<T>(link: &Link, topic: &Topic) -> Result<PublishFn, String>
where
    T: ZMessage + WithTypeInfo + 'static,
    T::Serdes: Send + 'static,
{
    let publisher = link
        .node()
        .create_pub::<T>(&topic.name)
        .with_qos(qos(topic.qos.depth, topic.qos.transient_local))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Box::new(move |data: Vec<u8>| {
        publisher.publish_serialized(data)
    }))
}

impl RosWire for Ros2Wire {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&mut self, topic: &Topic, _stamp_ns: u64, data: Vec<u8>) -> Result<(), String> {
        let send = self
            .publishers
            .get(&topic.name)
            .ok_or_else(|| format!("{} was not declared", topic.name))?;
        send(data).map_err(|e| e.to_string())
    }

    fn finish(&mut self) -> Result<(), String> {
        // Undeclared first (the graph sees the topics go), then the session closes, which
        // writes out what is still queued (the last path and map) before the run ends.
        self.publishers.clear();
        self.link.close()
    }
}
