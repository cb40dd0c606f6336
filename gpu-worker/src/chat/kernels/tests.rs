//! Every instruction set against an independent reference (ggml's formulas over the
//! raw GGUF blocks, in f64, on the activations as quantized here), against each other,
//! and against candle's own `QMatMul` on the same blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;

use super::*;

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Weights with a per-row offset and spread, so Q4_1's `m` and `d` vary.
fn weights(n: usize, k: usize, dtype: GgmlDType, seed: u64) -> (Vec<u8>, QTensor) {
    let mut w = values(n * k, seed);
    for (r, row) in w.chunks_mut(k).enumerate() {
        let (scale, offset) = (0.05 + (r % 7) as f32 * 0.03, (r % 5) as f32 * 0.02 - 0.04);
        for v in row {
            *v = *v * scale + offset;
        }
    }
    let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    (q.data().unwrap().into_owned(), q)
}

/// ggml's dot products over the raw row-major blocks, in f64, with the bound on the
/// sum of the absolute terms (the scale of f32 rounding).
fn reference(dtype: GgmlDType, raw: &[u8], n: usize, a: &QActs) -> Vec<(f64, f64)> {
    let nb = a.blocks;
    let size = if dtype == GgmlDType::Q4_1 { 20 } else { 34 };
    let h = |b: &[u8], at: usize| f64::from(f16::from_le_bytes([b[at], b[at + 1]]).to_f32());
    let mut out = Vec::with_capacity(a.rows * n);
    for i in 0..a.rows {
        for j in 0..n {
            let (mut sum, mut bound) = (0f64, 0f64);
            for b in 0..nb {
                let blk = &raw[(j * nb + b) * size..][..size];
                let x = a.bytes(i, b);
                let q: i32 = if dtype == GgmlDType::Q4_1 {
                    (0..16)
                        .map(|t| {
                            i32::from(blk[4 + t] & 15) * i32::from(x[t])
                                + i32::from(blk[4 + t] >> 4) * i32::from(x[t + 16])
                        })
                        .sum()
                } else {
                    (0..32)
                        .map(|t| i32::from(blk[2 + t] as i8) * i32::from(x[t]))
                        .sum()
                };
                let main = h(blk, 0) * f64::from(a.d[i * nb + b]) * f64::from(q);
                sum += main;
                bound += main.abs();
                if dtype == GgmlDType::Q4_1 {
                    let ms = h(blk, 2) * f64::from(a.s[i * nb + b]);
                    sum += ms;
                    bound += ms.abs();
                }
            }
            out.push((sum, bound));
        }
    }
    out
}

fn close(got: &[f32], want: &[(f64, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (idx, (g, (w, bound))) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(
            err <= 1e-5 * bound + 1e-7,
            "{what}: element {idx}: {g} vs {w} (bound {bound})"
        );
    }
}

fn each_shape(dtype: GgmlDType) {
    let pool = pool();
    for (n, k) in [(16, 32), (40, 64), (100, 576), (7, 96)] {
        let (raw, _) = weights(n, k, dtype, n as u64 * 31 + k as u64);
        let w = QMatrix::from_blocks(dtype, &raw, n, k).unwrap().unwrap();
        for m in [1, 3, 17, 32, 64] {
            let x = values(m * k, (m * 1000 + n) as u64);
            let acts = quantize(&x, k, w.act_format());
            let want = reference(dtype, &raw, n, &acts);
            let scalar = matmul_with(&pool, Isa::Scalar, &x, &w);
            close(
                &scalar,
                &want,
                &format!("{dtype:?} scalar m={m} n={n} k={k}"),
            );
            for isa in Isa::available() {
                let got = matmul_with(&pool, isa, &x, &w);
                close(&got, &want, &format!("{dtype:?} {isa:?} m={m} n={n} k={k}"));
                for (a, b) in got.iter().zip(&scalar) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{isa:?} vs scalar: {a} {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn q4_1_every_path_matches_ggml_arithmetic_at_odd_shapes() {
    each_shape(GgmlDType::Q4_1);
}

#[test]
fn q8_0_every_path_matches_ggml_arithmetic_at_odd_shapes() {
    each_shape(GgmlDType::Q8_0);
}

#[test]
fn this_machine_runs_a_simd_path() {
    // The deployment targets (x86-64 with AVX2 at least) must not fall back to the
    // portable code; elsewhere the portable code is the path.
    if cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2") {
        assert_ne!(Isa::best(), Isa::Scalar);
    }
}

/// Activations that both quantizers (candle's and ggml's) turn into the same blocks:
/// every block's largest magnitude is 127·2^-6 and every value an integer multiple of
/// 2^-6, so `x / d` is an exact integer and `d`, `s` are exact in f16.
fn grid_activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = values(m * k, seed)
        .iter()
        .map(|v| (v * 127.0).round() / 64.0)
        .collect();
    for block in x.chunks_mut(32) {
        block[(seed as usize) % 32] = 127.0 / 64.0;
    }
    x
}

#[test]
fn agrees_with_candles_qmatmul_on_the_same_blocks() {
    let pool = pool();
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
        for (n, k, m) in [(48, 576, 1), (96, 64, 32), (33, 128, 5)] {
            let (raw, qt) = weights(n, k, dtype, 7 + n as u64);
            let candle = QMatMul::from_qtensor(qt).unwrap();
            let w = QMatrix::from_blocks(dtype, &raw, n, k).unwrap().unwrap();
            let x = grid_activations(m, k, 11 + m as u64);
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let want: Vec<f32> = candle
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for isa in Isa::available() {
                let got = matmul_with(&pool, isa, &x, &w);
                let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{dtype:?} {isa:?} m={m}: {a} vs candle's {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn unsupported_formats_are_left_to_candle() {
    assert!(QMatrix::from_blocks(GgmlDType::Q4K, &[], 1, 256).is_none());
}
