//! Intel oneMKL's GEMMs for the CPU encoder, opened at run time.
//!
//! `libmkl_rt` (from PyPI's `mkl` wheel; `scripts/lib/mkl.sh` installs it) is
//! opened with `dlopen`, its sequential threading layer selected (each model
//! thread runs its own products), and these products are offered, all but the
//! strided ones with the weights as the second, transposed operand
//! (`C = A · Bᵀ`, row-major):
//!
//! - `cblas_sgemm`, as [`Mkl::f32_gemm`];
//! - `cblas_gemm_bf16bf16f32`, as [`Mkl::bf16_gemm`] (bf16 inputs, f32
//!   accumulation and output; AMX-BF16 or AVX-512 BF16 where the CPU has them);
//! - `cblas_gemm_s8u8s32`, as [`Mkl::u8s8_gemm`] (unsigned 8-bit activations,
//!   signed 8-bit weights, i32 accumulation; AMX-INT8 or AVX-512 VNNI);
//! - the last two with the weights packed once ([`Mkl::pack_bf16`], [`Mkl::pack_s8`]);
//! - the first two on strided views of larger matrices ([`Mkl::f32_strided`],
//!   [`Mkl::bf16_strided`]).
//!
//! Each call checks its slices against the shape before it crosses into C, so
//! the safe functions cannot read or write out of bounds.
#![allow(unsafe_code)] // the reason for this crate: see the crate's Cargo.toml

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use libloading::Library;

mod packed;
mod strided;
#[cfg(test)]
mod tests;

pub use packed::Packed;
pub use strided::{View, ViewMut};

/// The file name `Mkl::open` looks for on the loader's path when given none.
pub const LIBRARY_NAME: &str = "libmkl_rt.so.2";

const ROW_MAJOR: c_int = 101;
const COL_MAJOR: c_int = 102;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const FIX_OFFSET: c_int = 173;
const THREADING_SEQUENTIAL: c_int = 1;
const A_MATRIX: c_int = 161;
const B_MATRIX: c_int = 162;
const PACKED: c_int = 151;
/// The row count oneMKL is told when it packs weights (the packed layout serves
/// products of any row count).
const PACK_ROWS_HINT: usize = 512;

/// `cblas_sgemm` (`T` = f32) and `cblas_gemm_bf16bf16f32` (`T` = bf16 bits):
/// the same prototype, f32 accumulation and output.
type Gemm<T> = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const T,
    c_int,
    *const T,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type Sgemm = Gemm<f32>;
type GemmBf16 = Gemm<u16>;
type GemmS8u8 = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const c_void,
    c_int,
    i8,
    *const c_void,
    c_int,
    i8,
    f32,
    *mut i32,
    c_int,
    *const i32,
);
type PackGetSize = unsafe extern "C" fn(c_int, c_int, c_int, c_int) -> usize;
type PackBf16 =
    unsafe extern "C" fn(c_int, c_int, c_int, c_int, c_int, c_int, *const u16, c_int, *mut u16);
type PackS8u8 = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    c_int,
    *mut c_void,
);
type SetThreadingLayer = unsafe extern "C" fn(c_int) -> c_int;
type VersionString = unsafe extern "C" fn(*mut c_char, c_int);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: libloading::Error,
    },
    #[error("{path} has no {symbol}: {source}")]
    Symbol {
        path: PathBuf,
        symbol: &'static str,
        source: libloading::Error,
    },
    #[error("{path} did not take the sequential threading layer (it answered {answer})")]
    Threading { path: PathBuf, answer: i32 },
}

/// An opened oneMKL. The function pointers stay valid while `_library` lives,
/// and it lives as long as this value.
pub struct Mkl {
    sgemm: Sgemm,
    bf16: GemmBf16,
    s8u8: GemmS8u8,
    bf16_pack_size: PackGetSize,
    bf16_pack: PackBf16,
    bf16_compute: GemmBf16,
    s8u8_pack_size: PackGetSize,
    s8u8_pack: PackS8u8,
    s8u8_compute: GemmS8u8,
    version: String,
    path: PathBuf,
    _library: Library,
}

impl std::fmt::Debug for Mkl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mkl")
            .field("version", &self.version)
            .field("path", &self.path)
            .finish()
    }
}

fn int(value: usize) -> c_int {
    c_int::try_from(value).unwrap_or(c_int::MAX)
}

