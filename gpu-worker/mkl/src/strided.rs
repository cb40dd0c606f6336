//! Products of strided views: sub-matrices of a larger row-major buffer, read in
//! place (one attention head's queries, keys or values among the fused
//! projections; a head's columns of the output).

use super::{check_dims, gemm_call, Call, Gemm, Mkl, NO_TRANS, TRANS};

/// A row-major operand inside `data`: row `i` of the stored matrix starts at
/// `data[i * ld]`. With `transposed`, the operand is the transpose of that matrix.
#[derive(Debug, Clone, Copy)]
pub struct View<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
    pub transposed: bool,
}

impl<'a, T> View<'a, T> {
    /// The matrix whose rows start every `ld` values of `data`.
    pub fn rows(data: &'a [T], ld: usize) -> Self {
        View {
            data,
            ld,
            transposed: false,
        }
    }

    /// The transpose of the matrix whose rows start every `ld` values of `data`.
    pub fn transpose(data: &'a [T], ld: usize) -> Self {
        View {
            data,
            ld,
            transposed: true,
        }
    }

    /// Checks that the view holds an operand of `rows x cols`; the stored
    /// matrix's (rows, cols).
    fn check(&self, rows: usize, cols: usize, name: &str) -> (usize, usize) {
        let stored = if self.transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        check_view(self.data.len(), stored, self.ld, name);
        stored
    }

    fn op(&self) -> std::ffi::c_int {
        if self.transposed {
            TRANS
        } else {
            NO_TRANS
        }
    }
}

/// A row-major output inside `data`: row `i` starts at `data[i * ld]`.
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
}

/// Panics unless `len` values hold `rows x cols` with rows `ld` apart (and
/// `ld` ≥ `cols`, as BLAS requires).
fn check_view(len: usize, (rows, cols): (usize, usize), ld: usize, name: &str) {
    assert!(
        ld >= cols.max(1),
        "{name}: a row stride of {ld} is under its {cols} columns"
    );
    let needs = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    };
    assert!(
        len >= needs,
        "{name} has {len} values, {rows} x {cols} with stride {ld} needs {needs}"
    );
}

impl Mkl {
    /// `c (m x n) = a (m x k) · b (k x n) + beta · c`, each a strided view.
    pub fn f32_strided(
        &self,
        (m, n, k): (usize, usize, usize),
        a: View<f32>,
        b: View<f32>,
        beta: f32,
        c: ViewMut,
    ) {
        strided(self.sgemm, (m, n, k), a, b, beta, c);
    }

    /// As [`Mkl::f32_strided`] with bf16 operands (their bits); f32 accumulation
    /// and output.
    pub fn bf16_strided(
        &self,
        (m, n, k): (usize, usize, usize),
        a: View<u16>,
        b: View<u16>,
        beta: f32,
        c: ViewMut,
    ) {
        strided(self.bf16, (m, n, k), a, b, beta, c);
    }
}

fn strided<T>(
    gemm: Gemm<T>,
    (m, n, k): (usize, usize, usize),
    a: View<T>,
    b: View<T>,
    beta: f32,
    c: ViewMut,
) {
    check_dims(m, n, k);
    a.check(m, k, "A");
    b.check(k, n, "B");
    check_view(c.data.len(), (m, n), c.ld, "C");
    if m == 0 || n == 0 {
        return;
    }
    let call = Call {
        dims: (m, n, k),
        a: a.data.as_ptr(),
        lda: a.ld,
        a_op: a.op(),
        b: b.data.as_ptr(),
        ldb: b.ld,
        b_op: b.op(),
        beta,
        c: c.data.as_mut_ptr(),
        ldc: c.ld,
    };
    // SAFETY: every view was checked to hold its operand at its stride, and
    // every dimension fits MKL's int.
    unsafe { gemm_call(gemm, call) }
}
