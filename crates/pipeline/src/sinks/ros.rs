//! The ROS 2 topics of a run, for any transport that carries CDR messages (a rosbag2 MCAP file
//! with `--bag`; see [`RosWire`]).
//!
//! | topic | type | when | QoS |
//! |---|---|---|---|
//! | `<ns>/pose` | `geometry_msgs/msg/PoseStamped` | each keyframe when it is first known | reliable, volatile, depth 10 |
//! | `<ns>/path` | `nav_msgs/msg/Path` | the whole trajectory, after each step that added or moved a pose | reliable, volatile, depth 1 |
//! | `<ns>/map` | `sensor_msgs/msg/PointCloud2` | the whole map (x, y, z float32 + rgb) when it changed, at most every `map_period_s` of stream time, and at the end | reliable, transient local, depth 1 |
//! | `/tf` | `tf2_msgs/msg/TFMessage` | map -> camera with each new keyframe | reliable, volatile, depth 100 |
//! | `<ns>/depth` | `sensor_msgs/msg/Image` (32FC1) | the latest keyframe's depth | reliable, volatile, depth 1 |
//! | `<ns>/camera_info` | `sensor_msgs/msg/CameraInfo` | with each depth image, its pinhole intrinsics | reliable, volatile, depth 1 |
//!
//! Every stamp is the frame's capture time. Poses are the camera's in the map frame, which is the
//! first keyframe's camera frame (x right, y down, z forward, as the camera frame), in the
//! model's units unless metric scale is on. The map message holds at most `map_max_points`
//! points: past that, the kept submap clouds are thinned by half, so memory stays bounded too.

use std::collections::BTreeMap;

use nalgebra::{Matrix4, Point3};
use serde::Serialize;
use submap::prediction::Map2;

use super::{RunEnd, Sink, SinkError, SinkResult};
use crate::backend::{KeyframeView, SubmapCloud};
use crate::config::Ros2Config;
use crate::outputs::KeyframePose;
use crate::ros_msgs::{self, MessageType};

/// Quality of service a topic is offered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    /// Messages kept for late or slow readers (history keep-last).
    pub depth: u32,
    /// Late joiners get the last `depth` messages (transient local) instead of only new ones.
    pub transient_local: bool,
}

impl Qos {
    /// The profile as rosbag2's `offered_qos_profiles` YAML (reliable, automatic liveliness,
    /// default deadline, lifespan and lease).
    pub fn rosbag2_yaml(&self) -> String {
        // Enum values of rmw: history keep-last 1, reliability reliable 1, durability transient
        // local 1 / volatile 2, liveliness automatic 1; a zero duration is the default.
        let zero = "\n    sec: 0\n    nsec: 0";
        format!(
            "- history: 1\n  depth: {}\n  reliability: 1\n  durability: {}\n  deadline:{zero}\n  \
             lifespan:{zero}\n  liveliness: 1\n  liveliness_lease_duration:{zero}\n  \
             avoid_ros_namespace_conventions: false",
            self.depth,
            if self.transient_local { 1 } else { 2 }
        )
    }
}

/// One topic: its name, type and QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Full name, e.g. `/vggtd/pose`.
    pub name: String,
    /// Message type.
    pub kind: MessageType,
    /// Offered QoS.
    pub qos: Qos,
}

/// A transport for CDR messages: a rosbag2 file, a ROS 2 network.
pub trait RosWire: Send {
    /// Short name for messages.
    fn name(&self) -> &'static str;
    /// Sends `data` (CDR bytes with their encapsulation header) on `topic`, stamped `stamp_ns`
    /// nanoseconds since the epoch (a network transport hands the bytes on without a copy).
    fn publish(&mut self, topic: &Topic, stamp_ns: u64, data: Vec<u8>) -> Result<(), String>;
    /// Completes the transport (a file's index and footer).
    fn finish(&mut self) -> Result<(), String>;
}

