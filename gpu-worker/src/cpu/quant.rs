//! The reduced-precision inputs of the dense layers. int8: weights symmetric per
//! output channel (at load), activations per token row at run time (symmetric i8
//! for gemmkit's i8 x i8 product, asymmetric u8 for oneMKL's u8 x s8 one), and the
//! epilogue that scales the i32 products back to f32. bf16: activations rounded to
//! nearest even. The run-time loops are pulp
//! [`WithSimd`] bodies, compiled for the CPU's vector unit (see [`super::ops`]):
//! on the baseline target each `round` would be a libm call.

use gemmkit::bf16;
use pulp::{Simd, WithSimd};

use super::ops::LANES;

/// `out[i]` = `x[i]` rounded to bf16 (nearest, ties to even; NaNs stay NaN).
pub fn to_bf16(x: &[f32], out: &mut [bf16]) {
    pulp::Arch::new().dispatch(ToBf16 { x, out })
}

struct ToBf16<'a> {
    x: &'a [f32],
    out: &'a mut [bf16],
}

impl WithSimd for ToBf16<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        for (o, &x) in self.out.iter_mut().zip(self.x) {
            let bits = x.to_bits();
            let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
            let quiet = ((bits >> 16) as u16) | 0x40;
            *o = bf16::from_bits(if x.is_nan() { quiet } else { rounded });
        }
    }
}

/// `v` (finite, in [0, 2²²)) rounded to the nearest integer, ties to even: adding
/// 2²³ leaves the integer in the low mantissa bits. A bit cast instead of `as`,
/// whose saturating, NaN-checking conversion does not vectorise (each lane was
/// converted on its own).
#[inline(always)]
fn small_int(v: f32) -> i32 {
    const SHIFT: f32 = 8_388_608.0; // 2²³
    ((v + SHIFT).to_bits() - SHIFT.to_bits()) as i32
}

/// Symmetric int8 quantization of one row: the values over their scale
/// (max |x| / 127), rounded; returns the scale (0 for an all-zero row, NaN for a
/// row that is not finite).
#[inline(always)]
pub fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    let (lo, hi, finite) = range(row);
    let max = hi.max(-lo);
    if max == 0.0 || !finite {
        out.fill(0);
        return if finite { 0.0 } else { f32::NAN };
    }
    let scale = max / 127.0;
    let inv = 127.0 / max;
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (small_int((x * inv).clamp(-127.0, 127.0) + 127.0) - 127) as i8;
    }
    scale
}

/// Quantizes each row of `x` (`k` values a row) symmetrically into `out` (zero
/// points 0).
pub fn quantize_rows_i8(x: &[f32], k: usize, out: &mut [i8]) -> Vec<RowQuant> {
    pulp::Arch::new().dispatch(RowsI8 { x, k, out })
}

struct RowsI8<'a> {
    x: &'a [f32],
    k: usize,
    out: &'a mut [i8],
}

impl WithSimd for RowsI8<'_> {
    type Output = Vec<RowQuant>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> Vec<RowQuant> {
        let RowsI8 { x, k, out } = self;
        // Plain loops: an iterator's `collect` is a separate generic function,
        // compiled without the vector unit (each `round` a libm call).
        let mut rows = Vec::with_capacity(x.len() / k.max(1));
        for (row, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
            rows.push(RowQuant {
                scale: quantize_row(row, out),
                zero: 0,
            });
        }
        rows
    }
}

/// One row's asymmetric u8 parameters: `x ≈ scale · (q − zero)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowQuant {
    pub scale: f32,
    pub zero: i32,
}

/// Smallest and largest value of a row with [`LANES`] partial extremes, and
/// whether every value is finite.
#[inline(always)]
fn range(row: &[f32]) -> (f32, f32, bool) {
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    let mut bad = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (((l, h), b), &x) in lo.iter_mut().zip(&mut hi).zip(&mut bad).zip(chunk) {
            *l = if x < *l { x } else { *l };
            *h = if x > *h { x } else { *h };
            *b += x * 0.0; // NaN for an infinite or NaN value, else 0
        }
    }
    let (mut l, mut h, mut finite) = (0f32, 0f32, true);
    for ((&lo, &hi), &bad) in lo.iter().zip(&hi).zip(&bad) {
        l = l.min(lo);
        h = h.max(hi);
        finite &= bad == 0.0;
    }
    for &x in tail {
        l = l.min(x);
        h = h.max(x);
        finite &= x.is_finite();
    }
    (l, h, finite)
}

/// Asymmetric u8 quantization of one row over [min(row, 0), max(row, 0)].
#[inline(always)]
pub fn quantize_row_u8(row: &[f32], out: &mut [u8]) -> RowQuant {
    let (lo, hi, finite) = range(row);
    if !finite || hi == lo {
        out.fill(0);
        let scale = if finite { 0.0 } else { f32::NAN };
        return RowQuant { scale, zero: 0 };
    }
    let scale = (hi - lo) / 255.0;
    let inv = 1.0 / scale;
    let zero = (-lo * inv).round_ties_even().clamp(0.0, 255.0);
    for (o, &x) in out.iter_mut().zip(row) {
        *o = small_int(x.mul_add(inv, zero).clamp(0.0, 255.0)) as u8;
    }
    RowQuant {
        scale,
        zero: zero as i32,
    }
}

/// Quantizes each row of `x` (`k` values a row) asymmetrically into `out`.
pub fn quantize_rows_u8(x: &[f32], k: usize, out: &mut [u8]) -> Vec<RowQuant> {
    pulp::Arch::new().dispatch(RowsU8 { x, k, out })
}

