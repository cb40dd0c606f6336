//! Weights packed once into oneMKL's own layout (`cblas_gemm_*_pack`), so that
//! no product repacks them.

use std::ffi::c_void;

use super::{
    accumulate, check, int, integer_product, Mkl, A_MATRIX, B_MATRIX, COL_MAJOR, PACK_ROWS_HINT,
    ROW_MAJOR, TRANS,
};

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
        let (n, k, b) = (w.n, w.k, w.ptr().cast());
        // SAFETY: as in `bf16_gemm`, the weights being a buffer `pack_bf16` filled
        // for this shape.
        unsafe { accumulate(self.bf16_compute, true, m, n, k, a.as_ptr(), b, c) }
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
        // SAFETY: as in `u8s8_gemm`, the weights being a buffer `pack_s8` filled
        // for this shape.
        unsafe { integer_product(self.s8u8_compute, true, m, w.n, w.k, w.ptr(), a, c) }
    }
}
