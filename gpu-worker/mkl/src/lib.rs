//! Intel oneMKL's GEMMs for the CPU encoder, opened at run time.
//!
//! `libmkl_rt` (from PyPI's `mkl` wheel; `scripts/lib/mkl.sh` installs it) is
//! opened with `dlopen`, its sequential threading layer selected (each model
//! thread runs its own products), and three products are offered, each with
//! the weights as the second, transposed operand (`C = A · Bᵀ`, row-major):
//!
//! - `cblas_sgemm`, as [`Mkl::f32_gemm`];
//! - `cblas_gemm_bf16bf16f32`, as [`Mkl::bf16_gemm`] (bf16 inputs, f32
//!   accumulation and output; AMX-BF16 or AVX-512 BF16 where the CPU has them);
//! - `cblas_gemm_s8u8s32`, as [`Mkl::u8s8_gemm`] (unsigned 8-bit activations,
//!   signed 8-bit weights, i32 accumulation; AMX-INT8 or AVX-512 VNNI);
//! - the last two with the weights packed once ([`Mkl::pack_bf16`], [`Mkl::pack_s8`]).
//!
//! Each call checks its slices against the shape before it crosses into C, so
//! the safe functions cannot read or write out of bounds.
#![allow(unsafe_code)] // the reason for this crate: see the crate's Cargo.toml

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use libloading::Library;

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

type Sgemm = unsafe extern "C" fn(
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
type GemmBf16 = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const u16,
    c_int,
    *const u16,
    c_int,
    f32,
    *mut f32,
    c_int,
);
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

