//! rosbag2 MCAP files: `--input run.mcap --topic /camera/image_raw` reads the topic's
//! `sensor_msgs/msg/Image` (rgb8, bgr8, rgba8, bgra8, mono8, mono16) or
//! `sensor_msgs/msg/CompressedImage` (jpeg, png) messages in file order, with the header stamps
//! as frame times (when the topic's first two messages both carry zero stamps, as some drivers
//! send, the times the messages were recorded are used instead, with a warning). The input may
//! also be a rosbag2 folder (`metadata.yaml` beside its `.mcap` files; split bags are read in
//! name order).
//!
//! The file is streamed (no part of it is held beyond the chunk being read). Without `--topic`,
//! or with a topic the bag does not have or that holds no images, opening fails with the list of
//! the bag's topics, their types and message counts. A message that does not decode is a
//! corrupt frame (warned, skipped); a bag that ends mid-record (a recorder that was killed)
//! ends the stream after its last whole message, with the error.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use mcap::records::Record;
use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader};
use mcap::sans_io::summary_reader::{SummaryReadEvent, SummaryReader};
use submap::prediction::WindowFrame;

use super::{make_frame, FrameSource, SourceError};
use crate::ros_msgs::{self, CompressedImage, Image, COMPRESSED_IMAGE, IMAGE};

/// The first bytes of every MCAP file.
const MAGIC: &[u8] = b"\x89MCAP0\r\n";

/// Whether `path` is an MCAP file (by content) or a rosbag2 folder (its `metadata.yaml`; one
/// without `.mcap` files is refused when opened, with what to do).
pub fn is_bag(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("metadata.yaml").is_file();
    }
    let mut head = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == MAGIC)
}

/// The MCAP files of a bag: the file itself, or a rosbag2 folder's `.mcap` files in natural
/// name order (`run_0.mcap`, `run_1.mcap`, ..., `run_10.mcap`).
pub fn bag_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| open_error(path, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mcap"))
        .collect();
    files.sort_by(|a, b| super::natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    if files.is_empty() {
        return Err(open_error(
            path,
            "a rosbag2 folder without .mcap files (a .db3 bag? convert it with `ros2 bag convert` to MCAP)",
        ));
    }
    Ok(files)
}

/// One topic of a bag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub topic: String,
    /// Message type (the schema name), empty when the bag has none.
    pub type_name: String,
    /// Messages on it, when the bag's summary counts them.
    pub messages: Option<u64>,
}

impl TopicInfo {
    fn image_kind(&self) -> Option<ImageKind> {
        [ImageKind::Raw, ImageKind::Compressed]
            .into_iter()
            .find(|kind| kind.type_name() == self.type_name)
    }
}

/// The topics of every file of a bag, by name.
pub fn list_topics(path: &Path) -> Result<Vec<TopicInfo>, SourceError> {
    let mut topics: BTreeMap<String, TopicInfo> = BTreeMap::new();
    for file in bag_files(path)? {
        for info in file_topics(&file)? {
            match topics.get_mut(&info.topic) {
                Some(known) => {
                    known.messages = known.messages.zip(info.messages).map(|(a, b)| a + b);
                }
                None => {
                    topics.insert(info.topic.clone(), info);
                }
            }
        }
    }
    Ok(topics.into_values().collect())
}

