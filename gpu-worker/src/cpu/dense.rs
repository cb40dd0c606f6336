//! A dense layer `y = x·Wᵀ + b` over packed token rows, at one of three
//! precisions, on the process's matmul library ([`super::matmul`]): oneMKL
//! (AMX or AVX-512 BF16 for bf16, AMX or VNNI for int8) or gemmkit's
//! runtime-dispatched kernels (AVX-512F, AVX-512 BF16 dot products, VNNI).
//!
//! - f32: the checkpoint's weights.
//! - bf16: weights stored in bf16; each call rounds its input rows to bf16 and
//!   accumulates in f32 (on gemmkit the output is rounded to bf16 too, as under
//!   PyTorch's bf16 autocast; oneMKL writes it in f32).
//! - int8: weights quantized symmetrically per output channel (one scale per row
//!   of W) at load; each call quantizes its input per token row at run time
//!   (dynamic quantization) and multiplies in 8 bits with i32 accumulation. On
//!   oneMKL the rows are quantized asymmetrically to u8 (a scale and a zero point
//!   per row, so a row's whole range [min, max] gets the 256 steps; GELU's
//!   outputs are nearly all positive), on gemmkit symmetrically to i8.

use std::cell::RefCell;

use gemmkit::{bf16, MatMut, MatRef, Parallelism};
use half::slice::HalfFloatSliceExt;
use tenantai_mkl::{Mkl, Packed};

use super::matmul::{self, Matmul};
use super::quant::{self, Channels};
use super::Precision;

enum Weights {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    /// `sums`: each output channel's sum of quantized weights, for the zero
    /// points of asymmetric activations.
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        sums: Vec<i32>,
    },
}

/// Rows per bf16 or int8 product on oneMKL: a block's rounded or quantized
/// inputs and its results (256 x 1536 i32 or f32, 1.5 MB) stay in a core's L2
/// between the rounding, the product and the epilogue.
const BLOCK_ROWS: usize = 256;

thread_local! {
    /// Each model thread's buffers for a product's rounded or quantized inputs and
    /// its i32 results, kept from call to call: no allocation, zeroing or fresh
    /// pages per product (they are written whole before they are read).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    halves: Vec<bf16>,
    unsigned: Vec<u8>,
    signed: Vec<i8>,
    ints: Vec<i32>,
}

/// The first `len` values of `buf`, grown to hold them.
fn take<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// One dense layer's weights (`n` outputs x `k` inputs, row-major as in the
/// checkpoint) and bias, in the chosen precision.
pub struct Dense {
    weights: Weights,
    bias: Vec<f32>,
    n: usize,
    k: usize,
    matmul: Matmul,
    /// On oneMKL, the bf16 or int8 weights in its packed layout (made at load;
    /// the plain copy in `weights` is then dropped).
    packed: Option<Packed>,
}

/// On oneMKL, the reduced-precision weights in its packed layout, with the
/// plain copy emptied.
fn pack(matmul: &Matmul, weights: Weights, n: usize, k: usize) -> (Weights, Option<Packed>) {
    let Matmul::Mkl(mkl) = matmul else {
        return (weights, None);
    };
    match weights {
        Weights::Bf16(w) => {
            let packed = mkl.pack_bf16(n, k, w.reinterpret_cast());
            (Weights::Bf16(Vec::new()), Some(packed))
        }
        Weights::Int8 { q, scales, sums } => {
            let packed = mkl.pack_s8(n, k, &q);
            let q = Vec::new();
            (Weights::Int8 { q, scales, sums }, Some(packed))
        }
        f32 => (f32, None),
    }
}

impl Dense {
    /// `weight` is `n x k` row-major (one row per output), `bias` has `n` values;
    /// the products run on the process's matmul library.
    pub fn new(
        precision: Precision,
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Dense, String> {
        Dense::with_matmul(matmul::selected().clone(), precision, weight, bias, n, k)
    }

    /// As [`Dense::new`], on the given library.
    pub fn with_matmul(
        matmul: Matmul,
        precision: Precision,
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Dense, String> {
        if weight.len() != n * k || bias.len() != n || n == 0 || k == 0 {
            return Err(format!(
                "a dense layer of {n} x {k} needs {} weights and {n} biases, got {} and {}",
                n * k,
                weight.len(),
                bias.len()
            ));
        }
        let weights = match precision {
            Precision::F32 => Weights::F32(weight.to_vec()),
            Precision::Bf16 => Weights::Bf16(weight.iter().map(|&x| bf16::from_f32(x)).collect()),
            Precision::Int8 => {
                let mut q = vec![0i8; n * k];
                let scales = weight
                    .chunks_exact(k)
                    .zip(q.chunks_exact_mut(k))
                    .map(|(row, out)| quant::quantize_row(row, out))
                    .collect();
                let sums = q
                    .chunks_exact(k)
                    .map(|row| row.iter().map(|&v| v as i32).sum())
                    .collect();
                Weights::Int8 { q, scales, sums }
            }
        };
        let (weights, packed) = pack(&matmul, weights, n, k);
        Ok(Dense {
            weights,
            bias: bias.to_vec(),
            n,
            k,
            matmul,
            packed,
        })
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.k
    }

    /// `out` (`m x n`, row-major) = `x` (`m x k`, row-major) · Wᵀ + b.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let x = &x[..m * k];
        let out = &mut out[..m * n];
        if m == 0 {
            return;
        }
        match &self.matmul {
            Matmul::Mkl(mkl) => self.forward_mkl(mkl, x, m, out),
            Matmul::Gemmkit => self.forward_gemmkit(x, m, out),
        }
    }

    fn fill_bias(&self, out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.n) {
            row.copy_from_slice(&self.bias);
        }
    }

