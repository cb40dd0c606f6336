use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;

fn bench(n: usize, k: usize, m: usize, dt: GgmlDType) -> anyhow::Result<()> {
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
    let q = QMatMul::from_qtensor(QTensor::quantize(&w, dt)?)?;
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    for _ in 0..3 {
        q.forward(&x)?;
    }
    let iters = 200usize.max(2000 / m);
    let t = Instant::now();
    for _ in 0..iters {
        q.forward(&x)?;
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{dt:?} n={n} k={k} m={m}: {:.1} us, {:.1} GMAC/s",
        s * 1e6,
        (n * k * m) as f64 / s / 1e9
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    for dt in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        for m in [1, 32] {
            bench(960, 576, m, dt)?;
            bench(3072, 576, m, dt)?;
            bench(576, 1536, m, dt)?;
        }
    }
    for m in [1, 32] {
        bench(49152, 576, m, GgmlDType::Q8_0)?;
    }
    for m in [1, 32] {
        bench(3072, 768, m, GgmlDType::Q8_0)?;
        bench(3072, 768, m, GgmlDType::Q4K)?;
    }
    Ok(())
}
