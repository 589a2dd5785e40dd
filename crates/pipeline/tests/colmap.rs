//! The COLMAP model (`--colmap`) read back with pycolmap, an independent implementation: images
//! are the keyframes, poses equal `trajectory.txt` after the convention change, points carry
//! colours and project near the pixels they came from. Runs when `VGGTD_PYTHON` names a Python
//! with pycolmap (`.ci/run` sets it); otherwise it says it is skipped.

mod common;

use common::*;

const CHECK: &str = r#"
import sys, numpy as np, pycolmap
model, trajectory, keyframes = sys.argv[1:4]
rec = pycolmap.Reconstruction(model)
stamps = {}
for line in open(keyframes):
    if line.startswith('#'): continue
    frame_id, t = line.split()[:2]
    stamps['kf_%06d.png' % int(frame_id)] = float(t)
poses = {}
for line in open(trajectory):
    if line.startswith('#') or not line.strip(): continue
    v = [float(x) for x in line.split()]
    poses[round(v[0], 6)] = v[1:]
assert len(rec.images) == len(stamps) == len(poses), (len(rec.images), len(stamps), len(poses))
worst = 0.0
for image in rec.images.values():
    world_from_cam = image.cam_from_world().inverse()
    t, q = world_from_cam.translation, world_from_cam.rotation.quat  # xyzw
    ref = poses[round(stamps[image.name], 6)]
    sign = 1.0 if np.dot(q, ref[3:7]) >= 0 else -1.0
    worst = max(worst, np.abs(t - ref[0:3]).max(), np.abs(sign * q - ref[3:7]).max())
assert worst < 1e-5, worst
assert len(rec.points3D) > 1000, len(rec.points3D)
colours = np.array([p.color for p in rec.points3D.values()])
assert colours.max() > 0 and colours.std() > 1, colours.std()
# Each point projects near the pixel it was taken from (points are voxel means).
errors = []
for point_id, p in list(rec.points3D.items())[::50]:
    el = p.track.elements[0]
    image = rec.images[el.image_id]
    uv = rec.cameras[image.camera_id].img_from_cam(image.cam_from_world() * p.xyz)
    errors.append(np.linalg.norm(uv - image.points2D[el.point2D_idx].xy))
print('images', len(rec.images), 'points', len(rec.points3D), 'pose diff', worst, 'median reprojection px', np.median(errors))
assert np.median(errors) < 1.0, np.median(errors)
"#;

#[test]
fn colmap_model_loads_in_pycolmap_and_matches_the_trajectory() {
    let Some(python) = common::test_python("pycolmap") else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("synth");
    render(&data, 60, 10, 128, 96);
    let out = work.path().join("out");
    run_ok(
        vggtd()
            .args(["run", "--predictor", "simulated", "--colmap", "--input"])
            .arg(&data)
            .arg("--output")
            .arg(&out),
    );
    let keyframes = summary(&out)["keyframes"].as_u64().expect("keyframes");
    let images = std::fs::read_dir(out.join("colmap/images"))
        .expect("images/")
        .count();
    assert_eq!(images as u64, keyframes, "one image per keyframe");
    let output = std::process::Command::new(python)
        .args(["-c", CHECK])
        .arg(out.join("colmap/sparse/0"))
        .arg(out.join("trajectory.txt"))
        .arg(out.join("keyframes.txt"))
        .output()
        .expect("python runs");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "pycolmap check failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
