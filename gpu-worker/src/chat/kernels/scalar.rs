//! The portable kernels: the same arithmetic as the SIMD ones (exact integer block dot
//! products, then `acc += Σq·(d_w·d_x)` and, for Q4_1, `acc += m_w·s_x` in f32), one
//! value at a time. They run where no SIMD path applies (other CPUs, aarch64) and are
//! what the SIMD paths are tested against.

use std::ops::Range;

use super::pack::{Q41Matrix, Q80Matrix, GROUP};
use super::quant::QActs;

/// Writes a group's 16 results into a task's slice of one output row (the columns of
/// `first_group` onwards), dropping lanes past the slice's end (rows past `n`).
#[inline(always)]
pub(super) fn store(row: &mut [f32], local_group: usize, acc: &[f32; GROUP]) {
    let start = local_group * GROUP;
    let end = (start + GROUP).min(row.len());
    row[start..end].copy_from_slice(&acc[..end - start]);
}

/// `out[i][..]` (columns of `groups`) = activation row `i` · weight rows of `groups`.
pub(super) fn q4_1(w: &Q41Matrix, a: &QActs, groups: Range<usize>, out: &mut [&mut [f32]]) {
    let nb = w.blocks;
    for (local, g) in groups.enumerate() {
        for (i, row) in out.iter_mut().enumerate() {
            let mut acc = [0f32; GROUP];
            for b in 0..nb {
                let q = &w.quants[g * nb + b];
                let [dw, mw] = &w.scales[g * nb + b];
                let x = a.bytes(i, b);
                let mut isum = [0i32; GROUP];
                for (p, vector) in q.iter().enumerate() {
                    for (l, sum) in isum.iter_mut().enumerate() {
                        for t in 0..4 {
                            let byte = vector[4 * l + t];
                            *sum += i32::from(byte & 15) * i32::from(x[4 * p + t])
                                + i32::from(byte >> 4) * i32::from(x[16 + 4 * p + t]);
                        }
                    }
                }
                let (dx, sx) = (a.d[i * nb + b], a.s[i * nb + b]);
                for l in 0..GROUP {
                    acc[l] += isum[l] as f32 * (dw[l] * dx);
                    acc[l] += mw[l] * sx;
                }
            }
            store(row, local, &acc);
        }
    }
}

/// As [`q4_1`], for Q8_0 weights and Q8_0 activations.
pub(super) fn q8_0(w: &Q80Matrix, a: &QActs, groups: Range<usize>, out: &mut [&mut [f32]]) {
    let nb = w.blocks;
    for (local, g) in groups.enumerate() {
        for (i, row) in out.iter_mut().enumerate() {
            let mut acc = [0f32; GROUP];
            for b in 0..nb {
                let q = &w.quants[g * nb + b];
                let dw = &w.scales[g * nb + b];
                let x = a.bytes(i, b);
                let mut isum = [0i32; GROUP];
                for (s, vector) in q.iter().enumerate() {
                    for (l, sum) in isum.iter_mut().enumerate() {
                        for t in 0..4 {
                            *sum += i32::from(vector[4 * l + t] as i8) * i32::from(x[4 * s + t]);
                        }
                    }
                }
                let dx = a.d[i * nb + b];
                for l in 0..GROUP {
                    acc[l] += isum[l] as f32 * (dw[l] * dx);
                }
            }
            store(row, local, &acc);
        }
    }
}
