//! Causal grouped-query attention over per-sequence KV caches, on the CPU.
//!
//! Each sequence owns its cache: for every layer, keys and values laid out
//! `[position][kv_head][head_dim]`, so appending a step's tokens is a contiguous
//! write and the buffer is sized once (prompt + the most tokens it may generate).
//! A step packs the new tokens of many sequences; attention runs per (sequence,
//! query head) on a thread pool, each query head reading the KV head its group
//! shares. The inner loops (dot products, weighted sums) use SIMD chosen at run
//! time (`pulp`), so one build runs at the best width each CPU has.
//!
//! Keys and values enter the cache rounded to f16 (kept as f32 for the loops), as
//! llama.cpp's default f16 cache holds them: the reference the engine is tested
//! against.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// One sequence's keys and values for every layer.
#[derive(Debug)]
pub struct SeqCache {
    layers: Vec<LayerKv>,
    len: usize,
    capacity: usize,
    /// Floats per position and layer (kv_heads * head_dim).
    row: usize,
}

#[derive(Debug, Default)]
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl SeqCache {
    /// A cache for up to `capacity` positions (memory is committed as it fills).
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> SeqCache {
        let row = kv_heads * head_dim;
        SeqCache {
            layers: (0..layers)
                .map(|_| LayerKv {
                    k: Vec::with_capacity(capacity * row),
                    v: Vec::with_capacity(capacity * row),
                })
                .collect(),
            len: 0,
            capacity,
            row,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Marks `n` more positions as held, once every layer has appended them.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forgets every position after the first `len` (a failed step is rolled back).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = len.min(self.len);
        for layer in &mut self.layers {
            layer.k.truncate(self.len * self.row);
            layer.v.truncate(self.len * self.row);
        }
    }
}

/// The shape of attention in one layer.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Where one sequence's new tokens sit in the packed step.
pub struct Span<'a> {
    pub offset: usize,
    pub len: usize,
    pub cache: &'a mut SeqCache,
}

/// `x` rounded to the nearest f16 value.
fn as_f16(x: &f32) -> f32 {
    half::f16::from_f32(*x).to_f32()
}

/// Appends the step's keys and values to each sequence's cache for `layer` and
/// computes attention for every new token. `q` is `[token][head][dim]`, `k` and `v`
/// `[token][kv_head][dim]` (packed over spans, RoPE applied); the answer is
/// `[token][head][dim]`.
pub fn attend(
    pool: &rayon::ThreadPool,
    layer: usize,
    shape: Shape,
    spans: &mut [Span],
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<Vec<f32>, String> {
    let Shape {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    let row = kv_heads * head_dim;
    let tokens: usize = spans.iter().map(|s| s.len).sum();
    if q.len() != tokens * heads * head_dim || k.len() != tokens * row || v.len() != tokens * row {
        return Err("attention inputs disagree with the step's tokens".into());
    }
    for span in spans.iter_mut() {
        let start = span.cache.len;
        if start + span.len > span.cache.capacity {
            return Err(format!(
                "a sequence outgrew its KV cache ({} positions)",
                span.cache.capacity
            ));
        }
        let kv = &mut span.cache.layers[layer];
        kv.k.truncate(start * row);
        kv.v.truncate(start * row);
        let new = span.offset * row..(span.offset + span.len) * row;
        kv.k.extend(k[new.clone()].iter().map(as_f16));
        kv.v.extend(v[new].iter().map(as_f16));
    }
    let mut out = vec![0f32; q.len()];
    let scale = 1.0 / (head_dim as f32).sqrt();
    let group = heads / kv_heads;
    // One task per (token, head): each writes its own `head_dim` slice of `out`.
    let mut tasks: Vec<(&mut [f32], usize, usize, &LayerKv, usize)> =
        Vec::with_capacity(tokens * heads);
    let mut rest = out.as_mut_slice();
    for span in spans.iter() {
        let kv = &span.cache.layers[layer];
        let start = span.cache.len;
        for t in 0..span.len {
            for h in 0..heads {
                let (slot, tail) = rest.split_at_mut(head_dim);
                rest = tail;
                tasks.push((slot, span.offset + t, h, kv, start + t + 1));
            }
        }
    }
    pool.install(|| {
        tasks
            .into_par_iter()
            .for_each(|(slot, token, h, kv, visible)| {
                let query = &q[(token * heads + h) * head_dim..][..head_dim];
                let g = h / group;
                Arch::new().dispatch(Head {
                    query,
                    kv,
                    kv_head: g,
                    row,
                    head_dim,
                    visible,
                    scale,
                    out: slot,
                });
            });
    });
    Ok(out)
}

/// Attention of one query over the first `visible` positions of one KV head.
struct Head<'a> {
    query: &'a [f32],
    kv: &'a LayerKv,
    kv_head: usize,
    row: usize,
    head_dim: usize,
    visible: usize,
    scale: f32,
    out: &'a mut [f32],
}

impl<'a> WithSimd for Head<'a> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let offset = self.kv_head * self.head_dim;
        let at = |buf: &'a [f32], pos: usize| &buf[pos * self.row + offset..][..self.head_dim];
        let mut scores: Vec<f32> = (0..self.visible)
            .map(|j| dot(simd, self.query, at(&self.kv.k, j)) * self.scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in &mut scores {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        self.out.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            axpy(simd, self.out, at(&self.kv.v, j), s * inv);
        }
    }
}

