//! Strict loading of upstream VGGT checkpoints (`model.safetensors`, `model.pt`) into burn modules.
//!
//! The file format is recognised by its content, not its extension: a ZIP archive is a PyTorch
//! `torch.save` file (read by burn-store's [`PytorchStore`]), a pickle stream is the legacy PyTorch
//! format, and a little-endian header length followed by a JSON object is safetensors (read through
//! a memory map by [`SafetensorsStore`]). Tensor data is read lazily, one tensor at a time, so
//! loading never holds a second copy of the weights.
//!
//! Loading is strict and happens in two steps. First every key of the file is matched against the
//! module's parameter paths and shapes (read without initialising the lazy parameters); all
//! problems are collected into one [`CheckpointError::Incompatible`] naming the file, the missing
//! keys, the unexpected keys and the shape mismatches. Only a fully matching file is then applied.
//!
//! # Key mapping
//! Module fields spell the upstream keys except for the camelCase / indexed names listed in
//! [`KEY_REMAP`]; burn's own layout differences are bridged as burn-store's
//! [`PyTorchToBurnAdapter`] does: LayerNorm `weight`/`bias` load into `gamma`/`beta`, and Linear
//! weights, stored `[out, in]` upstream, are transposed to burn's `[in, out]`. Keys that are
//! consumed but not loaded are listed in [`IGNORED_KEYS`] and [`IGNORED_PREFIXES`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::Precision;
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor};
use burn_store::{
    ApplyError, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore, TensorSnapshot,
};

/// Upstream key fragment -> burn path fragment. Fragments match whole dot-separated segments.
pub const KEY_REMAP: &[(&str, &str)] = &[
    // `nn.Sequential(SiLU, Linear)`: only the Linear (index 1) has parameters.
    (
        "camera_head.poseLN_modulation.1.",
        "camera_head.pose_ln_modulation.",
    ),
    // DPT residual conv units are camelCase upstream.
    (".resConfUnit1.", ".res_conf_unit1."),
    (".resConfUnit2.", ".res_conf_unit2."),
    // `resize_layers` is a ModuleList whose index 2 is an Identity: three named fields instead.
    ("resize_layers.0.", "resize_layer0."),
    ("resize_layers.1.", "resize_layer1."),
    ("resize_layers.3.", "resize_layer3."),
    // `output_conv2 = Sequential(Conv, ReLU, Conv)`: the two convs as named fields.
    ("scratch.output_conv2.0.", "scratch.output_conv2_0."),
    ("scratch.output_conv2.2.", "scratch.output_conv2_2."),
];

/// Keys present in the upstream checkpoint that are read and dropped.
pub const IGNORED_KEYS: &[&str] = &[
    // DINOv2's masking token for masked-image pre-training; never used at inference.
    "aggregator.patch_embed.mask_token",
];

/// Key prefixes present in the upstream checkpoint that are read and dropped.
pub const IGNORED_PREFIXES: &[&str] = &[
    // The track head is not ported.
    "track_head.",
];

/// How many keys an error message lists before summarising the rest as a count.
const LISTED_KEYS: usize = 20;

/// Options for [`load_into`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Float dtype the parameters are converted to while loading (e.g. `DType::BF16`);
    /// `None` loads float32 (whatever the file stores). Conversion happens tensor by tensor.
    /// With [`Self::heads_dtype`] set, this applies only to the parameters under `aggregator.`.
    ///
    /// The model's modules run in their parameters' dtype (see [`Precision`]): inputs and the
    /// tensors they create are cast to it, so no device default needs changing.
    pub dtype: Option<DType>,
    /// Float dtype of every parameter outside `aggregator.` (the camera, depth and point heads
    /// of [`crate::Vggt`]); `None` follows [`Self::dtype`].
    pub heads_dtype: Option<DType>,
}

impl LoadOptions {
    /// The options that load a [`crate::Vggt`] in `precision`.
    pub fn for_precision(precision: Precision) -> Self {
        let (dtype, heads_dtype) = match precision {
            Precision::F32 => (None, None),
            Precision::Bf16 | Precision::F16 => (
                Some(precision.aggregator_dtype()),
                Some(precision.heads_dtype()),
            ),
        };
        Self { dtype, heads_dtype }
    }
}

/// Container format of a checkpoint file, as recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// safetensors: u64 little-endian header length, JSON header, raw data.
    Safetensors,
    /// PyTorch >= 1.6 `torch.save`: a ZIP archive with `data.pkl` and one record per storage.
    PytorchZip,
    /// PyTorch < 1.6 `torch.save`: a bare pickle stream followed by raw storages.
    PytorchLegacy,
}

