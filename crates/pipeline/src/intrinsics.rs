//! Known camera intrinsics (`--intrinsics FX,FY,CX,CY` or `dataset`): a predictor wrapper that
//! replaces every predicted intrinsics with the known ones, carried from the input frames'
//! pixels to the prediction's (the model resizes and centre-crops its input), so unprojection
//! and alignment use the real camera.
//!
//! Conventions: intrinsics are in pixels with pixel centres at integer coordinates (TUM's
//! `cx = 319.5` for a 640-pixel-wide image). A prediction at the input's own size keeps the
//! known values as they are; a smaller one is taken as the model's crop-mode preprocessing of
//! the input at the prediction's width ([`vggt::preprocess::InputGeometry`]).

use std::path::Path;

use submap::prediction::{Intrinsics, PredictError, Predictor, WindowFrame, WindowPrediction};
use vggt::preprocess::{InputGeometry, PreprocessMode};

/// Where the intrinsics come from (`input.intrinsics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IntrinsicsSource {
    /// The model's own (default).
    Predicted,
    /// The dataset's calibration.
    Dataset,
    /// Given in pixels of the input frames.
    Fixed(Intrinsics),
}

/// Error of an intrinsics setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IntrinsicsError {
    /// The text is not `predicted`, `dataset` or four numbers.
    #[error("`{0}` is not `predicted`, `dataset` or FX,FY,CX,CY (four numbers, pixels)")]
    Malformed(String),
    /// Focal lengths must be positive, the principal point finite.
    #[error("intrinsics {0}: focal lengths must be positive and every value finite")]
    Impossible(String),
    /// `dataset` on an input without calibration.
    #[error("--intrinsics dataset: {0} has no calibration (TUM RGB-D Freiburg sequences, 7-Scenes and EuRoC do; pass FX,FY,CX,CY instead)")]
    NoCalibration(String),
}

impl IntrinsicsSource {
    /// Parses `predicted`, `dataset` or `FX,FY,CX,CY`.
    pub fn parse(text: &str) -> Result<Self, IntrinsicsError> {
        match text.trim() {
            "predicted" => return Ok(Self::Predicted),
            "dataset" => return Ok(Self::Dataset),
            _ => {}
        }
        let values: Vec<f64> = text
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| IntrinsicsError::Malformed(text.to_owned()))?;
        let [fx, fy, cx, cy] = values[..] else {
            return Err(IntrinsicsError::Malformed(text.to_owned()));
        };
        if !(values.iter().all(|v| v.is_finite()) && fx > 0.0 && fy > 0.0) {
            return Err(IntrinsicsError::Impossible(text.to_owned()));
        }
        Ok(Self::Fixed(Intrinsics { fx, fy, cx, cy }))
    }

    /// The known intrinsics for `input` (`None` for the model's own).
    pub fn resolve(
        &self,
        input: &crate::source::InputKind,
    ) -> Result<Option<Intrinsics>, IntrinsicsError> {
        match self {
            Self::Predicted => Ok(None),
            Self::Fixed(k) => Ok(Some(*k)),
            Self::Dataset => {
                let crate::source::InputKind::Dataset(dir, kind) = input else {
                    return Err(IntrinsicsError::NoCalibration(format!(
                        "the input {}",
                        input_name(input)
                    )));
                };
                crate::source::read_sequence_lenient(dir, *kind)
                    .ok()
                    .and_then(|s| s.intrinsics)
                    .map(Some)
                    .ok_or_else(|| IntrinsicsError::NoCalibration(dir.display().to_string()))
            }
        }
    }
}

fn input_name(input: &crate::source::InputKind) -> String {
    use crate::source::InputKind;
    let path: &Path = match input {
        InputKind::Camera(p)
        | InputKind::Video(p)
        | InputKind::ImageFolder(p)
        | InputKind::Bag(p) => p,
        InputKind::Dataset(p, _) => p,
        InputKind::Ros2(topic) => return format!("ros2://{topic}"),
    };
    path.display().to_string()
}

/// Intrinsics in the pixels of a `map_w x map_h` prediction made from a `src_w x src_h` frame;
/// `None` when the prediction is not the crop-mode preprocessing of the frame at its width.
pub fn to_prediction_pixels(
    k: &Intrinsics,
    (src_w, src_h): (u32, u32),
    (map_w, map_h): (u32, u32),
) -> Option<Intrinsics> {
    if (src_w, src_h) == (map_w, map_h) {
        return Some(*k);
    }
    let g = InputGeometry::new(src_w, src_h, PreprocessMode::Crop, map_w);
    if g.output_px != (map_w, map_h) {
        return None;
    }
    // The geometry maps continuous coordinates (centres at i + 0.5).
    let (cx, cy) = g.source_to_output(k.cx + 0.5, k.cy + 0.5);
    Some(Intrinsics {
        fx: k.fx * g.scale.0,
        fy: k.fy * g.scale.1,
        cx: cx - 0.5,
        cy: cy - 0.5,
    })
}