#[inline(always)]
fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a_head, a_tail) = S::as_simd_f32s(a);
    let (b_head, b_tail) = S::as_simd_f32s(b);
    let mut acc = simd.splat_f32s(0.0);
    for (x, y) in a_head.iter().zip(b_head) {
        acc = simd.mul_add_e_f32s(*x, *y, acc);
    }
    let mut sum = simd.reduce_sum_f32s(acc);
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// `acc += w * x`.
#[inline(always)]
fn axpy<S: Simd>(simd: S, acc: &mut [f32], x: &[f32], w: f32) {
    let (acc_head, acc_tail) = S::as_mut_simd_f32s(acc);
    let (x_head, x_tail) = S::as_simd_f32s(x);
    let ws = simd.splat_f32s(w);
    for (a, b) in acc_head.iter_mut().zip(x_head) {
        *a = simd.mul_add_e_f32s(ws, *b, *a);
    }
    for (a, b) in acc_tail.iter_mut().zip(x_tail) {
        *a += w * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention over full K/V rows, for comparison.
    fn naive(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let scores: Vec<f32> = ks
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f32 = e.iter().sum();
        let mut out = vec![0.0; q.len()];
        for (w, v) in e.iter().zip(vs) {
            for (o, x) in out.iter_mut().zip(v) {
                *o += w / z * x;
            }
        }
        out
    }

    fn value(i: usize) -> f32 {
        ((i * 7919 % 1000) as f32 / 500.0) - 1.0
    }

    #[test]
    fn packed_spans_match_plain_causal_attention() {
        let shape = Shape {
            heads: 4,
            kv_heads: 2,
            head_dim: 20,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let row = shape.kv_heads * shape.head_dim;
        // Sequence A already holds 3 positions and adds 1; B is new and adds 4.
        let mut a = SeqCache::new(1, shape.kv_heads, shape.head_dim, 8);
        let mut b = SeqCache::new(1, shape.kv_heads, shape.head_dim, 8);
        let prior_k: Vec<f32> = (0..3 * row).map(value).collect();
        let prior_v: Vec<f32> = (0..3 * row).map(|i| value(i + 11)).collect();
        a.layers[0].k.extend_from_slice(&prior_k);
        a.layers[0].v.extend_from_slice(&prior_v);
        a.advance(3);
        let tokens = 5;
        let q: Vec<f32> = (0..tokens * shape.heads * shape.head_dim)
            .map(|i| value(i + 3))
            .collect();
        let k: Vec<f32> = (0..tokens * row).map(|i| value(i + 5)).collect();
        let v: Vec<f32> = (0..tokens * row).map(|i| value(i + 13)).collect();
        let mut spans = [
            Span {
                offset: 0,
                len: 1,
                cache: &mut a,
            },
            Span {
                offset: 1,
                len: 4,
                cache: &mut b,
            },
        ];
        let out = attend(&pool, 0, shape, &mut spans, &q, &k, &v).unwrap();
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let kv_row = |buf: &[f32], pos: usize, g: usize| {
            buf[pos * row + g * shape.head_dim..][..shape.head_dim].to_vec()
        };
        for (token, (cache_k, cache_v, visible)) in [
            (0, (&a.layers[0].k, &a.layers[0].v, 4)),
            (1, (&b.layers[0].k, &b.layers[0].v, 1)),
            (4, (&b.layers[0].k, &b.layers[0].v, 4)),
        ] {
            for h in 0..shape.heads {
                let g = h / 2;
                let ks: Vec<_> = (0..visible).map(|p| kv_row(cache_k, p, g)).collect();
                let vs: Vec<_> = (0..visible).map(|p| kv_row(cache_v, p, g)).collect();
                let qh = &q[(token * shape.heads + h) * shape.head_dim..][..shape.head_dim];
                let want = naive(qh, &ks, &vs, scale);
                let got = &out[(token * shape.heads + h) * shape.head_dim..][..shape.head_dim];
                for (x, y) in want.iter().zip(got) {
                    assert!((x - y).abs() < 1e-5, "token {token} head {h}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn a_sequence_cannot_outgrow_its_cache() {
        let shape = Shape {
            heads: 1,
            kv_heads: 1,
            head_dim: 4,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut c = SeqCache::new(1, 1, 4, 1);
        let mut spans = [Span {
            offset: 0,
            len: 2,
            cache: &mut c,
        }];
        let err = attend(&pool, 0, shape, &mut spans, &[0.0; 8], &[0.0; 8], &[0.0; 8]).unwrap_err();
        assert!(err.contains("outgrew"));
    }
}
