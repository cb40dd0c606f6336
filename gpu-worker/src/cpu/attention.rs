//! Self-attention over packed tokens, one sequence at a time: no padding, no mask.
//!
//! For each sequence and head of at least [`GEMM_FROM`] tokens, two matrix products
//! over strided views of the fused projections (no copies of f32 values): the
//! scores `Q·Kᵀ` (length x length), a softmax per row, then `P·V` written straight
//! into the head's columns of the output. They run on the process's matmul
//! library ([`Products`]): gemmkit or oneMKL in f32, or, for a bf16 model on
//! oneMKL, oneMKL's bf16 GEMM (the projections and the probabilities rounded to
//! bf16, f32 accumulation: what PyTorch's bf16 autocast does for these products).
//! Shorter sequences (where a product's set-up costs more than its arithmetic)
//! take direct vectorised loops in f32. The 1/sqrt(head size) scale is already
//! in the query weights.

use std::cell::RefCell;
use std::sync::Arc;

use gemmkit::{bf16, MatMut, MatRef, Parallelism};
use half::slice::HalfFloatSliceExt;
use tenantai_mkl::{Mkl, View, ViewMut};

mod direct;

use super::matmul::Matmul;
use super::ops::softmax_rows;
use super::{quant, take, Precision};

/// Sequences at least this long use the library's products.
const GEMM_FROM: usize = 48;

/// What runs attention's products on long sequences.
#[derive(Debug, Clone)]
pub enum Products {
    /// gemmkit, in f32.
    Gemmkit,
    /// oneMKL's sgemm.
    MklF32(Arc<Mkl>),
    /// oneMKL's bf16 GEMM, f32 accumulation.
    MklBf16(Arc<Mkl>),
}

impl Products {
    /// The products of a model at `precision` on `matmul`: bf16 models take bf16
    /// products on oneMKL; every other model computes attention in f32.
    pub fn new(matmul: &Matmul, precision: Precision) -> Products {
        match (matmul, precision) {
            (Matmul::Gemmkit, _) => Products::Gemmkit,
            (Matmul::Mkl(mkl), Precision::Bf16) => Products::MklBf16(mkl.clone()),
            (Matmul::Mkl(mkl), _) => Products::MklF32(mkl.clone()),
        }
    }
}

/// The shape of one layer's attention: `heads` of `head_size` columns each.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub head_size: usize,
}

impl Heads {
    /// The hidden size: every head's columns.
    pub fn hidden(self) -> usize {
        self.heads * self.head_size
    }

    /// Where head `h`'s queries, keys and values start in a row of the fused
    /// projections.
    fn columns(self, h: usize) -> (usize, usize, usize) {
        let (hidden, at) = (self.hidden(), h * self.head_size);
        (at, hidden + at, 2 * hidden + at)
    }
}

thread_local! {
    /// Each model thread's bf16 copies of a sequence's projections and of one
    /// head's probabilities, kept from call to call.
    static HALVES: RefCell<(Vec<bf16>, Vec<bf16>)> = RefCell::default();
}

/// Attention of the fused projections `qkv` (`tokens x 3·hidden`: queries, keys,
/// values, each `heads x head_size`) into `out` (`tokens x hidden`), for the
/// sequences whose lengths are `lens` (packed one after the other).
pub fn attend(qkv: &[f32], lens: &[usize], shape: Heads, products: &Products, out: &mut [f32]) {
    let hidden = shape.hidden();
    let stride = 3 * hidden;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut scores = vec![0f32; longest * longest];
    let mut start = 0;
    for &len in lens {
        let seq = &qkv[start * stride..(start + len) * stride];
        let o = &mut out[start * hidden..(start + len) * hidden];
        start += len;
        if len == 0 {
            continue;
        }
        if len < GEMM_FROM {
            direct::attend_short(seq, shape, o);
            continue;
        }
        let s = &mut scores[..len * len];
        match products {
            Products::Gemmkit => (0..shape.heads).for_each(|h| gemmkit_head(seq, shape, h, s, o)),
            Products::MklF32(mkl) => {
                (0..shape.heads).for_each(|h| mkl_f32_head(mkl, seq, shape, h, s, o))
            }
            Products::MklBf16(mkl) => mkl_bf16_heads(mkl, seq, shape, s, o),
        }
    }
}

/// One head of one sequence on gemmkit: `seq` is the sequence's rows of the
/// fused projections, `s` its scores (len x len), `out` its rows of the output.
fn gemmkit_head(seq: &[f32], shape: Heads, h: usize, s: &mut [f32], out: &mut [f32]) {
    let (hidden, d) = (shape.hidden(), shape.head_size);
    let (stride, len) = (3 * hidden, seq.len() / (3 * hidden));
    let (q_at, k_at, v_at) = shape.columns(h);
    // scores = Q (len x d, row stride 3·hidden) · Kᵀ (d x len).
    gemmkit::gemm(
        1.0,
        MatRef::new(&seq[q_at..], len, d, stride as isize, 1),
        MatRef::new(&seq[k_at..], d, len, 1, stride as isize),
        0.0,
        MatMut::from_row_major(s, len, len),
        Parallelism::Serial,
    );
    probabilities(s, len);
    // out[head columns] = P (len x len) · V (len x d).
    gemmkit::gemm(
        1.0,
        MatRef::from_row_major(s, len, len),
        MatRef::new(&seq[v_at..], len, d, stride as isize, 1),
        0.0,
        MatMut::new(&mut out[h * d..], len, d, hidden as isize, 1),
        Parallelism::Serial,
    );
}