    fn forward_mkl(&self, mkl: &Mkl, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        match (&self.weights, &self.packed) {
            (Weights::F32(w), _) => {
                self.fill_bias(out);
                mkl.f32_gemm(m, n, k, x, w, out);
            }
            (Weights::Bf16(w), packed) => SCRATCH.with_borrow_mut(|scratch| {
                self.fill_bias(out);
                let rows_in = x.chunks(BLOCK_ROWS * k);
                for (x, out) in rows_in.zip(out.chunks_mut(BLOCK_ROWS * n)) {
                    let m = x.len() / k;
                    let xb = take(&mut scratch.halves, m * k);
                    quant::to_bf16(x, xb);
                    let xb = xb.reinterpret_cast();
                    match packed {
                        Some(p) => mkl.bf16_gemm_packed(m, xb, p, out),
                        None => mkl.bf16_gemm(m, n, k, xb, w.reinterpret_cast(), out),
                    }
                }
            }),
            (Weights::Int8 { q, scales, sums }, packed) => SCRATCH.with_borrow_mut(|scratch| {
                let Scratch { unsigned, ints, .. } = scratch;
                let channels = Channels {
                    scales,
                    sums,
                    bias: &self.bias,
                };
                // A block of rows at a time: its i32 products stay in cache
                // between the product and the epilogue.
                let rows_in = x.chunks(BLOCK_ROWS * k);
                for (x, out) in rows_in.zip(out.chunks_mut(BLOCK_ROWS * n)) {
                    let m = x.len() / k;
                    let xq = take(unsigned, m * k);
                    let rows = quant::quantize_rows_u8(x, k, xq);
                    let c = take(ints, m * n);
                    match packed {
                        Some(p) => mkl.u8s8_gemm_packed(m, xq, p, c),
                        None => mkl.u8s8_gemm(m, n, k, xq, q, c),
                    }
                    quant::dequantize(c, &rows, &channels, out);
                }
            }),
        }
    }

    fn forward_gemmkit(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        match &self.weights {
            Weights::F32(w) => {
                self.fill_bias(out);
                gemmkit::gemm(
                    1.0,
                    MatRef::from_row_major(x, m, k),
                    MatRef::from_col_major(w, k, n),
                    1.0,
                    MatMut::from_row_major(out, m, n),
                    Parallelism::Serial,
                );
            }
            Weights::Bf16(w) => {
                let mut xb = vec![bf16::ZERO; m * k];
                quant::to_bf16(x, &mut xb);
                let mut c = vec![bf16::ZERO; m * n];
                gemmkit::gemm(
                    bf16::ONE,
                    MatRef::from_row_major(&xb, m, k),
                    MatRef::from_col_major(w, k, n),
                    bf16::ZERO,
                    MatMut::from_row_major(&mut c, m, n),
                    Parallelism::Serial,
                );
                for (orow, crow) in out.chunks_exact_mut(n).zip(c.chunks_exact(n)) {
                    for ((o, c), b) in orow.iter_mut().zip(crow).zip(&self.bias) {
                        *o = c.to_f32() + b;
                    }
                }
            }
            Weights::Int8 { q, scales, sums } => SCRATCH.with_borrow_mut(|scratch| {
                let Scratch { signed, ints, .. } = scratch;
                let xq = take(signed, m * k);
                let rows = quant::quantize_rows_i8(x, k, xq);
                let c = take(ints, m * n);
                gemmkit::gemm_i8(
                    1,
                    MatRef::from_row_major(xq, m, k),
                    MatRef::from_col_major(q, k, n),
                    0,
                    MatMut::from_row_major(c, m, n),
                    Parallelism::Serial,
                );
                let channels = Channels {
                    scales,
                    sums,
                    bias: &self.bias,
                };
                quant::dequantize(c, &rows, &channels, out);
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], b: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                out[i * n + j] = dot as f32 + b[j];
            }
        }
        out
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

    #[test]
    fn every_precision_computes_the_product_within_its_error() {
        let (m, n, k) = (300, 48, 96); // more rows than one int8 block
        let (w, b, x) = (values(n * k, 1), values(n, 2), values(m * k, 3));
        let want = reference(&w, &b, &x, m, n, k);
        // Relative to the spread of the products (~ sqrt(k)/12 here).
        for matmul in crate::cpu::matmul::for_tests() {
            for (precision, tolerance) in [
                (Precision::F32, 1e-5),
                (Precision::Bf16, 3e-2),
                (Precision::Int8, 3e-2),
            ] {
                let name = matmul.name();
                let dense = Dense::with_matmul(matmul.clone(), precision, &w, &b, n, k).unwrap();
                let mut got = vec![0f32; m * n];
                dense.forward(&x, m, &mut got);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                assert!(worst < tolerance, "{name} {precision}: worst error {worst}");
            }
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert!(Dense::new(Precision::F32, &[0.0; 5], &[0.0; 2], 2, 3).is_err());
    }
}