/// A predictor whose intrinsics are replaced by known ones.
pub struct KnownIntrinsics {
    inner: Box<dyn Predictor>,
    known: Intrinsics,
}

impl KnownIntrinsics {
    /// Wraps `inner`; `known` is in pixels of the input frames.
    pub fn new(inner: Box<dyn Predictor>, known: Intrinsics) -> Self {
        Self { inner, known }
    }
}

impl Predictor for KnownIntrinsics {
    fn predict(
        &mut self,
        frames: &[WindowFrame],
        neighbours: Option<&[Vec<usize>]>,
    ) -> Result<WindowPrediction, PredictError> {
        let mut prediction = self.inner.predict(frames, neighbours)?;
        for f in &mut prediction.frames {
            let Some(source) = frames.iter().find(|s| s.frame_id == f.frame_id) else {
                continue;
            };
            let src = (source.image.width(), source.image.height());
            let k = &self.known;
            if k.cx < 0.0 || k.cy < 0.0 || k.cx > f64::from(src.0) || k.cy > f64::from(src.1) {
                return Err(PredictError::BadWindow(format!(
                    "--intrinsics principal point ({}, {}) lies outside the {}x{} input frames",
                    k.cx, k.cy, src.0, src.1
                )));
            }
            let map = (f.depth.width as u32, f.depth.height as u32);
            f.intrinsics = to_prediction_pixels(k, src, map).ok_or_else(|| {
                PredictError::Failed(format!(
                    "cannot relate {}x{} predictions to {}x{} input frames for --intrinsics",
                    map.0, map.1, src.0, src.1
                ))
            })?;
        }
        Ok(prediction)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers_and_rejects_the_rest() {
        assert_eq!(
            IntrinsicsSource::parse("predicted"),
            Ok(IntrinsicsSource::Predicted)
        );
        assert_eq!(
            IntrinsicsSource::parse("dataset"),
            Ok(IntrinsicsSource::Dataset)
        );
        assert_eq!(
            IntrinsicsSource::parse("517.3, 516.5,318.6,255.3"),
            Ok(IntrinsicsSource::Fixed(Intrinsics {
                fx: 517.3,
                fy: 516.5,
                cx: 318.6,
                cy: 255.3
            }))
        );
        for bad in ["1,2,3", "a,b,c,d", "1,2,3,4,5", ""] {
            assert!(
                matches!(
                    IntrinsicsSource::parse(bad),
                    Err(IntrinsicsError::Malformed(_))
                ),
                "{bad}"
            );
        }
        for impossible in ["0,500,320,240", "500,-1,320,240", "500,500,inf,240"] {
            assert!(
                matches!(
                    IntrinsicsSource::parse(impossible),
                    Err(IntrinsicsError::Impossible(_))
                ),
                "{impossible}"
            );
        }
    }

    #[test]
    fn known_intrinsics_follow_the_models_resize_and_crop() {
        let k = Intrinsics {
            fx: 517.3,
            fy: 516.5,
            cx: 318.6,
            cy: 255.3,
        };
        // Same size: as given.
        assert_eq!(to_prediction_pixels(&k, (640, 480), (640, 480)), Some(k));
        // 640x480 at 518: resized to 518x392 (height rounded to patches), no crop.
        let g = InputGeometry::new(640, 480, PreprocessMode::Crop, 518);
        assert_eq!(g.output_px, (518, 392));
        let m = to_prediction_pixels(&k, (640, 480), (518, 392)).expect("crop geometry");
        let (sx, sy) = (518.0 / 640.0, 392.0 / 480.0);
        assert!((m.fx - k.fx * sx).abs() < 1e-9 && (m.fy - k.fy * sy).abs() < 1e-9);
        assert!((m.cx - ((k.cx + 0.5) * sx - 0.5)).abs() < 1e-9);
        assert!((m.cy - ((k.cy + 0.5) * sy - 0.5)).abs() < 1e-9);
        // The image centre stays the image centre.
        let centred = Intrinsics {
            cx: 319.5,
            cy: 239.5,
            ..k
        };
        let c = to_prediction_pixels(&centred, (640, 480), (518, 392)).expect("geometry");
        assert!(
            (c.cx - 258.5).abs() < 1e-9 && (c.cy - 195.5).abs() < 1e-9,
            "{c:?}"
        );
        // Portrait frames are resized to 84x112 and centre-cropped to 84x84 (14 rows off the
        // top): the centre stays the centre.
        let portrait = Intrinsics {
            cx: 239.5,
            cy: 319.5,
            ..k
        };
        let p = to_prediction_pixels(&portrait, (480, 640), (84, 84)).expect("crop geometry");
        assert!(
            (p.cx - 41.5).abs() < 1e-9 && (p.cy - 41.5).abs() < 1e-9,
            "{p:?}"
        );
        // Predictions that are no crop of the input.
        assert_eq!(to_prediction_pixels(&k, (640, 480), (100, 100)), None);
    }
}
