//! Where the model runs: one [`Device`] names a backend and an adapter, and [`dispatch`] runs a
//! backend-generic body ([`OnBackend`]) on it. `vggtd`, `vggt-run` and `vggt-bench` all go
//! through [`dispatch`], so `--device` and the daemon's `model.device` take the same names:
//!
//! | name | backend | needs |
//! |---|---|---|
//! | `cpu` | burn's Flex CPU backend (+ `crate::cpu` kernels) | nothing |
//! | `cuda`, `cuda:N` | burn's CUDA backend, GPU N (default 0) | the `cuda` feature, the NVIDIA driver (`libcuda`), NVRTC |
//! | `wgpu`, `wgpu:N` | burn's wgpu backend over Vulkan (Linux, Windows), Metal (macOS) | the `wgpu` feature, a Vulkan/Metal driver |
//!
//! `wgpu` is the best hardware adapter (discrete, then integrated, then virtual GPU); `wgpu:N` is
//! adapter N of the list the error messages and the start-up log print (software adapters
//! included). A software adapter (Mesa's lavapipe/llvmpipe) is only taken for plain `wgpu` when
//! no hardware adapter exists and `VGGT_WGPU_ALLOW_SOFTWARE=1` says it is wanted (CI does this);
//! otherwise the error names the driver to install.
//!
//! Nothing here panics on a missing driver: on CUDA, `libcuda` and NVRTC are looked up with
//! `libloading` before cubecl touches them (cubecl panics in a worker thread otherwise), and
//! device creation plus one small kernel run inside `catch_unwind`, so a failure becomes a
//! [`DeviceError`] that names what is missing.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::Precision;

/// Environment variable that lets plain `wgpu` fall back to a software adapter.
pub const ALLOW_SOFTWARE_ENV: &str = "VGGT_WGPU_ALLOW_SOFTWARE";

/// A compute device: `cpu`, `cuda[:N]` or `wgpu[:N]` (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    /// burn's Flex CPU backend.
    #[default]
    Cpu,
    /// burn's CUDA backend on GPU `N`.
    Cuda(usize),
    /// burn's wgpu backend: `None` is the best hardware adapter, `Some(N)` adapter N.
    Wgpu(Option<usize>),
}

