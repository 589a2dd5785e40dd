//! ROS 2 messages that vggtd publishes and reads, as their CDR wire bytes (the encoding of ROS
//! 2's middleware and of rosbag2 files): it publishes `geometry_msgs/msg/PoseStamped`,
//! `nav_msgs/msg/Path`, `tf2_msgs/msg/TFMessage`, `sensor_msgs/msg/PointCloud2`,
//! `sensor_msgs/msg/Image` and `sensor_msgs/msg/CameraInfo`, and reads `sensor_msgs/msg/Image`
//! and `sensor_msgs/msg/CompressedImage`.
//!
//! The structs mirror the `.msg` definitions field for field, in order, so that serde's order is
//! the wire order; [`encode`] adds the 4-byte little-endian CDR encapsulation header and
//! [`decode`] reads either byte order. Each message type's name and definition (the text rosbag2
//! stores as a `ros2msg` schema) is a [`MessageType`].

use nalgebra::{Isometry3, Point3};
use serde::{Deserialize, Serialize};

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Time {
    /// Whole seconds.
    pub sec: i32,
    /// Nanoseconds within the second.
    pub nanosec: u32,
}

impl Time {
    /// The stamp of `seconds` (clamped to what the message can hold; negative and NaN give 0).
    pub fn from_seconds(seconds: f64) -> Self {
        let s = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let sec = s.floor().min(f64::from(i32::MAX));
        let nanosec = (((s - sec) * 1e9).round() as u32).min(999_999_999);
        Self {
            sec: sec as i32,
            nanosec,
        }
    }

    /// Seconds since the epoch.
    pub fn seconds(&self) -> f64 {
        f64::from(self.sec) + f64::from(self.nanosec) * 1e-9
    }

    /// Nanoseconds since the epoch (0 for a negative stamp).
    pub fn nanoseconds(&self) -> u64 {
        u64::try_from(self.sec).map_or(0, |s| s * 1_000_000_000 + u64::from(self.nanosec))
    }
}

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Time of the data.
    pub stamp: Time,
    /// Coordinate frame of the data.
    pub frame_id: String,
}

/// `geometry_msgs/msg/Point` (and `Vector3`, the same layout).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Vector3 {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
}

/// `geometry_msgs/msg/Quaternion`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quaternion {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
    /// w.
    pub w: f64,
}

/// `geometry_msgs/msg/Pose` (and `Transform`: translation then rotation, the same layout).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Pose {
    /// Position.
    pub position: Vector3,
    /// Orientation.
    pub orientation: Quaternion,
}

impl From<&Isometry3<f64>> for Pose {
    fn from(iso: &Isometry3<f64>) -> Self {
        let t = iso.translation.vector;
        let q = iso.rotation.quaternion();
        Self {
            position: Vector3 {
                x: t.x,
                y: t.y,
                z: t.z,
            },
            orientation: Quaternion {
                x: q.i,
                y: q.j,
                z: q.k,
                w: q.w,
            },
        }
    }
}

/// `geometry_msgs/msg/PoseStamped`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoseStamped {
    /// Stamp and frame.
    pub header: Header,
    /// `frame_id`'s pose of the camera.
    pub pose: Pose,
}

/// `nav_msgs/msg/Path`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Path {
    /// Stamp and frame.
    pub header: Header,
    /// The poses, oldest first.
    pub poses: Vec<PoseStamped>,
}

/// `geometry_msgs/msg/TransformStamped`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformStamped {
    /// Stamp and parent frame.
    pub header: Header,
    /// Child frame.
    pub child_frame_id: String,
    /// Parent-from-child transform.
    pub transform: Pose,
}

/// `tf2_msgs/msg/TFMessage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TfMessage {
    /// The transforms.
    pub transforms: Vec<TransformStamped>,
}

/// `sensor_msgs/msg/PointField`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointField {
    /// Field name.
    pub name: String,
    /// Byte offset in a point.
    pub offset: u32,
    /// Type code (7 = FLOAT32).
    pub datatype: u8,
    /// Elements.
    pub count: u32,
}

/// `PointField` type code of a 32-bit float.
pub const FLOAT32: u8 = 7;

