//! ROS 2 over Zenoh, checked against independent implementations, on loopback only (127.0.0.1,
//! no multicast scouting): through a Zenoh router of the `eclipse-zenoh` Python package, a
//! second session receives every topic of `vggtd run --ros2 ENDPOINT` and decodes each message
//! with `rosbags` (ROS 2 Jazzy types), checking the type hash in each key expression against
//! rosbags' own RIHS01 hash and finding vggtd's publishers in the liveliness tokens that `ros2
//! topic list` reads; and a remote camera (eclipse-zenoh publishing a real video's frames in
//! rmw_zenoh's layout, as Image and as CompressedImage) is reconstructed by `vggtd run --input
//! ros2://TOPIC`. Needs `VGGTD_PYTHON` (a Python with eclipse-zenoh and rosbags, as `.ci/run`
//! installs) and the ffmpeg CLI; says it is skipped otherwise.
#![cfg(feature = "ros2")]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    check_last_ros_messages, decoded_frames, read_tum, render_from, run_ok, sim3_ate, summary,
    vggtd, DecodedFrames, FPS,
};

const FRAMES: usize = 60;
const WIDTH: u32 = 160;
const HEIGHT: u32 = 120;
/// Frame times start here, as a camera's wall-clock stamps do.
const START_S: f64 = 1_765_000_000.0;

/// The Zenoh session of the Python scripts: a peer listening on 127.0.0.1:PORT only.
const SESSION: &str = r#"
import os, sys, json, time, struct, threading
import zenoh
from rosbags.typesys import Stores, get_typestore
ts = get_typestore(Stores.ROS2_JAZZY)
def open_session(port, mode='peer', connect=False):
    # A session listening on 127.0.0.1:PORT, or connecting to it (connect=True).
    conf = zenoh.Config()
    conf.insert_json5('mode', json.dumps(mode))
    endpoint = json.dumps([f'tcp/127.0.0.1:{port}'])
    conf.insert_json5('connect/endpoints' if connect else 'listen/endpoints', endpoint)
    conf.insert_json5('listen/endpoints' if connect else 'connect/endpoints', '[]')
    conf.insert_json5('scouting/multicast/enabled', 'false')
    return zenoh.open(conf)
def dds_name(msgtype):
    pkg, _, name = msgtype.split('/')
    return f'{pkg}::msg::dds_::{name}_'
def ros_name(dds):
    pkg, _, name = dds.partition('::msg::dds_::')
    return f'{pkg}/msg/{name[:-1]}'
def fail(kind, value, tb):
    # An error must end the script too, not wait on Zenoh's threads.
    sys.__excepthook__(kind, value, tb)
    sys.stderr.flush()
    os._exit(1)
sys.excepthook = fail
def answer(value):
    # Zenoh's threads would keep the interpreter alive: print, then leave at once.
    print(json.dumps(value), flush=True)
    os._exit(0)
"#;

/// A Zenoh router on the port (as `rmw_zenohd` is) and, through it, a second session that
/// records every sample and liveliness token until stdin closes, then decodes them and prints
/// one JSON object.
const LISTEN: &str = r#"
router = open_session(int(sys.argv[1]), mode='router')
session = open_session(int(sys.argv[1]), connect=True)
samples, tokens, lock = [], set(), threading.Lock()
def on_sample(s):
    att = s.attachment.to_bytes() if s.attachment is not None else b''
    with lock:
        samples.append((str(s.key_expr), s.payload.to_bytes(), att))
def on_token(s):
    if s.kind == zenoh.SampleKind.PUT:
        with lock:
            tokens.add(str(s.key_expr))
sub = session.declare_subscriber('**', on_sample)
lsub = session.liveliness().declare_subscriber('@ros2_lv/**', on_token, history=True)
print('ready', flush=True)
sys.stdin.read()
time.sleep(0.5)
with lock:
    samples, tokens = list(samples), sorted(tokens)
