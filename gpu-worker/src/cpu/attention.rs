//! Self-attention over packed tokens, one sequence at a time: no padding, no mask.
//!
//! For each sequence and head the keys are transposed once (head size x length,
//! the length rounded up to [`LANES`] with zeros), so a query's scores are
//! `head size` vector multiply-adds over the keys, its softmax runs over the
//! real length only, and its output is the probability-weighted sum of the value
//! rows. The 1/sqrt(head size) scale is already in the query weights.

use super::ops::{softmax, LANES};

/// Attention of the fused projections `qkv` (`tokens x 3·hidden`: queries, keys,
/// values, each `heads x head_size`) into `out` (`tokens x hidden`), for the
/// sequences whose lengths are `lens` (packed one after the other).
pub fn attend(qkv: &[f32], lens: &[usize], heads: usize, head_size: usize, out: &mut [f32]) {
    let hidden = heads * head_size;
    let stride = 3 * hidden;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let padded = longest.next_multiple_of(LANES);
    let mut keys_t = vec![0f32; head_size * padded];
    let mut scores = vec![0f32; padded];
    let mut acc = vec![0f32; head_size];
    pulp::Arch::new().dispatch(|| {
        let mut start = 0;
        for &len in lens {
            let width = len.next_multiple_of(LANES);
            let seq = &qkv[start * stride..(start + len) * stride];
            for h in 0..heads {
                let (q_at, k_at, v_at) = (
                    h * head_size,
                    hidden + h * head_size,
                    2 * hidden + h * head_size,
                );
                // Keys transposed: keys_t[c][j] = k[j][c]; columns past `len` stay 0.
                let kt = &mut keys_t[..head_size * width];
                kt.fill(0.0);
                for (j, row) in seq.chunks_exact(stride).enumerate() {
                    for (c, &k) in row[k_at..k_at + head_size].iter().enumerate() {
                        kt[c * width + j] = k;
                    }
                }
                for (i, row) in seq.chunks_exact(stride).enumerate() {
                    let s = &mut scores[..width];
                    s.fill(0.0);
                    for (c, &q) in row[q_at..q_at + head_size].iter().enumerate() {
                        let kc = &kt[c * width..(c + 1) * width];
                        for (sv, kv) in s.chunks_exact_mut(LANES).zip(kc.chunks_exact(LANES)) {
                            for l in 0..LANES {
                                sv[l] = q.mul_add(kv[l], sv[l]);
                            }
                        }
                    }
                    let p = &mut scores[..len];
                    softmax(p);
                    acc.fill(0.0);
                    for (&pj, vrow) in p.iter().zip(seq.chunks_exact(stride)) {
                        for (a, v) in acc.iter_mut().zip(&vrow[v_at..v_at + head_size]) {
                            *a = pj.mul_add(*v, *a);
                        }
                    }
                    let o = (start + i) * hidden + h * head_size;
                    out[o..o + head_size].copy_from_slice(&acc);
                }
            }
            start += len;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_computation_per_sequence() {
        let (heads, d) = (3, 8);
        let hidden = heads * d;
        let lens = [5usize, 1, 19];
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