/// `sensor_msgs/msg/PointCloud2`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointCloud2 {
    /// Stamp and frame.
    pub header: Header,
    /// Rows (1: unordered).
    pub height: u32,
    /// Points per row.
    pub width: u32,
    /// Layout of a point.
    pub fields: Vec<PointField>,
    /// Byte order of `data`.
    pub is_bigendian: bool,
    /// Bytes per point.
    pub point_step: u32,
    /// Bytes per row.
    pub row_step: u32,
    /// The points.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
    /// No invalid points.
    pub is_dense: bool,
}

impl PointCloud2 {
    /// An unordered cloud of `x, y, z` float32 and `rgb` (the ROS convention: a float32 whose
    /// bits are `0x00RRGGBB`), little-endian, 16 bytes a point. Colours beyond the points are
    /// ignored; points without one are white.
    pub fn xyz_rgb(header: Header, points: &[Point3<f32>], colors: &[[u8; 3]]) -> Self {
        let mut data = Vec::with_capacity(points.len() * 16);
        for (i, p) in points.iter().enumerate() {
            let [r, g, b] = colors.get(i).copied().unwrap_or([255, 255, 255]);
            for v in [p.x, p.y, p.z] {
                data.extend_from_slice(&v.to_le_bytes());
            }
            let rgb = (u32::from(r) << 16) | (u32::from(g) << 8) | u32::from(b);
            data.extend_from_slice(&rgb.to_le_bytes());
        }
        let field = |name: &str, offset| PointField {
            name: name.into(),
            offset,
            datatype: FLOAT32,
            count: 1,
        };
        let n = u32::try_from(points.len()).unwrap_or(u32::MAX);
        Self {
            header,
            height: 1,
            width: n,
            fields: vec![
                field("x", 0),
                field("y", 4),
                field("z", 8),
                field("rgb", 12),
            ],
            is_bigendian: false,
            point_step: 16,
            row_step: n.saturating_mul(16),
            data,
            is_dense: true,
        }
    }
}

/// `sensor_msgs/msg/Image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Stamp and frame.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel encoding (`32FC1`, `rgb8`, ...).
    pub encoding: String,
    /// Byte order of `data`.
    pub is_bigendian: u8,
    /// Bytes per row.
    pub step: u32,
    /// The pixels.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

impl Image {
    /// A `32FC1` depth image, row-major, little-endian; `None` when `depth` is not `width x
    /// height`.
    pub fn depth(header: Header, width: u32, height: u32, depth: &[f32]) -> Option<Self> {
        if depth.len() != (width as usize) * (height as usize) {
            return None;
        }
        let data = depth.iter().flat_map(|v| v.to_le_bytes()).collect();
        Some(Self {
            header,
            height,
            width,
            encoding: "32FC1".into(),
            is_bigendian: 0,
            step: width.saturating_mul(4),
            data,
        })
    }
}

/// `sensor_msgs/msg/CompressedImage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressedImage {
    /// Stamp and frame.
    pub header: Header,
    /// `jpeg` or `png` (image_transport writes e.g. `rgb8; jpeg compressed bgr8`).
    pub format: String,
    /// The compressed image file.
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

/// `sensor_msgs/msg/RegionOfInterest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RegionOfInterest {
    /// Left column.
    pub x_offset: u32,
    /// Top row.
    pub y_offset: u32,
    /// Rows (0: the whole image).
    pub height: u32,
    /// Columns (0: the whole image).
    pub width: u32,
    /// Whether the region should be rectified.
    pub do_rectify: bool,
}

/// `sensor_msgs/msg/CameraInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraInfo {
    /// Stamp and the camera's optical frame.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Distortion model (`plumb_bob`).
    pub distortion_model: String,
    /// Distortion coefficients (none: the image is undistorted).
    pub d: Vec<f64>,
    /// Intrinsic matrix, row-major.
    pub k: [f64; 9],
    /// Rectification rotation, row-major.
    pub r: [f64; 9],
    /// Projection matrix, row-major.
    pub p: [f64; 12],
    /// Horizontal binning.
    pub binning_x: u32,
    /// Vertical binning.
    pub binning_y: u32,
    /// Region of interest.
    pub roi: RegionOfInterest,
}

