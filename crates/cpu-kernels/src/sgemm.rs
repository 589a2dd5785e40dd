//! Single-precision matrix products `C = alpha * op(A) op(B) + beta * C` on row-major slices,
//! from a CBLAS library opened at run time or from the portable `gemm` crate.
//!
//! The library is looked up once per process: the file named by `VGGT_BLAS` when it is set
//! (`VGGT_BLAS=portable` turns BLAS off), else the usual OpenBLAS, MKL and BLIS file names. No
//! library is linked at build time, so every build works and the fastest available code is
//! used where it is installed (`apt install libopenblas0-pthread`). Calls are made from rayon's
//! threads, one product per thread: the library's own threading is set to one thread so that
//! its pool and rayon's never compete for the same cores.

// The only unsafe code of the workspace's kernels: opening the shared library and calling its
// `cblas_sgemm`, and the portable `gemm` entry point, which takes raw pointers. Every call is
// preceded by the bounds checks of `check_operands`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr, OsStr, OsString};
use std::sync::OnceLock;

use libloading::Library;

/// Environment variable naming the CBLAS library to use (`portable` or `off`: none).
pub const BLAS_ENV: &str = "VGGT_BLAS";

/// File names tried, in order, when `VGGT_BLAS` is not set.
const CANDIDATES: &[&str] = &[
    #[cfg(target_os = "linux")]
    "libopenblas.so.0",
    #[cfg(target_os = "linux")]
    "libopenblas.so",
    #[cfg(target_os = "linux")]
    "libmkl_rt.so.2",
    #[cfg(target_os = "linux")]
    "libmkl_rt.so",
    #[cfg(target_os = "linux")]
    "libblis.so.4",
    #[cfg(target_os = "macos")]
    "libopenblas.dylib",
    #[cfg(target_os = "macos")]
    "/System/Library/Frameworks/Accelerate.framework/Accelerate",
    #[cfg(target_os = "windows")]
    "libopenblas.dll",
    #[cfg(target_os = "windows")]
    "mkl_rt.2.dll",
];

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

type CblasSgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);
type GetConfig = unsafe extern "C" fn() -> *const c_char;

/// A CBLAS library opened at run time.
pub struct Blas {
    sgemm: CblasSgemm,
    description: String,
    // Keeps the library mapped for as long as `sgemm` may be called.
    _library: Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas")
            .field("description", &self.description)
            .finish()
    }
}

impl Blas {
    /// Opens `file` (a path or a name the dynamic loader resolves) and finds `cblas_sgemm`.
    /// When the library exposes a thread-count setter (OpenBLAS, MKL), it is set to one.
    pub fn open(file: &OsStr) -> Result<Self, String> {
        let shown = file.to_string_lossy();
        // SAFETY: opening a shared library runs its initialisers; the candidates are BLAS
        // libraries, whose initialisers only set up their own state.
        let library = unsafe { Library::new(file) }.map_err(|e| format!("{shown}: {e}"))?;
        // SAFETY: `cblas_sgemm` has the standard CBLAS signature in every CBLAS library.
        let sgemm = unsafe { library.get::<CblasSgemm>(b"cblas_sgemm\0") }
            .map(|symbol| *symbol)
            .map_err(|e| format!("{shown} has no cblas_sgemm: {e}"))?;
        let mut description = shown.to_string();
        // SAFETY: these OpenBLAS / MKL entry points take one int, or nothing and return a
        // static NUL-terminated string.
        unsafe {
            if let Ok(set) = library.get::<SetThreads>(b"openblas_set_num_threads\0") {
                set(1);
            } else if let Ok(set) = library.get::<SetThreads>(b"MKL_Set_Num_Threads\0") {
                set(1);
            }
            if let Ok(config) = library.get::<GetConfig>(b"openblas_get_config\0") {
                let text = config();
                if !text.is_null() {
                    let text = CStr::from_ptr(text).to_string_lossy();
                    description = format!("{description} ({})", text.trim());
                }
            }
        }
        Ok(Self {
            sgemm,
            description,
            _library: library,
        })
    }
}

/// Where matrix products run.
#[derive(Debug)]
pub enum Provider {
    /// A CBLAS library opened at run time.
    Blas(Blas),
    /// The `gemm` crate; `reason` says why no library is used, when one was asked for.
    Portable {
        /// Why the requested library could not be used (`None`: none found or none wanted).
        reason: Option<String>,
    },
}

static PROVIDER: OnceLock<Provider> = OnceLock::new();

/// The process-wide provider, chosen on first use from `VGGT_BLAS` and the installed libraries.
pub fn provider() -> &'static Provider {
    PROVIDER.get_or_init(|| Provider::from_setting(std::env::var_os(BLAS_ENV)))
}