/// The topics of a run (see the module's table).
#[derive(Debug, Clone)]
pub struct Topics {
    /// `<ns>/pose`.
    pub pose: Topic,
    /// `<ns>/path`.
    pub path: Topic,
    /// `<ns>/map`.
    pub map: Topic,
    /// `/tf`.
    pub tf: Topic,
    /// `<ns>/depth`.
    pub depth: Topic,
    /// `<ns>/camera_info`.
    pub camera_info: Topic,
}

impl Topics {
    /// The topics under `namespace` (`/` or a name such as `/vggtd`).
    pub fn new(namespace: &str) -> Self {
        let ns = namespace.trim_end_matches('/');
        let topic = |name: &str, kind, depth, transient_local| Topic {
            name: format!("{ns}/{name}"),
            kind,
            qos: Qos {
                depth,
                transient_local,
            },
        };
        Self {
            pose: topic("pose", ros_msgs::POSE_STAMPED, 10, false),
            path: topic("path", ros_msgs::PATH, 1, false),
            map: topic("map", ros_msgs::POINT_CLOUD2, 1, true),
            tf: Topic {
                name: "/tf".into(),
                kind: ros_msgs::TF_MESSAGE,
                qos: Qos {
                    depth: 100,
                    transient_local: false,
                },
            },
            depth: topic("depth", ros_msgs::IMAGE, 1, false),
            camera_info: topic("camera_info", ros_msgs::CAMERA_INFO, 1, false),
        }
    }

    /// Every topic, in the table's order.
    pub fn all(&self) -> [&Topic; 6] {
        [
            &self.pose,
            &self.path,
            &self.map,
            &self.tf,
            &self.depth,
            &self.camera_info,
        ]
    }
}

/// A submap's kept points, in its own frame.
#[derive(Debug, Default)]
struct KeptCloud {
    points: Vec<[f32; 3]>,
    colors: Vec<[u8; 3]>,
}

/// Publishes a run's topics through a [`RosWire`].
pub struct RosSink<W: RosWire> {
    wire: W,
    topics: Topics,
    map_frame: String,
    camera_frame: String,
    map_period_s: f64,
    map_max_points: usize,
    /// Stream time of the step, seconds.
    now_s: f64,
    clouds: BTreeMap<usize, KeptCloud>,
    placements: BTreeMap<usize, Matrix4<f64>>,
    /// Kept clouds hold every `thinning`-th point of what arrived.
    thinning: usize,
    kept_points: usize,
    map_changed: bool,
    last_map_s: Option<f64>,
    path_changed: bool,
}

impl<W: RosWire> std::fmt::Debug for RosSink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RosSink")
            .field("wire", &self.wire.name())
            .field("topics", &self.topics)
            .field("kept_points", &self.kept_points)
            .finish()
    }
}

impl<W: RosWire> RosSink<W> {
    /// Publishes through `wire` with the names and limits of `config`.
    pub fn new(wire: W, config: &Ros2Config) -> Self {
        Self {
            wire,
            topics: Topics::new(&config.namespace),
            map_frame: config.map_frame.clone(),
            camera_frame: config.camera_frame.clone(),
            map_period_s: config.map_period_s,
            map_max_points: config.map_max_points.max(1),
            now_s: 0.0,
            clouds: BTreeMap::new(),
            placements: BTreeMap::new(),
            thinning: 1,
            kept_points: 0,
            map_changed: false,
            last_map_s: None,
            path_changed: false,
        }
    }

