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
use std::sync::Arc;

use gemmkit::{bf16, MatMut, MatRef, Parallelism};
use half::slice::HalfFloatSliceExt;
use tenantai_mkl::{Mkl, Packed};

use super::matmul::{self, Matmul};
use super::quant::{self, Channels};
use super::Precision;

/// A layer's weights as its library runs them. On oneMKL the bf16 and int8
/// weights are in its packed layout, made once at load.
enum Weights {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Int8(Int8),
    MklF32 {
        mkl: Arc<Mkl>,
        w: Vec<f32>,
    },
    MklBf16 {
        mkl: Arc<Mkl>,
        packed: Packed,
    },
    MklInt8 {
        mkl: Arc<Mkl>,
        packed: Packed,
        channels: Int8,
    },
}

/// int8 weights quantized per output channel: the values (emptied once oneMKL
/// has packed them), each channel's scale, and its sum of quantized weights
/// (for the zero points of asymmetric activations).
struct Int8 {
    q: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

impl Int8 {
    fn quantize(weight: &[f32], k: usize) -> Int8 {
        let mut q = vec![0i8; weight.len()];
        let scales = weight
            .chunks_exact(k)
            .zip(q.chunks_exact_mut(k))
            .map(|(row, out)| quant::quantize_row(row, out))
            .collect();
        let sums = q
            .chunks_exact(k)
            .map(|row| row.iter().map(|&v| v as i32).sum())
            .collect();
        Int8 { q, scales, sums }
    }

    fn channels<'a>(&'a self, bias: &'a [f32]) -> Channels<'a> {
        Channels {
            scales: &self.scales,
            sums: &self.sums,
            bias,
        }
    }
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
        let to_bf16 = || -> Vec<bf16> { weight.iter().map(|&x| bf16::from_f32(x)).collect() };
        let weights = match (matmul, precision) {
            (Matmul::Gemmkit, Precision::F32) => Weights::F32(weight.to_vec()),
            (Matmul::Gemmkit, Precision::Bf16) => Weights::Bf16(to_bf16()),
            (Matmul::Gemmkit, Precision::Int8) => Weights::Int8(Int8::quantize(weight, k)),
            (Matmul::Mkl(mkl), Precision::F32) => Weights::MklF32 {
                mkl,
                w: weight.to_vec(),
            },
            (Matmul::Mkl(mkl), Precision::Bf16) => {
                let packed = mkl.pack_bf16(n, k, to_bf16().reinterpret_cast());
                Weights::MklBf16 { mkl, packed }
            }
            (Matmul::Mkl(mkl), Precision::Int8) => {
                let mut channels = Int8::quantize(weight, k);
                let packed = mkl.pack_s8(n, k, &std::mem::take(&mut channels.q));
                Weights::MklInt8 {
                    mkl,
                    packed,
                    channels,
                }
            }
        };
        Ok(Dense {
            weights,
            bias: bias.to_vec(),
            n,
            k,
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
            Weights::Bf16(w) => self.bf16_gemmkit(w, x, m, out),
            Weights::Int8(weights) => self.int8_gemmkit(weights, x, m, out),
            Weights::MklF32 { mkl, w } => {
                self.fill_bias(out);
                mkl.f32_gemm(m, n, k, x, w, out);
            }
            Weights::MklBf16 { mkl, packed } => self.bf16_mkl(mkl, packed, x, out),
            Weights::MklInt8 {
                mkl,
                packed,
                channels,
            } => self.int8_mkl(mkl, packed, channels, x, out),
        }
    }

    fn fill_bias(&self, out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.n) {
            row.copy_from_slice(&self.bias);
        }
    }

    /// Blocks of [`BLOCK_ROWS`] input rows and their output rows.
    fn blocks<'a>(
        &self,
        x: &'a [f32],
        out: &'a mut [f32],
    ) -> impl Iterator<Item = (&'a [f32], &'a mut [f32])> {
        x.chunks(BLOCK_ROWS * self.k)
            .zip(out.chunks_mut(BLOCK_ROWS * self.n))
    }

    fn bf16_mkl(&self, mkl: &Mkl, packed: &Packed, x: &[f32], out: &mut [f32]) {
        self.fill_bias(out);
        SCRATCH.with_borrow_mut(|scratch| {
            for (x, out) in self.blocks(x, out) {
                let xb = take(&mut scratch.halves, x.len());
                quant::to_bf16(x, xb);
                mkl.bf16_gemm_packed(x.len() / self.k, xb.reinterpret_cast(), packed, out);
            }
        })
    }

    fn int8_mkl(&self, mkl: &Mkl, packed: &Packed, weights: &Int8, x: &[f32], out: &mut [f32]) {
        let channels = weights.channels(&self.bias);
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { unsigned, ints, .. } = scratch;
            for (x, out) in self.blocks(x, out) {
                let xq = take(unsigned, x.len());
                let rows = quant::quantize_rows_u8(x, self.k, xq);
                let c = take(ints, out.len());
                mkl.u8s8_gemm_packed(x.len() / self.k, xq, packed, c);
                quant::dequantize(c, &rows, &channels, out);
            }
        })
    }

    fn bf16_gemmkit(&self, w: &[bf16], x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
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

    fn int8_gemmkit(&self, weights: &Int8, x: &[f32], m: usize, out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { signed, ints, .. } = scratch;
            let xq = take(signed, m * k);
            let rows = quant::quantize_rows_i8(x, k, xq);
            let c = take(ints, m * n);
            gemmkit::gemm_i8(
                1,
                MatRef::from_row_major(xq, m, k),
                MatRef::from_col_major(&weights.q, k, n),
                0,
                MatMut::from_row_major(c, m, n),
                Parallelism::Serial,
            );
            quant::dequantize(c, &rows, &weights.channels(&self.bias), out);
        })
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