fn open_error(path: &Path, reason: impl std::fmt::Display) -> SourceError {
    SourceError::Open {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The topics of one MCAP file: from its summary section, or by reading it through when it has
/// none (a recording that was cut short).
fn file_topics(path: &Path) -> Result<Vec<TopicInfo>, SourceError> {
    let mut file = File::open(path).map_err(|e| open_error(path, e))?;
    let size = file.metadata().map_err(|e| open_error(path, e))?.len();
    let mut reader = SummaryReader::new_with_options(
        mcap::sans_io::summary_reader::SummaryReaderOptions::default().with_file_size(size),
    );
    let mut summary_ok = true;
    while let Some(event) = reader.next_event() {
        let step = match event {
            Ok(SummaryReadEvent::ReadRequest(need)) => file
                .read(reader.insert(need))
                .map(|n| reader.notify_read(n)),
            Ok(SummaryReadEvent::SeekRequest(to)) => file.seek(to).map(|p| reader.notify_seeked(p)),
            Err(_) => {
                summary_ok = false;
                break;
            }
        };
        step.map_err(|e| open_error(path, e))?;
    }
    if let Some(summary) = summary_ok.then(|| reader.finish()).flatten() {
        let counts = summary.stats.as_ref().map(|s| &s.channel_message_counts);
        return Ok(summary
            .channels
            .iter()
            .map(|(id, c)| TopicInfo {
                topic: c.topic.clone(),
                type_name: c
                    .schema
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                messages: counts.map(|m| m.get(id).copied().unwrap_or(0)),
            })
            .collect());
    }
    let mut stream = Records::open(path)?;
    let mut schemas: HashMap<u16, String> = HashMap::new();
    let mut channels: BTreeMap<u16, TopicInfo> = BTreeMap::new();
    while let Some(record) = stream.next_record(|record| match record {
        Record::Schema { header, .. } => {
            schemas.insert(header.id, header.name);
        }
        Record::Channel(c) => {
            let type_name = schemas.get(&c.schema_id).cloned().unwrap_or_default();
            channels.entry(c.id).or_insert(TopicInfo {
                topic: c.topic,
                type_name,
                messages: Some(0),
            });
        }
        Record::Message { header, .. } => {
            if let Some(info) = channels.get_mut(&header.channel_id) {
                info.messages = info.messages.map(|n| n + 1);
            }
        }
        _ => {}
    }) {
        // A cut-off tail still leaves the topics before it.
        if record.is_err() {
            break;
        }
    }
    Ok(channels.into_values().collect())
}

/// The error that lists a bag's topics, for a missing, unknown or non-image `--topic`.
fn topic_error(path: &Path, problem: &str, topics: &[TopicInfo]) -> SourceError {
    let mut listing = String::new();
    for t in topics {
        let count = t
            .messages
            .map_or_else(String::new, |n| format!(", {n} messages"));
        let mark = if t.image_kind().is_some() {
            "  <- images"
        } else {
            ""
        };
        let kind = if t.type_name.is_empty() {
            "no schema"
        } else {
            &t.type_name
        };
        listing.push_str(&format!("\n    {} ({kind}{count}){mark}", t.topic));
    }
    if topics.is_empty() {
        listing.push_str("\n    (none)");
    }
    open_error(
        path,
        format!(
            "{problem}; choose an image topic with --topic (input.topic). The bag's topics:{listing}"
        ),
    )
}

/// How a topic carries its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageKind {
    /// `sensor_msgs/msg/Image`.
    Raw,
    /// `sensor_msgs/msg/CompressedImage`.
    Compressed,
}

impl ImageKind {
    /// The message type's name.
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            Self::Raw => IMAGE.name,
            Self::Compressed => COMPRESSED_IMAGE.name,
        }
    }
}

/// Checks that `topic` is an image topic of the bag at `path`; the error lists its topics.
pub fn check_topic(path: &Path, topic: Option<&str>) -> Result<TopicInfo, SourceError> {
    let topics = list_topics(path)?;
    let Some(topic) = topic else {
        return Err(topic_error(
            path,
            "no topic given for a rosbag2 input",
            &topics,
        ));
    };
    let Some(info) = topics.iter().find(|t| t.topic == topic) else {
        return Err(topic_error(
            path,
            &format!("the bag has no topic {topic}"),
            &topics,
        ));
    };
    if info.image_kind().is_none() {
        return Err(topic_error(
            path,
            &format!(
                "topic {topic} carries {}, not {} or {}",
                if info.type_name.is_empty() {
                    "messages without a schema"
                } else {
                    &info.type_name
                },
                IMAGE.name,
                COMPRESSED_IMAGE.name
            ),
            &topics,
        ));
    }
    Ok(info.clone())
}

/// The records of one MCAP file, read as a stream.
struct Records {
    path: PathBuf,
    file: File,
    reader: LinearReader,
    done: bool,
}

impl Records {
    fn open(path: &Path) -> Result<Self, SourceError> {
        Ok(Self {
            path: path.to_owned(),
            file: File::open(path).map_err(|e| open_error(path, e))?,
            reader: LinearReader::new(),
            done: false,
        })
    }