/// Checks that every dimension fits MKL's 32-bit integers.
fn check_dims(m: usize, n: usize, k: usize) {
    let limit = c_int::MAX as usize;
    assert!(
        m <= limit && n <= limit && k <= limit,
        "a dimension exceeds MKL's int"
    );
}

/// Checks that the operands hold `m x k`, `n x k` and `m x n` values and that
/// every dimension fits MKL's 32-bit integers.
fn check(a: usize, b: usize, c: usize, m: usize, n: usize, k: usize) {
    check_dims(m, n, k);
    assert!(a >= m * k, "A has {a} values, the product needs {m} x {k}");
    assert!(b >= n * k, "B has {b} values, the product needs {n} x {k}");
    assert!(c >= m * n, "C has {c} values, the product needs {m} x {n}");
}

/// One row-major GEMM call, `c (m x n) = a (m x k) · op(b) + beta · c`, with
/// each operand's pointer, row stride and operation (`TRANS`, `NO_TRANS`, or
/// `PACKED` for b).
struct Call<T> {
    dims: (usize, usize, usize),
    a: *const T,
    lda: usize,
    a_op: c_int,
    b: *const T,
    ldb: usize,
    b_op: c_int,
    beta: f32,
    c: *mut f32,
    ldc: usize,
}

/// Makes `call` on `gemm`.
///
/// # Safety
/// Each pointer must hold its operand at its stride (or `b` a buffer packed for
/// it), and `gemm` must be a GEMM of the `Gemm` prototype.
unsafe fn gemm_call<T>(gemm: Gemm<T>, call: Call<T>) {
    let (m, n, k) = call.dims;
    // SAFETY: the caller's promise; MKL reads `a` and `b` and writes only the
    // m x n values of `c` at its stride.
    unsafe {
        gemm(
            ROW_MAJOR,
            call.a_op,
            call.b_op,
            int(m),
            int(n),
            int(k),
            1.0,
            call.a,
            int(call.lda.max(1)),
            call.b,
            int(call.ldb.max(1)),
            call.beta,
            call.c,
            int(call.ldc.max(1)),
        );
    }
}

/// `c (m x n) += a (m x k) · bᵀ`, row-major, `b` given as `n x k` or (`packed`)
/// as weights in oneMKL's packed layout.
///
/// # Safety
/// `a` must point to `m x k` values, `b` to `n x k` ones (or a buffer packed for
/// `n x k`), and `c` must hold `m x n`; `gemm` must be a GEMM of the `Gemm` prototype.
#[allow(clippy::too_many_arguments)] // the BLAS call's own arguments
unsafe fn accumulate<T>(
    gemm: Gemm<T>,
    packed: bool,
    m: usize,
    n: usize,
    k: usize,
    a: *const T,
    b: *const T,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let call = Call {
        dims: (m, n, k),
        a,
        lda: k,
        a_op: NO_TRANS,
        b,
        ldb: k,
        b_op: if packed { PACKED } else { TRANS },
        beta: 1.0,
        c: c.as_mut_ptr(),
        ldc: n,
    };
    // SAFETY: the caller's promise, for these strides.
    unsafe { gemm_call(gemm, call) }
}