impl Provider {
    /// Provider for a `VGGT_BLAS` value: `None` searches the usual library names;
    /// `portable`, `off` or an empty value use the `gemm` crate; anything else is a library
    /// file, and when it cannot be opened the reason is kept and the `gemm` crate is used.
    pub fn from_setting(setting: Option<OsString>) -> Self {
        match setting {
            Some(value) if value.is_empty() || value == "portable" || value == "off" => {
                Provider::Portable { reason: None }
            }
            Some(file) => match Blas::open(&file) {
                Ok(blas) => Provider::Blas(blas),
                Err(reason) => Provider::Portable {
                    reason: Some(format!("{BLAS_ENV}: {reason}")),
                },
            },
            None => CANDIDATES
                .iter()
                .find_map(|name| Blas::open(OsStr::new(name)).ok())
                .map_or(Provider::Portable { reason: None }, Provider::Blas),
        }
    }

    /// One line for logs: the library and its build, or the portable fallback.
    pub fn description(&self) -> String {
        match self {
            Provider::Blas(blas) => format!("CBLAS {}", blas.description),
            Provider::Portable { reason: None } => {
                "portable gemm crate (no BLAS library found; install OpenBLAS for ~2x faster \
                 CPU inference)"
                    .to_string()
            }
            Provider::Portable {
                reason: Some(reason),
            } => format!("portable gemm crate ({reason})"),
        }
    }