    /// The topics it publishes.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    fn header(&self, stamp_s: f64, frame: &str) -> ros_msgs::Header {
        ros_msgs::Header {
            stamp: ros_msgs::Time::from_seconds(stamp_s),
            frame_id: frame.to_owned(),
        }
    }

    fn pose_stamped(&self, pose: &KeyframePose) -> ros_msgs::PoseStamped {
        ros_msgs::PoseStamped {
            header: self.header(pose.timestamp_s, &self.map_frame),
            pose: ros_msgs::Pose::from(&pose.world_from_cam),
        }
    }

    /// Keeps a new submap's cloud, thinning every kept cloud while they hold too many points.
    fn keep(&mut self, cloud: &SubmapCloud) {
        let kept = KeptCloud {
            points: cloud
                .points
                .iter()
                .step_by(self.thinning)
                .copied()
                .collect(),
            colors: cloud
                .colors
                .iter()
                .step_by(self.thinning)
                .copied()
                .collect(),
        };
        self.kept_points += kept.points.len();
        if let Some(old) = self.clouds.insert(cloud.submap, kept) {
            self.kept_points -= old.points.len();
        }
        while self.kept_points > self.map_max_points {
            self.thinning *= 2;
            self.kept_points = 0;
            for c in self.clouds.values_mut() {
                c.points = c.points.iter().step_by(2).copied().collect();
                c.colors = c.colors.iter().step_by(2).copied().collect();
                self.kept_points += c.points.len();
            }
        }
    }

    /// The kept clouds in the map frame.
    fn kept_map(&self) -> (Vec<Point3<f32>>, Vec<[u8; 3]>) {
        let mut points = Vec::with_capacity(self.kept_points);
        let mut colors = Vec::with_capacity(self.kept_points);
        for (submap, cloud) in &self.clouds {
            let Some(m) = self.placements.get(submap) else {
                continue;
            };
            // Row-major entries: the per-point product in plain arithmetic, which stays fast in
            // unoptimised builds too (hundreds of thousands of points every map message).
            let e: Vec<f32> = m.transpose().iter().map(|&v| v as f32).collect();
            for (&[x, y, z], c) in cloud.points.iter().zip(&cloud.colors) {
                let w = e[12] * x + e[13] * y + e[14] * z + e[15];
                let w = if w.abs() > f32::EPSILON { w } else { 1.0 };
                points.push(Point3::new(
                    (e[0] * x + e[1] * y + e[2] * z + e[3]) / w,
                    (e[4] * x + e[5] * y + e[6] * z + e[7]) / w,
                    (e[8] * x + e[9] * y + e[10] * z + e[11]) / w,
                ));
                colors.push(*c);
            }
        }
        (points, colors)
    }

    fn send_map(&mut self, points: &[Point3<f32>], colors: &[[u8; 3]]) -> SinkResult {
        let cloud = ros_msgs::PointCloud2::xyz_rgb(
            self.header(self.now_s, &self.map_frame),
            points,
            colors,
        );
        send(&mut self.wire, &self.topics.map, self.now_s, &cloud)?;
        self.last_map_s = Some(self.now_s);
        self.map_changed = false;
        Ok(())
    }
}

/// Sends `message` on `topic` through `wire`, stamped `stamp_s` (seconds).
fn send<T: Serialize>(
    wire: &mut impl RosWire,
    topic: &Topic,
    stamp_s: f64,
    message: &T,
) -> SinkResult {
    let name = wire.name();
    let data = ros_msgs::encode(message).map_err(|e| SinkError::new(name, e))?;
    let stamp = ros_msgs::Time::from_seconds(stamp_s).nanoseconds();
    wire.publish(topic, stamp, data)
        .map_err(|e| SinkError::new(name, format!("{}: {e}", topic.name)))
}

/// Every `n`-th point and colour, with `n` the smallest that keeps at most `max` points.
fn thin_to(
    points: &[Point3<f32>],
    colors: &[[u8; 3]],
    max: usize,
) -> (Vec<Point3<f32>>, Vec<[u8; 3]>) {
    let n = points.len().div_ceil(max.max(1)).max(1);
    (
        points.iter().step_by(n).copied().collect(),
        colors.iter().step_by(n).copied().collect(),
    )
}