impl CameraInfo {
    /// An undistorted pinhole camera of `width x height` pixels.
    pub fn pinhole(
        header: Header,
        width: u32,
        height: u32,
        k: &submap::prediction::Intrinsics,
    ) -> Self {
        let (fx, fy, cx, cy) = (k.fx, k.fy, k.cx, k.cy);
        Self {
            header,
            height,
            width,
            distortion_model: "plumb_bob".into(),
            d: vec![0.0; 5],
            k: [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
            r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p: [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
            binning_x: 0,
            binning_y: 0,
            roi: RegionOfInterest::default(),
        }
    }
}

/// A ROS 2 message type: its full name and its definition with every type it uses, in the
/// `ros2msg` form rosbag2 stores in MCAP schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType {
    /// Full name, e.g. `geometry_msgs/msg/PoseStamped`.
    pub name: &'static str,
    /// The `.msg` fields, one per line.
    fields: &'static str,
    /// Types the fields use (directly).
    uses: &'static [&'static MessageType],
}

impl MessageType {
    /// The definition: this type's fields, then each type it uses, depth first, once, after a
    /// line of 80 `=` and `MSG: package/Type`.
    pub fn definition(&self) -> String {
        let mut seen = Vec::new();
        let mut text = self.fields.to_owned();
        let mut stack: Vec<&MessageType> = self.uses.iter().rev().copied().collect();
        while let Some(t) = stack.pop() {
            if seen.contains(&t.name) {
                continue;
            }
            seen.push(t.name);
            text.push_str(&"=".repeat(80));
            text.push_str("\nMSG: ");
            text.push_str(&t.name.replacen("/msg/", "/", 1));
            text.push('\n');
            text.push_str(t.fields);
            stack.extend(t.uses.iter().rev().copied());
        }
        text
    }
}

const TIME: MessageType = MessageType {
    name: "builtin_interfaces/msg/Time",
    fields: "int32 sec\nuint32 nanosec\n",
    uses: &[],
};
const HEADER: MessageType = MessageType {
    name: "std_msgs/msg/Header",
    fields: "builtin_interfaces/Time stamp\nstring frame_id\n",
    uses: &[&TIME],
};
const POINT: MessageType = MessageType {
    name: "geometry_msgs/msg/Point",
    fields: "float64 x\nfloat64 y\nfloat64 z\n",
    uses: &[],
};
const VECTOR3: MessageType = MessageType {
    name: "geometry_msgs/msg/Vector3",
    fields: "float64 x\nfloat64 y\nfloat64 z\n",
    uses: &[],
};
const QUATERNION: MessageType = MessageType {
    name: "geometry_msgs/msg/Quaternion",
    fields: "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    uses: &[],
};
const POSE: MessageType = MessageType {
    name: "geometry_msgs/msg/Pose",
    fields: "Point position\nQuaternion orientation\n",
    uses: &[&POINT, &QUATERNION],
};
const TRANSFORM: MessageType = MessageType {
    name: "geometry_msgs/msg/Transform",
    fields: "Vector3 translation\nQuaternion rotation\n",
    uses: &[&VECTOR3, &QUATERNION],
};
const TRANSFORM_STAMPED: MessageType = MessageType {
    name: "geometry_msgs/msg/TransformStamped",
    fields: "std_msgs/Header header\nstring child_frame_id\nTransform transform\n",
    uses: &[&HEADER, &TRANSFORM],
};
const POINT_FIELD: MessageType = MessageType {
    name: "sensor_msgs/msg/PointField",
    fields: "uint8 INT8    = 1\nuint8 UINT8   = 2\nuint8 INT16   = 3\nuint8 UINT16  = 4\n\
             uint8 INT32   = 5\nuint8 UINT32  = 6\nuint8 FLOAT32 = 7\nuint8 FLOAT64 = 8\n\
             string name\nuint32 offset\nuint8 datatype\nuint32 count\n",
    uses: &[],
};
const REGION_OF_INTEREST: MessageType = MessageType {
    name: "sensor_msgs/msg/RegionOfInterest",
    fields: "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n",
    uses: &[],
};

