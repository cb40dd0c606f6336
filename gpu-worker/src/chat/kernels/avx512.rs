//! AVX-512BW kernels (512-bit vectors, no VNNI: `vpmaddubsw` + `vpmaddwd`, as ggml's
//! AVX-512 build of these dot products). A tile is one 16-row weight group (the lanes)
//! by up to [`ROWS`] activation rows: each 64-byte weight vector is loaded and
//! unpacked once per tile and multiplied by every row's broadcast activations.
//!
//! Q4_1: nibbles (0..15) times signed activation bytes, 16-bit partial sums (a whole
//! block's eight products per lane pair stay below 2^15: 8·2·15·127 = 30480), widened
//! once per block. Q8_0: signed times signed, by the sign trick (`|w|` times `x`
//! carrying `w`'s sign; at most 2·128·127 per pair, so no saturation), widened every
//! step.

use core::arch::x86_64::{__m512, __m512i};
use std::ops::Range;

use pulp::bytemuck::cast;
use pulp::x86::V4;
use pulp::NullaryFnOnce;

use super::pack::{Q41Matrix, Q80Matrix, GROUP};
use super::quant::QActs;
use super::scalar::store;

/// Most activation rows per tile (each holds two accumulators in registers).
const ROWS: usize = 8;

/// Runs `tile::<C>` over every activation row in tiles of 8, 4, 2 and 1.
macro_rules! tiled {
    ($tile:ident, $simd:expr, $w:expr, $a:expr, $g:expr, $local:expr, $out:expr) => {{
        let m = $out.len();
        let mut i = 0;
        while i < m {
            let left = m - i;
            if left >= ROWS {
                let acc = $tile::<ROWS>($simd, $w, $a, $g, i);
                put($out, i, $local, &acc);
                i += ROWS;
            } else if left >= 4 {
                let acc = $tile::<4>($simd, $w, $a, $g, i);
                put($out, i, $local, &acc);
                i += 4;
            } else if left >= 2 {
                let acc = $tile::<2>($simd, $w, $a, $g, i);
                put($out, i, $local, &acc);
                i += 2;
            } else {
                let acc = $tile::<1>($simd, $w, $a, $g, i);
                put($out, i, $local, &acc);
                i += 1;
            }
        }
    }};
}

#[inline(always)]
fn put<const C: usize>(out: &mut [&mut [f32]], i0: usize, local: usize, acc: &[[f32; GROUP]; C]) {
    for (c, acc) in acc.iter().enumerate() {
        store(out[i0 + c], local, acc);
    }
}

struct Q41<'a, 'b> {
    simd: V4,
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
    simd: V4,
    w: &Q41Matrix,
    a: &QActs,
    g: usize,
    i0: usize,
) -> [[f32; GROUP]; C] {
    let (f, bw) = (simd.avx512f, simd.avx512bw);
    let nb = w.blocks;
    let low = f._mm512_set1_epi8(0x0F);
    let ones = f._mm512_set1_epi16(1);
    let quants = &w.quants[g * nb..(g + 1) * nb];
    let scales = &w.scales[g * nb..(g + 1) * nb];
    let xq: [&[[i32; 8]]; C] = core::array::from_fn(|c| &a.qs[(i0 + c) * nb..][..nb]);
    let xd: [&[f32]; C] = core::array::from_fn(|c| &a.d[(i0 + c) * nb..][..nb]);
    let xs: [&[f32]; C] = core::array::from_fn(|c| &a.s[(i0 + c) * nb..][..nb]);
    let mut acc = [f._mm512_setzero_ps(); C];
    for b in 0..nb {
        let mut isum = [f._mm512_setzero_si512(); C];
        for p in 0..4 {
            let v: __m512i = cast(quants[b][p]);
            let lo = f._mm512_and_si512(v, low);
            let hi = f._mm512_and_si512(bw._mm512_srli_epi16::<4>(v), low);
            for c in 0..C {
                let words = &xq[c][b];
                let xl = f._mm512_set1_epi32(words[p]);
                let xh = f._mm512_set1_epi32(words[p + 4]);
                let pair = bw._mm512_add_epi16(
                    bw._mm512_maddubs_epi16(lo, xl),
                    bw._mm512_maddubs_epi16(hi, xh),
                );
                isum[c] = bw._mm512_add_epi16(isum[c], pair);
            }
        }
        let dw: __m512 = cast(scales[b][0]);
        let mw: __m512 = cast(scales[b][1]);
        for c in 0..C {
            let sum = f._mm512_cvtepi32_ps(bw._mm512_madd_epi16(isum[c], ones));
            let scale = f._mm512_mul_ps(dw, f._mm512_set1_ps(xd[c][b]));
            acc[c] = f._mm512_fmadd_ps(sum, scale, acc[c]);
            acc[c] = f._mm512_fmadd_ps(mw, f._mm512_set1_ps(xs[c][b]), acc[c]);
        }
    }
    acc.map(cast)
}

struct Q80<'a, 'b> {
    simd: V4,
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
    simd: V4,
    w: &Q80Matrix,
    a: &QActs,
    g: usize,
    i0: usize,
) -> [[f32; GROUP]; C] {
    let (f, bw) = (simd.avx512f, simd.avx512bw);
    let nb = w.blocks;
    let ones = f._mm512_set1_epi16(1);
    let zero = f._mm512_setzero_si512();
    let quants = &w.quants[g * nb..(g + 1) * nb];
    let scales = &w.scales[g * nb..(g + 1) * nb];
    let xq: [&[[i32; 8]]; C] = core::array::from_fn(|c| &a.qs[(i0 + c) * nb..][..nb]);
    let xd: [&[f32]; C] = core::array::from_fn(|c| &a.d[(i0 + c) * nb..][..nb]);
    let mut acc = [f._mm512_setzero_ps(); C];
    for b in 0..nb {
        let mut isum = [zero; C];
        for s in 0..8 {
            let v: __m512i = cast(quants[b][s]);
            let magnitude = bw._mm512_abs_epi8(v);
            let negative = bw._mm512_movepi8_mask(v);
            for c in 0..C {
                let x = f._mm512_set1_epi32(xq[c][b][s]);
                let signed = bw._mm512_mask_sub_epi8(x, negative, zero, x);
                let pairs = bw._mm512_maddubs_epi16(magnitude, signed);
                isum[c] = f._mm512_add_epi32(isum[c], bw._mm512_madd_epi16(pairs, ones));
            }
        }
        let dw: __m512 = cast(scales[b]);
        for c in 0..C {
            let scale = f._mm512_mul_ps(dw, f._mm512_set1_ps(xd[c][b]));
            acc[c] = f._mm512_fmadd_ps(f._mm512_cvtepi32_ps(isum[c]), scale, acc[c]);
        }
    }
    acc.map(cast)
}

pub(super) fn q4_1(
    simd: V4,
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
    simd: V4,
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
