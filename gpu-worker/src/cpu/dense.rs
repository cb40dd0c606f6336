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
use super::{take, Precision};

/// A layer's weights as its library runs them.
enum Weights {
    /// gemmkit's: the whole product in one call.
    Gemmkit(Plain),
    /// oneMKL's, in blocks of [`BLOCK_ROWS`] rows.
    Mkl { mkl: Arc<Mkl>, weights: Blocked },
}

/// Weights for gemmkit.
enum Plain {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    Int8(Int8),
}

/// Weights for oneMKL: the bf16 and int8 ones in its packed layout, made once
/// at load.
enum Blocked {
    F32(Vec<f32>),
    Bf16(Packed),
    Int8 { packed: Packed, channels: Int8 },
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

/// Rows per product on oneMKL: a block's rounded or quantized inputs and its
/// results (256 x 1536 i32 or f32, 1.5 MB) stay in a core's L2 between the
/// rounding, the product and the epilogue. (The encoder runs its layers' steps
/// after attention in blocks of this size too.)
pub const BLOCK_ROWS: usize = 256;

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
        let weights = match matmul {
            Matmul::Gemmkit => Weights::Gemmkit(match precision {
                Precision::F32 => Plain::F32(weight.to_vec()),
                Precision::Bf16 => Plain::Bf16(to_bf16()),
                Precision::Int8 => Plain::Int8(Int8::quantize(weight, k)),
            }),
            Matmul::Mkl(mkl) => {
                let weights = match precision {
                    Precision::F32 => Blocked::F32(weight.to_vec()),
                    Precision::Bf16 => {
                        Blocked::Bf16(mkl.pack_bf16(n, k, to_bf16().reinterpret_cast()))
                    }
                    Precision::Int8 => {
                        let mut channels = Int8::quantize(weight, k);
                        let packed = mkl.pack_s8(n, k, &std::mem::take(&mut channels.q));
                        Blocked::Int8 { packed, channels }
                    }
                };
                Weights::Mkl { mkl, weights }
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
        self.forward_then(x, m, out, |_, _| {});
    }

    /// As [`Dense::forward`], then `then(first, rows)` on the output's rows in
    /// blocks (`first`: the index of the block's first row), each while it is
    /// still in cache: an element-wise step fused into the product (a GELU; a
    /// residual and layer norm). The blocks are [`BLOCK_ROWS`] rows on oneMKL,
    /// the whole output on gemmkit.
    pub fn forward_then(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        mut then: impl FnMut(usize, &mut [f32]),
    ) {
        let (n, k) = (self.n, self.k);
        let x = &x[..m * k];
        let out = &mut out[..m * n];
        if m == 0 {
            return;
        }
        let (mkl, weights) = match &self.weights {
            Weights::Gemmkit(Plain::F32(w)) => return then(0, self.f32_gemmkit(w, x, m, out)),
            Weights::Gemmkit(Plain::Bf16(w)) => return then(0, self.bf16_gemmkit(w, x, m, out)),
            Weights::Gemmkit(Plain::Int8(w)) => return then(0, self.int8_gemmkit(w, x, m, out)),
            Weights::Mkl { mkl, weights } => (mkl, weights),
        };
        SCRATCH.with_borrow_mut(|scratch| {
            let blocks = x.chunks(BLOCK_ROWS * k).zip(out.chunks_mut(BLOCK_ROWS * n));
            for (i, (x, out)) in blocks.enumerate() {
                self.mkl_block(mkl, weights, scratch, x, out);
                then(i * BLOCK_ROWS, out);
            }
        })
    }

    /// One block of rows on oneMKL.
    fn mkl_block(
        &self,
        mkl: &Mkl,
        weights: &Blocked,
        scratch: &mut Scratch,
        x: &[f32],
        out: &mut [f32],
    ) {
        let (n, k, rows) = (self.n, self.k, x.len() / self.k);
        match weights {
            Blocked::F32(w) => {
                self.fill_bias(out);
                mkl.f32_gemm(rows, n, k, x, w, out);
            }
            Blocked::Bf16(packed) => {
                self.fill_bias(out);
                let xb = take(&mut scratch.halves, x.len());
                quant::to_bf16(x, xb);
                mkl.bf16_gemm_packed(rows, xb.reinterpret_cast(), packed, out);
            }
            Blocked::Int8 { packed, channels } => {
                let xq = take(&mut scratch.unsigned, x.len());
                let quantized = quant::quantize_rows_u8(x, k, xq);
                let c = take(&mut scratch.ints, out.len());
                mkl.u8s8_gemm_packed(rows, xq, packed, c);
                quant::dequantize(c, &quantized, &channels.channels(&self.bias), out);
            }
        }
    }

    fn fill_bias(&self, out: &mut [f32]) {
        for row in out.chunks_exact_mut(self.n) {
            row.copy_from_slice(&self.bias);
        }
    }

    /// The whole product on gemmkit, in f32; returns `out`.
    fn f32_gemmkit<'o>(&self, w: &[f32], x: &[f32], m: usize, out: &'o mut [f32]) -> &'o mut [f32] {
        let (n, k) = (self.n, self.k);
        self.fill_bias(out);
        gemmkit::gemm(
            1.0,
            MatRef::from_row_major(x, m, k),
            MatRef::from_col_major(w, k, n),
            1.0,
            MatMut::from_row_major(out, m, n),
            Parallelism::Serial,
        );
        out
    }

    fn bf16_gemmkit<'o>(
        &self,
        w: &[bf16],
        x: &[f32],
        m: usize,
        out: &'o mut [f32],
    ) -> &'o mut [f32] {
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
        out
    }

    fn int8_gemmkit<'o>(
        &self,
        weights: &Int8,
        x: &[f32],
        m: usize,
        out: &'o mut [f32],
    ) -> &'o mut [f32] {
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
        });
        out
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
    fn the_epilogue_sees_every_row_once_with_its_index() {
        let (m, n, k) = (2 * BLOCK_ROWS + 41, 24, 32);
        let (w, b, x) = (values(n * k, 4), values(n, 5), values(m * k, 6));
        for matmul in crate::cpu::matmul::for_tests() {
            let dense = Dense::with_matmul(matmul.clone(), Precision::F32, &w, &b, n, k).unwrap();
            let mut plain = vec![0f32; m * n];
            dense.forward(&x, m, &mut plain);
            // The epilogue tags each value with its row: the output must hold
            // the product plus the index of the value's row.
            let mut tagged = vec![0f32; m * n];
            let mut seen = Vec::new();
            dense.forward_then(&x, m, &mut tagged, |first, block| {
                seen.push((first, block.len() / n));
                for (i, row) in block.chunks_exact_mut(n).enumerate() {
                    row.iter_mut().for_each(|v| *v += (first + i) as f32);
                }
            });
            let mut next = 0;
            for &(first, rows) in &seen {
                assert_eq!(first, next, "{}: blocks {seen:?}", matmul.name());
                next += rows;
            }
            assert_eq!(next, m);
            for (i, (t, p)) in tagged
                .chunks_exact(n)
                .zip(plain.chunks_exact(n))
                .enumerate()
            {
                for (t, p) in t.iter().zip(p) {
                    assert!((t - p - i as f32).abs() < 1e-3, "row {i}: {t} vs {p}");
                }
            }
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert!(Dense::new(Precision::F32, &[0.0; 5], &[0.0; 2], 2, 3).is_err());
    }
}