/// `geometry_msgs/msg/PoseStamped`.
pub const POSE_STAMPED: MessageType = MessageType {
    name: "geometry_msgs/msg/PoseStamped",
    fields: "std_msgs/Header header\nPose pose\n",
    uses: &[&HEADER, &POSE],
};
/// `nav_msgs/msg/Path`.
pub const PATH: MessageType = MessageType {
    name: "nav_msgs/msg/Path",
    fields: "std_msgs/Header header\ngeometry_msgs/PoseStamped[] poses\n",
    uses: &[&HEADER, &POSE_STAMPED],
};
/// `tf2_msgs/msg/TFMessage`.
pub const TF_MESSAGE: MessageType = MessageType {
    name: "tf2_msgs/msg/TFMessage",
    fields: "geometry_msgs/TransformStamped[] transforms\n",
    uses: &[&TRANSFORM_STAMPED],
};
/// `sensor_msgs/msg/PointCloud2`.
pub const POINT_CLOUD2: MessageType = MessageType {
    name: "sensor_msgs/msg/PointCloud2",
    fields: "std_msgs/Header header\nuint32 height\nuint32 width\nPointField[] fields\n\
             bool is_bigendian\nuint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense\n",
    uses: &[&HEADER, &POINT_FIELD],
};
/// `sensor_msgs/msg/Image`.
pub const IMAGE: MessageType = MessageType {
    name: "sensor_msgs/msg/Image",
    fields: "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n\
             uint8 is_bigendian\nuint32 step\nuint8[] data\n",
    uses: &[&HEADER],
};
/// `sensor_msgs/msg/CompressedImage`.
pub const COMPRESSED_IMAGE: MessageType = MessageType {
    name: "sensor_msgs/msg/CompressedImage",
    fields: "std_msgs/Header header\nstring format\nuint8[] data\n",
    uses: &[&HEADER],
};
/// `sensor_msgs/msg/CameraInfo`.
pub const CAMERA_INFO: MessageType = MessageType {
    name: "sensor_msgs/msg/CameraInfo",
    fields: "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n\
             float64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\n\
             uint32 binning_y\nRegionOfInterest roi\n",
    uses: &[&HEADER, &REGION_OF_INTEREST],
};

/// The CDR bytes of `message` (little-endian, with its encapsulation header), as ROS 2 sends
/// them and rosbag2 stores them.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, cdr::Error> {
    cdr::serialize::<_, _, cdr::CdrLe>(message, cdr::Infinite)
}

/// The message in CDR bytes `data` (either byte order, after the encapsulation header). No
/// length inside can make it allocate more than `data` holds.
pub fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, cdr::Error> {
    let limit = u64::try_from(data.len()).unwrap_or(u64::MAX);
    cdr::deserialize_from::<_, _, _>(data, cdr::Bounded(limit))
}

/// `uint8[]` as one length and a block of bytes (serde's default is one element at a time).
mod bytes {
    pub fn serialize<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte sequence")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_split_into_seconds_and_nanoseconds_and_bad_times_clamp() {
        assert_eq!(
            Time::from_seconds(12.5),
            Time {
                sec: 12,
                nanosec: 500_000_000
            }
        );
        assert_eq!(Time::from_seconds(-3.0), Time { sec: 0, nanosec: 0 });
        assert_eq!(Time::from_seconds(f64::NAN), Time { sec: 0, nanosec: 0 });
        assert_eq!(Time::from_seconds(1e12).sec, i32::MAX);
        assert!(Time::from_seconds(0.999_999_999_9).nanosec <= 999_999_999);
    }

    #[test]
    fn a_cloud_packs_sixteen_bytes_a_point_and_defaults_to_white() {
        let header = Header {
            stamp: Time::from_seconds(1.0),
            frame_id: "map".into(),
        };
        let c = PointCloud2::xyz_rgb(header, &[Point3::new(1.0, 2.0, 3.0)], &[]);
        assert_eq!((c.width, c.row_step, c.data.len()), (1, 16, 16));
        assert_eq!(c.data[12..16], 0x00ff_ffffu32.to_le_bytes());
        assert_eq!(c.data[0..4], 1.0f32.to_le_bytes());
        // The encapsulation header of little-endian CDR.
        assert_eq!(encode(&c).expect("cdr")[..4], [0, 1, 0, 0]);
    }
}