impl Device {
    /// The backend's name without an index (`cpu`, `cuda`, `wgpu`).
    pub fn backend_name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda(_) => "cuda",
            Self::Wgpu(_) => "wgpu",
        }
    }

    /// Whether this build has the backend (the `cuda` / `wgpu` cargo features).
    pub fn is_built(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
            Self::Wgpu(_) => cfg!(feature = "wgpu"),
        }
    }

    /// Whether the backend's attention op is fused (no score matrix in memory), for the
    /// planner: burn's Flex CPU backend and the CUDA backend; the wgpu backend's attention
    /// materialises the scores.
    pub fn fused_attention(self) -> bool {
        !matches!(self, Self::Wgpu(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(0) => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Wgpu(None) => f.write_str("wgpu"),
            Self::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

/// A device name that is not `cpu`, `cuda[:N]` or `wgpu[:N]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}`: expected a device, cpu, cuda[:N] or wgpu[:N] (N an index: cuda:1, wgpu:0)")]
pub struct DeviceParseError(String);

impl FromStr for Device {
    type Err = DeviceParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceParseError(text.to_owned());
        let (name, index) = match text.split_once(':') {
            Some((name, index)) => (name, Some(index.parse::<usize>().map_err(|_| bad())?)),
            None => (text, None),
        };
        match (name, index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda", index) => Ok(Self::Cuda(index.unwrap_or(0))),
            ("wgpu", index) => Ok(Self::Wgpu(index)),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = DeviceParseError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Device> for String {
    fn from(device: Device) -> Self {
        device.to_string()
    }
}

/// What [`dispatch`] found: the device it runs on, described for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device asked for.
    pub device: Device,
    /// One line: backend and adapter (`wgpu: llvmpipe (LLVM 15.0.6, 256 bits), Vulkan, cpu`).
    pub name: String,
    /// Details worth a log line each: driver, limits, half-precision support.
    pub details: Vec<String>,
    /// A software adapter (Mesa's lavapipe/llvmpipe): figures say nothing about GPU speed.
    pub software: bool,
}

/// Why a device cannot run the model. Every message names what to install or change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The binary was built without the backend's cargo feature.
    #[error("--device {device} needs a build with the `{feature}` cargo feature (cargo build --release --features {feature})")]
    NotBuilt {
        /// The device asked for.
        device: Device,
        /// The feature to enable.
        feature: &'static str,
    },
    /// A CUDA library could not be opened.
    #[error("--device {device}: {library} not found (searched {searched}): {hint}")]
    CudaLibrary {
        /// The device asked for.
        device: Device,
        /// `libcuda` (the driver) or `NVRTC` (the run-time compiler).
        library: &'static str,
        /// File names tried, comma-separated.
        searched: String,
        /// What to install.
        hint: &'static str,
    },
    /// The backend failed while creating the device or running its first kernel.
    #[error("--device {device}: {what} failed: {message}\n  hint: {hint}")]
    Init {
        /// The device asked for.
        device: Device,
        /// What was being done.
        what: &'static str,
        /// What the backend said.
        message: String,
        /// What to check.
        hint: String,
    },
    /// No Vulkan/Metal/DX12 adapter at all.
    #[error("--device {device}: no {api} adapter found: {hint}")]
    NoAdapter {
        /// The device asked for.
        device: Device,
        /// The graphics API searched (`Vulkan`, `Metal`, ...).
        api: String,
        /// What to install.
        hint: String,
    },
    /// Only software adapters, while plain `wgpu` asks for hardware.
    #[error("--device {device}: only a software {api} adapter was found ({adapters}): {hint}")]
    SoftwareAdapter {
        /// The device asked for.
        device: Device,
        /// The graphics API searched.
        api: String,
        /// The adapters found, with their indices.
        adapters: String,
        /// What to install, or how to accept the software adapter.
        hint: String,
    },
    /// `wgpu:N` with N past the adapter list.
    #[error("--device {device}: there is no adapter {index}; found {adapters}")]
    NoSuchAdapter {
        /// The device asked for.
        device: Device,
        /// Index asked for.
        index: usize,
        /// The adapters found, with their indices.
        adapters: String,
    },
    /// The device cannot compute in the precision asked for.
    #[error("--device {device} ({name}) does not support {precision}: {hint}")]
    UnsupportedPrecision {
        /// The device asked for.
        device: Device,
        /// Adapter or GPU name.
        name: String,
        /// Precision asked for.
        precision: Precision,
        /// What to use instead.
        hint: String,
    },
}

/// A body generic over the backend, run by [`dispatch`] on the chosen one.
pub trait OnBackend {
    /// What the body returns.
    type Output;
    /// Runs on backend `B` and `device`; `info` describes it (log it).
    fn run<B: Backend>(self, device: B::Device, info: &DeviceInfo) -> Self::Output;
}

/// Opens `device`, checks that it computes in `precision`, and runs `body` on its backend.
pub fn dispatch<F: OnBackend>(
    device: Device,
    precision: Precision,
    body: F,
) -> Result<F::Output, DeviceError> {
    match device {
        Device::Cpu => {
            let info = DeviceInfo {
                device,
                name: "cpu (burn Flex)".into(),
                details: vec![format!(
                    "CPU matrix products: {}",
                    crate::cpu::matmul_provider()
                )],
                software: false,
            };
            Ok(body.run::<burn::backend::Flex>(Default::default(), &info))
        }
        Device::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                let (cuda, info) = cuda::open(index, precision)?;
                Ok(body.run::<burn::backend::Cuda>(cuda, &info))
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (index, precision, body);
                Err(DeviceError::NotBuilt {
                    device,
                    feature: "cuda",
                })
            }
        }
        Device::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            {
                let (wgpu, info) = wgpu_backend::open(index, precision)?;
                Ok(body.run::<burn::backend::Wgpu>(wgpu, &info))
            }
            #[cfg(not(feature = "wgpu"))]
            {
                let _ = (index, precision, body);
                Err(DeviceError::NotBuilt {
                    device,
                    feature: "wgpu",
                })
            }
        }
    }
}