    /// Hands the next record to `use_record`; `None` after the data section.
    fn next_record(
        &mut self,
        mut use_record: impl FnMut(Record<'_>),
    ) -> Option<Result<(), SourceError>> {
        if self.done {
            return None;
        }
        loop {
            let event = match self.reader.next_event() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(self.read_error(e)));
                }
                Some(Ok(event)) => event,
            };
            match event {
                LinearReadEvent::ReadRequest(need) => {
                    match self.file.read(self.reader.insert(need)) {
                        Ok(n) => self.reader.notify_read(n),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(self.read_error(e)));
                        }
                    }
                }
                LinearReadEvent::Record { opcode, data } => {
                    match mcap::parse_record(opcode, data) {
                        // What follows the data section only repeats what came before.
                        Ok(Record::DataEnd(_)) => {
                            self.done = true;
                            return None;
                        }
                        Ok(record) => {
                            use_record(record);
                            return Some(Ok(()));
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(self.read_error(e)));
                        }
                    }
                }
            }
        }
    }

    fn read_error(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Read {
            path: self.path.clone(),
            reason: format!("the bag is cut off or damaged here: {e}"),
        }
    }
}

/// The messages of one topic in one MCAP file, read as a stream.
struct TopicMessages {
    records: Records,
    topic: String,
    /// The file's channels that carry the topic (announced before their messages).
    channels: Vec<u16>,
}

impl TopicMessages {
    fn open(path: &Path, topic: &str) -> Result<Self, SourceError> {
        Ok(Self {
            records: Records::open(path)?,
            topic: topic.to_owned(),
            channels: Vec::new(),
        })
    }

    /// What `use_message` makes of the topic's next message (its log time in nanoseconds and its
    /// CDR bytes, borrowed from the reader); `None` after the data section.
    fn next_message<T>(
        &mut self,
        mut use_message: impl FnMut(u64, &[u8]) -> T,
    ) -> Option<Result<T, SourceError>> {
        loop {
            let mut used = None;
            let (topic, channels) = (&self.topic, &mut self.channels);
            let step = self.records.next_record(|record| match record {
                Record::Channel(c) if c.topic == *topic => channels.push(c.id),
                Record::Message { header, data } if channels.contains(&header.channel_id) => {
                    used = Some(use_message(header.log_time, &data));
                }
                _ => {}
            })?;
            match (step, used) {
                (Err(e), _) => return Some(Err(e)),
                (Ok(()), Some(value)) => return Some(Ok(value)),
                (Ok(()), None) => {}
            }
        }
    }
}

/// Frames from an image topic of a rosbag2 MCAP bag.
pub struct BagSource {
    path: PathBuf,
    topic: String,
    kind: ImageKind,
    files: std::vec::IntoIter<PathBuf>,
    /// The topic in the file being read.
    reading: Option<(PathBuf, TopicMessages)>,
    messages: Option<u64>,
    next_id: u64,
    /// Frame times from the recording times (the header stamps are zero).
    recorded_times: bool,
}

/// The header of any stamped message (CDR reads the fields in order and ignores the rest).
#[derive(serde::Deserialize)]
struct Stamped {
    header: ros_msgs::Header,
}

