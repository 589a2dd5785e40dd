//! rosbag2 MCAP in and out, checked against independent implementations: a bag written by the
//! `rosbags` Python package from a real (H.264) video's frames is read by `vggtd run --input
//! BAG --topic T`, and the bag vggtd writes with `--bag` is read back by rosbags (every message
//! deserialised by its ROS 2 Humble type store) and by the `mcap` Python package. Needs
//! `VGGTD_PYTHON` (a Python with rosbags and mcap, as `.ci/run` installs) and the ffmpeg CLI;
//! says it is skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    check_last_ros_messages, decoded_frames, read_tum, render, run_ok, sim3_ate, summary, vggtd,
    DecodedFrames, FPS,
};

const FRAMES: usize = 60;
const WIDTH: u32 = 160;
const HEIGHT: u32 = 120;

/// Writes a rosbag2 folder (MCAP storage) with the frames as `bgr8` Images on
/// `/camera/image_raw`, as JPEG CompressedImages on `/camera/image_raw/compressed`, a
/// `std_msgs/msg/String` topic, and as rgb8 Images with zero header stamps on
/// `/unstamped/image_raw`. Header stamps are the frame times; log times are a day later, so
/// that a reader that used them would be caught (on `/unstamped/image_raw`, the frame times).
const WRITE_BAG: &str = r#"
import sys, pathlib
import numpy as np
from rosbags.rosbag2 import Writer, StoragePlugin
from rosbags.typesys import Stores, get_typestore
ts = get_typestore(Stores.ROS2_HUMBLE)
Image = ts.types['sensor_msgs/msg/Image']
Compressed = ts.types['sensor_msgs/msg/CompressedImage']
Header = ts.types['std_msgs/msg/Header']
Time = ts.types['builtin_interfaces/msg/Time']
String = ts.types['std_msgs/msg/String']
raw, jpegs, out, w, h, fps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
frames = np.fromfile(raw, dtype=np.uint8).reshape(-1, h, w, 3)
jpeg_files = sorted(pathlib.Path(jpegs).glob('*.jpg'))
assert len(jpeg_files) == len(frames), (len(jpeg_files), len(frames))
with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as bag:
    image = bag.add_connection('/camera/image_raw', Image.__msgtype__, typestore=ts)
    comp = bag.add_connection('/camera/image_raw/compressed', Compressed.__msgtype__, typestore=ts)
    chat = bag.add_connection('/chatter', String.__msgtype__, typestore=ts)
    zero = bag.add_connection('/unstamped/image_raw', Image.__msgtype__, typestore=ts)
    for i, rgb in enumerate(frames):
        ns = i * 1_000_000_000 // fps
        header = Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id='camera')
        bgr = np.ascontiguousarray(rgb[:, :, ::-1]).reshape(-1)
        log = 86_400_000_000_000 + ns
        bag.write(image, log, ts.serialize_cdr(Image(header=header, height=h, width=w, encoding='bgr8',
                                                   is_bigendian=0, step=w * 3, data=bgr), Image.__msgtype__))
        data = np.frombuffer(jpeg_files[i].read_bytes(), dtype=np.uint8)
        bag.write(comp, log, ts.serialize_cdr(Compressed(header=header, format='jpeg', data=data),
                                              Compressed.__msgtype__))
        bag.write(chat, log, ts.serialize_cdr(String(data=f'frame {i}'), String.__msgtype__))
        # A driver that leaves the header stamp at zero; recorded at the frame times.
        unstamped = Header(stamp=Time(sec=0, nanosec=0), frame_id='camera')
        bag.write(zero, ns, ts.serialize_cdr(Image(header=unstamped, height=h, width=w, encoding='rgb8',
                                                  is_bigendian=0, step=w * 3, data=rgb.reshape(-1)),
                                            Image.__msgtype__))
"#;