/// One parameter whose checkpoint shape differs from the module's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Upstream key.
    pub key: String,
    /// Shape the module needs, in the upstream layout (Linear weights `[out, in]`).
    pub expected: Vec<usize>,
    /// Shape stored in the file.
    pub got: Vec<usize>,
}

/// Everything that keeps a checkpoint from loading into a module; empty means compatible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyReport {
    /// Upstream keys the module needs that the file lacks, sorted.
    pub missing: Vec<String>,
    /// Keys of the file that neither match a parameter nor are on the ignore list, sorted.
    pub unexpected: Vec<String>,
    /// Keys present on both sides with different shapes, sorted by key.
    pub shape_mismatches: Vec<ShapeMismatch>,
}

impl KeyReport {
    /// True when nothing is missing, unexpected or mis-shaped.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }
}

fn write_list<T>(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    items: &[T],
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n  {} {what}:", items.len())?;
    for item in items.iter().take(LISTED_KEYS) {
        write!(f, "\n    {}", show(item))?;
    }
    if items.len() > LISTED_KEYS {
        write!(f, "\n    ... and {} more", items.len() - LISTED_KEYS)?;
    }
    Ok(())
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_list(f, "missing key(s)", &self.missing, |k| k.clone())?;
        write_list(f, "unexpected key(s)", &self.unexpected, |k| k.clone())?;
        write_list(f, "shape mismatch(es)", &self.shape_mismatches, |m| {
            format!(
                "{}: model expects {:?}, file has {:?}",
                m.key, m.expected, m.got
            )
        })
    }
}

/// Error while loading a checkpoint. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file does not exist.
    #[error("checkpoint {file} not found")]
    NotFound {
        /// Path given.
        file: PathBuf,
    },
    /// The file could not be read.
    #[error("cannot read checkpoint {file}: {source}")]
    Io {
        /// File that failed.
        file: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The content is neither safetensors nor a PyTorch file.
    #[error("{file} is not a checkpoint: {reason}")]
    NotACheckpoint {
        /// File that failed.
        file: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file ends before the data its header announces.
    #[error("checkpoint {file} is truncated: {format:?} header needs {expected_bytes} bytes, file has {actual_bytes}")]
    Truncated {
        /// File that failed.
        file: PathBuf,
        /// Format recognised from the first bytes.
        format: CheckpointFormat,
        /// Size the header implies (for ZIP: at least this much, the end record being absent).
        expected_bytes: u64,
        /// Actual file size.
        actual_bytes: u64,
    },
    /// The container was recognised but its index could not be parsed.
    #[error("checkpoint {file} ({format:?}) is corrupt: {message}")]
    Corrupt {
        /// File that failed.
        file: PathBuf,
        /// Format recognised from the first bytes.
        format: CheckpointFormat,
        /// What the parser said.
        message: String,
    },
    /// Keys or shapes do not match the module; lists every problem found.
    #[error("checkpoint {file} does not match the model:{report}")]
    Incompatible {
        /// File that failed.
        file: PathBuf,
        /// All missing / unexpected / mis-shaped keys.
        report: KeyReport,
    },
    /// A tensor's data could not be read or converted while applying it.
    #[error("checkpoint {file}: cannot load tensor `{key}`: {message}")]
    TensorData {
        /// File that failed.
        file: PathBuf,
        /// burn parameter path.
        key: String,
        /// What failed.
        message: String,
    },
    /// A target dtype that is not a float type was requested.
    #[error("cannot load weights as {0:?}: only float dtypes are supported")]
    UnsupportedDtype(DType),
}

/// One float/int/bool parameter of a module: where it is and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// burn path (`aggregator.frame_blocks.0.norm1.gamma`).
    pub path: String,
    /// Shape in burn's layout.
    pub shape: Vec<usize>,
    /// Type of the module owning the parameter (`Struct:LayerNorm`, `Struct:Linear`, ...).
    pub owner: String,
}

impl ParamEntry {
    fn is_linear_weight(&self) -> bool {
        self.owner == "Struct:Linear" && self.path.ends_with(".weight") && self.shape.len() == 2
    }

    fn is_norm_param(&self) -> bool {
        matches!(
            self.owner.as_str(),
            "Struct:LayerNorm" | "Struct:GroupNorm" | "Struct:BatchNorm"
        )
    }