/// `c (m x n) = a (m x k, unsigned) · wᵀ (w: n x k, signed, or packed weights)`,
/// exact in i32, row-major. oneMKL's routine takes the signed operand first, so
/// this runs it on the transposed problem, `cᵀ = w · aᵀ`, in column-major terms.
///
/// # Safety
/// `w` must point to `n x k` values (or a buffer packed for `n x k`), `a` must
/// hold `m x k` and `c` `m x n`; `gemm` must be a GEMM of the `GemmS8u8` prototype.
#[allow(clippy::too_many_arguments)] // the BLAS call's own arguments
unsafe fn integer_product(
    gemm: GemmS8u8,
    packed: bool,
    m: usize,
    n: usize,
    k: usize,
    w: *const c_void,
    a: &[u8],
    c: &mut [i32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let w_op = if packed { PACKED } else { TRANS };
    let (mi, ni, ki, ld) = (int(m), int(n), int(k), int(k.max(1)));
    let no_offset = [0i32];
    // SAFETY: the caller's promise; with a fixed offset MKL reads one value of
    // `no_offset`, and it writes only the m x n values of `c`.
    unsafe {
        gemm(
            COL_MAJOR,
            w_op,
            NO_TRANS,
            FIX_OFFSET,
            ni,
            mi,
            ki,
            1.0,
            w,
            ld,
            0,
            a.as_ptr().cast(),
            ld,
            0,
            0.0,
            c.as_mut_ptr(),
            ni,
            no_offset.as_ptr(),
        );
    }
}

impl Mkl {
    /// Opens `libmkl_rt` at `path`, or [`LIBRARY_NAME`] on the loader's path, and
    /// selects its sequential threading layer for this process.
    pub fn open(path: Option<&Path>) -> Result<Mkl, Error> {
        let path = path.map_or_else(|| PathBuf::from(LIBRARY_NAME), Path::to_path_buf);
        // SAFETY: loading oneMKL runs its initialisers, which have no
        // preconditions on the caller.
        let library = unsafe { Library::new(&path) }.map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        macro_rules! symbol {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the type is the symbol's C prototype in mkl.h.
                let symbol = unsafe { library.get::<$ty>(concat!($name, "\0").as_bytes()) }
                    .map_err(|source| Error::Symbol {
                        path: path.clone(),
                        symbol: $name,
                        source,
                    })?;
                *symbol
            }};
        }
        let set_threading: SetThreadingLayer =
            symbol!("MKL_Set_Threading_Layer", SetThreadingLayer);
        let version_string: VersionString = symbol!("MKL_Get_Version_String", VersionString);
        let sgemm = symbol!("cblas_sgemm", Sgemm);
        let bf16 = symbol!("cblas_gemm_bf16bf16f32", GemmBf16);
        let s8u8 = symbol!("cblas_gemm_s8u8s32", GemmS8u8);
        let bf16_pack_size = symbol!("cblas_gemm_bf16bf16f32_pack_get_size", PackGetSize);
        let bf16_pack = symbol!("cblas_gemm_bf16bf16f32_pack", PackBf16);
        let bf16_compute = symbol!("cblas_gemm_bf16bf16f32_compute", GemmBf16);
        let s8u8_pack_size = symbol!("cblas_gemm_s8u8s32_pack_get_size", PackGetSize);
        let s8u8_pack = symbol!("cblas_gemm_s8u8s32_pack", PackS8u8);
        let s8u8_compute = symbol!("cblas_gemm_s8u8s32_compute", GemmS8u8);
        // SAFETY: takes an enum value and returns the layer in force.
        let answer = unsafe { set_threading(THREADING_SEQUENTIAL) };
        if answer != THREADING_SEQUENTIAL {
            return Err(Error::Threading { path, answer });
        }
        let mut buf = vec![0u8; 256];
        // SAFETY: writes at most `len` bytes, NUL-terminated, into `buf`.
        unsafe { version_string(buf.as_mut_ptr().cast(), int(buf.len())) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let version = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        Ok(Mkl {
            sgemm,
            bf16,
            s8u8,
            bf16_pack_size,
            bf16_pack,
            bf16_compute,
            s8u8_pack_size,
            s8u8_pack,
            s8u8_compute,
            version,
            path,
            _library: library,
        })
    }

    /// oneMKL's own version string (its product build and the instruction sets it uses).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the library was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `c (m x n) += a (m x k) · bᵀ`, with `b` given as `n x k`; all row-major.
    pub fn f32_gemm(&self, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        check(a.len(), b.len(), c.len(), m, n, k);
        // SAFETY: `check` proved every operand holds its shape.
        unsafe { accumulate(self.sgemm, false, m, n, k, a.as_ptr(), b.as_ptr(), c) }
    }

    /// As [`Mkl::f32_gemm`] with bf16 operands (their bits, as `half::bf16::to_bits`
    /// gives them); the accumulation and `c` are f32.
    pub fn bf16_gemm(&self, m: usize, n: usize, k: usize, a: &[u16], b: &[u16], c: &mut [f32]) {
        check(a.len(), b.len(), c.len(), m, n, k);
        // SAFETY: as in `f32_gemm`.
        unsafe { accumulate(self.bf16, false, m, n, k, a.as_ptr(), b.as_ptr(), c) }
    }

    /// `c (m x n) = a (m x k, unsigned) · bᵀ (b: n x k, signed)`, exact in i32;
    /// row-major. (oneMKL's routine takes the signed operand first, so this runs
    /// it on the transposed problem, `cᵀ = b · aᵀ`, in column-major terms.)
    pub fn u8s8_gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
        check(a.len(), b.len(), c.len(), m, n, k);
        // SAFETY: `check` proved every operand holds its shape.
        unsafe { integer_product(self.s8u8, false, m, n, k, b.as_ptr().cast(), a, c) }
    }
}