    /// `c = alpha * op(a) op(b) + beta * c` with op(a) `m x k`, op(b) `k x n`, c `m x n`, all
    /// row-major with leading dimensions `lda`, `ldb`, `ldc`; `trans_a` means `a` holds the
    /// `k x m` matrix (op = transpose), likewise `trans_b`. With `beta == 0` the old values of
    /// `c` are never read. Runs on the calling thread.
    ///
    /// # Panics
    /// When a slice is too short for its dimensions and leading dimension, or a leading
    /// dimension is smaller than its row.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, trans_a): (&[f32], usize, bool),
        (b, ldb, trans_b): (&[f32], usize, bool),
        beta: f32,
        (c, ldc): (&mut [f32], usize),
    ) {
        check_operands(
            (m, n, k),
            (a.len(), lda, trans_a),
            (b.len(), ldb, trans_b),
            (c.len(), ldc),
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for row in c.chunks_mut(ldc).take(m) {
                for value in &mut row[..n] {
                    *value = if beta == 0.0 { 0.0 } else { beta * *value };
                }
            }
            return;
        }
        match self {
            Provider::Blas(blas) => {
                let int =
                    |value: usize| c_int::try_from(value).expect("matrix dimension fits C int");
                let op = |transposed: bool| {
                    if transposed {
                        CBLAS_TRANS
                    } else {
                        CBLAS_NO_TRANS
                    }
                };
                // SAFETY: `check_operands` proved every element the call touches lies inside
                // `a`, `b` and `c`; `c` is borrowed mutably, so nothing aliases it.
                unsafe {
                    (blas.sgemm)(
                        CBLAS_ROW_MAJOR,
                        op(trans_a),
                        op(trans_b),
                        int(m),
                        int(n),
                        int(k),
                        alpha,
                        a.as_ptr(),
                        int(lda),
                        b.as_ptr(),
                        int(ldb),
                        beta,
                        c.as_mut_ptr(),
                        int(ldc),
                    );
                }
            }
            Provider::Portable { .. } => {
                // (row stride, column stride) of op(x) for a row-major x.
                let strides = |ld: usize, transposed: bool| {
                    if transposed {
                        (1, ld as isize)
                    } else {
                        (ld as isize, 1)
                    }
                };
                let (a_rs, a_cs) = strides(lda, trans_a);
                let (b_rs, b_cs) = strides(ldb, trans_b);
                // SAFETY: as above. The `gemm` crate computes
                // dst = alpha * dst + beta * lhs * rhs, reading dst only when asked.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        ldc as isize,
                        beta != 0.0,
                        a.as_ptr(),
                        a_cs,
                        a_rs,
                        b.as_ptr(),
                        b_cs,
                        b_rs,
                        beta,
                        alpha,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
    }
}

/// Asserts that each operand's slice covers every element its dimensions address.
fn check_operands(
    (m, n, k): (usize, usize, usize),
    (a_len, lda, trans_a): (usize, usize, bool),
    (b_len, ldb, trans_b): (usize, usize, bool),
    (c_len, ldc): (usize, usize),
) {
    // A `rows x cols` row-major matrix with leading dimension `ld` spans (rows-1)*ld + cols.
    let span = |name: &str, (rows, cols): (usize, usize), ld: usize, len: usize| {
        assert!(
            ld >= cols.max(1),
            "sgemm: {name}'s leading dimension {ld} < {cols} columns"
        );
        if rows > 0 && cols > 0 {
            let needed = (rows - 1) * ld + cols;
            assert!(
                len >= needed,
                "sgemm: {name} has {len} elements, {rows}x{cols} with ld {ld} needs {needed}"
            );
        }
    };
    span("a", if trans_a { (k, m) } else { (m, k) }, lda, a_len);
    span("b", if trans_b { (n, k) } else { (k, n) }, ldb, b_len);
    span("c", (m, n), ldc, c_len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Plain triple loop in f64, the reference every provider is checked against.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        (a, lda, ta): (&[f32], usize, bool),
        (b, ldb, tb): (&[f32], usize, bool),
        beta: f32,
        (c, ldc): (&mut [f32], usize),
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0.0f64;
                for p in 0..k {
                    let x = if ta { a[p * lda + i] } else { a[i * lda + p] };
                    let y = if tb { b[j * ldb + p] } else { b[p * ldb + j] };
                    sum += x as f64 * y as f64;
                }
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[i * ldc + j] as f64
                };
                c[i * ldc + j] = (alpha as f64 * sum + old) as f32;
            }
        }
    }

    fn providers() -> Vec<Provider> {
        let mut all = vec![Provider::Portable { reason: None }];
        if let Provider::Blas(_) = Provider::from_setting(None) {
            all.push(Provider::from_setting(None));
        }
        all
    }

    #[test]
    fn every_provider_matches_the_reference_for_all_transposes_and_strides() {
        let mut rng = StdRng::seed_from_u64(7);
        for provider in providers() {
            for &(ta, tb) in &[(false, false), (false, true), (true, false), (true, true)] {
                let (m, n, k) = (37, 29, 71);
                // Leading dimensions larger than the rows, as for views into wider matrices.
                let lda = if ta { m + 3 } else { k + 5 };
                let ldb = if tb { k + 2 } else { n + 4 };
                let ldc = n + 6;
                let a = random(if ta { k * lda } else { m * lda }, &mut rng);
                let b = random(if tb { n * ldb } else { k * ldb }, &mut rng);
                let c0 = random(m * ldc, &mut rng);
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (0.125, 1.0), (-2.0, 0.5)] {
                    let mut got = c0.clone();
                    let mut want = c0.clone();
                    provider.sgemm(
                        (m, n, k),
                        alpha,
                        (&a, lda, ta),
                        (&b, ldb, tb),
                        beta,
                        (&mut got, ldc),
                    );
                    reference(
                        (m, n, k),
                        alpha,
                        (&a, lda, ta),
                        (&b, ldb, tb),
                        beta,
                        (&mut want, ldc),
                    );
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let in_matrix = i % ldc < n;
                        if in_matrix {
                            assert!(
                                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "{}: ta={ta} tb={tb} alpha={alpha} beta={beta} [{i}] {g} vs {w}",
                                provider.description()
                            );
                        } else {
                            assert_eq!(g, w, "padding between rows of c must be untouched");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_the_output_and_k_zero_scales_it() {
        for provider in providers() {
            let a = [1.0f32, 2.0];
            let b = [3.0f32, 4.0];
            let mut c = [f32::NAN];
            provider.sgemm(
                (1, 1, 2),
                1.0,
                (&a, 2, false),
                (&b, 1, false),
                0.0,
                (&mut c, 1),
            );
            assert_eq!(c, [11.0]);
            let mut c = [4.0f32];
            provider.sgemm(
                (1, 1, 0),
                1.0,
                (&[], 1, false),
                (&[], 1, false),
                0.5,
                (&mut c, 1),
            );
            assert_eq!(c, [2.0]);
        }
    }

    #[test]
    #[should_panic(expected = "sgemm: b has")]
    fn a_short_operand_is_refused_before_any_call() {
        let provider = Provider::Portable { reason: None };
        let mut c = [0.0f32; 4];
        provider.sgemm(
            (2, 2, 2),
            1.0,
            (&[0.0; 4], 2, false),
            (&[0.0; 3], 2, false),
            0.0,
            (&mut c, 2),
        );
    }

    /// CI installs OpenBLAS and sets `VGGT_EXPECT_BLAS=1`: the library must then be found (a
    /// silent fallback would halve CPU speed unnoticed). `VGGT_EXPECT_BLAS=0` expects none.
    #[test]
    fn the_expected_provider_is_in_use() {
        match std::env::var("VGGT_EXPECT_BLAS").as_deref() {
            Ok("1") => assert!(
                matches!(provider(), Provider::Blas(_)),
                "{}",
                provider().description()
            ),
            Ok("0") => assert!(
                matches!(provider(), Provider::Portable { .. }),
                "{}",
                provider().description()
            ),
            _ => {}
        }
    }

    #[test]
    fn a_missing_library_falls_back_to_portable_and_says_why() {
        let provider = Provider::from_setting(Some("/nonexistent/libnothing.so".into()));
        let text = provider.description();
        assert!(
            matches!(provider, Provider::Portable { reason: Some(_) }),
            "{text}"
        );
        assert!(
            text.contains("VGGT_BLAS") && text.contains("libnothing"),
            "{text}"
        );
        let off = Provider::from_setting(Some("portable".into()));
        assert!(matches!(off, Provider::Portable { reason: None }));
    }
}
