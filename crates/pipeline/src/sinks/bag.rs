//! `--bag FILE` (`output.bag`): the ROS 2 topics of [`super::ros`] in a rosbag2 MCAP file (profile
//! `ros2`, CDR messages, `ros2msg` schemas, each channel's offered QoS), which `ros2 bag play`,
//! Foxglove and the rosbags library read. Chunks are zstd-compressed; the file gets its index
//! and summary at the end of the run, and a run that dies leaves the messages written so far in
//! a file that `mcap recover` repairs.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::ros::{RosSink, RosWire, Topic};
use super::SinkError;
use crate::config::Ros2Config;

const NAME: &str = "rosbag2";

/// A rosbag2 MCAP file being written.
pub struct BagWire {
    path: PathBuf,
    writer: Option<mcap::Writer<BufWriter<File>>>,
    channels: HashMap<String, u16>,
    sequence: u32,
    /// Log times never go back (a moved pose is published at the step's time).
    last_log_ns: u64,
}

/// Opens `path` for writing (before any frame is read, so a bad path stops the run at start).
pub fn open(path: &Path, config: &Ros2Config) -> Result<RosSink<BagWire>, SinkError> {
    Ok(RosSink::new(BagWire::create(path)?, config))
}

impl BagWire {
    /// Creates the file at `path`.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let fail =
            |e: &dyn std::fmt::Display| SinkError::new(NAME, format!("{}: {e}", path.display()));
        let file = File::create(path).map_err(|e| fail(&e))?;
        let writer = mcap::WriteOptions::new()
            .profile("ros2")
            .library(concat!("vggtd ", env!("CARGO_PKG_VERSION")))
            .create(BufWriter::new(file))
            .map_err(|e| fail(&e))?;
        Ok(Self {
            path: path.to_owned(),
            writer: Some(writer),
            channels: HashMap::new(),
            sequence: 0,
            last_log_ns: 0,
        })
    }

    fn channel(&mut self, topic: &Topic) -> Result<u16, String> {
        if let Some(&id) = self.channels.get(&topic.name) {
            return Ok(id);
        }
        let writer = self.writer.as_mut().ok_or("the bag is closed")?;
        let schema = writer
            .add_schema(
                topic.kind.name,
                "ros2msg",
                topic.kind.definition().as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        let metadata =
            BTreeMap::from([("offered_qos_profiles".to_owned(), topic.qos.rosbag2_yaml())]);
        let id = writer
            .add_channel(schema, &topic.name, "cdr", &metadata)
            .map_err(|e| e.to_string())?;
        self.channels.insert(topic.name.clone(), id);
        Ok(id)
    }
}

impl RosWire for BagWire {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish(&mut self, topic: &Topic, stamp_ns: u64, data: Vec<u8>) -> Result<(), String> {
        let channel_id = self.channel(topic)?;
        self.last_log_ns = self.last_log_ns.max(stamp_ns);
        self.sequence = self.sequence.wrapping_add(1);
        let header = mcap::records::MessageHeader {
            channel_id,
            sequence: self.sequence,
            log_time: self.last_log_ns,
            publish_time: self.last_log_ns,
        };
        let writer = self.writer.as_mut().ok_or("the bag is closed")?;
        writer
            .write_to_known_channel(&header, &data)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn finish(&mut self) -> Result<(), String> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        writer
            .finish()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        writer
            .into_inner()
            .into_inner()
            .map_err(|e| format!("{}: {}", self.path.display(), e.error()))?
            .sync_all()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