/// Checks that the operands hold `m x k`, `n x k` and `m x n` values and that
/// every dimension fits MKL's 32-bit integers.
fn check(a: usize, b: usize, c: usize, m: usize, n: usize, k: usize) {
    let limit = c_int::MAX as usize;
    assert!(
        m <= limit && n <= limit && k <= limit,
        "a dimension exceeds MKL's int"
    );
    assert!(a >= m * k, "A has {a} values, the product needs {m} x {k}");
    assert!(b >= n * k, "B has {b} values, the product needs {n} x {k}");
    assert!(c >= m * n, "C has {c} values, the product needs {m} x {n}");
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
        if m == 0 || n == 0 {
            return;
        }
        let (mi, ni, ki, ld) = (int(m), int(n), int(k), int(k.max(1)));
        // SAFETY: `check` proved every operand holds its shape; MKL reads `a` and
        // `b` and writes only the m x n values of `c`.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                mi,
                ni,
                ki,
                1.0,
                a.as_ptr(),
                ld,
                b.as_ptr(),
                ld,
                1.0,
                c.as_mut_ptr(),
                ni,
            );
        }
    }

    /// As [`Mkl::f32_gemm`] with bf16 operands (their bits, as `half::bf16::to_bits`
    /// gives them); the accumulation and `c` are f32.
    pub fn bf16_gemm(&self, m: usize, n: usize, k: usize, a: &[u16], b: &[u16], c: &mut [f32]) {
        check(a.len(), b.len(), c.len(), m, n, k);
        if m == 0 || n == 0 {
            return;
        }
        let (mi, ni, ki, ld) = (int(m), int(n), int(k), int(k.max(1)));
        // SAFETY: as in `f32_gemm`.
        unsafe {
            (self.bf16)(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                mi,
                ni,
                ki,
                1.0,
                a.as_ptr(),
                ld,
                b.as_ptr(),
                ld,
                1.0,
                c.as_mut_ptr(),
                ni,
            );
        }
    }

    /// `c (m x n) = a (m x k, unsigned) · bᵀ (b: n x k, signed)`, exact in i32;
    /// row-major. (oneMKL's routine takes the signed operand first, so this runs
    /// it on the transposed problem, `cᵀ = b · aᵀ`, in column-major terms.)
    pub fn u8s8_gemm(&self, m: usize, n: usize, k: usize, a: &[u8], b: &[i8], c: &mut [i32]) {
        check(a.len(), b.len(), c.len(), m, n, k);
        if m == 0 || n == 0 {
            return;
        }
        let (mi, ni, ki, ld) = (int(m), int(n), int(k), int(k.max(1)));
        let no_offset = [0i32];
        // SAFETY: as in `f32_gemm`; with a fixed offset MKL reads one value of
        // `no_offset`.
        unsafe {
            (self.s8u8)(
                COL_MAJOR,
                TRANS,
                NO_TRANS,
                FIX_OFFSET,
                ni,
                mi,
                ki,
                1.0,
                b.as_ptr().cast(),
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
}

/// One cache line: the packed buffers' unit, so they start 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Weights (`n x k`, row-major: the second operand of a product) in oneMKL's
/// packed layout, made once at load so that no product repacks them.
pub struct Packed {
    lines: Vec<Line>,
    kind: PackedKind,
    n: usize,
    k: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PackedKind {
    Bf16,
    S8,
}

impl Packed {
    fn zeroed(bytes: usize, kind: PackedKind, n: usize, k: usize) -> Packed {
        Packed {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            kind,
            n,
            k,
        }
    }

    fn ptr(&self) -> *const c_void {
        self.lines.as_ptr().cast()
    }

    fn mut_ptr(&mut self) -> *mut c_void {
        self.lines.as_mut_ptr().cast()
    }

    /// (outputs, inputs) of the packed weights.
    pub fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }
}

fn check_packed(packed: &Packed, kind: PackedKind, a: usize, c: usize, m: usize) {
    assert_eq!(packed.kind, kind, "weights packed for another product");
    check(a, packed.n * packed.k, c, m, packed.n, packed.k);
}

impl Mkl {
    /// Packs bf16 weights (`n x k`, row-major) for [`Mkl::bf16_gemm_packed`].
    pub fn pack_bf16(&self, n: usize, k: usize, w: &[u16]) -> Packed {
        check(0, w.len(), 0, 0, n, k);
        let (hint, ni, ki) = (int(PACK_ROWS_HINT), int(n), int(k));
        // SAFETY: pure function of the dimensions.
        let bytes = unsafe { (self.bf16_pack_size)(B_MATRIX, hint, ni, ki) };
        let mut packed = Packed::zeroed(bytes, PackedKind::Bf16, n, k);
        // SAFETY: `w` holds n x k values (checked); `dest` holds the `bytes` oneMKL asked for.
        unsafe {
            (self.bf16_pack)(
                ROW_MAJOR,
                B_MATRIX,
                TRANS,
                hint,
                ni,
                ki,
                w.as_ptr(),
                int(k.max(1)),
                packed.mut_ptr().cast(),
            );
        }
        packed
    }

    /// `c (m x n) += a (m x k) · Wᵀ` with `W` from [`Mkl::pack_bf16`].
    pub fn bf16_gemm_packed(&self, m: usize, a: &[u16], w: &Packed, c: &mut [f32]) {
        check_packed(w, PackedKind::Bf16, a.len(), c.len(), m);
        if m == 0 || w.n == 0 {
            return;
        }
        let (mi, ni, ki, ld) = (int(m), int(w.n), int(w.k), int(w.k.max(1)));
        // SAFETY: as in `bf16_gemm`, the weights being a buffer `pack_bf16` filled
        // for this shape.
        unsafe {
            (self.bf16_compute)(
                ROW_MAJOR,
                NO_TRANS,
                PACKED,
                mi,
                ni,
                ki,
                1.0,
                a.as_ptr(),
                ld,
                w.ptr().cast(),
                ld,
                1.0,
                c.as_mut_ptr(),
                ni,
            );
        }
    }

    /// Packs signed 8-bit weights (`n x k`, row-major) for [`Mkl::u8s8_gemm_packed`].
    pub fn pack_s8(&self, n: usize, k: usize, w: &[i8]) -> Packed {
        check(0, w.len(), 0, 0, n, k);
        let (hint, ni, ki) = (int(PACK_ROWS_HINT), int(n), int(k));
        // SAFETY: pure function of the dimensions.
        let bytes = unsafe { (self.s8u8_pack_size)(A_MATRIX, ni, hint, ki) };
        let mut packed = Packed::zeroed(bytes, PackedKind::S8, n, k);
        // SAFETY: as in `pack_bf16`.
        unsafe {
            (self.s8u8_pack)(
                COL_MAJOR,
                A_MATRIX,
                TRANS,
                ni,
                hint,
                ki,
                w.as_ptr().cast(),
                int(k.max(1)),
                packed.mut_ptr(),
            );
        }
        packed
    }

    /// As [`Mkl::u8s8_gemm`] with the weights from [`Mkl::pack_s8`].
    pub fn u8s8_gemm_packed(&self, m: usize, a: &[u8], w: &Packed, c: &mut [i32]) {
        check_packed(w, PackedKind::S8, a.len(), c.len(), m);
        if m == 0 || w.n == 0 {
            return;
        }
        let (mi, ni, ki, ld) = (int(m), int(w.n), int(w.k), int(w.k.max(1)));
        let no_offset = [0i32];
        // SAFETY: as in `u8s8_gemm` and `bf16_gemm_packed`.
        unsafe {
            (self.s8u8_compute)(
                COL_MAJOR,
                PACKED,
                NO_TRANS,
                FIX_OFFSET,
                ni,
                mi,
                ki,
                1.0,
                w.ptr(),
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The library named by `TENANTAI_MKL_LIB`. Without it these tests have
    /// nothing to call, unless `TENANTAI_REQUIRE_MKL=1` (CI) makes that a failure.
    fn mkl() -> Option<Mkl> {
        let required = std::env::var("TENANTAI_REQUIRE_MKL").is_ok_and(|v| v == "1");
        match std::env::var_os("TENANTAI_MKL_LIB") {
            Some(path) => Some(Mkl::open(Some(Path::new(&path))).unwrap()),
            None if required => panic!("TENANTAI_REQUIRE_MKL=1 but TENANTAI_MKL_LIB is unset"),
            None => {
                eprintln!("TENANTAI_MKL_LIB is unset: oneMKL's products are not exercised");
                None
            }
        }
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as f32 / u32::MAX as f32 - 0.5
            })
            .collect()
    }

    fn product(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
            }
        }
        c
    }

    fn bf16_bits(x: f32) -> u16 {
        // Round to nearest even on the upper 16 bits (no NaNs in these inputs).
        let bits = x.to_bits();
        ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
    }

    fn widen(bits: u16) -> f64 {
        f32::from_bits((bits as u32) << 16) as f64
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let err = Mkl::open(Some(Path::new("/nonexistent/libmkl_rt.so.2"))).unwrap_err();
        assert!(matches!(err, Error::Open { .. }));
        assert!(
            err.to_string().contains("/nonexistent/libmkl_rt.so.2"),
            "{err}"
        );
    }

    #[test]
    fn the_three_products_match_a_plain_one() {
        let Some(mkl) = mkl() else { return };
        assert!(
            mkl.version().contains("oneMKL") || mkl.version().contains("Math Kernel"),
            "{}",
            mkl.version()
        );
        let (m, n, k) = (37, 53, 96);
        let (a, b) = (values(m * k, 1), values(n * k, 2));
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();

        // f32, adding to what `c` held.
        let want = product(&wide(&a), &wide(&b), m, n, k);
        let mut c = vec![1f32; m * n];
        mkl.f32_gemm(m, n, k, &a, &b, &mut c);
        for (got, want) in c.iter().zip(&want) {
            assert!(
                (*got as f64 - (want + 1.0)).abs() < 1e-4,
                "{got} vs {}",
                want + 1.0
            );
        }

        // bf16: exact products of the rounded inputs, accumulated in f32.
        let (ab, bb): (Vec<u16>, Vec<u16>) = (
            a.iter().map(|&x| bf16_bits(x)).collect(),
            b.iter().map(|&x| bf16_bits(x)).collect(),
        );
        let want = product(
            &ab.iter().map(|&x| widen(x)).collect::<Vec<_>>(),
            &bb.iter().map(|&x| widen(x)).collect::<Vec<_>>(),
            m,
            n,
            k,
        );
        let mut c = vec![0f32; m * n];
        mkl.bf16_gemm(m, n, k, &ab, &bb, &mut c);
        for (got, want) in c.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
        }

        // u8 x s8: exact.
        let au: Vec<u8> = a.iter().map(|&x| ((x + 0.5) * 255.0) as u8).collect();
        let bs: Vec<i8> = b.iter().map(|&x| (x * 254.0) as i8).collect();
        let want = product(
            &au.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &bs.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            m,
            n,
            k,
        );
        let mut c = vec![7i32; m * n];
        mkl.u8s8_gemm(m, n, k, &au, &bs, &mut c);
        assert_eq!(c, want.iter().map(|&x| x as i32).collect::<Vec<_>>());
    }

    #[test]
    fn packed_weights_give_the_same_products_at_any_row_count() {
        let Some(mkl) = mkl() else { return };
        let (n, k) = (48, 160);
        let w = values(n * k, 5);
        let wb: Vec<u16> = w.iter().map(|&x| bf16_bits(x)).collect();
        let ws: Vec<i8> = w.iter().map(|&x| (x * 254.0) as i8).collect();
        let (pb, ps) = (mkl.pack_bf16(n, k, &wb), mkl.pack_s8(n, k, &ws));
        assert_eq!(pb.shape(), (n, k));
        for m in [1, 7, 64, 513, 1200] {
            let a = values(m * k, m as u32);
            let ab: Vec<u16> = a.iter().map(|&x| bf16_bits(x)).collect();
            let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
            mkl.bf16_gemm(m, n, k, &ab, &wb, &mut want);
            mkl.bf16_gemm_packed(m, &ab, &pb, &mut got);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "bf16, {m} rows: {worst}");
            let au: Vec<u8> = a.iter().map(|&x| ((x + 0.5) * 255.0) as u8).collect();
            let (mut want, mut got) = (vec![0i32; m * n], vec![1i32; m * n]);
            mkl.u8s8_gemm(m, n, k, &au, &ws, &mut want);
            mkl.u8s8_gemm_packed(m, &au, &ps, &mut got);
            assert_eq!(want, got, "int8, {m} rows");
        }
    }

    #[test]
    fn short_operands_are_refused_before_the_call() {
        let Some(mkl) = mkl() else { return };
        let result = std::panic::catch_unwind(|| {
            let mut c = vec![0f32; 4];
            mkl.f32_gemm(2, 2, 3, &[0.0; 5], &[0.0; 6], &mut c);
        });
        assert!(result.is_err());
    }
}
