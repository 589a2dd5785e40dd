//! ROS 2 messages that vggtd publishes, as their CDR wire bytes (the encoding of ROS 2's
//! middleware and of rosbag2 files): `geometry_msgs/msg/PoseStamped`, `nav_msgs/msg/Path`,
//! `tf2_msgs/msg/TFMessage`, `sensor_msgs/msg/PointCloud2` and `sensor_msgs/msg/Image`.
//!
//! The structs mirror the `.msg` definitions field for field, in order, so that serde's order is
//! the wire order; [`encode`] adds the 4-byte little-endian CDR encapsulation header.

use nalgebra::{Isometry3, Point3};
use serde::Serialize;

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
}

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// The CDR bytes of `message` (little-endian, with its encapsulation header), as ROS 2 sends
/// them and rosbag2 stores them.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, cdr::Error> {
    cdr::serialize::<_, _, cdr::CdrLe>(message, cdr::Infinite)
}

/// `uint8[]` as one length and a block of bytes (serde's default is one element at a time).
mod bytes {
    pub fn serialize<S: serde::Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
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