impl<W: RosWire> Sink for RosSink<W> {
    fn name(&self) -> &'static str {
        self.wire.name()
    }

    fn set_time(&mut self, _frame_id: u64, timestamp_s: f64) {
        self.now_s = timestamp_s;
    }

    fn keyframe(&mut self, pose: &KeyframePose, _view: Option<&KeyframeView>) -> SinkResult {
        let stamped = self.pose_stamped(pose);
        let tf = ros_msgs::TfMessage {
            transforms: vec![ros_msgs::TransformStamped {
                header: stamped.header.clone(),
                child_frame_id: self.camera_frame.clone(),
                transform: stamped.pose,
            }],
        };
        send(
            &mut self.wire,
            &self.topics.pose,
            pose.timestamp_s,
            &stamped,
        )?;
        send(&mut self.wire, &self.topics.tf, pose.timestamp_s, &tf)?;
        self.path_changed = true;
        Ok(())
    }

    fn pose_moved(&mut self, _pose: &KeyframePose) -> SinkResult {
        self.path_changed = true;
        Ok(())
    }

    fn wants_clouds(&self) -> bool {
        true
    }

    fn submap(&mut self, cloud: &SubmapCloud) -> SinkResult {
        self.keep(cloud);
        self.map_changed = true;
        Ok(())
    }

    fn submap_placed(&mut self, submap: usize, world_from_submap: &Matrix4<f64>) -> SinkResult {
        self.placements.insert(submap, *world_from_submap);
        self.map_changed = true;
        Ok(())
    }

    fn trajectory(&mut self, poses: &[KeyframePose]) -> SinkResult {
        if self.path_changed {
            let path = ros_msgs::Path {
                header: self.header(self.now_s, &self.map_frame),
                poses: poses.iter().map(|p| self.pose_stamped(p)).collect(),
            };
            send(&mut self.wire, &self.topics.path, self.now_s, &path)?;
            self.path_changed = false;
        }
        let due = self
            .last_map_s
            .is_none_or(|last| self.now_s - last >= self.map_period_s);
        if self.map_changed && due {
            let (points, colors) = self.kept_map();
            self.send_map(&points, &colors)?;
        }
        Ok(())
    }

    fn current_frame(
        &mut self,
        pose: &KeyframePose,
        view: &KeyframeView,
        depth: &Map2<f32>,
    ) -> SinkResult {
        let (width, height) = (depth.width as u32, depth.height as u32);
        let header = self.header(pose.timestamp_s, &self.camera_frame);
        let Some(image) = ros_msgs::Image::depth(header.clone(), width, height, &depth.data) else {
            return Err(SinkError::new(
                self.wire.name(),
                format!(
                    "a depth map of {} values is not {width} x {height}",
                    depth.data.len()
                ),
            ));
        };
        // The depth is the prediction's, at the resolution of the view's intrinsics.
        let info = ros_msgs::CameraInfo::pinhole(header, width, height, &view.intrinsics);
        send(&mut self.wire, &self.topics.depth, pose.timestamp_s, &image)?;
        send(
            &mut self.wire,
            &self.topics.camera_info,
            pose.timestamp_s,
            &info,
        )
    }

    /// Publishes the final map (the one `map.ply` holds, thinned to `map_max_points`) and
    /// completes the transport.
    fn finish(&mut self, end: &mut RunEnd<'_>) -> SinkResult {
        let map = &end.map().map;
        let (points, colors) = thin_to(&map.points_in_world, &map.colors, self.map_max_points);
        if !points.is_empty() {
            self.send_map(&points, &colors)?;
        }
        let name = self.wire.name();
        self.wire.finish().map_err(|e| SinkError::new(name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Wire {
        sent: Vec<(String, u64, usize)>,
    }

    impl RosWire for Wire {
        fn name(&self) -> &'static str {
            "test wire"
        }
        fn publish(&mut self, topic: &Topic, stamp_ns: u64, data: Vec<u8>) -> Result<(), String> {
            self.sent.push((topic.name.clone(), stamp_ns, data.len()));
            Ok(())
        }
        fn finish(&mut self) -> Result<(), String> {
            Ok(())
        }
    }

    fn config(max_points: usize) -> Ros2Config {
        Ros2Config {
            map_max_points: max_points,
            ..Ros2Config::default()
        }
    }

    fn cloud(submap: usize, n: usize) -> SubmapCloud {
        SubmapCloud {
            submap,
            points: (0..n).map(|i| [i as f32, 0.0, 1.0]).collect(),
            colors: vec![[1, 2, 3]; n],
        }
    }

    #[test]
    fn topic_names_follow_the_namespace() {
        let t = Topics::new("/robot/vggtd");
        assert_eq!(t.pose.name, "/robot/vggtd/pose");
        assert_eq!(t.tf.name, "/tf");
        assert_eq!(Topics::new("/").map.name, "/map");
        assert!(t.map.qos.transient_local);
        assert!(t.map.qos.rosbag2_yaml().contains("durability: 1"));
        assert!(t.pose.qos.rosbag2_yaml().contains("durability: 2"));
    }

    #[test]
    fn kept_clouds_are_thinned_under_the_bound_and_placed_in_the_map() {
        let mut sink = RosSink::new(Wire::default(), &config(1000));
        for s in 0..4 {
            sink.submap(&cloud(s, 400)).expect("kept");
            sink.submap_placed(
                s,
                &Matrix4::new_translation(&nalgebra::Vector3::new(0.0, s as f64, 0.0)),
            )
            .expect("placed");
        }
        assert!(sink.kept_points <= 1000, "{}", sink.kept_points);
        assert_eq!(sink.thinning, 2);
        assert_eq!(sink.kept_points, 800);
        let (points, colors) = sink.kept_map();
        assert_eq!((points.len(), colors.len()), (800, 800));
        // Submap 3 sits one unit up per index; every other point survives.
        assert_eq!(points[600], Point3::new(0.0, 3.0, 1.0));
        assert_eq!(points[601], Point3::new(2.0, 3.0, 1.0));
    }

    #[test]
    fn the_map_is_sent_when_it_changed_at_most_once_a_period() {
        let mut sink = RosSink::new(Wire::default(), &Ros2Config::default());
        let period = sink.map_period_s;
        let maps_at = |sink: &mut RosSink<Wire>, t: f64, change: bool| {
            sink.set_time(0, t);
            if change {
                sink.submap(&cloud(0, 10)).expect("kept");
                sink.submap_placed(0, &Matrix4::identity()).expect("placed");
            }
            sink.trajectory(&[]).expect("sent");
            sink.wire
                .sent
                .iter()
                .filter(|s| s.0 == "/vggtd/map")
                .count()
        };
        assert_eq!(maps_at(&mut sink, 1.0, true), 1);
        assert_eq!(maps_at(&mut sink, 1.0 + period / 2.0, true), 1, "too soon");
        assert_eq!(
            maps_at(&mut sink, 1.0 + period, false),
            2,
            "changed before, now due"
        );
        assert_eq!(
            maps_at(&mut sink, 1.0 + 3.0 * period, false),
            2,
            "unchanged"
        );
    }

    #[test]
    fn thinning_a_final_map_keeps_at_most_the_bound() {
        let points: Vec<_> = (0..1001).map(|i| Point3::new(i as f32, 0.0, 0.0)).collect();
        let (p, c) = thin_to(&points, &[[0; 3]; 1001], 500);
        assert!(p.len() <= 500 && p.len() == c.len(), "{}", p.len());
        assert!(p.len() >= 250);
        let (p, _) = thin_to(&points[..400], &[[0; 3]; 400], 500);
        assert_eq!(p.len(), 400, "under the bound: every point");
    }
}