/// Reads vggtd's bag with rosbags (every message deserialised) and with the mcap package;
/// prints one JSON object of what it found.
const READ_BAG: &str = r#"
import sys, json, struct
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
ts = get_typestore(Stores.ROS2_HUMBLE)
out = {'topics': {}, 'counts': {}, 'qos': {}}
poses, last = [], {}
with Reader(sys.argv[1]) as reader:
    for c in reader.connections:
        out['topics'][c.topic] = c.msgtype
        out['qos'][c.topic] = [q.durability.name for q in c.ext.offered_qos_profiles]
    stamps = []
    for c, t, raw in reader.messages():
        m = ts.deserialize_cdr(raw, c.msgtype)
        out['counts'][c.topic] = out['counts'].get(c.topic, 0) + 1
        stamps.append(t)
        last[c.topic] = m
        if c.topic.endswith('/pose'):
            p = m.pose.position
            poses.append([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, p.x, p.y, p.z])
    out['log_times_sorted'] = stamps == sorted(stamps)
ns = sys.argv[2]
path, cloud, depth, info, tf = (last[ns + '/path'], last[ns + '/map'], last[ns + '/depth'],
                                last[ns + '/camera_info'], last['/tf'].transforms[0])
# Each schema (the definitions Foxglove and ros2 bag use) parses to the Humble type store's types.
from rosbags.typesys import get_types_from_msg
out['schemas_checked'], out['schema_mismatches'] = 0, []
with Reader(sys.argv[1]) as reader:
    for c in reader.connections:
        text = c.msgdef.data if isinstance(c.msgdef.data, str) else c.msgdef.data.decode()
        for name, (consts, fields) in get_types_from_msg(text, c.msgtype).items():
            want_consts, want_fields = ts.fielddefs[name]
            out['schemas_checked'] += 1
            if fields != want_fields or sorted(x[0] for x in consts) != sorted(x[0] for x in want_consts):
                out['schema_mismatches'].append(name)
out['poses'] = poses
out['path'] = [[q.header.stamp.sec + q.header.stamp.nanosec * 1e-9, q.pose.position.x,
                q.pose.position.y, q.pose.position.z] for q in path.poses]
out['path_frame'] = path.header.frame_id
out['map'] = {'width': cloud.width, 'height': cloud.height, 'frame': cloud.header.frame_id,
              'fields': [(f.name, f.offset, f.datatype) for f in cloud.fields],
              'bytes': len(cloud.data), 'point_step': cloud.point_step,
              'first': list(struct.unpack('<3f', bytes(cloud.data[:12])))}
out['depth'] = {'encoding': depth.encoding, 'width': depth.width, 'height': depth.height,
                'bytes': len(depth.data), 'frame': depth.header.frame_id,
                'min': min(struct.unpack(f'<{depth.width * depth.height}f', bytes(depth.data)))}
out['info'] = {'width': info.width, 'height': info.height, 'k': list(info.k), 'model': info.distortion_model}
out['tf'] = [tf.header.frame_id, tf.child_frame_id]
from mcap.reader import make_reader
with open(sys.argv[1], 'rb') as f:
    r = make_reader(f)
    s = r.get_summary()
    out['mcap'] = {'profile': r.get_header().profile, 'messages': s.statistics.message_count,
                   'schemas': sorted((x.name, x.encoding) for x in s.schemas.values()),
                   'encodings': sorted({c.message_encoding for c in s.channels.values()}),
                   'iterated': sum(1 for _ in r.iter_messages())}
print(json.dumps(out))
"#;

fn python() -> Option<PathBuf> {
    common::test_python("rosbags and mcap")
}