/// The best wgpu adapter as an explicit `wgpu:N`, a software one when it is the only one (for
/// tests and benchmarks that must run wherever the GPU path can); errors as [`dispatch`] does
/// when there is no adapter or no `wgpu` feature.
pub fn best_wgpu_adapter() -> Result<Device, DeviceError> {
    #[cfg(feature = "wgpu")]
    {
        wgpu_backend::best_adapter().map(|index| Device::Wgpu(Some(index)))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        Err(DeviceError::NotBuilt {
            device: Device::Wgpu(None),
            feature: "wgpu",
        })
    }
}

/// The largest storage binding of the wgpu adapter `device` names (cubecl's largest memory
/// page on it), read without opening the device; `None` for other devices or without adapter.
pub fn max_page_bytes(device: Device) -> Option<u64> {
    match device {
        #[cfg(feature = "wgpu")]
        Device::Wgpu(requested) => wgpu_backend::max_binding(requested),
        _ => None,
    }
}

/// Runs `f` with panics caught and their messages collected (no panic output on stderr), for
/// backend calls that panic on a missing driver, in this thread or in a worker thread whose
/// failure reaches this one as a second panic.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn catching<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    use std::sync::{Arc, Mutex};
    // The hook is process-wide: one guarded call at a time.
    static GUARD: Mutex<()> = Mutex::new(());
    let _guard = GUARD.lock().unwrap_or_else(|e| e.into_inner());
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let previous = std::panic::take_hook();
    {
        let messages = messages.clone();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            messages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(text);
        }));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|_| {
        let messages = messages.lock().unwrap_or_else(|e| e.into_inner());
        // The first message is the cause; later ones are its echoes (RecvError...).
        messages
            .first()
            .cloned()
            .unwrap_or_else(|| "the backend panicked".to_owned())
    })
}

/// One small computation read back to the host: proves that kernels compile and run.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn smoke_test<B: Backend>(device: &B::Device, dtype: burn::tensor::DType) -> f32 {
    use burn::tensor::Tensor;
    let x = Tensor::<B, 2>::ones([4, 4], device).cast(dtype);
    let y = x.clone().matmul(x) + 1.0;
    y.cast(burn::tensor::DType::F32)
        .sum()
        .into_scalar()
        .to_f32()
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
trait ToF32 {
    fn to_f32(self) -> f32;
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl<E: burn::tensor::ElementConversion> ToF32 for E {
    fn to_f32(self) -> f32 {
        self.elem()
    }
}

/// Whether the cubecl client behind a device computes in `precision`'s aggregator dtype.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn supports(properties: &cubecl::ir::DeviceProperties, precision: Precision) -> bool {
    use cubecl::ir::{ElemType, FloatKind};
    let kind = match precision {
        Precision::F32 => return true,
        Precision::Bf16 => FloatKind::BF16,
        Precision::F16 => FloatKind::F16,
    };
    properties.supports_type(ElemType::Float(kind))
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{catching, smoke_test, supports, DeviceError, DeviceInfo};
    use crate::{Device, Precision};
    use burn::backend::cuda::CudaDevice;
    use cubecl::Runtime;

    const LIBCUDA: &[&str] = &["libcuda.so.1", "libcuda.so"];
    const NVRTC: &[&str] = &[
        "libnvrtc.so",
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so.11",
    ];

    /// Whether one of `names` opens with the loader's search path.
    fn loadable(names: &[&str]) -> bool {
        names.iter().any(|name| {
            // SAFETY of the call: opening runs the library's initialisers; these are NVIDIA's
            // driver libraries, which cudarc opens the same way right after.
            #[allow(unsafe_code)]
            let opened = unsafe { libloading::Library::new(name) };
            opened.is_ok()
        })
    }