    /// The upstream key this parameter loads from.
    pub fn upstream_key(&self) -> String {
        let path = if self.is_norm_param() {
            rename_last(&self.path, |name| match name {
                "gamma" => Some("weight"),
                "beta" => Some("bias"),
                _ => None,
            })
        } else {
            self.path.clone()
        };
        apply_remap(
            &path,
            KEY_REMAP.iter().map(|&(upstream, burn)| (burn, upstream)),
        )
    }

    /// The shape in the upstream layout (Linear weights `[out, in]`).
    pub fn upstream_shape(&self) -> Vec<usize> {
        if self.is_linear_weight() {
            self.shape.iter().rev().copied().collect()
        } else {
            self.shape.clone()
        }
    }
}

fn rename_last(path: &str, rename: impl Fn(&str) -> Option<&'static str>) -> String {
    match path.rsplit_once('.') {
        Some((parent, name)) => match rename(name) {
            Some(new) => format!("{parent}.{new}"),
            None => path.to_string(),
        },
        None => path.to_string(),
    }
}

/// Replaces fragments that start at a segment boundary.
fn apply_remap<'a>(key: &str, rules: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let dotted = |s: &str| {
        if s.starts_with('.') {
            s.to_string()
        } else {
            format!(".{s}")
        }
    };
    let mut padded = format!(".{key}");
    for (from, to) in rules {
        padded = padded.replace(&dotted(from), &dotted(to));
    }
    padded[1..].to_string()
}

/// Maps an upstream checkpoint key to the burn module path it names (before the LayerNorm
/// `weight`/`bias` -> `gamma`/`beta` rename, which depends on the module).
pub fn burn_path_for_key(key: &str) -> String {
    apply_remap(key, KEY_REMAP.iter().copied())
}

/// True for keys that are read and deliberately dropped.
pub fn is_ignored_key(key: &str) -> bool {
    IGNORED_KEYS.contains(&key) || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Collects parameter paths, shapes and owners without initialising lazy parameters.
struct ParamLister {
    path: Vec<String>,
    owners: Vec<String>,
    entries: Vec<ParamEntry>,
}

impl ParamLister {
    fn push(&mut self, shape: Vec<usize>) {
        let owner = self
            .owners
            .iter()
            .rev()
            .find(|c| c.starts_with("Struct:") || c.starts_with("Enum:"))
            .cloned()
            .unwrap_or_default();
        self.entries.push(ParamEntry {
            path: self.path.join("."),
            shape,
            owner,
        });
    }
}

impl<B: Backend> ModuleVisitor<B> for ParamLister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.owners.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.owners.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.push(param.lazy_shape().to_vec());
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.push(param.lazy_shape().to_vec());
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        self.push(param.lazy_shape().to_vec());
    }
}

/// Every parameter of `module` with its burn path, shape and owning module type, in visiting
/// order. Lazy parameters stay uninitialised, so this is cheap even for VGGT-1B.
pub fn module_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamEntry> {
    let mut lister = ParamLister {
        path: Vec::new(),
        owners: Vec::new(),
        entries: Vec::new(),
    };
    module.visit(&mut lister);
    lister.entries
}

/// The upstream checkpoint keys and shapes (upstream layout) that `module` loads, sorted by key.
/// Ignored keys are not included.
pub fn expected_checkpoint_keys<B: Backend, M: Module<B>>(
    module: &M,
) -> BTreeMap<String, Vec<usize>> {
    module_params(module)
        .iter()
        .map(|p| (p.upstream_key(), p.upstream_shape()))
        .collect()
}

