#!/usr/bin/env python3
"""Feed vggtd's recorded window predictions to the VGGT-SLAM 2.0 back-end (MIT-SPARK/VGGT-SLAM).

    venv/bin/python run_peer.py REC_DIR OUT_TUM [--loops none|LOGFILE] [--points camera|world]

REC_DIR holds vggtd's `--record` files (window_NNNNNN.safetensors, in call order). Each regular
window (8 keyframes, 2 shared with the previous one) becomes one peer submap, fed through the
same calls that VGGT-SLAM's main.py makes after the model call:
    Submap(...) setup as in Solver.run_predictions, Solver.add_points(predictions),
    PoseGraph.optimize(), and at the end GraphMap.write_poses_to_file(...).
The peer's files are imported unchanged from ./VGGT-SLAM; the model / retrieval / viewer
imports (torch, torchvision, PIL, cv2, open3d, viser, salad, vggt) are stubbed here because no
code path used below touches them, except two helpers of the VGGT_SPARK fork
(vggt.utils.geometry), which are re-implemented below.

Overlap: the peer supports exactly one shared frame between consecutive submaps (its last frame
is the next submap's frame 0, `--overlapping_window_size` "ONLY DEFAULT OF 1 SUPPORTED"). vggtd's
windows share two. The first of the two shared frames is dropped from every window after the
first, so a 8-frame window [a+6 .. a+13] enters the peer as a 7-frame submap [a+7 .. a+13] whose
frame 0 is the previous submap's last frame, with its poses re-expressed relative to that frame
(VGGT's own convention: first camera = identity).

Loops: the peer's detection needs SALAD weights (dino_salad.ckpt + DINOv2 from torch.hub) and the
VGGT_SPARK similarity head (image_match_ratio >= 0.85), neither available offline. With
`--loops none` the peer runs with max_loops = 0. With `--loops LOGFILE` (vggtd's stderr, which
logs `loop closed query=Q matched=M`), each loop vggtd accepted is fed to the peer as its own
detection: the recorded loop-check window that vggtd predicted for that pair provides the
peer's 2-frame loop-closure submap [query, match] (their frames_lc order), at the submap that
holds the query frame, at most one per submap (their max_loops = 1).
"""
import argparse
import glob
import json
import os
import re
import sys
import time
import types

import numpy as np
from safetensors import safe_open

# The peer checkout lives in a scratch folder outside this repository ($PEER/VGGT-SLAM).
PEER = os.path.join(os.environ.get("PEER", "/tmp/peer"), "VGGT-SLAM")


# ---------------------------------------------------------------- import stubs
class _Dummy:
    """Stands in for anything of torch / open3d / viser ...; never used on the path below."""

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Dummy()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy()


def _stub(name):
    m = types.ModuleType(name)
    m.__getattr__ = lambda attr: _Dummy() if not attr.startswith("__") else (_ for _ in ()).throw(AttributeError(attr))
    sys.modules[name] = m
    return m


for _name in ["torch", "torchvision", "torchvision.transforms", "cv2",
              "open3d", "viser", "viser.transforms", "salad", "salad.eval",
              "vggt", "vggt.utils", "vggt.utils.pose_enc", "vggt.utils.load_fn"]:
    _stub(_name)
# scipy's array-API helpers look for torch.Tensor when torch is in sys.modules: give it a class.
sys.modules["torch"].Tensor = type("Tensor", (), {})

POINTS_MODE = "camera"


def closed_form_inverse_se3(se3):
    """numpy path of vggt.utils.geometry.closed_form_inverse_se3."""
    R = se3[:, :3, :3]
    T = se3[:, :3, 3:]
    Rt = np.transpose(R, (0, 2, 1))
    out = np.tile(np.eye(4), (len(R), 1, 1))
    out[:, :3, :3] = Rt
    out[:, :3, 3:] = -np.matmul(Rt, T)
    return out


def unproject_depth_map_to_point_map(depth_map, extrinsics_cam, intrinsics_cam):
    """The VGGT_SPARK fork's version returns each frame's points in its OWN camera frame
    (cam_coords_points, pixel (u - cx) * d / fx), not in VGGT's world frame; VGGT-SLAM 2.0's
    per-frame SL(4) nodes and its scale estimate rely on that. `--points world` gives upstream
    vggt's behaviour instead (for a sensitivity check only)."""
    out = []
    for i in range(depth_map.shape[0]):
        d = depth_map[i].reshape(depth_map.shape[1], depth_map.shape[2])
        K = intrinsics_cam[i]
        h, w = d.shape
        u, v = np.meshgrid(np.arange(w), np.arange(h))
        cam = np.stack(((u - K[0, 2]) * d / K[0, 0], (v - K[1, 2]) * d / K[1, 1], d), axis=-1).astype(np.float32)
        if POINTS_MODE == "world":
            c2w = closed_form_inverse_se3(extrinsics_cam[i][None])[0]
            cam = (cam @ c2w[:3, :3].T + c2w[:3, 3]).astype(np.float32)
        out.append(cam)
    return np.stack(out, axis=0)


