//! `vggtd run --device ...` on the GPU backends, or the clear error when a device cannot run:
//! a GPU backend missing from the build, no Vulkan adapter, a software adapter when plain
//! `wgpu` asks for hardware, the CUDA driver libraries absent. Never a panic (exit status 101).
//!
//! With `--features wgpu`: a short video through `vggtd run --device wgpu` with the tiny fixture
//! weights (lavapipe in CI), its device memory in `summary.json` and back to its baseline after
//! every window. Without a usable adapter those tests print why and pass, unless
//! `VGGT_EXPECT_WGPU=1` (CI) says the GPU path must run.

mod common;

use std::path::Path;

use common::*;

/// A folder of a few synthetic frames (no video decoding needed).
fn frames(dir: &Path) {
    render(dir, 6, 10, 128, 96);
}

fn run_tiny(input: &Path, out: &Path, device: &str) -> std::process::Command {
    let mut command = vggtd();
    command
        .args(["run", "--input"])
        .arg(input)
        .args([
            "--weights",
            TINY_WEIGHTS,
            "--model-config",
            TINY_CONFIG,
            "--image-width",
            "84",
            "--device",
            device,
            "--output",
        ])
        .arg(out);
    command
}

/// Runs `command`, expects a failure with a message (not a panic), returns stderr.
fn fails_clearly(command: &mut std::process::Command) -> String {
    let output = command.output().expect("vggtd runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "expected a failure: {stderr}");
    assert_eq!(
        output.status.code(),
        Some(1),
        "an error, not a panic: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn cuda_without_a_driver_or_the_feature_is_a_clear_error() {
    let has_driver = ["libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
        .iter()
        .any(|p| Path::new(p).exists())
        || std::env::var_os("VGGT_EXPECT_CUDA").is_some();
    if cfg!(feature = "cuda") && has_driver {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let input = work.path().join("frames");
    frames(&input);
    let stderr = fails_clearly(&mut run_tiny(&input, &work.path().join("out"), "cuda"));
    if cfg!(feature = "cuda") {
        assert!(
            stderr.contains("libcuda") && stderr.contains("NVIDIA driver"),
            "{stderr}"
        );
    } else {
        assert!(stderr.contains("`cuda` cargo feature"), "{stderr}");
    }
}

#[test]
fn an_unknown_device_name_is_rejected_with_the_names() {
    let work = tempfile::tempdir().expect("tempdir");
    let output = run_tiny(work.path(), &work.path().join("out"), "gpu0")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error: {stderr}");
    assert!(stderr.contains("cpu, cuda[:N] or wgpu[:N]"), "{stderr}");
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_without_the_feature_names_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let input = work.path().join("frames");
    frames(&input);
    let stderr = fails_clearly(&mut run_tiny(&input, &work.path().join("out"), "wgpu"));
    assert!(stderr.contains("`wgpu` cargo feature"), "{stderr}");
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;

    const LAVAPIPE: &str = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json";

    fn expected() -> bool {
        std::env::var("VGGT_EXPECT_WGPU").is_ok_and(|v| v == "1")
    }

    /// Whether the GPU path can run here (an adapter, software ones included).
    fn usable() -> bool {
        match vggt::device::best_wgpu_adapter() {
            Ok(device) => {
                println!("wgpu adapter: {device}");
                true
            }
            Err(e) if expected() => panic!("VGGT_EXPECT_WGPU=1 but no wgpu adapter: {e}"),
            Err(e) => {
                eprintln!("skipped: no usable wgpu adapter ({e})");
                false
            }
        }
    }

    #[cfg(feature = "video")]
    #[test]
    fn a_video_runs_end_to_end_on_wgpu_with_device_memory_in_the_summary() {
        if !usable() {
            return;
        }
        let work = tempfile::tempdir().expect("tempdir");
        let dataset = work.path().join("synth");
        render(&dataset, 40, 10, 128, 96);
        let video = work.path().join("clip.mp4");
        encode_video(&dataset, &video);
        let out = work.path().join("out");
        let output = run_ok(
            run_tiny(&video, &out, "wgpu")
                .env(vggt::device::ALLOW_SOFTWARE_ENV, "1")
                .env("RUST_LOG", "info"),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("device wgpu:"), "adapter logged: {stderr}");
        assert!(stderr.contains("limits:"), "limits logged: {stderr}");

        let summary = summary(&out);
        println!("wgpu run: {summary}");
        assert_eq!(summary["predictor"], "vggt");
        assert_eq!(summary["frames"], 40);
        let windows = summary["windows"].as_u64().expect("windows");
        let rejected = summary["rejected_windows"].as_u64().expect("rejected");
        assert!(windows >= 1 && windows + rejected >= 2, "{summary}");
        assert!(!read_tum(&out.join("trajectory.txt")).is_empty());
        assert!(ply_vertex_count(&out.join("map.ply")) > 0);

        let memory = &summary["device_memory"];
        assert!(
            memory["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("wgpu:")),
            "{summary}"
        );
        let baseline = memory["baseline_in_use_bytes"].as_u64().expect("baseline");
        let peak = memory["peak_in_use_bytes"].as_u64().expect("peak");
        let reserved = memory["peak_reserved_bytes"].as_u64().expect("reserved");
        // The tiny weights are ~4 MB; windows add activations on top.
        assert!(baseline >= 3_000_000, "{memory}");
        assert!(peak > baseline && reserved >= peak, "{memory}");
        assert_eq!(
            memory["windows"].as_u64(),
            Some(windows + rejected),
            "{memory}"
        );
        assert_eq!(
            memory["windows_above_baseline"], 0,
            "device memory back to its baseline after every window: {memory}"
        );
        assert_eq!(memory["last_in_use_bytes"].as_u64(), Some(baseline));
    }

    #[test]
    fn a_software_adapter_is_refused_for_plain_wgpu_and_names_the_driver() {
        if !Path::new(LAVAPIPE).exists() {
            assert!(!expected(), "CI installs lavapipe ({LAVAPIPE})");
            eprintln!("skipped: no lavapipe");
            return;
        }
        let work = tempfile::tempdir().expect("tempdir");
        let input = work.path().join("frames");
        frames(&input);
        let stderr = fails_clearly(
            run_tiny(&input, &work.path().join("out"), "wgpu")
                .env("VK_ICD_FILENAMES", LAVAPIPE)
                .env_remove(vggt::device::ALLOW_SOFTWARE_ENV),
        );
        assert!(
            stderr.contains("only a software Vulkan adapter"),
            "{stderr}"
        );
        assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
        assert!(stderr.contains("--device wgpu:0"), "{stderr}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn no_vulkan_adapter_is_a_clear_error() {
        let work = tempfile::tempdir().expect("tempdir");
        let input = work.path().join("frames");
        frames(&input);
        let stderr = fails_clearly(
            run_tiny(&input, &work.path().join("out"), "wgpu")
                .env("VK_ICD_FILENAMES", work.path().join("no-such-driver.json"))
                .env(vggt::device::ALLOW_SOFTWARE_ENV, "1"),
        );
        assert!(stderr.contains("no Vulkan adapter found"), "{stderr}");
        assert!(stderr.contains("libvulkan1"), "{stderr}");
    }

    #[test]
    fn an_adapter_index_past_the_list_is_a_clear_error() {
        if !usable() {
            return;
        }
        let work = tempfile::tempdir().expect("tempdir");
        let input = work.path().join("frames");
        frames(&input);
        let stderr = fails_clearly(&mut run_tiny(&input, &work.path().join("out"), "wgpu:99"));
        assert!(stderr.contains("there is no adapter 99"), "{stderr}");
    }
}
