//! The chat model's quantized matmuls at its own shapes: this crate's kernels (every
//! instruction set this CPU has) against candle's `QMatMul`, in GMAC/s (multiply-adds
//! per second: m·n·k per call), on the same number of threads.
//!
//! usage: cargo run --profile local -p gpu-worker --example qmatmul_bench -- [THREADS] [SECONDS_PER_CASE]

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use gpu_worker::chat::kernels::{matmul_with, Isa, QMatrix};

/// (name, n, k, format) of the model's projections.
const SHAPES: [(&str, usize, usize, GgmlDType); 5] = [
    ("qkv", 960, 576, GgmlDType::Q4_1),
    ("gate_up", 3072, 576, GgmlDType::Q4_1),
    ("down", 576, 1536, GgmlDType::Q4_1),
    ("out", 576, 576, GgmlDType::Q4_1),
    ("vocab", 49152, 576, GgmlDType::Q8_0),
];

/// Seconds per call: the median of batches run for about `budget` in all.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let per_batch = ((budget.as_secs_f64() / 7.0 / once).ceil() as usize).max(1);
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[3]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    let budget = Duration::from_secs_f64(args.next().map_or(Ok(0.5), |s| s.parse())?);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let isas = Isa::available();
    print!(
        "{:<8}{:>7}{:>7}{:>5}{:>10}",
        "shape", "n", "k", "m", "candle"
    );
    for isa in &isas {
        print!("{:>10}", isa.name());
    }
    println!("   (GMAC/s, {threads} threads)");
    for (name, n, k, dtype) in SHAPES {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 2_654_435_761usize) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let qt = QTensor::quantize(&Tensor::from_vec(w, (n, k), &Device::Cpu)?, dtype)?;
        let ours = QMatrix::from_blocks(dtype, &qt.data()?, n, k)
            .ok_or_else(|| anyhow::anyhow!("{dtype:?} has no kernel"))??;
        let candle = QMatMul::from_qtensor(qt)?;
        for m in [1, 8, 32, 128] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 40_503) % 1999) as f32 / 999.0 - 1.0)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?;
            let macs = (m * n * k) as f64;
            let candle_s = time(budget, || {
                let _ = candle.forward(&xt);
            });
            print!("{name:<8}{n:>7}{k:>7}{m:>5}{:>10.1}", macs / candle_s / 1e9);
            for &isa in &isas {
                let s = time(budget, || {
                    let _ = matmul_with(&pool, isa, &x, &ours);
                });
                print!("{:>10.1}", macs / s / 1e9);
            }
            println!();
        }
    }
    Ok(())
}