out = {'topics': {}, 'other_keys': [], 'publishers': [], 'nodes': []}
last, poses = {}, []
for key, payload, att in samples:
    parts = key.split('/')
    if len(parts) < 4 or not parts[-1].startswith('RIHS01_'):
        out['other_keys'].append(key)
        continue
    msgtype, digest = ros_name(parts[-2]), parts[-1]
    topic = '/' + '/'.join(parts[1:-2])
    t = out['topics'].setdefault(topic, {'type': msgtype, 'domain': parts[0], 'hash': digest,
                                         'hash_ok': ts.hash_rihs01(msgtype) == digest,
                                         'count': 0, 'sequence': [], 'attachment_bytes': []})
    m = ts.deserialize_cdr(payload, msgtype)
    t['count'] += 1
    t['attachment_bytes'].append(len(att))
    if len(att) >= 16:
        t['sequence'].append(struct.unpack_from('<q', att, 0)[0])
        t['source_time_ns'] = struct.unpack_from('<q', att, 8)[0]
    # The publisher id: a zenoh-ext sequence of 16 bytes (length first), as rmw_zenoh writes it.
    t['gid_ok'] = t.get('gid_ok', True) and len(att) == 33 and att[16] == 16
    last[topic] = m
    if topic.endswith('/pose'):
        p = m.pose.position
        poses.append([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, p.x, p.y, p.z])
for token in tokens:
    # @ros2_lv/<domain>/<zid>/<nid>/<eid>/<kind>/<enclave>/<namespace>/<node>/<topic>/<type>/<hash>/<qos>
    parts = token.split('/')
    if len(parts) > 5 and parts[5] == 'NN':
        out['nodes'].append(parts[-1])
    if len(parts) > 12 and parts[5] == 'MP':
        out['publishers'].append([parts[9].replace('%', '/'), ros_name(parts[10]), parts[11], parts[12]])
ns = sys.argv[2]
if ns + '/path' in last:
    path, cloud, depth = last[ns + '/path'], last[ns + '/map'], last[ns + '/depth']
    info, tf = last[ns + '/camera_info'], last['/tf'].transforms[0]
    out['poses'] = poses
    out['path'] = [[q.header.stamp.sec + q.header.stamp.nanosec * 1e-9, q.pose.position.x,
                    q.pose.position.y, q.pose.position.z] for q in path.poses]
    out['path_frame'] = path.header.frame_id
    out['map'] = {'width': cloud.width, 'frame': cloud.header.frame_id, 'bytes': len(cloud.data),
                  'fields': [(f.name, f.offset, f.datatype) for f in cloud.fields]}
    out['depth'] = {'encoding': depth.encoding, 'width': depth.width, 'height': depth.height,
                    'bytes': len(depth.data), 'frame': depth.header.frame_id,
                    'min': min(struct.unpack(f'<{depth.width * depth.height}f', bytes(depth.data)))}
    out['info'] = {'width': info.width, 'height': info.height, 'k': [float(k) for k in info.k]}
    out['tf'] = [tf.header.frame_id, tf.child_frame_id]
answer(out)
"#;

/// A remote camera: waits for vggtd's subscription to TOPIC (its liveliness token), then
/// publishes the frames in rmw_zenoh's layout (key `0/<topic>/<type>/<hash>`, attachment with
/// sequence number, source time and publisher id) at FPS, as bgr8 Images or, on a
/// `/compressed` topic, JPEG CompressedImages; the header stamps are the dataset's times. Halfway
/// it sends one image that does not decode. The frames numbered in LOST it leaves out, their
/// sequence numbers unused (images lost on the way).
const CAMERA: &str = r#"
import numpy as np, pathlib
port, raw, jpegs, rgb_txt, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
w, h, fps = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
lost = {int(i) for i in sys.argv[9].split(',') if i}
compressed = topic.endswith('/compressed')
stamps = [line.split()[0] for line in open(rgb_txt) if line.strip() and not line.startswith('#')]
frames = np.fromfile(raw, dtype=np.uint8).reshape(-1, h, w, 3)
jpeg_files = sorted(pathlib.Path(jpegs).glob('*.jpg'))
assert len(frames) == len(stamps) == len(jpeg_files), (len(frames), len(stamps), len(jpeg_files))
session = open_session(port)
seen = threading.Event()
mangled = '/' + topic.replace('/', '%') + '/'
def on_token(s):
    key = str(s.key_expr)
    if s.kind == zenoh.SampleKind.PUT and '/MS/' in key and mangled in key:
        seen.set()