/// Recognises the container format from the file's content and checks that the file is as long
/// as its header says.
pub fn detect_format(path: &Path) -> Result<CheckpointFormat, CheckpointError> {
    let file_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CheckpointError::NotFound {
                file: path.to_path_buf(),
            }
        } else {
            CheckpointError::Io {
                file: path.to_path_buf(),
                source,
            }
        }
    };
    let mut file = std::fs::File::open(path).map_err(file_err)?;
    let actual_bytes = file.metadata().map_err(file_err)?.len();
    let mut head = [0u8; 9];
    let got = read_up_to(&mut file, &mut head).map_err(file_err)?;
    let head = &head[..got];
    let not_a_checkpoint = |reason: String| CheckpointError::NotACheckpoint {
        file: path.to_path_buf(),
        reason,
    };

    if head.starts_with(b"PK\x03\x04") {
        check_zip_end(&mut file, path, actual_bytes)?;
        return Ok(CheckpointFormat::PytorchZip);
    }
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(CheckpointFormat::PytorchLegacy);
    }
    if head.len() == 9 && head[8] == b'{' {
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        check_safetensors_size(&mut file, path, header_len, actual_bytes)?;
        return Ok(CheckpointFormat::Safetensors);
    }
    if head.is_empty() {
        return Err(not_a_checkpoint("the file is empty".into()));
    }
    Err(not_a_checkpoint(format!(
        "first bytes {:02x?} are neither a ZIP archive (PyTorch), a pickle (legacy PyTorch) nor a safetensors header",
        head
    )))
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A ZIP archive ends with an end-of-central-directory record; a cut file has none.
fn check_zip_end(
    file: &mut std::fs::File,
    path: &Path,
    actual_bytes: u64,
) -> Result<(), CheckpointError> {
    const EOCD: &[u8] = b"PK\x05\x06";
    const EOCD_MIN: u64 = 22;
    let tail_len = actual_bytes.min(EOCD_MIN + u64::from(u16::MAX));
    let io = |source| CheckpointError::Io {
        file: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(actual_bytes - tail_len))
        .map_err(io)?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail).map_err(io)?;
    let found = tail
        .windows(EOCD.len())
        .rposition(|w| w == EOCD)
        .is_some_and(|at| at as u64 + EOCD_MIN <= tail_len);
    if found {
        Ok(())
    } else {
        Err(CheckpointError::Truncated {
            file: path.to_path_buf(),
            format: CheckpointFormat::PytorchZip,
            expected_bytes: actual_bytes + EOCD_MIN,
            actual_bytes,
        })
    }
}

/// The safetensors header lists each tensor's byte range; the file must reach the last one.
fn check_safetensors_size(
    file: &mut std::fs::File,
    path: &Path,
    header_len: u64,
    actual_bytes: u64,
) -> Result<(), CheckpointError> {
    let truncated = |expected_bytes| CheckpointError::Truncated {
        file: path.to_path_buf(),
        format: CheckpointFormat::Safetensors,
        expected_bytes,
        actual_bytes,
    };
    let corrupt = |message: String| CheckpointError::Corrupt {
        file: path.to_path_buf(),
        format: CheckpointFormat::Safetensors,
        message,
    };
    // Header lengths beyond 100 MB are rejected by the safetensors crate too.
    if header_len > 100_000_000 {
        return Err(corrupt(format!(
            "header length {header_len} is implausible"
        )));
    }
    if 8 + header_len > actual_bytes {
        return Err(truncated(8 + header_len));
    }
    let io = |source| CheckpointError::Io {
        file: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(8)).map_err(io)?;
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("header is not a JSON object: {e}")))?;
    let mut data_end = 0u64;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let end = info
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt(format!("tensor `{name}` has no data_offsets")))?;
        data_end = data_end.max(end);
    }
    let expected = 8 + header_len + data_end;
    if expected > actual_bytes {
        return Err(truncated(expected));
    }
    Ok(())
}

/// Reads the tensor index of a checkpoint (no tensor data): upstream key -> lazy snapshot.
fn read_snapshots(
    path: &Path,
    format: CheckpointFormat,
) -> Result<Vec<TensorSnapshot>, CheckpointError> {
    let corrupt = |message: String| CheckpointError::Corrupt {
        file: path.to_path_buf(),
        format,
        message,
    };
    let snapshots = match format {
        CheckpointFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path);
            store
                .get_all_snapshots()
                .map_err(|e| corrupt(e.to_string()))?
                .values()
                .cloned()
                .collect()
        }
        CheckpointFormat::PytorchZip | CheckpointFormat::PytorchLegacy => {
            // Index renumbering would turn `resize_layers.3` into `.2`: keys are taken verbatim.
            let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
            store
                .get_all_snapshots()
                .map_err(|e| corrupt(e.to_string()))?
                .values()
                .cloned()
                .collect()
        }
    };
    Ok(snapshots)
}

