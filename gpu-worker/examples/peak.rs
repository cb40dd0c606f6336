//! This CPU's peak arithmetic rates on 1 and N cores (a benchmark for CPU-NOTES.md,
//! not a test):
//! - `f32 fma loop`: a tight loop of independent vector multiply-adds (pulp's safe
//!   SIMD, AVX-512 where present: 16 accumulators, no memory traffic), the f32
//!   roof of any kernel;
//! - `f32|bf16|int8 gemm`: gemmkit's kernels for each number format on a
//!   cache-resident product (256 x 256 x 256, repeated), the most its AVX-512F,
//!   AVX-512 BF16 (`vdpbf16ps`) and AVX-512 VNNI (`vpdpbusd`) paths reach with
//!   packing included. (Safe Rust has no way to issue the bf16 and VNNI dot
//!   instructions in a bare loop, so their roofs come through gemmkit.)
//!
//! Each of N threads runs its own loop at once; figures are the sums.
//!
//! usage: peak [--threads N] (default 2)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool

use std::time::Instant;

use gemmkit::{bf16, MatMut, MatRef, Parallelism};
use pulp::{Simd, WithSimd};

const ACCUMULATORS: usize = 16;

/// `iterations` rounds of ACCUMULATORS independent multiply-adds; returns the
/// flops done (2 per lane per multiply-add) and a sum that keeps them alive.
struct FmaLoop {
    iterations: usize,
}

impl WithSimd for FmaLoop {
    type Output = (f64, f32);

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let lanes = std::mem::size_of::<S::f32s>() / 4;
        let a = simd.splat_f32s(0.999_999);
        let b = simd.splat_f32s(1e-7);
        let mut acc = [simd.splat_f32s(1.0); ACCUMULATORS];
        for _ in 0..self.iterations {
            for x in acc.iter_mut() {
                *x = simd.mul_add_e_f32s(*x, a, b);
            }
        }
        let total = acc.iter().fold(0.0, |t, &x| t + simd.reduce_sum_f32s(x));
        let flops = 2.0 * (lanes * ACCUMULATORS * self.iterations) as f64;
        (flops, total)
    }
}

/// Runs `work` on `threads` threads at once; returns total GFLOP/s (work returns
/// its flops).
fn on_threads(threads: usize, work: impl Fn() -> f64 + Sync) -> f64 {
    let start = Instant::now();
    let flops: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(&work)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn best_of(reps: usize, f: impl Fn() -> f64) -> f64 {
    (0..reps).map(|_| f()).fold(0.0, f64::max)
}

const N: usize = 256;
const REPS: usize = 400;

fn gemm_f32() -> f64 {
    let a = vec![0.5f32; N * N];
    let b = vec![0.25f32; N * N];
    let mut c = vec![0f32; N * N];
    for _ in 0..REPS {
        gemmkit::gemm(
            1.0,
            MatRef::from_row_major(&a, N, N),
            MatRef::from_col_major(&b, N, N),
            0.0,
            MatMut::from_row_major(&mut c, N, N),
            Parallelism::Serial,
        );
    }
    std::hint::black_box(&c);
    2.0 * (N * N * N * REPS) as f64
}

fn gemm_bf16() -> f64 {
    let a = vec![bf16::from_f32(0.5); N * N];
    let b = vec![bf16::from_f32(0.25); N * N];
    let mut c = vec![bf16::ZERO; N * N];
    for _ in 0..REPS {
        gemmkit::gemm(
            bf16::ONE,
            MatRef::from_row_major(&a, N, N),
            MatRef::from_col_major(&b, N, N),
            bf16::ZERO,
            MatMut::from_row_major(&mut c, N, N),
            Parallelism::Serial,
        );
    }
    std::hint::black_box(&c);
    2.0 * (N * N * N * REPS) as f64
}

fn gemm_int8() -> f64 {
    let a = vec![3i8; N * N];
    let b = vec![-2i8; N * N];
    let mut c = vec![0i32; N * N];
    for _ in 0..REPS {
        gemmkit::gemm_i8(
            1,
            MatRef::from_row_major(&a, N, N),
            MatRef::from_col_major(&b, N, N),
            0,
            MatMut::from_row_major(&mut c, N, N),
            Parallelism::Serial,
        );
    }
    std::hint::black_box(&c);
    2.0 * (N * N * N * REPS) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .map_or(2, |n| n.parse().unwrap());
    let arch = pulp::Arch::new();
    println!("{arch:?}; GFLOP/s (int8: GOP/s), best of 5, summed over threads");
    println!(
        "{:<26} {:>10} {:>12}",
        "kernel",
        "1 thread",
        format!("{threads} threads")
    );
    let fma = || {
        let (flops, keep) = arch.dispatch(FmaLoop {
            iterations: 50_000_000,
        });
        std::hint::black_box(keep);
        flops
    };
    let rows: [(&str, &(dyn Fn() -> f64 + Sync)); 4] = [
        ("f32 fma loop", &fma),
        ("f32 gemm 256^3 (gemmkit)", &gemm_f32),
        ("bf16 gemm 256^3 (gemmkit)", &gemm_bf16),
        ("int8 gemm 256^3 (gemmkit)", &gemm_int8),
    ];
    for (name, work) in rows {
        let one = best_of(5, || on_threads(1, work));
        let many = best_of(5, || on_threads(threads, work));
        println!("{name:<26} {one:>10.1} {many:>12.1}");
    }
}
