//! Recording window predictions to safetensors and replaying them (`--record DIR`,
//! `--predictor replay:DIR`), so the back-end can be debugged without a GPU.
//!
//! One file per window, `window_NNNNNN.safetensors`. Per frame `i` of the window:
//! `frame.{i}.cam_from_window` f64 `[4, 4]` (OpenCV axes), `frame.{i}.intrinsics` f64 `[4]`
//! (`fx, fy, cx, cy`, pixels), `frame.{i}.depth` and `frame.{i}.depth_conf` f32 `[H, W]`,
//! optionally `frame.{i}.points` f32 `[H, W, 3]` and `frame.{i}.points_conf` f32 `[H, W]`, and
//! `frame.{i}.image` u8 `[H, W, 3]`. The metadata holds `frame_ids`, `timestamps_s` (JSON
//! arrays) and `label`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nalgebra::{Isometry3, Matrix4, Rotation3, Translation3, UnitQuaternion};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use submap::prediction::{
    FramePrediction, Intrinsics, Map2, PredictError, Predictor, WindowFrame, WindowPrediction,
};

/// Error while recording or replaying.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A recorded file is not what the recorder writes.
    #[error("{path}: malformed recording: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No recorded window matches the requested frames.
    #[error("no recorded window in {dir} for frames {frame_ids:?}")]
    NoSuchWindow {
        /// The replay directory.
        dir: PathBuf,
        /// The requested frame ids.
        frame_ids: Vec<u64>,
    },
}

/// Writes each window to `dir`.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    next_index: usize,
}

impl Recorder {
    /// Creates `dir`.
    pub fn new(dir: &Path) -> Result<Self, RecordError> {
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            next_index: 0,
        })
    }

    /// Writes one window atomically; returns its path.
    pub fn record(&mut self, prediction: &WindowPrediction) -> Result<PathBuf, RecordError> {
        let path = self
            .dir
            .join(format!("window_{:06}.safetensors", self.next_index));
        let bytes = encode_window(prediction).map_err(|reason| RecordError::Malformed {
            path: path.clone(),
            reason,
        })?;
        crate::outputs::write_atomic(&path, &bytes).map_err(|e| RecordError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.next_index += 1;
        Ok(path)
    }
}

