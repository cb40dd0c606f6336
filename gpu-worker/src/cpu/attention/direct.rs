//! Attention of one short sequence by direct vectorised loops, head by head, in
//! three passes: every query's scores, every row's softmax, every query's
//! output. Each pass takes [`QUERIES`] queries at a time, so that their sums
//! are independent chains of multiply-adds (a single query's would be one
//! chain, waiting on each add's latency) and each key or value row loaded
//! serves all of them.

use pulp::{Simd, WithSimd};

use super::super::ops::{softmax, LANES};
use super::Heads;

/// Queries whose sums run side by side.
const QUERIES: usize = 4;

/// Attention of `seq` (a sequence's rows of the fused projections) into `out`
/// (its rows of the output), every head.
pub(super) fn attend_short(seq: &[f32], shape: Heads, out: &mut [f32]) {
    pulp::Arch::new().dispatch(Direct { seq, shape, out });
}

struct Direct<'a> {
    seq: &'a [f32],
    shape: Heads,
    out: &'a mut [f32],
}

impl WithSimd for Direct<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Direct { seq, shape, out } = self;
        let (hidden, d) = (shape.hidden(), shape.head_size);
        let len = seq.len() / (3 * hidden);
        // Keys transposed (head size x `padded`, zeros past `len`), so that a
        // query's scores against LANES keys are `d` multiply-adds of whole rows;
        // scores `len x padded`, the padding at -inf (weight ~1e-38 after the
        // softmax, far below f32's resolution of a row's sum).
        let padded = len.next_multiple_of(LANES);
        let mut keys = vec![0f32; d * padded];
        let mut scores = vec![f32::NEG_INFINITY; len * padded];
        for h in 0..shape.heads {
            let (q_at, k_at, v_at) = shape.columns(h);
            for (j, row) in seq.chunks_exact(3 * hidden).enumerate() {
                for (c, &k) in row[k_at..k_at + d].iter().enumerate() {
                    keys[c * padded + j] = k;
                }
            }
            let rows = Rows { seq, hidden, len };
            let mut i = 0;
            while i + QUERIES <= len {
                score_block::<QUERIES>(rows, q_at, i, &keys, d, &mut scores);
                i += QUERIES;
            }
            for i in i..len {
                score_block::<1>(rows, q_at, i, &keys, d, &mut scores);
            }
            for row in scores.chunks_exact_mut(padded) {
                row[len..].fill(f32::NEG_INFINITY);
                softmax(row);
            }
            let mut i = 0;
            while i + QUERIES <= len {
                output_block::<QUERIES>(rows, v_at, d, i, &scores, padded, out, h);
                i += QUERIES;
            }
            for i in i..len {
                output_block::<1>(rows, v_at, d, i, &scores, padded, out, h);
            }
        }
    }
}

/// A sequence's rows of the fused projections.
#[derive(Clone, Copy)]
struct Rows<'a> {
    seq: &'a [f32],
    hidden: usize,
    len: usize,
}

impl<'a> Rows<'a> {
    /// `d` values of row `t` from column `at`.
    #[inline(always)]
    fn get(self, t: usize, at: usize, d: usize) -> &'a [f32] {
        let start = t * 3 * self.hidden + at;
        &self.seq[start..start + d]
    }
}

/// The scores of queries `i..i + R` against every key, `padded / LANES` blocks
/// of LANES keys each.
#[inline(always)]
fn score_block<const R: usize>(
    rows: Rows,
    q_at: usize,
    i: usize,
    keys: &[f32],
    d: usize,
    scores: &mut [f32],
) {
    let padded = keys.len() / d;
    let q: [&[f32]; R] = std::array::from_fn(|r| rows.get(i + r, q_at, d));
    for block in 0..padded / LANES {
        let mut acc = [[0f32; LANES]; R];
        for (c, krow) in keys.chunks_exact(padded).enumerate() {
            let k = &krow[block * LANES..(block + 1) * LANES];
            for r in 0..R {
                let qc = q[r][c];
                for l in 0..LANES {
                    acc[r][l] = qc.mul_add(k[l], acc[r][l]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = (i + r) * padded + block * LANES;
            scores[at..at + LANES].copy_from_slice(acc);
        }
    }
}

/// The outputs of queries `i..i + R` for head `h`: their probabilities `p`
/// (rows of `padded`) times the values, LANES columns at a time, the columns
/// past the last whole block one by one.
#[allow(clippy::too_many_arguments)] // one loop body's operands
#[inline(always)]
fn output_block<const R: usize>(
    rows: Rows,
    v_at: usize,
    d: usize,
    i: usize,
    p: &[f32],
    padded: usize,
    out: &mut [f32],
    h: usize,
) {
    let hidden = rows.hidden;
    let p: [&[f32]; R] = std::array::from_fn(|r| &p[(i + r) * padded..(i + r) * padded + rows.len]);
    let whole = d / LANES * LANES;
    for block in (0..whole).step_by(LANES) {
        let mut acc = [[0f32; LANES]; R];
        #[allow(clippy::needless_range_loop)] // `j` indexes R rows of `p` and the values
        for j in 0..rows.len {
            let v = rows.get(j, v_at + block, LANES);
            for r in 0..R {
                let pj = p[r][j];
                for l in 0..LANES {
                    acc[r][l] = pj.mul_add(v[l], acc[r][l]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = (i + r) * hidden + h * d + block;
            out[at..at + LANES].copy_from_slice(acc);
        }
    }
    for c in whole..d {
        for r in 0..R {
            let mut o = 0f32;
            for (j, &pj) in p[r].iter().enumerate() {
                o = pj.mul_add(rows.get(j, v_at + c, 1)[0], o);
            }
            out[(i + r) * hidden + h * d + c] = o;
        }
    }
}
