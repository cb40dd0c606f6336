//! Activations quantized per 32 values, as ggml's x86 `quantize_row_q8_0` and
//! `quantize_row_q8_1` do it (the builds llama.cpp runs on these machines): `amax` over
//! the block, `d = amax / 127` stored as f16, the values multiplied by `127 / amax`
//! and rounded to the nearest integer, ties to even; Q8_1 also keeps
//! `s = f16(d * Σq)` (the f32 `d`, before its rounding to f16). Matching these bit for
//! bit is what lets the matmuls agree with llama.cpp's: every later step is exact
//! integer arithmetic or f32 accumulation.

use half::f16;
use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

/// Values per quantization block.
pub const BLOCK: usize = 32;

/// Which activation format a weight format's dot product takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// `d` and 32 signed bytes (for Q8_0 weights).
    Q8_0,
    /// `d`, `s = d·Σq` and 32 signed bytes (for Q4_1 weights).
    Q8_1,
}

/// `rows` activation rows of `blocks` blocks each, quantized.
#[derive(Debug, Clone)]
pub struct QActs {
    pub rows: usize,
    pub blocks: usize,
    /// Per (row, block): the 32 quantized values, four to a word (little-endian), so
    /// that a kernel broadcasts four consecutive values with one word.
    pub qs: Vec<[i32; 8]>,
    /// Per (row, block): the block scale (an f16 value, widened).
    pub d: Vec<f32>,
    /// Per (row, block), Q8_1 only: `s` (an f16 value, widened); empty for Q8_0.
    pub s: Vec<f32>,
}

impl QActs {
    /// The 32 quantized values of one block.
    pub fn bytes(&self, row: usize, block: usize) -> [i8; 32] {
        pulp::bytemuck::cast(self.qs[row * self.blocks + block])
    }
}

/// One block, as ggml's x86 path quantizes it: the values, `d` and `s` (both already
/// rounded to f16 and widened back).
#[inline(always)]
fn block(x: &[f32; BLOCK]) -> ([i8; BLOCK], f32, f32) {
    let mut amax = 0f32;
    for v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut q = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(x) {
        // |v * id| <= 127 up to rounding, so the saturating cast never clips a value.
        let r = (v * id).round_ties_even() as i32;
        *q = r.clamp(-128, 127) as i8;
        sum += i32::from(*q);
    }
    let d16 = f16::from_f32(d).to_f32();
    let s16 = f16::from_f32(d * sum as f32).to_f32();
    (q, d16, s16)
}

struct Quantize<'a> {
    x: &'a [f32],
    k: usize,
    qs: &'a mut [[i32; 8]],
    d: &'a mut [f32],
    s: Option<&'a mut [f32]>,
}

impl WithSimd for Quantize<'_> {
    type Output = ();

    /// Plain code, compiled once per instruction set the dispatcher picks (so the
    /// compiler vectorizes it at that width).
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> Self::Output {
        let blocks = self.k / BLOCK;
        let mut s = self.s;
        for (r, row) in self.x.chunks_exact(self.k).enumerate() {
            for (b, chunk) in row.chunks_exact(BLOCK).enumerate() {
                let mut x = [0f32; BLOCK];
                x.copy_from_slice(chunk);
                let (q, d, sum) = block(&x);
                let at = r * blocks + b;
                self.qs[at] = pulp::bytemuck::cast(q);
                self.d[at] = d;
                if let Some(s) = s.as_deref_mut() {
                    s[at] = sum;
                }
            }
        }
    }
}

/// Rows per parallel task when quantizing many rows.
const ROWS_PER_TASK: usize = 16;

