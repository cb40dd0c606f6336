//! The element-wise work of the encoder, fused and vectorised: each function is one
//! pass over its rows, compiled for the CPU's best vector unit (AVX-512 or AVX2,
//! picked at run time by pulp). Every loop body below is a [`WithSimd`] whose
//! `with_simd` is `#[inline(always)]`, so pulp inlines it into code built for that
//! unit. (A plain closure handed to `dispatch` is not reliably inlined: compiled for
//! the baseline CPU, each `mul_add` became a call to libm's `fmaf` and nothing
//! vectorised: layer norm ran 7x slower; see CPU-NOTES.md.)
//!
//! Reductions (layer-norm sums, softmax sums) keep [`LANES`] partial sums so the
//! compiler can vectorise them without reassociating floating-point adds.

use pulp::{Simd, WithSimd};

/// Partial sums per reduction: one AVX-512 register of f32.
pub const LANES: usize = 16;

/// Sum of a slice with [`LANES`] partial sums (vectorisable, deterministic).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Largest value of a slice ([`LANES`] partial maxima; NEG_INFINITY when empty).
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// Sum of squared deviations from `mean`, as [`sum`].
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, x) in acc.iter_mut().zip(chunk) {
            let d = x - mean;
            *a = d.mul_add(d, *a);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>()
}

/// Layer norm parameters of one hidden size.
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    /// `rows[t] = LayerNorm(rows[t] + residual[t])` for every row of `hidden` values
    /// (`residual` may be empty: no residual), two passes per row (mean, then the
    /// variance about it, as PyTorch computes it).
    pub fn apply(&self, rows: &mut [f32], residual: &[f32]) {
        pulp::Arch::new().dispatch(NormOp {
            norm: self,
            rows,
            residual,
        })
    }
}

struct NormOp<'a> {
    norm: &'a Norm,
    rows: &'a mut [f32],
    residual: &'a [f32],
}

impl WithSimd for NormOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let NormOp {
            norm,
            rows,
            residual,
        } = self;
        let hidden = norm.gamma.len();
        {
            for (t, row) in rows.chunks_exact_mut(hidden).enumerate() {
                if let Some(res) = residual.get(t * hidden..(t + 1) * hidden) {
                    for (x, r) in row.iter_mut().zip(res) {
                        *x += r;
                    }
                }
                let mean = sum(row) / hidden as f32;
                let var = sum_sq_dev(row, mean) / hidden as f32;
                let inv = 1.0 / (var + norm.eps).sqrt();
                for ((x, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
                    *x = ((*x - mean) * inv).mul_add(*g, *b);
                }
            }
        }
    }
}

/// e^x for x in about [-87, 88] (lower values give 0), relative error below 2e-7:
/// x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by its Taylor series to r⁷, 2^n through
/// the exponent bits. Branch-free, so it vectorises.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n from the exponent bits: n + 127 + 2^23 holds n + 127 in its low
    // mantissa bits (n is a whole number in [-126, 127]); no float-to-int
    // conversion, which would keep the loop from vectorising.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0x7f_ffff;
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// erf(x) with absolute error below 1e-6 (Abramowitz and Stegun 7.1.26, 1.5e-7 in
/// exact arithmetic, with the exponential above and f32 rounding).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / P.mul_add(a, 1.0);
    let mut poly = A[4];
    poly = poly.mul_add(t, A[3]);
    poly = poly.mul_add(t, A[2]);
    poly = poly.mul_add(t, A[1]);
    poly = poly.mul_add(t, A[0]);
    let y = 1.0 - poly * t * exp(-a * a);
    y.copysign(x)
}

/// GELU (the exact, erf form: x/2 · (1 + erf(x/√2))) in place.
pub fn gelu(xs: &mut [f32]) {
    pulp::Arch::new().dispatch(GeluOp(xs))
}

struct GeluOp<'a>(&'a mut [f32]);

impl WithSimd for GeluOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for x in self.0.iter_mut() {
            let v = *x;
            *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// Softmax of every row of `width` values of `rows`, in place.
pub fn softmax_rows(rows: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    pulp::Arch::new().dispatch(SoftmaxOp { rows, width })
}

struct SoftmaxOp<'a> {
    rows: &'a mut [f32],
    width: usize,
}

impl WithSimd for SoftmaxOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for row in self.rows.chunks_exact_mut(self.width) {
            softmax(row);
        }
    }
}

/// Softmax of `xs` in place (max subtracted first); returns nothing when empty.
/// The exponentials run a whole vector at a time, the last partial one padded
/// with -inf (whose weight, e^-87 ~ 1e-38, is far below f32's resolution of the
/// sum), so a short row is not left to scalar code.
#[inline(always)]
pub fn softmax(xs: &mut [f32]) {
    let max = max(xs);
    let mut acc = [0f32; LANES];
    let mut exps = |chunk: &mut [f32]| {
        for (a, x) in acc.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *a += *x;
        }
    };
    let mut chunks = xs.chunks_exact_mut(LANES);
    for chunk in chunks.by_ref() {
        exps(chunk);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut padded = [f32::NEG_INFINITY; LANES];
        padded[..tail.len()].copy_from_slice(tail);
        exps(&mut padded);
        tail.copy_from_slice(&padded[..tail.len()]);
    }
    let inv = 1.0 / acc.iter().sum::<f32>();
    for x in xs.iter_mut() {
        *x *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Maclaurin series (|x| < 3) in f64, the continued-fraction
    /// complement beyond: a reference independent of the approximation above.
    fn erf_reference(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let (mut term, mut total, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want > 1e-37 {
                assert!(
                    ((got - want) / want).abs() < 3e-7,
                    "exp({x}) = {got}, want {want}"
                );
            }
        }
        for i in -6000..=6000 {
            let x = i as f32 / 1000.0;
            let want = erf_reference(x as f64);
            assert!((erf(x) as f64 - want).abs() < 1e-6, "erf({x})");
        }
        assert_eq!(exp(-200.0), exp(-87.0));
    }

    #[test]
    fn layer_norm_with_residual_and_softmax() {
        let hidden = 40;
        let norm = Norm {
            gamma: (0..hidden).map(|i| 1.0 + i as f32 / 100.0).collect(),
            beta: (0..hidden).map(|i| i as f32 / 1000.0).collect(),
            eps: 1e-12,
        };
        let x: Vec<f32> = (0..2 * hidden)
            .map(|i| ((i * 7) % 13) as f32 - 6.0)
            .collect();
        let residual: Vec<f32> = (0..2 * hidden).map(|i| (i % 3) as f32).collect();
        let mut got = x.clone();
        norm.apply(&mut got, &residual);
        for t in 0..2 {
            let row: Vec<f64> = (0..hidden)
                .map(|i| (x[t * hidden + i] + residual[t * hidden + i]) as f64)
                .collect();
            let mean = row.iter().sum::<f64>() / hidden as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / hidden as f64;
            for i in 0..hidden {
                let want =
                    (row[i] - mean) / var.sqrt() * norm.gamma[i] as f64 + norm.beta[i] as f64;
                assert!((got[t * hidden + i] as f64 - want).abs() < 1e-5);
            }
        }
        let mut p = vec![1.0, 2.0, 3.0, -1e4];
        softmax(&mut p);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| (v - 3.0).exp()).collect();
        let s: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((p[i] as f64 - e[i] / s).abs() < 1e-6);
        }
        assert!(p[3] < 1e-30);
    }
}
