//! The dense matmuls of all-MiniLM-L6-v2's forward pass, timed per library on this
//! CPU: a benchmark (see CPU-NOTES.md), not a test.
//!
//! For each shape the engine runs (tokens x 384 by 384 x 1152 for the fused QKV,
//! x 384 for the attention output, x 1536 for the FFN up projection, and tokens x
//! 1536 by 1536 x 384 for the FFN down projection) and several token counts, it
//! prints the achieved GFLOP/s (2·M·K·N per product) of:
//! - `candle-t`: candle's matmul (gemm 0.19) with the weight transposed, as
//!   `candle_nn::Linear` calls it;
//! - `candle`: candle's matmul with the weight stored K x N;
//! - `faer`: faer 0.24 (its x86 gemm) into a preallocated output;
//! - `q8-vnni`: candle's quantized Q8_0 matmul (AVX-512 VNNI kernels), K padded to
//!   a multiple of 256 where needed (counted at the real K);
//! - the engine's dense layers (`gpu_worker::cpu::Dense`, input rounding or
//!   quantization included) per library and precision: `gemmkit-f32`,
//!   `gemmkit-bf16`, `gemmkit-int8`, and with oneMKL (`TENANTAI_MKL_LIB`; packed
//!   weights, AMX where the CPU has it) `mkl-f32`, `mkl-bf16`, `mkl-int8`.
//!
//! Every thread (`--threads N`, default 1) runs its own products at once, as the
//! engine's model threads do; the figure is the sum over threads.
//!
//! usage: matmul_shapes [--threads N] [--tokens 15,240,480,...] [--only name,...]
//! env: TENANTAI_MKL_LIB (oneMKL's libmkl_rt.so.2, scripts/lib/mkl.sh)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use gpu_worker::cpu::matmul::{Matmul, MatmulChoice};
use gpu_worker::cpu::{Dense, Precision};

const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 384, 1152),
    ("attn-out", 384, 384),
    ("ffn-up", 384, 1536),
    ("ffn-down", 1536, 384),
];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Seconds per call: the median of batches lasting about 20 ms each.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut reps = 0;
    while start.elapsed().as_secs_f64() < 0.02 {
        f();
        reps += 1;
    }
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.2
        })
        .collect()
}

fn pad_k(w: &[f32], n: usize, k: usize, kp: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * kp];
    for r in 0..n {
        out[r * kp..r * kp + k].copy_from_slice(&w[r * k..(r + 1) * k]);
    }
    out
}

/// Seconds per product of one method at (m, k, n).
fn run(method: &str, m: usize, k: usize, n: usize) -> f64 {
    let dev = Device::Cpu;
    let x = values(m * k, 1);
    let w = values(n * k, 2); // [n, k], as stored in the checkpoint
    match method {
        "candle-t" => {
            let x = Tensor::from_vec(x, (m, k), &dev).unwrap();
            let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
            time(|| {
                x.matmul(&w.t().unwrap()).unwrap();
            })
        }
        "candle" => {
            let x = Tensor::from_vec(x, (m, k), &dev).unwrap();
            let w = Tensor::from_vec(w, (n, k), &dev)
                .unwrap()
                .t()
                .unwrap()
                .contiguous()
                .unwrap();
            time(|| {
                x.matmul(&w).unwrap();
            })
        }
        "faer" => {
            let mut dst = vec![0f32; m * n];
            time(|| {
                let lhs = faer::MatRef::from_row_major_slice(&x, m, k);
                let rhs = faer::MatRef::from_column_major_slice(&w, k, n);
                let out = faer::MatMut::from_row_major_slice_mut(&mut dst, m, n);
                faer::linalg::matmul::matmul(
                    out,
                    faer::Accum::Replace,
                    lhs,
                    rhs,
                    1.0,
                    faer::Par::Seq,
                );
            })
        }
        "q8-vnni" => {
            let kp = k.next_multiple_of(256);
            let w = Tensor::from_vec(pad_k(&w, n, k, kp), (n, kp), &dev).unwrap();
            let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
            let x = Tensor::from_vec(pad_k(&x, m, k, kp), (m, kp), &dev).unwrap();
            time(|| {
                q.forward(&x).unwrap();
            })
        }
        other => {
            let (library, precision) = other.split_once('-').expect("LIBRARY-PRECISION");
            let choice: MatmulChoice = library.parse().unwrap();
            let mkl = std::env::var_os("TENANTAI_MKL_LIB").map(std::path::PathBuf::from);
            let matmul = Matmul::open(choice, mkl.as_deref()).unwrap();
            let precision: Precision = precision.parse().unwrap();
            let dense = Dense::with_matmul(matmul, precision, &w, &values(n, 3), n, k).unwrap();
            let mut dst = vec![0f32; m * n];
            time(|| dense.forward(&x, m, &mut dst))
        }
    }
}

fn main() {
    let threads: usize = arg("--threads").map_or(1, |t| t.parse().unwrap());
    // Each model thread runs its matmuls single-threaded.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let tokens: Vec<usize> = arg("--tokens")
        .unwrap_or_else(|| "15,64,240,480,960,2000".into())
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    let methods: Vec<String> = arg("--only")
        .unwrap_or_else(|| {
            let mut all =
                "candle-t,candle,faer,q8-vnni,gemmkit-f32,gemmkit-bf16,gemmkit-int8".to_string();
            if std::env::var_os("TENANTAI_MKL_LIB").is_some() {
                all.push_str(",mkl-f32,mkl-bf16,mkl-int8");
            }
            all
        })
        .split(',')
        .map(str::to_string)
        .collect();
    println!("GFLOP/s summed over {threads} thread(s) (2·M·K·N per product)");
    print!("{:<9} {:>5}", "shape", "M");
    for m in &methods {
        print!(" {m:>9}");
    }
    println!();
    for (name, k, n) in SHAPES {
        for &m in &tokens {
            print!("{name:<9} {m:>5}");
            for method in &methods {
                let secs: Vec<f64> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|_| s.spawn(|| run(method, m, k, n)))
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let gflops: f64 = secs
                    .iter()
                    .map(|s| 2.0 * (m * k * n) as f64 / s / 1e9)
                    .sum();
                print!(" {gflops:>9.1}");
            }
            println!();
        }
    }
}