    pub(super) fn open(
        index: usize,
        precision: Precision,
    ) -> Result<(CudaDevice, DeviceInfo), DeviceError> {
        let device = Device::Cuda(index);
        if !loadable(LIBCUDA) {
            return Err(DeviceError::CudaLibrary {
                device,
                library: "libcuda (the NVIDIA driver)",
                searched: LIBCUDA.join(", "),
                hint: "install the NVIDIA driver (Debian/Ubuntu: nvidia-driver) on a machine with an NVIDIA GPU, or use --device wgpu / cpu",
            });
        }
        if !loadable(NVRTC) {
            return Err(DeviceError::CudaLibrary {
                device,
                library: "NVRTC (the CUDA run-time compiler)",
                searched: NVRTC.join(", "),
                hint: "install the CUDA toolkit's libnvrtc, or `pip install nvidia-cuda-nvrtc-cu12` (cu13 for CUDA 13 drivers) and add its site-packages/nvidia/cuda_nvrtc/lib to LD_LIBRARY_PATH",
            });
        }
        let cuda = CudaDevice::new(index);
        let client = catching(|| cubecl::cuda::CudaRuntime::client(&cuda)).map_err(|message| {
            DeviceError::Init {
                device,
                what: "opening the CUDA device",
                message,
                hint: format!(
                    "check `nvidia-smi` lists GPU {index} and that the driver matches the kernel module"
                ),
            }
        })?;
        let properties = client.properties().clone();
        let name = format!("cuda:{index}: {:?}", cuda);
        if !supports(&properties, precision) {
            return Err(DeviceError::UnsupportedPrecision {
                device,
                name,
                precision,
                hint: "bf16 needs an Ampere or newer GPU; use precision f16 or f32".into(),
            });
        }
        let dtype = precision.aggregator_dtype();
        catching(|| smoke_test::<burn::backend::Cuda>(&cuda, dtype)).map_err(|message| {
            DeviceError::Init {
                device,
                what: "compiling and running a first kernel (NVRTC)",
                message,
                hint: "NVRTC must match the driver's CUDA major version (nvidia-smi shows it)"
                    .into(),
            }
        })?;
        let memory = client.memory_usage().ok();
        let details = vec![format!(
            "max shared memory {} B, {} precision supported{}",
            properties.hardware.max_shared_memory_size,
            precision,
            memory.map_or(String::new(), |m| format!(
                ", {} B reserved at start",
                m.bytes_reserved
            ))
        )];
        Ok((
            cuda,
            DeviceInfo {
                device,
                name,
                details,
                software: false,
            },
        ))
    }
}

#[cfg(feature = "wgpu")]
mod wgpu_backend {
    use std::sync::Mutex;

    use super::{catching, smoke_test, supports, DeviceError, DeviceInfo, ALLOW_SOFTWARE_ENV};
    use crate::{Device, Precision};
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    use burn::backend::wgpu::{init_device, RuntimeOptions, WgpuDevice, WgpuSetup};
    use cubecl::Runtime;

    /// Devices opened so far in this process: adapter index -> cubecl device and its info.
    /// cubecl's `init_device` makes a new device on every call, so each adapter is opened once.
    static OPENED: Mutex<Vec<(usize, WgpuDevice, DeviceInfo)>> = Mutex::new(Vec::new());

    fn api_name(backend: wgpu::Backend) -> String {
        match backend {
            wgpu::Backend::Vulkan => "Vulkan".into(),
            wgpu::Backend::Metal => "Metal".into(),
            wgpu::Backend::Dx12 => "DX12".into(),
            wgpu::Backend::Gl => "OpenGL".into(),
            other => format!("{other:?}"),
        }
    }