_geo = _stub("vggt.utils.geometry")
_geo.closed_form_inverse_se3 = closed_form_inverse_se3
_geo.unproject_depth_map_to_point_map = unproject_depth_map_to_point_map

sys.path.insert(0, PEER)
from vggt_slam.solver import Solver  # noqa: E402
from vggt_slam.submap import Submap  # noqa: E402
from vggt_slam.map import GraphMap  # noqa: E402
from vggt_slam.graph import PoseGraph  # noqa: E402
from vggt_slam.loop_closure import LoopMatch  # noqa: E402
from vggt_slam.slam_utils import Accumulator  # noqa: E402


class _Frames:
    """numpy array with the `.cpu().numpy()` that add_points calls on torch tensors."""

    def __init__(self, a):
        self.a = a

    def cpu(self):
        return self

    def numpy(self):
        return self.a


# ---------------------------------------------------------------- recordings
def read_window(path):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        ids = json.loads(meta["frame_ids"])
        ts = json.loads(meta["timestamps_s"])
        frames = []
        for i in range(len(ids)):
            fr = {k: f.get_tensor(f"frame.{i}.{k}") for k in ("cam_from_window", "intrinsics", "depth", "depth_conf", "image")}
            frames.append(fr)
    return {"path": path, "ids": ids, "ts": ts, "frames": frames}


def classify(windows):
    """Regular windows continue the stream: the ids they share with the previous regular window
    are a suffix of it and a prefix of theirs (2 frames, more for the final window, which vggtd
    pads back to full size), and they end later. The rest are loop-check windows."""
    regular, n_loop = [], 0
    for w in windows:
        if not regular:
            regular.append(w)
            continue
        prev = regular[-1]["ids"]
        o = len(set(prev) & set(w["ids"]))
        if o >= 1 and w["ids"][:o] == prev[-o:] and w["ids"][-1] > prev[-1]:
            regular.append(w)
        else:
            n_loop += 1
    return regular, [w for w in windows if not any(w is r for r in regular)]


def vggtd_loops(logfile):
    """(query, match) frame-id pairs from vggtd's `loop closed` log lines, in order."""
    pairs = []
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for line in open(logfile, errors="replace"):
        line = ansi.sub("", line)
        if "loop closed" not in line:
            continue
        q = re.search(r"query=(\d+)", line)
        m = re.search(r"matched=(\d+)", line)
        if q and m:
            pairs.append((int(q.group(1)), int(m.group(1))))
    return pairs