lsub = session.liveliness().declare_subscriber('@ros2_lv/**', on_token, history=True)
assert seen.wait(60), 'no subscription of vggtd to ' + topic
msgtype = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
Msg, Header, Time = ts.types[msgtype], ts.types['std_msgs/msg/Header'], ts.types['builtin_interfaces/msg/Time']
key = f'0/{topic[1:]}/{dds_name(msgtype)}/{ts.hash_rihs01(msgtype)}'
pub = session.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK)
# rmw_zenoh's attachment: sequence number and source time (little-endian i64), then the 16-byte
# publisher id as a zenoh-ext sequence (its length, 16, as one varint byte first).
gid = bytes([16]) + bytes(range(16))
for i, (stamp, rgb) in enumerate(zip(stamps, frames)):
    if i in lost:
        continue
    sec, _, frac = stamp.partition('.')
    header = Header(stamp=Time(sec=int(sec), nanosec=int((frac + '000000000')[:9])), frame_id='camera')
    if compressed:
        data = np.frombuffer(jpeg_files[i].read_bytes(), dtype=np.uint8)
        msg = Msg(header=header, format='jpeg', data=data)
    else:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1]).reshape(-1)
        msg = Msg(header=header, height=h, width=w, encoding='bgr8', is_bigendian=0, step=w * 3, data=bgr)
    pub.put(bytes(ts.serialize_cdr(msg, msgtype)), attachment=struct.pack('<qq', i, time.time_ns()) + gid)
    time.sleep(1.0 / fps)
    if i == len(frames) // 2:
        # One image that does not decode: an encoding vggtd does not read, or bytes that are no JPEG.
        if compressed:
            bad = Msg(header=header, format='jpeg', data=np.zeros(64, dtype=np.uint8))
        else:
            bad = Msg(header=header, height=h, width=w, encoding='yuv422', is_bigendian=0, step=w * 2,
                      data=np.zeros(w * h * 2, dtype=np.uint8))
        pub.put(bytes(ts.serialize_cdr(bad, msgtype)), attachment=struct.pack('<qq', -1, time.time_ns()) + gid)
        time.sleep(1.0 / fps)
answer({'published': len(frames) - len(lost), 'key': key})
"#;

fn python() -> Option<PathBuf> {
    common::test_python("eclipse-zenoh and rosbags")
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port")
        .port()
}

/// Starts `script` (after [`SESSION`]) with `args`, stdin and stdout piped.
fn spawn_python(python: &Path, script: &str, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(format!("{SESSION}{script}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python runs");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (child, stdout)
}

/// The next line the script prints.
fn line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reads");
    line
}