/// As [`gemmkit_head`], on oneMKL's sgemm.
fn mkl_f32_head(mkl: &Mkl, seq: &[f32], shape: Heads, h: usize, s: &mut [f32], out: &mut [f32]) {
    let (hidden, d) = (shape.hidden(), shape.head_size);
    let (stride, len) = (3 * hidden, seq.len() / (3 * hidden));
    let (q_at, k_at, v_at) = shape.columns(h);
    let scores = ViewMut { data: s, ld: len };
    let (q, k) = (
        View::rows(&seq[q_at..], stride),
        View::transpose(&seq[k_at..], stride),
    );
    mkl.f32_strided((len, len, d), q, k, 0.0, scores);
    probabilities(s, len);
    let (p, v) = (View::rows(&*s, len), View::rows(&seq[v_at..], stride));
    let o = ViewMut {
        data: &mut out[h * d..],
        ld: hidden,
    };
    mkl.f32_strided((len, d, len), p, v, 0.0, o);
}

/// Every head of one sequence on oneMKL's bf16 GEMM: the sequence's projections
/// rounded to bf16 once, each head's probabilities after its softmax.
fn mkl_bf16_heads(mkl: &Mkl, seq: &[f32], shape: Heads, s: &mut [f32], out: &mut [f32]) {
    let (hidden, d) = (shape.hidden(), shape.head_size);
    let (stride, len) = (3 * hidden, seq.len() / (3 * hidden));
    HALVES.with_borrow_mut(|(halves, probs)| {
        let seq16 = take(halves, seq.len());
        quant::to_bf16(seq, seq16);
        let seq16: &[u16] = seq16.reinterpret_cast();
        let p16 = take(probs, len * len);
        for h in 0..shape.heads {
            let (q_at, k_at, v_at) = shape.columns(h);
            let scores = ViewMut {
                data: &mut *s,
                ld: len,
            };
            let (q, k) = (
                View::rows(&seq16[q_at..], stride),
                View::transpose(&seq16[k_at..], stride),
            );
            mkl.bf16_strided((len, len, d), q, k, 0.0, scores);
            probabilities(s, len);
            quant::to_bf16(s, p16);
            let (p, v) = (
                View::rows(p16.reinterpret_cast(), len),
                View::rows(&seq16[v_at..], stride),
            );
            let o = ViewMut {
                data: &mut out[h * d..],
                ld: hidden,
            };
            mkl.bf16_strided((len, d, len), p, v, 0.0, o);
        }
    })
}

/// The softmax of each row of the scores `s` (`len` wide).
fn probabilities(s: &mut [f32], len: usize) {
    let _span = tracing::trace_span!("softmax").entered();
    softmax_rows(s, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_computation_per_sequence() {
        for matmul in crate::cpu::matmul::for_tests() {
            for (precision, tolerance) in [(Precision::F32, 1e-5), (Precision::Bf16, 3e-2)] {
                let products = Products::new(&matmul, precision);
                // Head sizes below, at and past one register of lanes.
                for (heads, d) in [(3, 8), (2, 32), (1, 40)] {
                    let worst = worst_error(
                        &products,
                        Heads {
                            heads,
                            head_size: d,
                        },
                    );
                    assert!(
                        worst < tolerance,
                        "{products:?} {heads} x {d}: worst error {worst}"
                    );
                }
            }
        }
    }

    /// The largest difference between `attend` on `products` and attention
    /// computed directly in f64, over sequences on both paths.
    fn worst_error(products: &Products, shape: Heads) -> f64 {
        let (heads, d, hidden) = (shape.heads, shape.head_size, shape.hidden());
        let lens = [5usize, 1, 19, GEMM_FROM + 3, 2 * GEMM_FROM + 7];
        let tokens: usize = lens.iter().sum();
        let qkv: Vec<f32> = (0..tokens * 3 * hidden)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let mut got = vec![0f32; tokens * hidden];
        attend(&qkv, &lens, shape, products, &mut got);
        let at = |t: usize, part: usize, h: usize, c: usize| {
            qkv[t * 3 * hidden + part * hidden + h * d + c] as f64
        };
        let (mut start, mut worst) = (0, 0f64);
        for &len in &lens {
            for h in 0..heads {
                for i in 0..len {
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            (0..d)
                                .map(|c| at(start + i, 0, h, c) * at(start + j, 1, h, c))
                                .sum()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for c in 0..d {
                        let want: f64 = (0..len)
                            .map(|j| e[j] / total * at(start + j, 2, h, c))
                            .sum();
                        let g = got[(start + i) * hidden + h * d + c] as f64;
                        worst = worst.max((g - want).abs());
                    }
                }
            }
            start += len;
        }
        worst
    }
}