/// Matches checkpoint keys to module parameters. Returns (burn path, snapshot) pairs to apply.
fn match_keys(
    params: &[ParamEntry],
    snapshots: Vec<TensorSnapshot>,
) -> (Vec<(String, TensorSnapshot)>, KeyReport) {
    let by_path: BTreeMap<&str, &ParamEntry> =
        params.iter().map(|p| (p.path.as_str(), p)).collect();
    let mut report = KeyReport::default();
    let mut matched = BTreeSet::new();
    let mut to_apply = Vec::new();
    for snapshot in snapshots {
        let key = snapshot.full_path();
        if is_ignored_key(&key) {
            continue;
        }
        let direct = burn_path_for_key(&key);
        let renamed = rename_last(&direct, |name| match name {
            "weight" => Some("gamma"),
            "bias" => Some("beta"),
            _ => None,
        });
        let entry = match by_path.get(direct.as_str()) {
            Some(entry) => Some(*entry),
            None => by_path
                .get(renamed.as_str())
                .copied()
                .filter(|e| e.is_norm_param()),
        };
        let Some(entry) = entry else {
            report.unexpected.push(key);
            continue;
        };
        matched.insert(entry.path.as_str());
        let expected = entry.upstream_shape();
        let got = snapshot.shape.to_vec();
        if expected != got {
            report
                .shape_mismatches
                .push(ShapeMismatch { key, expected, got });
            continue;
        }
        to_apply.push((entry.path.clone(), snapshot));
    }
    report.missing = params
        .iter()
        .filter(|p| !matched.contains(p.path.as_str()))
        .map(ParamEntry::upstream_key)
        .collect();
    report.missing.sort();
    report.unexpected.sort();
    report.shape_mismatches.sort_by(|a, b| a.key.cmp(&b.key));
    (to_apply, report)
}

/// Casts float tensors as they are read: those under `aggregator.` to `aggregator`, the others
/// to `rest`.
#[derive(Debug, Clone)]
struct CastAdapter {
    aggregator: DType,
    rest: DType,
}

impl ModuleAdapter for CastAdapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let in_aggregator = snapshot
            .path_stack
            .as_ref()
            .and_then(|path| path.first())
            .is_some_and(|first| first == "aggregator");
        let dtype = if in_aggregator {
            self.aggregator
        } else {
            self.rest
        };
        if !snapshot.dtype.is_float() || snapshot.dtype == dtype {
            return snapshot.clone();
        }
        let read = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            std::rc::Rc::new(move || read().map(|data| data.convert_dtype(dtype))),
            dtype,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// Reads the upstream keys and shapes stored in a checkpoint (no tensor data is read).
pub fn checkpoint_keys(path: &Path) -> Result<BTreeMap<String, Vec<usize>>, CheckpointError> {
    let format = detect_format(path)?;
    Ok(read_snapshots(path, format)?
        .into_iter()
        .map(|s| (s.full_path(), s.shape.to_vec()))
        .collect())
}

/// Checks a checkpoint against a module without loading any tensor data.
pub fn check_compatible<B: Backend, M: Module<B>>(
    module: &M,
    path: &Path,
) -> Result<(), CheckpointError> {
    let format = detect_format(path)?;
    let (_, report) = match_keys(&module_params(module), read_snapshots(path, format)?);
    if report.is_empty() {
        Ok(())
    } else {
        Err(CheckpointError::Incompatible {
            file: path.to_path_buf(),
            report,
        })
    }
}

/// Casts the float parameters of a model with random weights ([`crate::Vggt::new`]) to
/// `precision` as [`load_into`] converts a file's ([`LoadOptions::for_precision`]): aggregator in
/// its dtype, heads in float32. For benchmarks, whose timing and memory do not depend on values.
pub fn cast_to_precision<B: Backend>(
    mut model: crate::Vggt<B>,
    precision: Precision,
) -> crate::Vggt<B> {
    model.aggregator = model
        .aggregator
        .map(&mut CastParams(precision.aggregator_dtype()));
    let heads = precision.heads_dtype();
    model.camera_head = model.camera_head.map(&mut CastParams(heads));
    model.depth_head = model.depth_head.map(&mut CastParams(heads));
    model.point_head = model.point_head.map(&mut CastParams(heads));
    model
}

/// Casts every float parameter of a module to one dtype.
struct CastParams(DType);

impl<B: Backend> burn::module::ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|tensor| tensor.cast(dtype))
    }
}