fn bytes_of_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_of_f64(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Serialises a window prediction (format in the module docs).
pub fn encode_window(prediction: &WindowPrediction) -> Result<Vec<u8>, String> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, frame) in prediction.frames.iter().enumerate() {
        let (w, h) = (frame.depth.width, frame.depth.height);
        let pose: Vec<f64> = frame
            .cam_from_window
            .to_homogeneous()
            .transpose()
            .iter()
            .copied()
            .collect();
        buffers.push((
            format!("frame.{i}.cam_from_window"),
            Dtype::F64,
            vec![4, 4],
            bytes_of_f64(&pose),
        ));
        let k = &frame.intrinsics;
        buffers.push((
            format!("frame.{i}.intrinsics"),
            Dtype::F64,
            vec![4],
            bytes_of_f64(&[k.fx, k.fy, k.cx, k.cy]),
        ));
        buffers.push((
            format!("frame.{i}.depth"),
            Dtype::F32,
            vec![h, w],
            bytes_of_f32(&frame.depth.data),
        ));
        buffers.push((
            format!("frame.{i}.depth_conf"),
            Dtype::F32,
            vec![h, w],
            bytes_of_f32(&frame.depth_conf.data),
        ));
        if let Some((points, conf)) = frame.points_in_window.as_deref() {
            let flat: Vec<f32> = points.data.iter().flatten().copied().collect();
            buffers.push((
                format!("frame.{i}.points"),
                Dtype::F32,
                vec![h, w, 3],
                bytes_of_f32(&flat),
            ));
            buffers.push((
                format!("frame.{i}.points_conf"),
                Dtype::F32,
                vec![h, w],
                bytes_of_f32(&conf.data),
            ));
        }
        let img = &frame.image;
        buffers.push((
            format!("frame.{i}.image"),
            Dtype::U8,
            vec![img.height() as usize, img.width() as usize, 3],
            img.as_raw().clone(),
        ));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<u64> = prediction.frames.iter().map(|f| f.frame_id).collect();
    let times: Vec<f64> = prediction.frames.iter().map(|f| f.timestamp_s).collect();
    let metadata = HashMap::from([
        (
            "frame_ids".to_owned(),
            serde_json::to_string(&ids).map_err(|e| e.to_string())?,
        ),
        (
            "timestamps_s".to_owned(),
            serde_json::to_string(&times).map_err(|e| e.to_string())?,
        ),
        ("label".to_owned(), prediction.label.clone()),
    ]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// Parses a file written by [`encode_window`].
pub fn decode_window(bytes: &[u8]) -> Result<WindowPrediction, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().clone().ok_or("no metadata")?;
    let field = |key: &str| {
        meta.get(key)
            .cloned()
            .ok_or(format!("metadata `{key}` missing"))
    };
    let ids: Vec<u64> = serde_json::from_str(&field("frame_ids")?).map_err(|e| e.to_string())?;
    let times: Vec<f64> =
        serde_json::from_str(&field("timestamps_s")?).map_err(|e| e.to_string())?;
    if ids.len() != times.len() {
        return Err(format!(
            "{} frame ids but {} timestamps",
            ids.len(),
            times.len()
        ));
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let frames = ids
        .iter()
        .zip(&times)
        .enumerate()
        .map(|(i, (&frame_id, &timestamp_s))| decode_frame(&tensors, i, frame_id, timestamp_s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WindowPrediction {
        frames,
        label: field("label")?,
    })
}

fn tensor<'a>(
    tensors: &'a SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
) -> Result<TensorView<'a>, String> {
    let view = tensors.tensor(name).map_err(|e| format!("{name}: {e}"))?;
    if view.dtype() != dtype {
        return Err(format!(
            "{name}: dtype {:?}, expected {dtype:?}",
            view.dtype()
        ));
    }
    Ok(view)
}

fn f32s(view: &TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f64s(view: &TensorView<'_>) -> Vec<f64> {
    view.data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn map2<T>(shape: &[usize], data: Vec<T>, name: &str) -> Result<Map2<T>, String> {
    match shape {
        [h, w, ..] => Ok(Map2 {
            width: *w,
            height: *h,
            data,
        }),
        _ => Err(format!("{name}: shape {shape:?} is not [H, W, ..]")),
    }
}

fn decode_frame(
    tensors: &SafeTensors<'_>,
    i: usize,
    frame_id: u64,
    timestamp_s: f64,
) -> Result<FramePrediction, String> {
    let pose = f64s(&tensor(
        tensors,
        &format!("frame.{i}.cam_from_window"),
        Dtype::F64,
    )?);
    let pose: [f64; 16] = pose
        .try_into()
        .map_err(|_| format!("frame.{i}.cam_from_window is not 4x4"))?;
    let matrix = Matrix4::from_row_slice(&pose);
    let rotation = Rotation3::from_matrix(&matrix.fixed_view::<3, 3>(0, 0).into_owned());
    let cam_from_window = Isometry3::from_parts(
        Translation3::new(matrix[(0, 3)], matrix[(1, 3)], matrix[(2, 3)]),
        UnitQuaternion::from_rotation_matrix(&rotation),
    );
    let k = f64s(&tensor(
        tensors,
        &format!("frame.{i}.intrinsics"),
        Dtype::F64,
    )?);
    let [fx, fy, cx, cy]: [f64; 4] = k
        .try_into()
        .map_err(|_| format!("frame.{i}.intrinsics is not [4]"))?;
    let depth_view = tensor(tensors, &format!("frame.{i}.depth"), Dtype::F32)?;
    let depth = map2(depth_view.shape(), f32s(&depth_view), "depth")?;
    let conf_view = tensor(tensors, &format!("frame.{i}.depth_conf"), Dtype::F32)?;
    let depth_conf = map2(conf_view.shape(), f32s(&conf_view), "depth_conf")?;
    let points_name = format!("frame.{i}.points");
    let points_in_window = if tensors.names().iter().any(|n| *n == points_name) {
        let view = tensor(tensors, &points_name, Dtype::F32)?;
        let flat = f32s(&view);
        let points = flat.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        let conf_view = tensor(tensors, &format!("frame.{i}.points_conf"), Dtype::F32)?;
        Some(Box::new((
            map2(view.shape(), points, "points")?,
            map2(conf_view.shape(), f32s(&conf_view), "points_conf")?,
        )))
    } else {
        None
    };
    let image_view = tensor(tensors, &format!("frame.{i}.image"), Dtype::U8)?;
    let [h, w, 3] = image_view.shape() else {
        return Err(format!("frame.{i}.image is not [H, W, 3]"));
    };
    let image = image::RgbImage::from_raw(*w as u32, *h as u32, image_view.data().to_vec())
        .ok_or(format!("frame.{i}.image size mismatch"))?;
    Ok(FramePrediction {
        frame_id,
        timestamp_s,
        cam_from_window,
        intrinsics: Intrinsics { fx, fy, cx, cy },
        depth,
        depth_conf,
        points_in_window,
        image: Arc::new(image),
    })
}

/// Wraps a predictor and records every prediction it makes (windows and loop windows).
pub struct RecordingPredictor {
    inner: Box<dyn Predictor>,
    recorder: Recorder,
}

impl std::fmt::Debug for RecordingPredictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingPredictor")
            .field("inner", &self.inner.name())
            .field("recorder", &self.recorder)
            .finish()
    }
}

impl RecordingPredictor {
    /// Records `inner`'s predictions into `recorder`.
    pub fn new(inner: Box<dyn Predictor>, recorder: Recorder) -> Self {
        Self { inner, recorder }
    }
}

impl Predictor for RecordingPredictor {
    fn predict(
        &mut self,
        frames: &[WindowFrame],
        neighbours: Option<&[Vec<usize>]>,
    ) -> Result<WindowPrediction, PredictError> {
        let prediction = self.inner.predict(frames, neighbours)?;
        if let Err(e) = self.recorder.record(&prediction) {
            tracing::warn!(error = %e, "recording a window failed");
        }
        Ok(prediction)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

/// Serves recorded windows, looked up by their frame ids.
#[derive(Debug)]
pub struct ReplayPredictor {
    dir: PathBuf,
    by_frames: HashMap<Vec<u64>, PathBuf>,
}

impl ReplayPredictor {
    /// Indexes every `window_*.safetensors` of `dir`.
    pub fn open(dir: &Path) -> Result<Self, RecordError> {
        let io = |source| RecordError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut by_frames = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let is_window = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("window_") && n.ends_with(".safetensors"));
            if !is_window {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| RecordError::Io {
                path: path.clone(),
                source,
            })?;
            let malformed = |reason: String| RecordError::Malformed {
                path: path.clone(),
                reason,
            };
            let (_, header) =
                SafeTensors::read_metadata(&bytes).map_err(|e| malformed(e.to_string()))?;
            let ids = header
                .metadata()
                .as_ref()
                .and_then(|m| m.get("frame_ids"))
                .ok_or_else(|| malformed("metadata `frame_ids` missing".into()))?;
            let ids: Vec<u64> = serde_json::from_str(ids).map_err(|e| malformed(e.to_string()))?;
            by_frames.insert(ids, path);
        }
        if by_frames.is_empty() {
            return Err(RecordError::Malformed {
                path: dir.to_owned(),
                reason: "no window_*.safetensors files".into(),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            by_frames,
        })
    }

    /// Number of recorded windows.
    pub fn len(&self) -> usize {
        self.by_frames.len()
    }

    /// Whether no window was recorded.
    pub fn is_empty(&self) -> bool {
        self.by_frames.is_empty()
    }
}

impl Predictor for ReplayPredictor {
    fn predict(
        &mut self,
        frames: &[WindowFrame],
        _neighbours: Option<&[Vec<usize>]>,
    ) -> Result<WindowPrediction, PredictError> {
        let ids: Vec<u64> = frames.iter().map(|f| f.frame_id).collect();
        let path = self.by_frames.get(&ids).ok_or_else(|| {
            PredictError::Failed(
                RecordError::NoSuchWindow {
                    dir: self.dir.clone(),
                    frame_ids: ids.clone(),
                }
                .to_string(),
            )
        })?;
        let bytes = std::fs::read(path)
            .map_err(|e| PredictError::Failed(format!("{}: {e}", path.display())))?;
        decode_window(&bytes)
            .map_err(|reason| PredictError::Failed(format!("{}: {reason}", path.display())))
    }

    fn name(&self) -> &str {
        "replay"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_window() -> WindowPrediction {
        let frame = |frame_id: u64, with_points: bool| {
            let (w, h) = (3, 2);
            let depth = Map2 {
                width: w,
                height: h,
                data: (0..6).map(|v| 1.0 + v as f32).collect(),
            };
            let conf = Map2 {
                width: w,
                height: h,
                data: vec![2.5; 6],
            };
            let points = with_points.then(|| {
                Box::new((
                    Map2 {
                        width: w,
                        height: h,
                        data: (0..6).map(|v| [v as f32, 0.5, -1.0]).collect(),
                    },
                    conf.clone(),
                ))
            });
            FramePrediction {
                frame_id,
                timestamp_s: frame_id as f64 * 0.1,
                cam_from_window: Isometry3::from_parts(
                    Translation3::new(0.1, -0.2, 0.3),
                    UnitQuaternion::from_euler_angles(0.1, 0.2, 0.3),
                ),
                intrinsics: Intrinsics {
                    fx: 50.0,
                    fy: 51.0,
                    cx: 1.5,
                    cy: 1.0,
                },
                depth,
                depth_conf: conf,
                points_in_window: points,
                image: Arc::new(image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    image::Rgb([x as u8, y as u8, 7])
                })),
            }
        };
        WindowPrediction {
            frames: vec![frame(4, true), frame(9, false)],
            label: "test".into(),
        }
    }

    #[test]
    fn window_round_trips() {
        let window = sample_window();
        let decoded = decode_window(&encode_window(&window).expect("encodes")).expect("decodes");
        assert_eq!(decoded.label, "test");
        assert_eq!(decoded.frames.len(), 2);
        for (a, b) in window.frames.iter().zip(&decoded.frames) {
            assert_eq!((a.frame_id, a.timestamp_s), (b.frame_id, b.timestamp_s));
            let error = (a.cam_from_window.inverse() * b.cam_from_window).to_homogeneous()
                - Matrix4::identity();
            assert!(error.abs().max() < 1e-12, "pose error {error}");
            assert_eq!(a.intrinsics, b.intrinsics);
            assert_eq!(a.depth, b.depth);
            assert_eq!(a.depth_conf, b.depth_conf);
            assert_eq!(a.points_in_window, b.points_in_window);
            assert_eq!(a.image.as_raw(), b.image.as_raw());
        }
    }

    #[test]
    fn replay_serves_by_frame_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut recorder = Recorder::new(dir.path()).expect("recorder");
        recorder.record(&sample_window()).expect("record");
        let mut replay = ReplayPredictor::open(dir.path()).expect("open");
        assert_eq!(replay.len(), 1);
        let frame = |frame_id| WindowFrame {
            frame_id,
            timestamp_s: 0.0,
            image: Arc::new(image::RgbImage::new(1, 1)),
            depth_m: None,
        };
        let served = replay
            .predict(&[frame(4), frame(9)], None)
            .expect("recorded");
        assert_eq!(served.frames[1].frame_id, 9);
        let missing = replay
            .predict(&[frame(4), frame(10)], None)
            .expect_err("not recorded");
        assert!(missing.to_string().contains("[4, 10]"), "{missing}");
    }
}
