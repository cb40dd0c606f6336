//! AVX2 kernels (256-bit vectors: `vpmaddubsw` + `vpmaddwd`, as ggml's AVX2 build).
//! The same packed layout as the AVX-512 kernels: a 64-byte weight vector is two
//! 256-bit halves (rows 0..8 and 8..16 of the group), and a tile is one half by up to
//! [`ROWS`] activation rows (sixteen registers hold no more). The arithmetic, and the
//! bounds that keep 16-bit sums exact, are those of [`super::avx512`].

use core::arch::x86_64::{__m256, __m256i};
use std::ops::Range;

use pulp::bytemuck::cast;
use pulp::x86::V3;
use pulp::NullaryFnOnce;

use super::pack::{Q41Matrix, Q80Matrix, GROUP};
use super::quant::QActs;

/// Most activation rows per tile.
const ROWS: usize = 4;
const HALF: usize = GROUP / 2;

macro_rules! tiled {
    ($tile:ident, $simd:expr, $w:expr, $a:expr, $g:expr, $local:expr, $out:expr) => {{
        let m = $out.len();
        for h in 0..2 {
            let mut i = 0;
            while i < m {
                let left = m - i;
                if left >= ROWS {
                    let acc = $tile::<ROWS>($simd, $w, $a, $g, h, i);
                    put($out, i, $local, h, &acc);
                    i += ROWS;
                } else if left >= 2 {
                    let acc = $tile::<2>($simd, $w, $a, $g, h, i);
                    put($out, i, $local, h, &acc);
                    i += 2;
                } else {
                    let acc = $tile::<1>($simd, $w, $a, $g, h, i);
                    put($out, i, $local, h, &acc);
                    i += 1;
                }
            }
        }
    }};
}

#[inline(always)]
fn put<const C: usize>(
    out: &mut [&mut [f32]],
    i0: usize,
    local: usize,
    half: usize,
    acc: &[[f32; HALF]; C],
) {
    for (c, acc) in acc.iter().enumerate() {
        let row = &mut *out[i0 + c];
        let start = local * GROUP + half * HALF;
        let end = (start + HALF).min(row.len());
        if start < end {
            row[start..end].copy_from_slice(&acc[..end - start]);
        }
    }
}

struct Q41<'a, 'b> {
    simd: V3,
    w: &'a Q41Matrix,
    a: &'a QActs,
    groups: Range<usize>,
    out: &'a mut [&'b mut [f32]],
}

impl NullaryFnOnce for Q41<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        for (local, g) in self.groups.clone().enumerate() {
            tiled!(q41_tile, self.simd, self.w, self.a, g, local, self.out);
        }
    }
}

#[inline(always)]
fn q41_tile<const C: usize>(
    simd: V3,
    w: &Q41Matrix,
    a: &QActs,
    g: usize,
    h: usize,
    i0: usize,
) -> [[f32; HALF]; C] {
    let (avx, avx2, fma) = (simd.avx, simd.avx2, simd.fma);
    let nb = w.blocks;
    let low = avx._mm256_set1_epi8(0x0F);
    let ones = avx._mm256_set1_epi16(1);
    let quants = &w.quants[g * nb..(g + 1) * nb];
    let scales = &w.scales[g * nb..(g + 1) * nb];
    let xq: [&[[i32; 8]]; C] = core::array::from_fn(|c| &a.qs[(i0 + c) * nb..][..nb]);
    let xd: [&[f32]; C] = core::array::from_fn(|c| &a.d[(i0 + c) * nb..][..nb]);
    let xs: [&[f32]; C] = core::array::from_fn(|c| &a.s[(i0 + c) * nb..][..nb]);
    let mut acc = [avx._mm256_setzero_ps(); C];
    for b in 0..nb {
        let mut isum = [avx._mm256_setzero_si256(); C];
        for p in 0..4 {
            let halves: [__m256i; 2] = cast(quants[b][p]);
            let v = halves[h];
            let lo = avx2._mm256_and_si256(v, low);
            let hi = avx2._mm256_and_si256(avx2._mm256_srli_epi16::<4>(v), low);
            for c in 0..C {
                let words = &xq[c][b];
                let xl = avx._mm256_set1_epi32(words[p]);
                let xh = avx._mm256_set1_epi32(words[p + 4]);
                let pair = avx2._mm256_add_epi16(
                    avx2._mm256_maddubs_epi16(lo, xl),
                    avx2._mm256_maddubs_epi16(hi, xh),
                );
                isum[c] = avx2._mm256_add_epi16(isum[c], pair);
            }
        }
        let dw: [__m256; 2] = cast(scales[b][0]);
        let mw: [__m256; 2] = cast(scales[b][1]);
        for c in 0..C {
            let sum = avx._mm256_cvtepi32_ps(avx2._mm256_madd_epi16(isum[c], ones));
            let scale = avx._mm256_mul_ps(dw[h], avx._mm256_set1_ps(xd[c][b]));
            acc[c] = fma._mm256_fmadd_ps(sum, scale, acc[c]);
            acc[c] = fma._mm256_fmadd_ps(mw[h], avx._mm256_set1_ps(xs[c][b]), acc[c]);
        }
    }
    acc.map(cast)
}