fn run_python(python: &Path, script: &str, args: &[&Path]) -> String {
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A synthetic scene along the real fr1_xyz motion, encoded to H.264, decoded again by ffmpeg
/// into raw frames and JPEGs, and written into a rosbag2 folder by rosbags.
struct Fixture {
    _work: tempfile::TempDir,
    root: PathBuf,
    dataset: PathBuf,
    video: PathBuf,
    bag_dir: PathBuf,
}

fn fixture(python: &Path) -> Fixture {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().to_owned();
    let dataset = root.join("synth");
    render(&dataset, FRAMES, 10, WIDTH, HEIGHT);
    let DecodedFrames { video, raw, jpegs } = decoded_frames(&dataset, &root);
    let bag_dir = root.join("camera_bag");
    let (w, h, fps) = (WIDTH.to_string(), HEIGHT.to_string(), FPS.to_string());
    run_python(
        python,
        WRITE_BAG,
        &[
            &raw,
            &jpegs,
            &bag_dir,
            Path::new(&w),
            Path::new(&h),
            Path::new(&fps),
        ],
    );
    Fixture {
        _work: work,
        root,
        dataset,
        video,
        bag_dir,
    }
}

fn simulated_run(f: &Fixture, input: &Path, out: &Path) -> Command {
    let mut command = vggtd();
    command
        .args(["run", "--predictor", "simulated", "--input"])
        .arg(input)
        .arg("--sim-dataset")
        .arg(&f.dataset)
        .arg("--output")
        .arg(out);
    command
}

fn ate(f: &Fixture, out: &Path) -> (f64, usize) {
    sim3_ate(&f.dataset, out)
}

fn the_mcap_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("bag folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "mcap"))
        .expect("rosbags wrote an .mcap file")
}

#[test]
fn a_rosbags_bag_of_a_video_reconstructs_like_the_video_and_the_bag_out_reads_back() {
    let Some(python) = python() else { return };
    let f = fixture(&python);

    // The video itself, for comparison.
    let video_out = f.root.join("video_out");
    run_ok(&mut simulated_run(&f, &f.video, &video_out));
    let (video_ate, video_keyframes) = ate(&f, &video_out);

    // The raw topic of the bag folder, with the ROS 2 topics written to a bag.
    let out = f.root.join("bag_out");
    let bag_out = out.join("vggtd.mcap");
    run_ok(
        simulated_run(&f, &f.bag_dir, &out)
            .args(["--topic", "/camera/image_raw", "--bag"])
            .arg(&bag_out),
    );
    let s = summary(&out);
    assert_eq!(s["frames"], FRAMES as u64, "{s}");
    let (bag_ate, bag_keyframes) = ate(&f, &out);
    println!(
        "Sim(3) ATE: video {video_ate:.6} m ({video_keyframes} keyframes), bag raw topic {bag_ate:.6} m ({bag_keyframes})"
    );
    assert_eq!(
        bag_keyframes, video_keyframes,
        "the same frames, the same keyframes"
    );
    assert!(bag_ate < 0.01, "ATE {bag_ate} m");
    assert!(
        (bag_ate - video_ate).abs() < 1e-9,
        "bag {bag_ate} vs video {video_ate}"
    );
    // Header stamps, not log times, are the frame times.
    let trajectory = read_tum(&out.join("trajectory.txt"));
    assert!(trajectory[0][0] < 1.0, "first stamp {}", trajectory[0][0]);

    // vggtd's bag, read back by rosbags and the mcap package.
    let text = run_python(&python, READ_BAG, &[&bag_out, Path::new("/vggtd")]);
    let back: serde_json::Value = serde_json::from_str(text.trim()).expect("JSON");
    let topics = &back["topics"];
    for (topic, kind) in [
        ("/vggtd/pose", "geometry_msgs/msg/PoseStamped"),
        ("/vggtd/path", "nav_msgs/msg/Path"),
        ("/vggtd/map", "sensor_msgs/msg/PointCloud2"),
        ("/tf", "tf2_msgs/msg/TFMessage"),
        ("/vggtd/depth", "sensor_msgs/msg/Image"),
        ("/vggtd/camera_info", "sensor_msgs/msg/CameraInfo"),
    ] {
        assert_eq!(topics[topic], kind, "{topics}");
    }
    assert_eq!(back["qos"]["/vggtd/map"][0], "TRANSIENT_LOCAL");
    assert_eq!(back["qos"]["/vggtd/pose"][0], "VOLATILE");
    assert_eq!(back["log_times_sorted"], true);
    assert_eq!(back["schema_mismatches"], serde_json::json!([]), "{back}");
    assert!(
        back["schemas_checked"].as_u64().unwrap_or(0) >= 15,
        "{}",
        back["schemas_checked"]
    );
    let counts = &back["counts"];
    assert_eq!(counts["/vggtd/pose"], trajectory.len() as u64, "{counts}");
    assert_eq!(counts["/tf"], trajectory.len() as u64, "{counts}");
    assert!(
        counts["/vggtd/depth"].as_u64().unwrap_or(0) >= 2,
        "{counts}"
    );
    assert_eq!(counts["/vggtd/depth"], counts["/vggtd/camera_info"]);
    check_last_ros_messages(&back, &out);
    let mcap = &back["mcap"];
    assert_eq!(mcap["profile"], "ros2");
    assert_eq!(mcap["encodings"], serde_json::json!(["cdr"]));
    assert_eq!(mcap["messages"], mcap["iterated"]);
    assert!(mcap["schemas"]
        .as_array()
        .expect("schemas")
        .iter()
        .all(|s| s[1] == "ros2msg"));

    // The compressed topic, straight from the .mcap file (JPEG: a little lossy).
    let jpeg_out = f.root.join("jpeg_out");
    run_ok(
        simulated_run(&f, &the_mcap_file(&f.bag_dir), &jpeg_out)
            .args(["--topic", "/camera/image_raw/compressed"]),
    );
    assert_eq!(summary(&jpeg_out)["frames"], FRAMES as u64);
    let (jpeg_ate, jpeg_keyframes) = ate(&f, &jpeg_out);
    println!("Sim(3) ATE: bag JPEG topic {jpeg_ate:.6} m ({jpeg_keyframes} keyframes)");
    assert!(jpeg_ate < 0.01, "ATE {jpeg_ate} m");

    // Zero header stamps: the recording times stand in, so the result is the video's again.
    let zero_out = f.root.join("zero_out");
    let output =
        run_ok(simulated_run(&f, &f.bag_dir, &zero_out).args(["--topic", "/unstamped/image_raw"]));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("zero header stamps: their frame times"),
        "a warning says so"
    );
    let (zero_ate, zero_keyframes) = ate(&f, &zero_out);
    assert_eq!(zero_keyframes, video_keyframes);
    assert!(
        (zero_ate - video_ate).abs() < 1e-9,
        "unstamped {zero_ate} vs video {video_ate}"
    );
}