struct RowsU8<'a> {
    x: &'a [f32],
    k: usize,
    out: &'a mut [u8],
}

impl WithSimd for RowsU8<'_> {
    type Output = Vec<RowQuant>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> Vec<RowQuant> {
        let RowsU8 { x, k, out } = self;
        let mut rows = Vec::with_capacity(x.len() / k.max(1));
        for (row, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
            rows.push(quantize_row_u8(row, out));
        }
        rows
    }
}

/// A layer's int8 weights as the epilogue needs them: per output channel, the
/// scale and the sum of the quantized weights (for the activations' zero points).
pub struct Channels<'a> {
    pub scales: &'a [f32],
    pub sums: &'a [i32],
    pub bias: &'a [f32],
}

/// `out[t][j] = (c[t][j] − zero_t · sum_j) · scale_t · scale_j + bias_j`, over
/// rows of `n = channels.bias.len()` values.
pub fn dequantize(c: &[i32], rows: &[RowQuant], channels: &Channels, out: &mut [f32]) {
    pulp::Arch::new().dispatch(Dequantize {
        c,
        rows,
        channels,
        out,
    })
}

struct Dequantize<'a> {
    c: &'a [i32],
    rows: &'a [RowQuant],
    channels: &'a Channels<'a>,
    out: &'a mut [f32],
}

impl WithSimd for Dequantize<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Dequantize {
            c,
            rows,
            channels,
            out,
        } = self;
        let n = channels.bias.len();
        for ((orow, crow), row) in out.chunks_exact_mut(n).zip(c.chunks_exact(n)).zip(rows) {
            let parts = orow
                .iter_mut()
                .zip(crow)
                .zip(channels.bias)
                .zip(channels.scales)
                .zip(channels.sums);
            for ((((o, &c), &b), &ws), &sum) in parts {
                *o = ((c - row.zero * sum) as f32 * row.scale).mul_add(ws, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ints_round_to_the_nearest_even() {
        for (v, want) in [
            (0.0, 0),
            (0.49, 0),
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (254.6, 255),
            (255.0, 255),
        ] {
            assert_eq!(small_int(v), want, "{v}");
        }
    }

    #[test]
    fn bf16_rounding_is_the_nearest_even() {
        let xs = [
            1.0f32,
            -2.5,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            3.0e38,
            f32::INFINITY,
            f32::NAN,
        ];
        let mut out = vec![bf16::ZERO; xs.len()];
        to_bf16(&xs, &mut out);
        for (x, o) in xs.iter().zip(&out) {
            let want = bf16::from_f32(*x);
            assert!(
                o.to_bits() == want.to_bits() || (x.is_nan() && o.is_nan()),
                "{x}: {o} vs {want}"
            );
        }
    }

    #[test]
    fn asymmetric_rows_round_trip_within_half_a_step() {
        let row: Vec<f32> = (0..200).map(|i| i as f32 * 0.05 - 0.17).collect();
        let mut q = vec![0u8; row.len()];
        let RowQuant { scale, zero } = quantize_rows_u8(&row, row.len(), &mut q)[0];
        assert!((scale - (row[199] - row[0]) / 255.0).abs() < 1e-6);
        for (&x, &q) in row.iter().zip(&q) {
            let back = scale * (q as i32 - zero) as f32;
            assert!((back - x).abs() <= 0.5 * scale + 1e-6, "{x} -> {back}");
        }
    }

    #[test]
    fn flat_and_broken_rows_are_marked() {
        let mut q = vec![9u8; 40];
        assert_eq!(
            quantize_rows_u8(&[0.0; 40], 40, &mut q)[0],
            RowQuant {
                scale: 0.0,
                zero: 0
            }
        );
        assert_eq!(q, [0; 40]);
        for bad in [f32::NAN, f32::INFINITY] {
            // In the vectorised part of the row and in its tail.
            for at in [3, 37] {
                let mut row = vec![1.0f32; 40];
                row[at] = bad;
                assert!(
                    quantize_rows_u8(&row, 40, &mut q)[0].scale.is_nan(),
                    "{bad} at {at}"
                );
                let mut qi = vec![0i8; 40];
                assert!(
                    quantize_rows_i8(&row, 40, &mut qi)[0].scale.is_nan(),
                    "{bad} at {at}"
                );
            }
        }
    }

    #[test]
    fn the_epilogue_removes_the_zero_points() {
        // One row x = [0.5, -0.25] against weights w = [[2, 4], [-2, 2]] (scale 1).
        let x = [0.5f32, -0.25];
        let mut q = [0u8; 2];
        let row = quantize_rows_u8(&x, 2, &mut q)[0];
        let w = [[2i32, 4], [-2, 2]];
        let c: Vec<i32> = w
            .iter()
            .map(|w| w[0] * q[0] as i32 + w[1] * q[1] as i32)
            .collect();
        let sums: Vec<i32> = w.iter().map(|w| w[0] + w[1]).collect();
        let channels = Channels {
            scales: &[1.0, 1.0],
            sums: &sums,
            bias: &[0.1, 0.0],
        };
        let mut out = [0f32; 2];
        dequantize(&c, &[row], &channels, &mut out);
        assert!((out[0] - (0.0 + 0.1)).abs() < 0.02, "{out:?}");
        assert!((out[1] - (-1.5)).abs() < 0.02, "{out:?}");
    }
}