    fn install_hint(backend: wgpu::Backend) -> String {
        match backend {
            wgpu::Backend::Vulkan => "install the Vulkan loader and your GPU's Vulkan driver \
                 (Debian/Ubuntu: libvulkan1 plus mesa-vulkan-drivers for AMD/Intel GPUs, or the NVIDIA driver; \
                 `vulkaninfo --summary` from vulkan-tools lists what the loader sees)"
                .into(),
            wgpu::Backend::Metal => "Metal needs macOS 10.13 or newer on a Mac with a Metal GPU".into(),
            _ => "install your GPU's driver".into(),
        }
    }

    fn is_software(info: &wgpu::AdapterInfo) -> bool {
        info.device_type == wgpu::DeviceType::Cpu
    }

    fn describe(index: usize, info: &wgpu::AdapterInfo) -> String {
        format!(
            "{index}: {} ({:?}{})",
            info.name,
            info.device_type,
            if is_software(info) { ", software" } else { "" }
        )
    }

    /// Hardware adapters first: discrete, integrated, virtual, other; software last.
    fn rank(info: &wgpu::AdapterInfo) -> u8 {
        match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        }
    }

    /// The adapter index `requested` stands for, checked against the rules of the module docs.
    fn choose(
        device: Device,
        requested: Option<usize>,
        infos: &[wgpu::AdapterInfo],
        api: &str,
        backend: wgpu::Backend,
        allow_software: bool,
    ) -> Result<usize, DeviceError> {
        let list = || {
            infos
                .iter()
                .enumerate()
                .map(|(i, info)| describe(i, info))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if infos.is_empty() {
            return Err(DeviceError::NoAdapter {
                device,
                api: api.to_owned(),
                hint: install_hint(backend),
            });
        }
        if let Some(index) = requested {
            return if index < infos.len() {
                Ok(index)
            } else {
                Err(DeviceError::NoSuchAdapter {
                    device,
                    index,
                    adapters: list(),
                })
            };
        }
        let best = (0..infos.len())
            .min_by_key(|&i| rank(&infos[i]))
            .unwrap_or_default();
        if is_software(&infos[best]) && !allow_software {
            return Err(DeviceError::SoftwareAdapter {
                device,
                api: api.to_owned(),
                adapters: list(),
                hint: format!(
                    "{}; to run on the software adapter anyway (slow; for tests), pass --device wgpu:{best} or set {ALLOW_SOFTWARE_ENV}=1",
                    install_hint(backend)
                ),
            });
        }
        Ok(best)
    }

    fn instance_and_adapters(
        device: Device,
        backend: wgpu::Backend,
    ) -> Result<(wgpu::Instance, Vec<wgpu::Adapter>), DeviceError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters =
            catching(|| cubecl::future::block_on(instance.enumerate_adapters(backend.into())))
                .map_err(|message| DeviceError::Init {
                    device,
                    what: "listing adapters",
                    message,
                    hint: install_hint(backend),
                })?;
        Ok((instance, adapters))
    }

    pub(super) fn best_adapter() -> Result<usize, DeviceError> {
        let device = Device::Wgpu(None);
        let backend = AutoGraphicsApi::backend();
        let (_, adapters) = instance_and_adapters(device, backend)?;
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        choose(device, None, &infos, &api_name(backend), backend, true)
    }

    pub(super) fn max_binding(requested: Option<usize>) -> Option<u64> {
        let device = Device::Wgpu(requested);
        let backend = AutoGraphicsApi::backend();
        let (_, adapters) = instance_and_adapters(device, backend).ok()?;
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        let index = choose(device, requested, &infos, &api_name(backend), backend, true).ok()?;
        Some(adapters[index].limits().max_storage_buffer_binding_size)
    }

    fn allow_software() -> bool {
        std::env::var(ALLOW_SOFTWARE_ENV).is_ok_and(|v| v == "1")
    }

    pub(super) fn open(
        requested: Option<usize>,
        precision: Precision,
    ) -> Result<(WgpuDevice, DeviceInfo), DeviceError> {
        let device = Device::Wgpu(requested);
        let backend = AutoGraphicsApi::backend();
        let api = api_name(backend);
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        let (instance, adapters) = instance_and_adapters(device, backend)?;
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        let index = choose(device, requested, &infos, &api, backend, allow_software())?;
        let adapter = &adapters[index];
        let info = &infos[index];
        let name = format!(
            "wgpu:{index}: {} ({:?}, {api}{})",
            info.name,
            info.device_type,
            if is_software(info) { ", software" } else { "" }
        );
        let features = adapter.features();
        if !precision_supported(features, precision) {
            return Err(DeviceError::UnsupportedPrecision {
                device,
                name,
                precision,
                hint: match precision {
                    Precision::Bf16 => "burn's wgpu backend has no bfloat16 shaders; use precision f16 (where the adapter has 16-bit shader floats) or f32".into(),
                    _ => "the adapter lacks 16-bit shader floats (wgpu feature SHADER_F16); use precision f32".into(),
                },
            });
        }

        if let Some((_, wgpu_device, info)) = opened.iter().find(|(i, _, _)| *i == index) {
            return Ok((wgpu_device.clone(), info.clone()));
        }
        let limits = adapter.limits();
        // cubecl's own request, without the experimental features its WGSL path never uses.
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("vggt"),
            required_features: features
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
                .difference(wgpu::Features::all_experimental_mask()),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            trace: wgpu::Trace::Off,
        };
        let requested_device =
            catching(|| cubecl::future::block_on(adapter.request_device(&descriptor))).map_err(
                |message| DeviceError::Init {
                    device,
                    what: "opening the adapter",
                    message,
                    hint: install_hint(backend),
                },
            )?;
        let (wgpu_device, queue) = requested_device.map_err(|e| DeviceError::Init {
            device,
            what: "opening the adapter",
            message: e.to_string(),
            hint: install_hint(backend),
        })?;
        let setup = WgpuSetup {
            instance: instance.clone(),
            adapter: adapter.clone(),
            device: wgpu_device,
            queue,
            backend,
        };
        let cube_device =
            catching(|| init_device(setup, RuntimeOptions::default())).map_err(|message| {
                DeviceError::Init {
                    device,
                    what: "starting the compute server",
                    message,
                    hint: install_hint(backend),
                }
            })?;
        let client = cubecl::wgpu::WgpuRuntime::client(&cube_device);
        if !supports(client.properties(), precision) {
            return Err(DeviceError::UnsupportedPrecision {
                device,
                name,
                precision,
                hint: "use precision f32".into(),
            });
        }
        let dtype = precision.aggregator_dtype();
        catching(|| smoke_test::<burn::backend::Wgpu>(&cube_device, dtype)).map_err(|message| {
            DeviceError::Init {
                device,
                what: "compiling and running a first kernel",
                message,
                hint: install_hint(backend),
            }
        })?;
        let details = vec![
            format!(
                "driver {} ({}), vendor {:#06x}, device {:#06x}{}",
                info.driver,
                info.driver_info,
                info.vendor,
                info.device,
                if info.device_pci_bus_id.is_empty() {
                    String::new()
                } else {
                    format!(", PCI {}", info.device_pci_bus_id)
                }
            ),
            format!(
                "limits: max buffer {} B, max storage binding {} B, {} storage buffers per stage, workgroup storage {} B, {} invocations per workgroup",
                limits.max_buffer_size,
                limits.max_storage_buffer_binding_size,
                limits.max_storage_buffers_per_shader_stage,
                limits.max_compute_workgroup_storage_size,
                limits.max_compute_invocations_per_workgroup,
            ),
            format!(
                "16-bit shader floats (f16): {}; bf16: no (WGSL has no bfloat16)",
                if features.contains(wgpu::Features::SHADER_F16) { "yes" } else { "no" }
            ),
        ];
        let info = DeviceInfo {
            device,
            name,
            details,
            software: is_software(info),
        };
        opened.push((index, cube_device.clone(), info.clone()));
        Ok((cube_device, info))
    }

    fn precision_supported(features: wgpu::Features, precision: Precision) -> bool {
        match precision {
            Precision::F32 => true,
            Precision::F16 => features.contains(wgpu::Features::SHADER_F16),
            Precision::Bf16 => false,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn adapter(name: &str, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
            wgpu::AdapterInfo {
                name: name.into(),
                vendor: 0,
                device: 0,
                device_type,
                device_pci_bus_id: String::new(),
                driver: String::new(),
                driver_info: String::new(),
                backend: wgpu::Backend::Vulkan,
                subgroup_min_size: 4,
                subgroup_max_size: 64,
                transient_saves_memory: false,
            }
        }

        #[test]
        fn best_adapter_is_hardware_and_software_needs_consent() {
            use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu};
            let vk = wgpu::Backend::Vulkan;
            let device = Device::Wgpu(None);
            let mixed = [
                adapter("llvmpipe", Cpu),
                adapter("Intel", IntegratedGpu),
                adapter("AMD", DiscreteGpu),
            ];
            assert_eq!(choose(device, None, &mixed, "Vulkan", vk, false), Ok(2));
            assert_eq!(choose(device, Some(0), &mixed, "Vulkan", vk, false), Ok(0));
            let software = [adapter("llvmpipe", Cpu)];
            let err = choose(device, None, &software, "Vulkan", vk, false).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, DeviceError::SoftwareAdapter { .. }), "{text}");
            assert!(
                text.contains("mesa-vulkan-drivers") && text.contains("wgpu:0"),
                "{text}"
            );
            assert_eq!(choose(device, None, &software, "Vulkan", vk, true), Ok(0));
            let none = choose(device, None, &[], "Vulkan", vk, true).unwrap_err();
            assert!(none.to_string().contains("libvulkan1"), "{none}");
            let past = choose(Device::Wgpu(Some(3)), Some(3), &mixed, "Vulkan", vk, true);
            assert!(matches!(
                past,
                Err(DeviceError::NoSuchAdapter { index: 3, .. })
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_and_round_trip() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:1", Device::Cuda(1)),
            ("wgpu", Device::Wgpu(None)),
            ("wgpu:0", Device::Wgpu(Some(0))),
            ("wgpu:2", Device::Wgpu(Some(2))),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device), "{text}");
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
        assert_eq!(Device::Cuda(0).to_string(), "cuda");
        for bad in ["gpu", "cpu:0", "cuda:x", "wgpu:", "vulkan", ""] {
            let err = bad.parse::<Device>().expect_err(bad);
            assert!(
                err.to_string().contains("cpu, cuda[:N] or wgpu[:N]"),
                "{err}"
            );
        }
    }

    #[test]
    fn serde_uses_the_same_names() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Holder {
            device: Device,
        }
        let text = serde_json::to_string(&Holder {
            device: Device::Wgpu(Some(1)),
        })
        .expect("serialises");
        assert_eq!(text, r#"{"device":"wgpu:1"}"#);
        let back: Holder = serde_json::from_str(r#"{"device":"cuda:2"}"#).expect("parses");
        assert_eq!(back.device, Device::Cuda(2));
        assert!(serde_json::from_str::<Holder>(r#"{"device":"tpu"}"#).is_err());
    }

    struct Sum;

    impl OnBackend for Sum {
        type Output = f32;
        fn run<B: Backend>(self, device: B::Device, _info: &DeviceInfo) -> f32 {
            burn::tensor::Tensor::<B, 1>::ones([5], &device)
                .sum()
                .into_scalar()
                .elem()
        }
    }

    use burn::tensor::ElementConversion;

    #[test]
    fn the_cpu_runs_the_body_and_missing_backends_are_errors() {
        assert_eq!(dispatch(Device::Cpu, Precision::F32, Sum), Ok(5.0));
        for device in [Device::Cuda(0), Device::Wgpu(None)] {
            if !device.is_built() {
                let err = dispatch(device, Precision::F32, Sum).unwrap_err();
                assert!(
                    matches!(err, DeviceError::NotBuilt { .. }),
                    "{device}: {err}"
                );
                assert!(err.to_string().contains("--features"), "{err}");
            }
        }
    }
}
