//! Memory accounting: live and peak bytes at every phase boundary of a forward pass.
//!
//! On the CPU the numbers come from [`CountingAllocator`], a wrapper around the system allocator
//! that a binary installs with `#[global_allocator]`. The report is a list of
//! [`PhaseMemory`] rows; a long-running process checks that `live` returns to the same baseline
//! after every window (anything else is a leak).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator plus live/peak byte counters. Install it in a binary:
/// `#[global_allocator] static A: vggt::memory::CountingAllocator = vggt::memory::CountingAllocator;`
pub struct CountingAllocator;

impl CountingAllocator {
    fn added(size: usize) {
        INSTALLED.store(true, Ordering::Relaxed);
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
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
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::added(new_size);
        }
        new
    }
}

/// Host allocator counters, if a [`CountingAllocator`] is installed in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// Bytes currently allocated.
    pub live_bytes: usize,
    /// Highest `live_bytes` since the last [`reset_peak`].
    pub peak_bytes: usize,
}

/// Reads the counters; `None` when no [`CountingAllocator`] has served an allocation.
pub fn host_memory() -> Option<HostMemory> {
    INSTALLED.load(Ordering::Relaxed).then(|| HostMemory {
        live_bytes: LIVE.load(Ordering::Relaxed),
        peak_bytes: PEAK.load(Ordering::Relaxed),
    })
}

/// Starts a new peak measurement at the current live size.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Memory and time at the end of one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseMemory {
    /// Phase name (`patch_embed`, `aggregator`, `camera_head`, `depth_head`, `point_head`, ...).
    pub phase: String,
    /// Wall time of the phase (device synchronised before the clock is read).
    pub elapsed: Duration,
    /// Live bytes at the end of the phase.
    pub live_bytes: usize,
    /// Peak bytes during the phase.
    pub peak_bytes: usize,
}

/// Records [`PhaseMemory`] rows: call [`PhaseRecorder::end`] at every boundary.
#[derive(Debug)]
pub struct PhaseRecorder {
    started: Instant,
    /// Rows so far.
    pub phases: Vec<PhaseMemory>,
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
            phases: Vec::new(),
        }
    }

    /// Closes the current phase under `phase` and starts the next one.
    pub fn end(&mut self, phase: &str) {
        let host = host_memory().unwrap_or(HostMemory {
            live_bytes: 0,
            peak_bytes: 0,
        });
        self.phases.push(PhaseMemory {
            phase: phase.to_string(),
            elapsed: self.started.elapsed(),
            live_bytes: host.live_bytes,
            peak_bytes: host.peak_bytes,
        });
        reset_peak();
        self.started = Instant::now();
    }

    /// Highest peak over all phases.
    pub fn peak_bytes(&self) -> usize {
        self.phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0)
    }
}