struct Q80<'a, 'b> {
    simd: V3,
    w: &'a Q80Matrix,
    a: &'a QActs,
    groups: Range<usize>,
    out: &'a mut [&'b mut [f32]],
}

impl NullaryFnOnce for Q80<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        for (local, g) in self.groups.clone().enumerate() {
            tiled!(q80_tile, self.simd, self.w, self.a, g, local, self.out);
        }
    }
}

#[inline(always)]
fn q80_tile<const C: usize>(
    simd: V3,
    w: &Q80Matrix,
    a: &QActs,
    g: usize,
    h: usize,
    i0: usize,
) -> [[f32; HALF]; C] {
    let (avx, avx2, fma) = (simd.avx, simd.avx2, simd.fma);
    let nb = w.blocks;
    let ones = avx._mm256_set1_epi16(1);
    let quants = &w.quants[g * nb..(g + 1) * nb];
    let scales = &w.scales[g * nb..(g + 1) * nb];
    let xq: [&[[i32; 8]]; C] = core::array::from_fn(|c| &a.qs[(i0 + c) * nb..][..nb]);
    let xd: [&[f32]; C] = core::array::from_fn(|c| &a.d[(i0 + c) * nb..][..nb]);
    let mut acc = [avx._mm256_setzero_ps(); C];
    for b in 0..nb {
        let mut isum = [avx._mm256_setzero_si256(); C];
        for s in 0..8 {
            let halves: [__m256i; 2] = cast(quants[b][s]);
            let v = halves[h];
            let magnitude = avx2._mm256_abs_epi8(v);
            for c in 0..C {
                let x = avx._mm256_set1_epi32(xq[c][b][s]);
                let pairs = avx2._mm256_maddubs_epi16(magnitude, avx2._mm256_sign_epi8(x, v));
                isum[c] = avx2._mm256_add_epi32(isum[c], avx2._mm256_madd_epi16(pairs, ones));
            }
        }
        let dw: [__m256; 2] = cast(scales[b]);
        for c in 0..C {
            let scale = avx._mm256_mul_ps(dw[h], avx._mm256_set1_ps(xd[c][b]));
            acc[c] = fma._mm256_fmadd_ps(avx._mm256_cvtepi32_ps(isum[c]), scale, acc[c]);
        }
    }
    acc.map(cast)
}

pub(super) fn q4_1(
    simd: V3,
    w: &Q41Matrix,
    a: &QActs,
    groups: Range<usize>,
    out: &mut [&mut [f32]],
) {
    simd.vectorize(Q41 {
        simd,
        w,
        a,
        groups,
        out,
    });
}

pub(super) fn q8_0(
    simd: V3,
    w: &Q80Matrix,
    a: &QActs,
    groups: Range<usize>,
    out: &mut [&mut [f32]],
) {
    simd.vectorize(Q80 {
        simd,
        w,
        a,
        groups,
        out,
    });
}