/// Whether the first two messages of `topic` in `file` both carry zero header stamps.
fn zero_stamps(file: &Path, topic: &str) -> Result<bool, SourceError> {
    let mut messages = TopicMessages::open(file, topic)?;
    for _ in 0..2 {
        let stamp = messages
            .next_message(|_, data| ros_msgs::decode::<Stamped>(data).map(|m| m.header.stamp));
        if !matches!(stamp, Some(Ok(Ok(t))) if t.sec == 0 && t.nanosec == 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

impl std::fmt::Debug for BagSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BagSource")
            .field("path", &self.path)
            .field("topic", &self.topic)
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl BagSource {
    /// Opens the bag at `path` (a file or a rosbag2 folder) for its image topic `topic`.
    pub fn open(path: &Path, topic: Option<&str>) -> Result<Self, SourceError> {
        let info = check_topic(path, topic)?;
        let kind = info
            .image_kind()
            .unwrap_or_else(|| unreachable!("check_topic returns image topics"));
        let files = bag_files(path)?;
        let recorded_times = match files.first() {
            Some(first) => zero_stamps(first, &info.topic)?,
            None => false,
        };
        if recorded_times {
            tracing::warn!(
                topic = %info.topic,
                "the images carry zero header stamps: their frame times are the times they were recorded"
            );
        }
        Ok(Self {
            path: path.to_owned(),
            topic: info.topic,
            kind,
            files: files.into_iter(),
            reading: None,
            messages: info.messages,
            next_id: 0,
            recorded_times,
        })
    }
}

/// The header stamp (seconds) and the frame in one message of an image topic.
pub(crate) fn decode(kind: ImageKind, data: &[u8]) -> Result<(f64, image::RgbImage), String> {
    match kind {
        ImageKind::Raw => {
            let msg: Image =
                ros_msgs::decode(data).map_err(|e| format!("not a {}: {e}", IMAGE.name))?;
            let image = raw_to_rgb(&msg)?;
            Ok((msg.header.stamp.seconds(), image))
        }
        ImageKind::Compressed => {
            let msg: CompressedImage = ros_msgs::decode(data)
                .map_err(|e| format!("not a {}: {e}", COMPRESSED_IMAGE.name))?;
            let image = image::load_from_memory(&msg.data)
                .map_err(|e| format!("{:?} image does not decode: {e}", msg.format))?;
            Ok((msg.header.stamp.seconds(), image.to_rgb8()))
        }
    }
}

/// An uncompressed image as RGB; an encoding without a conversion is an error that names the
/// ones there are.
fn raw_to_rgb(msg: &Image) -> Result<image::RgbImage, String> {
    let (w, h) = (msg.width as usize, msg.height as usize);
    let channels = match msg.encoding.as_str() {
        "rgb8" | "bgr8" | "8UC3" => 3,
        "rgba8" | "bgra8" | "8UC4" => 4,
        "mono8" | "8UC1" => 1,
        "mono16" | "16UC1" => 2,
        other => {
            return Err(format!(
                "encoding {other:?} is not read (rgb8, bgr8, rgba8, bgra8, mono8, mono16 are)"
            ))
        }
    };
    let row = w * channels;
    let step = msg.step as usize;
    if step < row || msg.data.len() < step * h.saturating_sub(1) + row || w == 0 || h == 0 {
        return Err(format!(
            "{w} x {h} {} image with step {step} needs more than its {} bytes",
            msg.encoding,
            msg.data.len()
        ));
    }
    let bgr = msg.encoding.starts_with("bgr");
    let big = msg.is_bigendian != 0;
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let line = &msg.data[y * step..y * step + row];
        match channels {
            1 => line.iter().for_each(|&v| rgb.extend_from_slice(&[v, v, v])),
            2 => line.chunks_exact(2).for_each(|p| {
                let v = if big { p[0] } else { p[1] };
                rgb.extend_from_slice(&[v, v, v]);
            }),
            _ => line.chunks_exact(channels).for_each(|p| {
                if bgr {
                    rgb.extend_from_slice(&[p[2], p[1], p[0]]);
                } else {
                    rgb.extend_from_slice(&p[..3]);
                }
            }),
        }
    }
    image::RgbImage::from_raw(msg.width, msg.height, rgb).ok_or_else(|| "image size".to_owned())
}

impl FrameSource for BagSource {
    fn next_frame(&mut self) -> Option<Result<WindowFrame, SourceError>> {
        loop {
            if self.reading.is_none() {
                let path = self.files.next()?;
                match TopicMessages::open(&path, &self.topic) {
                    Ok(messages) => self.reading = Some((path, messages)),
                    Err(e) => return Some(Err(e)),
                }
            }
            let (path, messages) = self.reading.as_mut()?;
            let (kind, recorded_times) = (self.kind, self.recorded_times);
            // Decoded where it lies in the reader's buffer, not copied out first.
            let next = messages.next_message(|log_time_ns, data| {
                decode(kind, data).map(|(stamp_s, image)| {
                    let timestamp_s = if recorded_times {
                        log_time_ns as f64 * 1e-9
                    } else {
                        stamp_s
                    };
                    (timestamp_s, image)
                })
            });
            match next {
                None => self.reading = None,
                Some(Err(e)) => {
                    self.reading = None;
                    self.files = Vec::new().into_iter();
                    return Some(Err(e));
                }
                Some(Ok(decoded)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    return Some(match decoded {
                        Ok((timestamp_s, image)) => Ok(make_frame(id, timestamp_s, image)),
                        Err(reason) => Err(SourceError::Corrupt {
                            what: format!("message {id} of {} in {}", self.topic, path.display()),
                            reason,
                        }),
                    });
                }
            }
        }
    }

    fn is_live(&self) -> bool {
        false
    }

    fn len_hint(&self) -> Option<u64> {
        self.messages
    }

    fn describe(&self) -> String {
        format!(
            "rosbag2 {} topic {} ({})",
            self.path.display(),
            self.topic,
            self.kind.type_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros_msgs::{Header, Time};

    fn raw(encoding: &str, width: u32, height: u32, step: u32, data: Vec<u8>) -> Image {
        Image {
            header: Header {
                stamp: Time {
                    sec: 3,
                    nanosec: 500_000_000,
                },
                frame_id: "cam".into(),
            },
            height,
            width,
            encoding: encoding.into(),
            is_bigendian: 0,
            step,
            data,
        }
    }

    #[test]
    fn raw_encodings_convert_to_rgb_with_row_padding() {
        // Two pixels a row, one byte of padding.
        let bgr = raw("bgr8", 2, 1, 7, vec![1, 2, 3, 4, 5, 6, 99]);
        assert_eq!(
            raw_to_rgb(&bgr).expect("bgr8").into_raw(),
            [3, 2, 1, 6, 5, 4]
        );
        let mono = raw("mono8", 2, 2, 2, vec![10, 20, 30, 40]);
        assert_eq!(
            raw_to_rgb(&mono).expect("mono8").get_pixel(1, 1).0,
            [40, 40, 40]
        );
        let mono16 = raw("mono16", 1, 1, 2, vec![0x34, 0x12]);
        assert_eq!(
            raw_to_rgb(&mono16).expect("mono16").get_pixel(0, 0).0,
            [0x12; 3]
        );
        let rgba = raw("rgba8", 1, 1, 4, vec![7, 8, 9, 255]);
        assert_eq!(raw_to_rgb(&rgba).expect("rgba8").into_raw(), [7, 8, 9]);
    }

    #[test]
    fn unknown_encodings_and_short_data_are_refused_with_the_reason() {
        let yuv = raw("yuv422", 2, 1, 4, vec![0; 4]);
        let err = raw_to_rgb(&yuv).expect_err("yuv422");
        assert!(err.contains("yuv422") && err.contains("rgb8"), "{err}");
        let short = raw("rgb8", 4, 4, 12, vec![0; 40]);
        let err = raw_to_rgb(&short).expect_err("short");
        assert!(err.contains("40 bytes"), "{err}");
    }

    #[test]
    fn a_rosbag2_folder_without_mcap_files_says_how_to_convert_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("metadata.yaml"),
            "rosbag2_bagfile_information: {}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("run_0.db3"), b"SQLite format 3\0").expect("write");
        assert!(is_bag(dir.path()));
        let err = BagSource::open(dir.path(), Some("/camera/image_raw")).expect_err("no mcap");
        assert!(err.to_string().contains("ros2 bag convert"), "{err}");
        let file = dir.path().join("run_0.db3");
        assert!(!is_bag(&file), "an SQLite file is no MCAP");
    }

    #[test]
    fn an_image_message_round_trips_through_cdr() {
        let msg = raw("rgb8", 2, 1, 6, vec![1, 2, 3, 4, 5, 6]);
        let bytes = ros_msgs::encode(&msg).expect("encodes");
        let back: Image = ros_msgs::decode(&bytes).expect("decodes");
        assert_eq!(back, msg);
        assert!((back.header.stamp.seconds() - 3.5).abs() < 1e-12);
        // A length that claims more than the message holds is an error, not an allocation.
        let mut lying = bytes.clone();
        let at = lying.len() - 6 - 4;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ros_msgs::decode::<Image>(&lying).is_err());
    }
}