/// Quantizes `x` (`rows` rows of `k` values, `k` a multiple of 32) into `format`,
/// on the current rayon pool when there are many rows.
pub fn quantize(x: &[f32], k: usize, format: ActFormat) -> QActs {
    assert!(
        k % BLOCK == 0 && k > 0,
        "k = {k} is not a multiple of {BLOCK}"
    );
    assert_eq!(x.len() % k, 0, "{} values are not rows of {k}", x.len());
    let rows = x.len() / k;
    let blocks = k / BLOCK;
    let mut qs = vec![[0i32; 8]; rows * blocks];
    let mut d = vec![0f32; rows * blocks];
    let mut s = match format {
        ActFormat::Q8_1 => vec![0f32; rows * blocks],
        ActFormat::Q8_0 => Vec::new(),
    };
    let per = ROWS_PER_TASK * blocks;
    let arch = Arch::new();
    if rows <= ROWS_PER_TASK {
        arch.dispatch(Quantize {
            x,
            k,
            qs: &mut qs,
            d: &mut d,
            s: (!s.is_empty()).then_some(&mut s[..]),
        });
    } else {
        let with_s = !s.is_empty();
        let mut s_chunks: Vec<Option<&mut [f32]>> = if with_s {
            s.chunks_mut(per).map(Some).collect()
        } else {
            (0..rows.div_ceil(ROWS_PER_TASK)).map(|_| None).collect()
        };
        x.par_chunks(ROWS_PER_TASK * k)
            .zip(qs.par_chunks_mut(per))
            .zip(d.par_chunks_mut(per))
            .zip(s_chunks.par_iter_mut())
            .for_each(|(((x, qs), d), s)| {
                arch.dispatch(Quantize {
                    x,
                    k,
                    qs,
                    d,
                    s: s.take(),
                });
            });
    }
    QActs {
        rows,
        blocks,
        qs,
        d,
        s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_block(values: [f32; 32], format: ActFormat) -> QActs {
        quantize(&values, 32, format)
    }

    #[test]
    fn scale_is_amax_over_127_in_f16_and_values_round_half_to_even() {
        // amax 127 gives d = 1 exactly, so x * 127 / amax = x: 2.5 -> 2, 3.5 -> 4, -0.5 -> 0.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -0.5;
        x[4] = -1.5;
        x[5] = 0.49;
        let a = one_block(x, ActFormat::Q8_1);
        let q = a.bytes(0, 0);
        assert_eq!(&q[..6], &[127, 2, 4, 0, -2, 0]);
        assert_eq!(a.d[0], 1.0);
        // s = d * Σq = 127 + 2 + 4 - 2.
        assert_eq!(a.s[0], 131.0);
    }

    /// A block of `amax` and 31 copies of `v`.
    fn block_of(amax: f32, v: f32) -> [f32; 32] {
        let mut x = [v; 32];
        x[0] = amax;
        x
    }

    #[test]
    fn sum_term_rounds_d_times_sum_once_to_f16() {
        // ggml stores f16(d * Σq) with the f32 d; candle's f16(Σq) * f16(d) rounds
        // twice. Find a block that tells the two apart and check ggml's is kept.
        let (x, d, sum) = (1..2000)
            .find_map(|i| {
                let (amax, v) = (0.7 + i as f32 * 1e-3, 0.013 * i as f32 % 0.7);
                let x = block_of(amax, v);
                let d = amax / 127.0;
                let q = (v * 127.0 / amax).round_ties_even() as i32;
                let sum = 127 + 31 * q;
                let ggml = f16::from_f32(d * sum as f32);
                let candle = f16::from_f32(sum as f32) * f16::from_f32(d);
                (ggml != candle).then_some((x, d, sum))
            })
            .expect("a block where the roundings differ");
        let a = one_block(x, ActFormat::Q8_1);
        let got: i32 = a.bytes(0, 0).iter().map(|&q| i32::from(q)).sum();
        assert_eq!(got, sum);
        assert_eq!(a.s[0], f16::from_f32(d * sum as f32).to_f32());
        assert_eq!(a.d[0], f16::from_f32(d).to_f32());
    }

    #[test]
    fn multiplier_is_127_over_amax_not_one_over_d() {
        // Values just off a rounding boundary where x * (127 / amax) and
        // x * (1 / (amax / 127)) round differently: ggml's x86 path uses the first.
        let (amax, v, want) = (1..500)
            .find_map(|i| {
                let amax = 0.25 + i as f32 * 0.0173;
                let (id_ggml, id_ref) = (127.0 / amax, 1.0 / (amax / 127.0));
                (0..127).find_map(|j| {
                    let edge = (j as f32 + 0.5) / id_ggml;
                    (-4i32..=4).find_map(|u| {
                        let v = f32::from_bits((edge.to_bits() as i32 + u) as u32);
                        let (a, b) = (
                            (v * id_ggml).round_ties_even(),
                            (v * id_ref).round_ties_even(),
                        );
                        (a != b && v < amax).then_some((amax, v, a as i32))
                    })
                })
            })
            .expect("a value that rounds differently");
        let a = one_block(block_of(amax, v), ActFormat::Q8_0);
        assert_eq!(i32::from(a.bytes(0, 0)[1]), want);
        assert!(a.s.is_empty());
    }

    #[test]
    fn zero_block_quantizes_to_zero() {
        let a = one_block([0.0; 32], ActFormat::Q8_1);
        assert_eq!(a.bytes(0, 0), [0; 32]);
        assert_eq!((a.d[0], a.s[0]), (0.0, 0.0));
    }

    #[test]
    fn many_rows_in_parallel_equal_row_by_row() {
        let k = 96;
        let rows = 37;
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0)
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let all = pool.install(|| quantize(&x, k, ActFormat::Q8_1));
        for r in 0..rows {
            let one = quantize(&x[r * k..(r + 1) * k], k, ActFormat::Q8_1);
            for b in 0..k / 32 {
                assert_eq!(all.bytes(r, b), one.bytes(0, b));
                assert_eq!(all.d[r * 3 + b], one.d[b]);
                assert_eq!(all.s[r * 3 + b], one.s[b]);
            }
        }
    }
}