/// Loads an upstream checkpoint (`.safetensors` or PyTorch `.pt`, recognised by content) into
/// `module`, strictly: every module parameter must be in the file with the right shape, and every
/// file key must be a parameter or on the ignore list. Tensors are read and converted one at a
/// time, directly into the module's parameters (lazy parameters are never initialised).
pub fn load_into<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    options: &LoadOptions,
) -> Result<M, CheckpointError> {
    let dtype = options.dtype.unwrap_or(DType::F32);
    let heads_dtype = options.heads_dtype.unwrap_or(dtype);
    for dtype in [dtype, heads_dtype] {
        if !dtype.is_float() {
            return Err(CheckpointError::UnsupportedDtype(dtype));
        }
    }
    let format = detect_format(path)?;
    let (to_apply, report) = match_keys(&module_params(&module), read_snapshots(path, format)?);
    if !report.is_empty() {
        return Err(CheckpointError::Incompatible {
            file: path.to_path_buf(),
            report,
        });
    }
    let snapshots = to_apply
        .into_iter()
        .map(|(burn_path, s)| {
            TensorSnapshot::from_closure(
                s.clone_data_fn(),
                s.dtype,
                s.shape.clone(),
                burn_path.split('.').map(str::to_string).collect(),
                Vec::new(),
                ParamId::new(),
            )
        })
        .collect();
    let adapter = PyTorchToBurnAdapter.chain(CastAdapter {
        aggregator: dtype,
        rest: heads_dtype,
    });
    let mut module = module;
    let result = module.apply(snapshots, None, Some(Box::new(adapter)), false);
    if let Some(error) = result.errors.first() {
        let (key, message) = match error {
            ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => (
                path.clone(),
                format!(
                    "shape {:?} does not fit {:?}",
                    found.as_slice(),
                    expected.as_slice()
                ),
            ),
            ApplyError::DTypeMismatch {
                path,
                expected,
                found,
            } => (
                path.clone(),
                format!("dtype {found:?} does not fit {expected:?}"),
            ),
            ApplyError::AdapterError { path, message }
            | ApplyError::LoadError { path, message } => (path.clone(), message.clone()),
        };
        return Err(CheckpointError::TensorData {
            file: path.to_path_buf(),
            key,
            message,
        });
    }
    // Both sides were matched above; anything left over here is a bug in the matching.
    assert!(
        result.missing.is_empty() && result.unused.is_empty(),
        "checkpoint matching let through missing {:?} / unused {:?}",
        result.missing,
        result.unused
    );
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remap_rules_rename_segments_and_invert() {
        let cases = [
            (
                "camera_head.poseLN_modulation.1.weight",
                "camera_head.pose_ln_modulation.weight",
            ),
            (
                "depth_head.scratch.refinenet1.resConfUnit1.conv1.bias",
                "depth_head.scratch.refinenet1.res_conf_unit1.conv1.bias",
            ),
            (
                "point_head.resize_layers.3.weight",
                "point_head.resize_layer3.weight",
            ),
            (
                "depth_head.scratch.output_conv2.2.bias",
                "depth_head.scratch.output_conv2_2.bias",
            ),
            // Untouched: index lists that are real `Vec`s.
            (
                "aggregator.frame_blocks.10.attn.qkv.weight",
                "aggregator.frame_blocks.10.attn.qkv.weight",
            ),
        ];
        for (upstream, burn) in cases {
            assert_eq!(
                burn_path_for_key(upstream),
                burn,
                "forward remap of {upstream}"
            );
            let entry = ParamEntry {
                path: burn.to_string(),
                shape: vec![1],
                owner: "Struct:Conv2d".into(),
            };
            assert_eq!(entry.upstream_key(), upstream, "inverse remap of {burn}");
        }
    }

    #[test]
    fn norm_and_linear_entries_use_upstream_layout() {
        let gamma = ParamEntry {
            path: "a.norm1.gamma".into(),
            shape: vec![8],
            owner: "Struct:LayerNorm".into(),
        };
        assert_eq!(gamma.upstream_key(), "a.norm1.weight");
        let linear = ParamEntry {
            path: "a.fc1.weight".into(),
            shape: vec![8, 32],
            owner: "Struct:Linear".into(),
        };
        assert_eq!(linear.upstream_shape(), vec![32, 8]);
        let scale = ParamEntry {
            path: "a.ls1.gamma".into(),
            shape: vec![8],
            owner: "Struct:LayerScale".into(),
        };
        assert_eq!(
            scale.upstream_key(),
            "a.ls1.gamma",
            "LayerScale gamma is not a norm parameter"
        );
    }

    #[test]
    fn ignore_list() {
        assert!(is_ignored_key("aggregator.patch_embed.mask_token"));
        assert!(is_ignored_key("track_head.tracker.query_ref_token"));
        assert!(!is_ignored_key("aggregator.patch_embed.cls_token"));
    }
}