/// Closes the script's stdin and returns its JSON answer.
fn finish(mut child: Child, mut stdout: BufReader<ChildStdout>) -> serde_json::Value {
    drop(child.stdin.take());
    let answer = line(&mut stdout);
    let status = child.wait().expect("python ends");
    assert!(status.success(), "python failed: {status}");
    serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// A settings file for loopback-only sessions, with `extra` lines in `[ros2]`.
fn loopback_config(dir: &Path, connect: &[String], extra: &str) -> PathBuf {
    let path = dir.join("ros2.toml");
    let connect: Vec<String> = connect.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(
        &path,
        format!(
            "[ros2]\nconnect = [{}]\nlisten = [\"tcp/127.0.0.1:0\"]\n{extra}",
            connect.join(", ")
        ),
    )
    .expect("write config");
    path
}

/// A synthetic scene along the real fr1_xyz motion with wall-clock times, encoded to H.264 and
/// decoded again by ffmpeg into raw frames and JPEGs.
struct Fixture {
    _work: tempfile::TempDir,
    root: PathBuf,
    dataset: PathBuf,
    raw: PathBuf,
    jpegs: PathBuf,
}

fn fixture() -> Fixture {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().to_owned();
    let dataset = root.join("synth");
    render_from(&dataset, FRAMES, 10, WIDTH, HEIGHT, START_S);
    let DecodedFrames { raw, jpegs, .. } = decoded_frames(&dataset, &root);
    Fixture {
        _work: work,
        root,
        dataset,
        raw,
        jpegs,
    }
}

fn simulated_run(f: &Fixture, input: &str, out: &Path, config: &Path) -> Command {
    let mut command = vggtd();
    command
        .args(["run", "--predictor", "simulated", "--input", input])
        .arg("--sim-dataset")
        .arg(&f.dataset)
        .arg("--config")
        .arg(config)
        .arg("--output")
        .arg(out);
    command
}

fn ate(f: &Fixture, out: &Path) -> (f64, usize) {
    sim3_ate(&f.dataset, out)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[test]
fn a_node_behind_a_zenoh_router_decodes_every_topic_and_its_type_hash() {
    let Some(python) = python() else { return };
    let f = fixture();
    let port = free_port();
    let ns = "/robot1/mapping";
    let (listener, mut stdout) = spawn_python(&python, LISTEN, &[&port.to_string(), ns]);
    assert_eq!(line(&mut stdout).trim(), "ready");

    // --ros2 ENDPOINT: connect to the Python peer (the config connects nowhere else).
    let out = f.root.join("out");
    let config = loopback_config(
        &f.root,
        &[],
        &format!("namespace = \"{ns}\"\ndomain_id = 7\nmap_period_s = 0.5\n"),
    );
    let started_ns = now_ns();
    let dataset = f.dataset.to_str().expect("utf-8 path");
    let output = run_ok(
        simulated_run(&f, dataset, &out, &config)
            .args(["--ros2", &format!("tcp/127.0.0.1:{port}")]),
    );
    let ended_ns = now_ns();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ROS 2: connected over Zenoh"), "{stderr}");
    let back = finish(listener, stdout);
    let (ate, keyframes) = ate(&f, &out);
    println!("Sim(3) ATE {ate:.6} m over {keyframes} keyframes");
    assert!(ate < 0.01, "ATE {ate} m");
    let trajectory = read_tum(&out.join("trajectory.txt"));

    // Every topic, on domain 7, typed with the hash rosbags computes for the Jazzy type.
    let topics = &back["topics"];
    let expected = [
        ("/robot1/mapping/pose", "geometry_msgs/msg/PoseStamped"),
        ("/robot1/mapping/path", "nav_msgs/msg/Path"),
        ("/robot1/mapping/map", "sensor_msgs/msg/PointCloud2"),
        ("/tf", "tf2_msgs/msg/TFMessage"),
        ("/robot1/mapping/depth", "sensor_msgs/msg/Image"),
        ("/robot1/mapping/camera_info", "sensor_msgs/msg/CameraInfo"),
    ];
    for (topic, kind) in expected {
        let t = &topics[topic];
        assert_eq!(t["type"], kind, "{topic}: {topics}");
        assert_eq!(t["domain"], "7", "{topic}");
        assert_eq!(t["hash_ok"], true, "{topic}: hash {}", t["hash"]);
        // rmw_zenoh's attachment: consecutive sequence numbers (none lost), a source time
        // within the run, the publisher's 16-byte id.
        let sequence: Vec<i64> = t["sequence"]
            .as_array()
            .expect("sequence")
            .iter()
            .filter_map(|v| v.as_i64())
            .collect();
        assert_eq!(
            sequence.len() as u64,
            t["count"].as_u64().unwrap_or(0),
            "{topic}"
        );
        assert!(
            sequence.windows(2).all(|w| w[1] == w[0] + 1),
            "{topic}: {sequence:?}"
        );
        assert_eq!(
            t["gid_ok"], true,
            "{topic}: attachment sizes {}",
            t["attachment_bytes"]
        );
        let source_ns = t["source_time_ns"].as_i64().expect("source time");
        assert!(
            (started_ns..=ended_ns).contains(&source_ns),
            "{topic}: source time {source_ns} outside the run"
        );
    }
    assert_eq!(
        topics.as_object().map(|o| o.len()),
        Some(expected.len()),
        "{topics}"
    );
    assert_eq!(back["other_keys"], serde_json::json!([]), "{back}");
    // The graph sees the node and its six publishers with the same types and hashes.
    assert!(
        back["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == "vggtd")),
        "{}",
        back["nodes"]
    );
    let publishers = back["publishers"].as_array().expect("publishers");
    for (topic, kind) in expected {
        assert!(
            publishers
                .iter()
                .any(|p| p[0] == topic && p[1] == kind && p[2] == topics[topic]["hash"]),
            "no liveliness token for {topic}: {publishers:?}"
        );
    }

    // Contents: a pose and a transform per keyframe, the last path is the final trajectory,
    // the last map the final map.
    assert_eq!(
        topics[&format!("{ns}/pose")]["count"],
        trajectory.len() as u64
    );
    assert_eq!(topics["/tf"]["count"], trajectory.len() as u64);
    let path = back["path"].as_array().expect("path");
    assert!((path[0][0].as_f64().unwrap_or(0.0) - START_S).abs() < 1.0);
    check_last_ros_messages(&back, &out);
}

/// Runs vggtd on `ros2://TOPIC` while the Python camera publishes the frames (but the ones
/// numbered in `lost`), stops it with Ctrl-C once they are all sent, and returns its stderr.
fn remote_camera_run(
    python: &Path,
    f: &Fixture,
    topic: &str,
    lost: &[usize],
    out: &Path,
) -> String {
    let lost_arg: Vec<String> = lost.iter().map(|i| i.to_string()).collect();
    let port = free_port();
    let (mut camera, mut stdout) = spawn_python(
        python,
        CAMERA,
        &[
            &port.to_string(),
            f.raw.to_str().expect("utf-8"),
            f.jpegs.to_str().expect("utf-8"),
            f.dataset.join("rgb.txt").to_str().expect("utf-8"),
            topic,
            &WIDTH.to_string(),
            &HEIGHT.to_string(),
            &FPS.to_string(),
            &lost_arg.join(","),
        ],
    );
    let config = loopback_config(&f.root, &[format!("tcp/127.0.0.1:{port}")], "");
    let mut run = simulated_run(f, &format!("ros2://{topic}"), out, &config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("vggtd starts");
    let sent: serde_json::Value =
        serde_json::from_str(line(&mut stdout).trim()).expect("the camera's JSON line");
    assert_eq!(sent["published"], (FRAMES - lost.len()) as u64, "{sent}");
    assert!(camera.wait().expect("camera ends").success());
    // The last frames pass through the stages, then Ctrl-C ends the live run.
    std::thread::sleep(Duration::from_secs(2));
    common::send_signal(run.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(60);
    while run.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "vggtd did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = run.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{}: {stderr}", output.status);
    stderr
}

#[test]
fn a_remote_camera_on_a_ros2_topic_is_reconstructed_raw_and_compressed() {
    let Some(python) = python() else { return };
    let f = fixture();
    // The compressed camera's network loses four images (three in a row): vggtd counts them
    // from the gaps in the sequence numbers.
    let runs: [(&str, &[usize]); 2] = [
        ("/camera/image_raw", &[]),
        ("/camera/image_raw/compressed", &[20, 21, 22, 45]),
    ];
    for (topic, lost) in runs {
        let out = f.root.join(topic.replace('/', "_"));
        let stderr = remote_camera_run(&python, &f, topic, lost, &out);
        let s = summary(&out);
        let count = |key: &str| s[key].as_u64().unwrap_or(0);
        let (frames, dropped, missed) = (
            count("frames"),
            count("dropped_frames"),
            count("missed_frames"),
        );
        println!("{topic}: {frames} frames, {dropped} dropped, {missed} missed");
        // Every image sent arrived: the frames, and the one that does not decode, skipped with
        // a warning that says why; the lost ones are counted and said.
        assert_eq!(missed, lost.len() as u64, "{s}\n{stderr}");
        assert_eq!(
            frames + dropped + missed,
            FRAMES as u64 + 1,
            "{s}\n{stderr}"
        );
        assert_eq!(
            stderr.contains("frames never reached vggtd"),
            !lost.is_empty(),
            "{stderr}"
        );
        assert_eq!(s["corrupt_frames"], 1, "{s}");
        let why = if topic.ends_with("/compressed") {
            "image does not decode"
        } else {
            "encoding \"yuv422\" is not read"
        };
        assert!(stderr.contains(why), "{stderr}");
        let (ate, keyframes) = ate(&f, &out);
        println!("{topic}: Sim(3) ATE {ate:.6} m over {keyframes} keyframes");
        assert!(keyframes >= 10, "{keyframes} keyframes");
        assert!(ate < 0.01, "ATE {ate} m");
        // The header stamps are the frame times.
        let trajectory = read_tum(&out.join("trajectory.txt"));
        assert!(
            (trajectory[0][0] - START_S).abs() < 1.0,
            "{}",
            trajectory[0][0]
        );
    }
}

#[test]
fn without_a_router_the_run_says_so_and_writes_its_outputs() {
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    common::render(&dataset, 30, 10, 96, 72);
    let out = work.path().join("out");
    let config = loopback_config(work.path(), &[], "");
    let output = run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--input"])
            .arg(&dataset)
            .arg("--config")
            .arg(&config)
            .arg("--output")
            .arg(&out)
            .args(["--ros2", &format!("tcp/127.0.0.1:{}", free_port())]),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no Zenoh router or peer answers yet"),
        "{stderr}"
    );
    assert!(!read_tum(&out.join("trajectory.txt")).is_empty());
}

/// A child's stderr, line by line, read on a thread of its own.
struct StderrLines(std::sync::mpsc::Receiver<String>);

impl StderrLines {
    fn of(child: &mut Child) -> Self {
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// Every line until the stream closes (the child ended).
    fn rest(&self) -> String {
        self.0.iter().map(|line| line + "\n").collect()
    }

    /// The lines up to the first that contains `wanted` (fails after 60 s without one).
    fn until(&self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.0.recv_timeout(Duration::from_millis(200)) {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(wanted) {
                    return seen;
                }
            }
        }
        panic!("no line with {wanted:?} in:\n{seen}");
    }
}

#[test]
fn a_topic_of_another_type_is_explained_while_waiting() {
    use hiroz::Builder;
    // Another node publishes CompressedImages on a topic without /compressed in its name.
    let port = free_port();
    let context = hiroz::context::ZContextBuilder::default()
        .with_domain_id(0)
        .with_mode("peer")
        .disable_multicast_scouting()
        .with_connect_endpoints(Vec::<String>::new())
        .with_listen_endpoints([format!("tcp/127.0.0.1:{port}")])
        .build()
        .expect("zenoh session");
    let node = context.create_node("camera").build().expect("node");
    let publisher = node
        .create_pub::<hiroz_msgs::sensor_msgs::CompressedImage>("/camera/image_raw")
        .build()
        .expect("publisher");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = publisher.publish(&Default::default());
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    common::render(&dataset, 10, 10, 96, 72);
    let config = loopback_config(work.path(), &[format!("tcp/127.0.0.1:{port}")], "");
    let mut run = vggtd()
        .args([
            "run",
            "--predictor",
            "simulated",
            "--input",
            "ros2:///camera/image_raw",
        ])
        .arg("--sim-dataset")
        .arg(&dataset)
        .arg("--config")
        .arg(&config)
        .arg("--output")
        .arg(work.path().join("out"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("vggtd starts");
    let lines = StderrLines::of(&mut run);
    let said = lines.until("is published as");
    println!("{said}");
    assert!(
        said.contains("sensor_msgs/msg/CompressedImage") && said.contains("RIHS01_"),
        "{said}"
    );
    // Ctrl-C with no frame read ends the run with a message, not a panic.
    common::send_signal(run.id(), "INT");
    let status = run.wait().expect("vggtd ends");
    let rest = lines.rest();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publishing.join().expect("publisher thread");
    println!("{rest}");
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("no window was reconstructed"), "{rest}");
}

#[test]
fn a_router_that_goes_away_and_comes_back_is_reconnected() {
    let Some(python) = python() else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let dataset = work.path().join("synth");
    common::render(&dataset, 150, 10, 96, 72);
    let port = free_port();
    let ns = "/vggtd";
    let (first, mut stdout) = spawn_python(&python, LISTEN, &[&port.to_string(), ns]);
    assert_eq!(line(&mut stdout).trim(), "ready");
    let out = work.path().join("out");
    let poses = work.path().join("poses.jsonl");
    let config = loopback_config(work.path(), &[], "");
    // --realtime paces the 150 frames over 15 s.
    let mut run = vggtd()
        .args(["run", "--predictor", "simulated", "--realtime", "--input"])
        .arg(&dataset)
        .arg("--config")
        .arg(&config)
        .arg("--output")
        .arg(&out)
        .arg("--pose-stream")
        .arg(&poses)
        .args(["--ros2", &format!("tcp/127.0.0.1:{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("vggtd starts");
    let lines = StderrLines::of(&mut run);
    let mut said = lines.until("ROS 2: connected over Zenoh");
    // The first router goes once the first poses are out.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&poses).map_or(0, |t| t.lines().count()) == 0 {
        assert!(Instant::now() < deadline, "no pose within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = finish(first, stdout);
    let poses_before = before["topics"]["/vggtd/pose"]["count"]
        .as_u64()
        .unwrap_or(0);
    assert!(poses_before > 0, "{before}");
    // The router is gone for two seconds, then a new one listens at the same address.
    std::thread::sleep(Duration::from_secs(2));
    let (second, mut stdout) = spawn_python(&python, LISTEN, &[&port.to_string(), ns]);
    assert_eq!(line(&mut stdout).trim(), "ready");
    said.push_str(&lines.until("ROS 2: connected over Zenoh"));
    let status = run.wait().expect("vggtd ends");
    assert!(status.success(), "{status}\n{said}");
    let after = finish(second, stdout);
    println!("{said}");
    assert!(said.contains("lost the Zenoh router or peer"), "{said}");
    // The second router got the rest of the run: its last path is the final trajectory.
    let trajectory = read_tum(&out.join("trajectory.txt"));
    let poses_after = after["topics"]["/vggtd/pose"]["count"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "poses: {poses_before} before, {poses_after} after, {} keyframes",
        trajectory.len()
    );
    assert!(poses_after > 0, "{after}");
    assert_eq!(
        after["path"].as_array().map(Vec::len),
        Some(trajectory.len()),
        "{after}"
    );
}