#[test]
fn a_missing_unknown_or_non_image_topic_lists_the_bags_topics() {
    let Some(python) = python() else { return };
    let f = fixture(&python);
    for (topic, says) in [
        (None, "no topic given"),
        (Some("/camera/depth"), "has no topic /camera/depth"),
        (Some("/chatter"), "carries std_msgs/msg/String"),
    ] {
        let out = f.root.join("out");
        let mut command = simulated_run(&f, &f.bag_dir, &out);
        if let Some(topic) = topic {
            command.args(["--topic", topic]);
        }
        let output = command.output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{topic:?} must fail");
        println!("--topic {topic:?}:\n{stderr}");
        assert!(stderr.contains(says), "{topic:?}: {stderr}");
        for line in [
            "/camera/image_raw (sensor_msgs/msg/Image, 60 messages)  <- images",
            "/camera/image_raw/compressed (sensor_msgs/msg/CompressedImage, 60 messages)  <- images",
            "/chatter (std_msgs/msg/String, 60 messages)",
        ] {
            assert!(stderr.contains(line), "{topic:?} lists {line:?}: {stderr}");
        }
        assert!(!out.join("trajectory.txt").exists(), "nothing ran");
    }
}

#[test]
fn a_bag_cut_short_gives_its_whole_messages_then_a_clear_error_with_the_outputs_written() {
    let Some(python) = python() else { return };
    let f = fixture(&python);
    let full = std::fs::read(the_mcap_file(&f.bag_dir)).expect("bag");
    let cut = f.root.join("cut.mcap");
    std::fs::write(&cut, &full[..full.len() * 2 / 3]).expect("write");
    let out = f.root.join("cut_out");
    let output = simulated_run(&f, &cut, &out)
        .args(["--topic", "/camera/image_raw"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a cut bag is an error: {stderr}");
    assert!(stderr.contains("cut off or damaged"), "{stderr}");
    let frames = summary(&out)["frames"].as_u64().expect("frames");
    println!("{frames} of {FRAMES} frames before the cut:\n{stderr}");
    assert!(
        (FRAMES as u64 / 3..FRAMES as u64).contains(&frames),
        "{frames} frames of the first two thirds"
    );
    assert!(!read_tum(&out.join("trajectory.txt")).is_empty());
}
