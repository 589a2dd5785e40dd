//! Host-side tensors in safetensors files: the fixtures' `inputs.safetensors` /
//! `outputs.safetensors` format, read by tests and `vggt-run`, and written by `vggt-run`.
//!
//! Model weights do not go through here (see [`crate::checkpoint`]); this is for small tensors
//! whose whole content is wanted on the host.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

/// Error reading or writing a tensor file.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File that failed.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path} is not a valid safetensors file: {message}")]
    Format {
        /// File that failed.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A tensor has a dtype this module does not handle.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    Dtype {
        /// File.
        path: String,
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A requested tensor is absent.
    #[error("{path}: no tensor named `{name}`")]
    Missing {
        /// File.
        path: String,
        /// Tensor name.
        name: String,
    },
}

/// Element values of a host tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    /// float32 (f16/bf16/f64 files are widened or narrowed to this on read).
    F32(Vec<f32>),
    /// int64 (int32 and uint8 files are widened to this on read).
    I64(Vec<i64>),
}

/// A tensor held on the host: shape plus values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: HostData,
}

impl HostTensor {
    /// A float tensor.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Self {
            shape,
            data: HostData::F32(values),
        }
    }

    /// Float values (integers are converted).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Integer values (floats are truncated).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            HostData::F32(v) => v.iter().map(|&x| x as i64).collect(),
            HostData::I64(v) => v.clone(),
        }
    }

    /// Uploads as a float tensor of rank `D` (panics if the rank differs: a bug, not input).
    pub fn to_burn<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        assert_eq!(self.shape.len(), D, "rank mismatch uploading a host tensor");
        Tensor::from_data(
            TensorData::new(self.to_f32_vec(), self.shape.clone()),
            device,
        )
    }

    /// Downloads a float tensor of any backend dtype as float32.
    pub fn from_burn<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<f32>();
        let values = data.to_vec::<f32>().expect("converted to f32 above");
        Self::f32(shape, values)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TensorIoError + '_ {
    move |source| TensorIoError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads every tensor of a safetensors file.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, HostTensor>, TensorIoError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| TensorIoError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => HostData::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F64 => HostData::F32(
                raw.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            Dtype::F16 => HostData::F32(
                raw.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            Dtype::BF16 => HostData::F32(
                raw.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
            Dtype::I64 => HostData::I64(
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            ),
            Dtype::I32 => HostData::I64(
                raw.chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                    .collect(),
            ),
            Dtype::U8 => HostData::I64(raw.iter().map(|&b| b as i64).collect()),
            Dtype::BOOL => HostData::I64(raw.iter().map(|&b| (b != 0) as i64).collect()),
            other => {
                return Err(TensorIoError::Dtype {
                    path: path.display().to_string(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Takes one tensor out of a map read by [`read_tensors`], naming the file when absent.
pub fn take(
    tensors: &mut BTreeMap<String, HostTensor>,
    name: &str,
    path: impl AsRef<Path>,
) -> Result<HostTensor, TensorIoError> {
    tensors.remove(name).ok_or_else(|| TensorIoError::Missing {
        path: path.as_ref().display().to_string(),
        name: name.to_string(),
    })
}

/// Writes tensors to a safetensors file (float32 / int64), atomically (temp file + rename).
pub fn write_tensors<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
) -> Result<(), TensorIoError> {
    let path = path.as_ref();
    let owned: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let (bytes, dtype) = match &t.data {
                HostData::F32(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::F32),
                HostData::I64(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), Dtype::I64),
            };
            (name.to_string(), bytes, dtype, t.shape.clone())
        })
        .collect();
    let views = owned
        .iter()
        .map(|(name, bytes, dtype, shape)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| TensorIoError::Format {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| TensorIoError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("safetensors.partial");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Largest absolute difference and the worst violation of `|a-b| <= atol + rtol*|b|`
/// (as a ratio: <= 1 passes). `b` is the reference.
pub fn compare(got: &[f32], want: &[f32], atol: f32, rtol: f32) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "compare: length mismatch");
    got.iter()
        .zip(want)
        .fold((0.0f32, 0.0f32), |(max_abs, worst), (&a, &b)| {
            let diff = if a.is_nan() || b.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs()
            };
            (max_abs.max(diff), worst.max(diff / (atol + rtol * b.abs())))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.safetensors");
        let a = HostTensor::f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-7, 9.0]);
        let b = HostTensor {
            shape: vec![2],
            data: HostData::I64(vec![-1, 7]),
        };
        write_tensors(&path, [("a", &a), ("b", &b)]).expect("write");
        let read = read_tensors(&path).expect("read");
        assert_eq!(read["a"], a);
        assert_eq!(read["b"], b);
    }

    #[test]
    fn garbage_is_a_format_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"not a tensor file at all").expect("write");
        assert!(matches!(
            read_tensors(&path),
            Err(TensorIoError::Format { .. })
        ));
    }

    #[test]
    fn compare_reports_ratio() {
        let (max_abs, worst) = compare(&[1.0, 2.0], &[1.0, 2.1], 0.1, 0.0);
        assert!((max_abs - 0.1).abs() < 1e-6 && (worst - 1.0).abs() < 1e-4);
    }
}