def prediction_arrays(frames, keep):
    """VGGT-style arrays for frames[keep], poses relative to the first kept frame."""
    sel = [frames[i] for i in keep]
    T0 = sel[0]["cam_from_window"]
    ext = np.stack([fr["cam_from_window"] @ np.linalg.inv(T0) for fr in sel])[:, :3, :]
    K = np.zeros((len(sel), 3, 3))
    for j, fr in enumerate(sel):
        fx, fy, cx, cy = fr["intrinsics"]
        K[j] = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    depth = np.stack([fr["depth"] for fr in sel]).astype(np.float32)[..., None]
    conf = np.stack([fr["depth_conf"] for fr in sel]).astype(np.float32)
    images = np.stack([fr["image"] for fr in sel]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return ext, K, depth, conf, images


def name_of(t):
    return f"{t:.6f}.png"  # Submap.set_frame_ids parses the number back: frame id = timestamp


def main():
    global POINTS_MODE
    ap = argparse.ArgumentParser()
    ap.add_argument("rec_dir")
    ap.add_argument("out_tum")
    ap.add_argument("--loops", default="none", help="none, or vggtd's log file")
    ap.add_argument("--points", default="camera", choices=["camera", "world"])
    ap.add_argument("--conf_threshold", type=float, default=25.0)  # main.py default
    ap.add_argument("--overlap", default="drop-first", choices=["drop-first", "drop-last"],
                    help="which of the two frames shared by consecutive windows is dropped")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    POINTS_MODE = args.points

    files = sorted(glob.glob(os.path.join(args.rec_dir, "window_*.safetensors")))
    windows = [read_window(p) for p in files]
    regular, loop_windows = classify(windows)
    n_loopwin = len(loop_windows)
    pairs = vggtd_loops(args.loops) if args.loops != "none" else []

    # Solver.__init__ minus Viewer / FrameTracker / ImageRetrieval (viser, cv2, SALAD weights).
    solver = Solver.__new__(Solver)
    solver.init_conf_threshold = args.conf_threshold
    solver.vis_voxel_size = None
    solver.map = GraphMap()
    solver.graph = PoseGraph()
    solver.current_working_submap = None
    solver.lc_thres = 0.95
    solver.temp_count = 0
    solver.vggt_timer = Accumulator()
    solver.loop_closure_timer = Accumulator()
    solver.clip_timer = Accumulator()

    owner = {}  # frame id -> (submap id, index) of its first peer submap
    used_pairs = set()
    fed_loops = []
    backend_time = Accumulator()
    devnull = open(os.devnull, "w")
    real_stdout = sys.stdout
    t_start = time.time()
    for wi, w in enumerate(regular):
        n = len(w["ids"])
        # start at the previous submap's last frame (the one shared frame the peer supports)
        start = 0 if wi == 0 else w["ids"].index(last_kept)
        # drop-first: keep the window to its end, so the next one is tied at this window's last
        # frame; drop-last: stop one short, so the next one is tied at its own frame 0 (two
        # windows overlapping by 2 are then tied at the second window's reference camera).
        end = n - 1 if (args.overlap == "drop-last" and wi < len(regular) - 1) else n
        keep = list(range(start, end))
        last_kept = w["ids"][end - 1]
        ids = [w["ids"][i] for i in keep]
        ts = [w["ts"][i] for i in keep]
        ext, K, depth, conf, images = prediction_arrays(w["frames"], keep)
        names = [name_of(t) for t in ts]

        # --- as Solver.run_predictions, without the model call
        if solver.map.get_largest_key() is None:
            new_pcd_num = 0
        else:
            new_pcd_num = solver.map.get_largest_key() + solver.map.get_latest_submap().get_last_non_loop_frame_index() + 1
        sub = Submap(new_pcd_num)
        sub.add_all_frames(images)
        sub.set_frame_ids(names)
        sub.set_last_non_loop_frame_index(images.shape[0] - 1)
        sub.set_img_names(names)
        solver.current_working_submap = sub
        pred = {"images": images, "extrinsic": ext, "intrinsic": K, "depth": depth, "depth_conf": conf,
                "detected_loops": []}
        for j, fid in enumerate(ids):
            owner.setdefault(fid, (new_pcd_num, j))

        # --- loops: vggtd's accepted pairs whose query is in this submap (max one, as max_loops=1)
        for (q, m) in pairs:
            if pred["detected_loops"]:
                break
            if (q, m) in used_pairs or q not in ids or m not in owner or owner[m][0] == new_pcd_num:
                continue
            # the last loop-check window that vggtd predicted for this pair
            cands = [lw for lw in loop_windows if q in lw["ids"] and m in lw["ids"]]
            if not cands:
                continue
            lw = cands[-1]
            ms, mk = owner[m]
            iq, im = lw["ids"].index(q), lw["ids"].index(m)
            e_lc, K_lc, d_lc, c_lc, img_lc = prediction_arrays(lw["frames"], [iq, im])
            pred["detected_loops"] = [LoopMatch(0.0, new_pcd_num, ids.index(q), ms, mk)]
            pred["extrinsic_lc"], pred["intrinsic_lc"] = e_lc, K_lc
            pred["depth_lc"], pred["depth_conf_lc"] = d_lc, c_lc
            pred["frames_lc"] = _Frames(img_lc)
            pred["frames_lc_names"] = [name_of(lw["ts"][iq]), name_of(lw["ts"][im])]
            solver.graph.increment_loop_closure()
            used_pairs.add((q, m))
            fed_loops.append((q, m, os.path.basename(lw["path"])))

        # --- as main.py after the model call
        if args.quiet:
            sys.stdout = devnull
        solver.add_points(pred)
        with backend_time:
            solver.graph.optimize()
        sys.stdout = real_stdout

    if args.quiet:
        sys.stdout = devnull
    raw = args.out_tum + ".raw"
    solver.map.write_poses_to_file(raw, solver.graph, kitti_format=False)
    sys.stdout = real_stdout
    total = time.time() - t_start

    # write_poses_to_file lists each shared frame twice (last of one submap, first of the next);
    # keep its first occurrence so that each keyframe is scored once, as in vggtd's trajectory.
    seen, lines = set(), []
    for line in open(raw):
        t = line.split()[0]
        if t in seen:
            continue
        seen.add(t)
        lines.append(line)
    with open(args.out_tum, "w") as f:
        f.writelines(lines)
    info = {"windows_total": len(windows), "regular_windows": len(regular), "loop_check_windows": n_loopwin,
            "peer_submaps": solver.map.get_num_submaps(), "peer_loops": solver.graph.get_num_loops(),
            "vggtd_loops_in_log": len(pairs), "fed_loops": fed_loops, "keyframes": len(lines),
            "graph_factors": solver.graph.graph.size(), "backend_s": round(backend_time.total_time, 3),
            "total_s": round(total, 3), "points": POINTS_MODE, "overlap": args.overlap}
    print(json.dumps(info))


if __name__ == "__main__":
    main()
