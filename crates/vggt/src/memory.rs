//! Memory accounting: live and peak bytes at every phase boundary of a forward pass.
//!
//! On the CPU the numbers come from [`CountingAllocator`], a wrapper around the system allocator
//! that a binary installs with `#[global_allocator]`. On an accelerator a [`DeviceProbe`] reads the
//! backend's own accounting at each boundary ([`device_probe`]: cubecl's memory pools on CUDA
//! and wgpu, `memory_usage`: in use, padding, reserved). The report is a list of [`PhaseMemory`] rows; a long-running process checks
//! that `live` returns to the same baseline after every window (anything else is a leak).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static FLOOR: AtomicUsize = AtomicUsize::new(usize::MAX);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator plus live, peak and floor byte counters. Install it in a binary:
/// `#[global_allocator] static A: vggt::memory::CountingAllocator = vggt::memory::CountingAllocator;`
pub struct CountingAllocator;

impl CountingAllocator {
    fn added(size: usize) {
        INSTALLED.store(true, Ordering::Relaxed);
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }

    fn removed(size: usize) {
        let live = LIVE.fetch_sub(size, Ordering::Relaxed) - size;
        FLOOR.fetch_min(live, Ordering::Relaxed);
    }
}

// SAFETY: every call forwards to `System` with the same layout; the counters are plain atomics.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::added(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::added(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        Self::removed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        // One change by the difference: freeing the old size first would pass through a live
        // size the heap never had and mark it as a floor.
        if !new.is_null() {
            match new_size.checked_sub(layout.size()) {
                Some(grown) => Self::added(grown),
                None => Self::removed(layout.size() - new_size),
            }
        }
        new
    }
}

/// Host allocator counters, if a [`CountingAllocator`] is installed in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMemory {
    /// Bytes currently allocated.
    pub live_bytes: usize,
    /// Highest `live_bytes` since the last [`reset_peak`].
    pub peak_bytes: usize,
    /// Lowest `live_bytes` since the last [`take_floor`] (the current size when nothing was
    /// freed since): what stayed allocated throughout, whatever passed through in between.
    pub floor_bytes: usize,
}

/// Large buffers from the process's heap instead of fresh pages (glibc only; elsewhere a no-op
/// returning `false`). glibc maps every allocation above its mmap threshold (128 KiB, rising
/// to at most 32 MiB) as new pages and unmaps it on free, so each large activation of a
/// forward pass is page-faulted and zeroed by the kernel again: ~13 % of a VGGT-1B forward at
/// S = 2 on the CPU (`bench/RESULTS.md`, section 6). With a 1 GiB threshold and no trimming,
/// freed buffers are reused; the price is that the resident size stays at its high-water mark
/// (the next window needs it again). The daemon and the bench binaries call this first.
#[allow(unsafe_code)]
pub fn keep_large_allocations() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; glibc serialises it with allocations.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Reads the counters; `None` when no [`CountingAllocator`] has served an allocation.
pub fn host_memory() -> Option<HostMemory> {
    INSTALLED.load(Ordering::Relaxed).then(|| {
        let live_bytes = LIVE.load(Ordering::Relaxed);
        HostMemory {
            live_bytes,
            peak_bytes: PEAK.load(Ordering::Relaxed),
            floor_bytes: FLOOR.load(Ordering::Relaxed).min(live_bytes),
        }
    })
}

/// Reads the counters and starts a new floor measurement at the current live size: the floor
/// of each interval between two calls. A long-running process reads it to tell what it keeps
/// (a leak raises the floor) from what its threads have in flight at the moment it looks.
pub fn take_floor() -> Option<HostMemory> {
    let memory = host_memory()?;
    FLOOR.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    Some(memory)
}

