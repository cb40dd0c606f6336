//! Self-attention over packed tokens, one sequence at a time: no padding, no mask.
//!
//! For each sequence and head of at least [`GEMM_FROM`] tokens, two matrix products
//! on gemmkit over strided views of the fused projections (no copies): the scores
//! `Q·Kᵀ` (length x length), a softmax per row, then `P·V` written straight into
//! the head's columns of the output. Shorter sequences (where a product's set-up
//! costs more than its arithmetic) take direct vectorised loops. The
//! 1/sqrt(head size) scale is already in the query weights.

use gemmkit::{MatMut, MatRef, Parallelism};
use pulp::{Simd, WithSimd};

use super::ops::{softmax, softmax_rows, LANES};

/// Sequences at least this long use gemmkit's products.
const GEMM_FROM: usize = 48;

/// Attention of the fused projections `qkv` (`tokens x 3·hidden`: queries, keys,
/// values, each `heads x head_size`) into `out` (`tokens x hidden`), for the
/// sequences whose lengths are `lens` (packed one after the other).
pub fn attend(qkv: &[f32], lens: &[usize], heads: usize, head_size: usize, out: &mut [f32]) {
    let hidden = heads * head_size;
    let stride = 3 * hidden;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut scores = vec![0f32; longest * longest];
    let mut start = 0;
    for &len in lens {
        if len == 0 {
            continue;
        }
        let seq = &qkv[start * stride..(start + len) * stride];
        let s = &mut scores[..len * len];
        if len < GEMM_FROM {
            let o = &mut out[start * hidden..(start + len) * hidden];
            pulp::Arch::new().dispatch(Direct {
                seq,
                heads,
                head_size,
                out: o,
            });
            start += len;
            continue;
        }
        for h in 0..heads {
            let (q_at, k_at, v_at) = (
                h * head_size,
                hidden + h * head_size,
                2 * hidden + h * head_size,
            );
            let rows = |at: usize| &seq[at..];
            // scores = Q (len x d, row stride 3·hidden) · Kᵀ (d x len).
            gemmkit::gemm(
                1.0,
                MatRef::new(rows(q_at), len, head_size, stride as isize, 1),
                MatRef::new(rows(k_at), head_size, len, 1, stride as isize),
                0.0,
                MatMut::from_row_major(s, len, len),
                Parallelism::Serial,
            );
            {
                let _span = tracing::trace_span!("softmax").entered();
                softmax_rows(s, len);
            }
            // out[head columns] = P (len x len) · V (len x d).
            let o = &mut out[start * hidden + h * head_size..(start + len) * hidden];
            gemmkit::gemm(
                1.0,
                MatRef::from_row_major(s, len, len),
                MatRef::new(rows(v_at), len, head_size, stride as isize, 1),
                0.0,
                MatMut::new(o, len, head_size, hidden as isize, 1),
                Parallelism::Serial,
            );
        }
        start += len;
    }
}

/// Attention of one short sequence, every head, by direct loops.
struct Direct<'a> {
    seq: &'a [f32],
    heads: usize,
    head_size: usize,
    out: &'a mut [f32],
}

impl WithSimd for Direct<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Direct {
            seq,
            heads,
            head_size,
            out,
        } = self;
        let hidden = heads * head_size;
        let stride = 3 * hidden;
        let len = seq.len() / stride;
        // Scores of one query against every key, vectorised over the keys: each
        // head's keys transposed (head size x `padded`, zeros past `len`), so a
        // query's scores are `head size` multiply-adds of whole rows, with no
        // horizontal sums.
        let padded = len.next_multiple_of(LANES);
        let mut keys = vec![0f32; head_size * padded];
        let mut p = vec![0f32; padded];
        for h in 0..heads {
            let (q_at, k_at, v_at) = (
                h * head_size,
                hidden + h * head_size,
                2 * hidden + h * head_size,
            );
            for (j, row) in seq.chunks_exact(stride).enumerate() {
                for (c, &k) in row[k_at..k_at + head_size].iter().enumerate() {
                    keys[c * padded + j] = k;
                }
            }
            for (i, row) in seq.chunks_exact(stride).enumerate() {
                let q = &row[q_at..q_at + head_size];
                // LANES keys at a time, their sums in one register-sized array.
                for (block, chunk) in p.chunks_exact_mut(LANES).enumerate() {
                    let mut acc = [0f32; LANES];
                    for (&qc, krow) in q.iter().zip(keys.chunks_exact(padded)) {
                        let k = &krow[block * LANES..(block + 1) * LANES];
                        for l in 0..LANES {
                            acc[l] = qc.mul_add(k[l], acc[l]);
                        }
                    }
                    chunk.copy_from_slice(&acc);
                }
                // The softmax over whole vectors too: the padding's scores at
                // -inf weigh ~1e-38 (exp is clamped at -87), far below f32's
                // resolution of the sum. (Over the `len` scores alone, all of a
                // short row would be its scalar tail.)
                p[len..].fill(f32::NEG_INFINITY);
                softmax(&mut p);
                // LANES output columns at a time, summed over the keys in registers.
                let o = &mut out[i * hidden + h * head_size..i * hidden + (h + 1) * head_size];
                let mut columns = o.chunks_exact_mut(LANES);
                for (block, chunk) in columns.by_ref().enumerate() {
                    let at = v_at + block * LANES;
                    let mut acc = [0f32; LANES];
                    for (&pj, vrow) in p[..len].iter().zip(seq.chunks_exact(stride)) {
                        let v = &vrow[at..at + LANES];
                        for l in 0..LANES {
                            acc[l] = pj.mul_add(v[l], acc[l]);
                        }
                    }
                    chunk.copy_from_slice(&acc);
                }
                let done = head_size - columns.into_remainder().len();
                for c in done..head_size {
                    let o = &mut out[i * hidden + h * head_size + c];
                    *o = 0.0;
                    for (&pj, vrow) in p[..len].iter().zip(seq.chunks_exact(stride)) {
                        *o = pj.mul_add(vrow[v_at + c], *o);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_computation_per_sequence() {
        // Head sizes below, at and past one register of lanes.
        for (heads, d) in [(3, 8), (2, 32), (1, 40)] {
            let hidden = heads * d;
            let lens = [5usize, 1, 19, GEMM_FROM + 3];
            let tokens: usize = lens.iter().sum();
            let qkv: Vec<f32> = (0..tokens * 3 * hidden)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                .collect();
            let mut got = vec![0f32; tokens * hidden];
            attend(&qkv, &lens, heads, d, &mut got);
            let at = |t: usize, part: usize, h: usize, c: usize| {
                qkv[t * 3 * hidden + part * hidden + h * d + c] as f64
            };
            let mut start = 0;
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
                            assert!((g - want).abs() < 1e-5, "{g} vs {want}");
                        }
                    }
                }
                start += len;
            }
        }
    }
}
