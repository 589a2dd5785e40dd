//! vggtd's ROS 2 messages decode with an independent CDR implementation (the `rosbags` Python
//! package's ROS 2 Humble type store) to the values that went in. Runs when `VGGTD_PYTHON` names
//! a Python with rosbags (`.ci/run` sets it); otherwise it says it is skipped.

use nalgebra::{Isometry3, Point3, Translation3, UnitQuaternion};
use pipeline::ros_msgs::{
    encode, Header, Image, Path, PointCloud2, Pose, PoseStamped, TfMessage, Time, TransformStamped,
};

const CHECK: &str = r#"
import json, sys
from rosbags.typesys import Stores, get_typestore
ts = get_typestore(Stores.ROS2_HUMBLE)
out = {}
for name, kind in [("pose", "geometry_msgs/msg/PoseStamped"), ("path", "nav_msgs/msg/Path"),
                   ("tf", "tf2_msgs/msg/TFMessage"), ("cloud", "sensor_msgs/msg/PointCloud2"),
                   ("depth", "sensor_msgs/msg/Image")]:
    m = ts.deserialize_cdr(open(f"{sys.argv[1]}/{name}.cdr", "rb").read(), kind)
    out[name] = m
def pose(p):
    return [p.position.x, p.position.y, p.position.z,
            p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]
p = out["pose"]; path = out["path"]; tf = out["tf"].transforms[0]; c = out["cloud"]; d = out["depth"]
import struct
print(json.dumps({
  "pose": [p.header.stamp.sec, p.header.stamp.nanosec, p.header.frame_id] + pose(p.pose),
  "path": [path.header.frame_id, len(path.poses)] + [pose(q.pose) for q in path.poses],
  "tf": [tf.header.frame_id, tf.child_frame_id, tf.transform.translation.x, tf.transform.rotation.w],
  "cloud": [c.width, c.height, c.point_step, [(f.name, f.offset, f.datatype) for f in c.fields],
            list(struct.unpack("<3fI", bytes(c.data[16:32])))],
  "depth": [d.width, d.height, d.encoding, d.step, list(struct.unpack("<6f", bytes(d.data)))],
}))
"#;

#[test]
fn messages_decode_with_rosbags_to_what_went_in() {
    let Some(python) = std::env::var_os("VGGTD_PYTHON") else {
        println!("skipped: set VGGTD_PYTHON to a Python with rosbags (as .ci/run does)");
        return;
    };
    let header = |frame: &str| Header {
        stamp: Time::from_seconds(1_305_031_102.175_304),
        frame_id: frame.into(),
    };
    let iso = Isometry3::from_parts(
        Translation3::new(1.5, -2.25, 0.125),
        UnitQuaternion::from_euler_angles(0.1, -0.4, 1.2),
    );
    let pose = PoseStamped {
        header: header("map"),
        pose: Pose::from(&iso),
    };
    let second = PoseStamped {
        header: header("map"),
        pose: Pose::from(&Isometry3::translation(0.0, 1.0, 2.0)),
    };
    let path = Path {
        header: header("map"),
        poses: vec![pose.clone(), second],
    };
    let tf = TfMessage {
        transforms: vec![TransformStamped {
            header: header("map"),
            child_frame_id: "camera".into(),
            transform: Pose::from(&iso),
        }],
    };
    let cloud = PointCloud2::xyz_rgb(
        header("map"),
        &[Point3::new(0.0, 0.0, 1.0), Point3::new(0.5, -1.25, 3.0)],
        &[[1, 2, 3], [200, 100, 50]],
    );
    let depth = Image::depth(header("camera"), 3, 2, &[1.0, 2.0, 3.5, 0.0, -1.0, 9.25])
        .expect("3 x 2 depth");
    assert!(Image::depth(header("camera"), 3, 3, &[1.0]).is_none());

    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, bytes: Vec<u8>| {
        std::fs::write(dir.path().join(format!("{name}.cdr")), bytes).expect("write");
    };
    write("pose", encode(&pose).expect("pose"));
    write("path", encode(&path).expect("path"));
    write("tf", encode(&tf).expect("tf"));
    write("cloud", encode(&cloud).expect("cloud"));
    write("depth", encode(&depth).expect("depth"));
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(CHECK)
        .arg(dir.path())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "rosbags check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let q = iso.rotation.quaternion();
    let close = |v: &serde_json::Value, want: f64| {
        let v = v.as_f64().expect("number");
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    };
    let p = got["pose"].as_array().expect("pose");
    assert_eq!(p[0], 1_305_031_102);
    // An f64 of 1.3e9 s resolves 238 ns: the stamp is exact to that.
    assert!(
        (p[1].as_i64().expect("ns") - 175_304_000).abs() <= 240,
        "{}",
        p[1]
    );
    assert_eq!(p[2], "map");
    for (v, want) in p[3..].iter().zip([1.5, -2.25, 0.125, q.i, q.j, q.k, q.w]) {
        close(v, want);
    }
    let path = got["path"].as_array().expect("path");
    assert_eq!(path[0], "map");
    assert_eq!(path[1], 2);
    close(&path[3][2], 2.0);
    let tf = got["tf"].as_array().expect("tf");
    assert_eq!((&tf[0], &tf[1]), (&"map".into(), &"camera".into()));
    close(&tf[2], 1.5);
    close(&tf[3], q.w);
    let c = got["cloud"].as_array().expect("cloud");
    assert_eq!(
        (c[0].as_u64(), c[1].as_u64(), c[2].as_u64()),
        (Some(2), Some(1), Some(16))
    );
    assert_eq!(
        c[3],
        serde_json::json!([["x", 0, 7], ["y", 4, 7], ["z", 8, 7], ["rgb", 12, 7]])
    );
    assert_eq!(
        c[4],
        serde_json::json!([0.5, -1.25, 3.0, (200 << 16) | (100 << 8) | 50])
    );
    let d = got["depth"].as_array().expect("depth");
    assert_eq!(
        d[..4],
        [serde_json::json!(3), 2.into(), "32FC1".into(), 12.into()]
    );
    assert_eq!(d[4], serde_json::json!([1.0, 2.0, 3.5, 0.0, -1.0, 9.25]));
}