/// Starts a new peak measurement at the current live size.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// An accelerator's memory accounting, read at a phase boundary: cubecl's memory pools
/// (`ComputeClient::memory_usage`) on the CUDA and wgpu backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMemory {
    /// Bytes held by live tensors (the pools' active slices).
    pub in_use_bytes: u64,
    /// Bytes of padding in the active slices (alignment), on top of `in_use_bytes`.
    pub padding_bytes: u64,
    /// Bytes the pools have reserved from the device (what the device actually holds).
    pub reserved_bytes: u64,
}

/// Reads an accelerator's memory accounting (after the device has been synchronised).
pub type DeviceProbe = Box<dyn FnMut() -> Option<DeviceMemory> + Send>;

/// The memory probe of `device` when it is a CUDA or wgpu device of a backend this build has
/// (`None` for the CPU): the cubecl compute client's `memory_usage`. The pools keep no peak, so a
/// report's device peak is the highest value seen at phase boundaries; the reserved bytes only
/// grow between [`release_device_memory`] calls, so after a forward they are the pools' high-water
/// mark of that forward. cubecl keeps one set of pools per stream and one stream per thread:
/// the probe reads the pools of the thread that calls it (weights loaded in another thread are
/// in that thread's pools).
pub fn device_probe<D: std::any::Any + Clone + Send>(device: &D) -> Option<DeviceProbe> {
    let _ = device;
    #[cfg(feature = "wgpu")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::wgpu::WgpuDevice>()
    {
        let device = device.clone();
        return Some(Box::new(move || {
            use cubecl::Runtime;
            let client = cubecl::wgpu::WgpuRuntime::client(&device);
            usage(client.memory_usage().ok()?)
        }));
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::cuda::CudaDevice>()
    {
        let device = device.clone();
        return Some(Box::new(move || {
            use cubecl::Runtime;
            let client = cubecl::cuda::CudaRuntime::client(&device);
            usage(client.memory_usage().ok()?)
        }));
    }
    None
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn usage(usage: cubecl::MemoryUsage) -> Option<DeviceMemory> {
    Some(DeviceMemory {
        in_use_bytes: usage.bytes_in_use,
        padding_bytes: usage.bytes_padding,
        reserved_bytes: usage.bytes_reserved,
    })
}

/// The largest memory page of the opened device's pools (cubecl's `max_page_size`: the largest
/// storage binding on wgpu, a quarter of the memory on CUDA); `None` on the CPU. With
/// `crate::planner::subslice_pool_bytes` it gives the planner's pool slack for this device.
pub fn device_max_page_bytes<D: std::any::Any + Clone + Send>(device: &D) -> Option<u64> {
    let _ = device;
    #[cfg(feature = "wgpu")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::wgpu::WgpuDevice>()
    {
        use cubecl::Runtime;
        let client = cubecl::wgpu::WgpuRuntime::client(device);
        return Some(client.properties().memory.max_page_size);
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::cuda::CudaDevice>()
    {
        use cubecl::Runtime;
        let client = cubecl::cuda::CudaRuntime::client(device);
        return Some(client.properties().memory.max_page_size);
    }
    None
}

/// Asks the device's memory pools to return the pages no live tensor uses (cubecl's
/// `memory_cleanup`; a no-op on the CPU). Before a window, this makes the reserved bytes after
/// it the window's own high-water mark. The pools decide what they can free.
pub fn release_device_memory<D: std::any::Any + Clone + Send>(device: &D) {
    let _ = device;
    #[cfg(feature = "wgpu")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::wgpu::WgpuDevice>()
    {
        use cubecl::Runtime;
        let client = cubecl::wgpu::WgpuRuntime::client(device);
        client.memory_cleanup();
        let _ = cubecl::future::block_on(client.sync());
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = (device as &dyn std::any::Any).downcast_ref::<cubecl::cuda::CudaDevice>()
    {
        use cubecl::Runtime;
        let client = cubecl::cuda::CudaRuntime::client(device);
        client.memory_cleanup();
        let _ = cubecl::future::block_on(client.sync());
    }
}

/// Memory and time at the end of one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseMemory {
    /// Phase name (`patch_embed`, `aggregator.layer_NN`, `camera_head`, `depth_head`, `point_head`, ...).
    pub phase: String,
    /// Wall time of the phase (device synchronised before the clock is read).
    pub elapsed: Duration,
    /// Live bytes at the end of the phase.
    pub live_bytes: usize,
    /// Peak bytes during the phase.
    pub peak_bytes: usize,
    /// Accelerator accounting at the end of the phase, when a [`DeviceProbe`] is installed.
    pub device: Option<DeviceMemory>,
}

/// Records [`PhaseMemory`] rows: call [`PhaseRecorder::end`] at every boundary.
pub struct PhaseRecorder {
    started: Instant,
    probe: Option<DeviceProbe>,
    /// Rows so far.
    pub phases: Vec<PhaseMemory>,
}

impl std::fmt::Debug for PhaseRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseRecorder")
            .field("started", &self.started)
            .field("probe", &self.probe.is_some())
            .field("phases", &self.phases)
            .finish()
    }
}

impl Default for PhaseRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseRecorder {
    /// Starts the first phase now.
    pub fn new() -> Self {
        reset_peak();
        Self {
            started: Instant::now(),
            probe: None,
            phases: Vec::new(),
        }
    }

    /// Also reads `probe` (an accelerator's accounting) at every boundary.
    pub fn with_device_probe(mut self, probe: DeviceProbe) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Restarts the clock and the host peak (e.g. before the next window), keeping the rows.
    pub fn restart(&mut self) {
        reset_peak();
        self.started = Instant::now();
    }

    /// Closes the current phase under `phase` and starts the next one.
    pub fn end(&mut self, phase: &str) {
        let host = host_memory().unwrap_or_default();
        let device = self.probe.as_mut().and_then(|probe| probe());
        self.phases.push(PhaseMemory {
            phase: phase.to_string(),
            elapsed: self.started.elapsed(),
            live_bytes: host.live_bytes,
            peak_bytes: host.peak_bytes,
            device,
        });
        reset_peak();
        self.started = Instant::now();
    }

    /// Highest host peak over all phases.
    pub fn peak_bytes(&self) -> usize {
        self.phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0)
    }

    /// Highest device bytes (reserved) seen at any boundary, when a probe is installed.
    pub fn device_peak_bytes(&self) -> Option<u64> {
        self.phases
            .iter()
            .filter_map(|p| p.device.map(|d| d.reserved_bytes))
            .max()
    }

    /// Highest device bytes in use (live tensors) seen at any boundary, when a probe is installed.
    pub fn device_peak_in_use_bytes(&self) -> Option<u64> {
        self.phases
            .iter()
            .filter_map(|p| p.device.map(|d| d.in_use_bytes))
            .max()
    }

    /// Reads the device probe now (after the caller synchronised the device), outside any row.
    pub fn device_now(&mut self) -> Option<DeviceMemory> {
        self.probe.as_mut().and_then(|probe| probe())
    }

    /// One line per phase: name, time, host live/peak (MiB) and device in-use/reserved (MiB).
    pub fn report(&self) -> String {
        const MIB: f64 = 1024.0 * 1024.0;
        let mut out = String::new();
        for p in &self.phases {
            out.push_str(&format!(
                "{:<20} {:>9.3} s  host live {:>9.1} MiB  peak {:>9.1} MiB",
                p.phase,
                p.elapsed.as_secs_f64(),
                p.live_bytes as f64 / MIB,
                p.peak_bytes as f64 / MIB,
            ));
            if let Some(d) = p.device {
                out.push_str(&format!(
                    "  device in use {:>9.1} MiB  padding {:>7.1} MiB  reserved {:>9.1} MiB",
                    d.in_use_bytes as f64 / MIB,
                    d.padding_bytes as f64 / MIB,
                    d.reserved_bytes as f64 / MIB,
                ));
            }
            out.push('\n');
        }
        out
    }
}
