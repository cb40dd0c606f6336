//! Quantized matmuls for the chat model on the CPU: `[m, k]` f32 activations times a
//! `[n, k]` weight matrix kept in the GGUF's format (Q4_1 or Q8_0) gives `[m, n]` f32,
//! computed as llama.cpp computes it: the activations are quantized per 32 values (Q8_1
//! for Q4_1 weights, Q8_0 for Q8_0 weights, [`quant`]), every block's dot product is
//! exact integer arithmetic, and each block adds `d_w·d_x·Σq` (plus `m_w·s_x` for Q4_1)
//! to an f32 sum. Only the order of those f32 additions differs from ggml's.
//!
//! The weights are repacked at load ([`pack`]) so that SIMD lanes are output columns;
//! a kernel tile is 16 weight rows by several activation rows, so a batch of decode
//! tokens reuses each unpacked weight vector. The instruction set is picked at run time
//! ([`Isa`]): AVX-512BW, AVX2, or portable code (other CPUs, aarch64). Work is split
//! over output columns on the caller's thread pool.

pub mod pack;
pub mod quant;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;

use std::ops::Range;

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

pub use pack::{PackError, Q41Matrix, Q80Matrix, GROUP};
pub use quant::{quantize, ActFormat, QActs};

/// A weight matrix in a format these kernels compute.
#[derive(Debug, Clone)]
pub enum QMatrix {
    Q4_1(Q41Matrix),
    Q8_0(Q80Matrix),
}

impl QMatrix {
    /// Repacks raw GGUF blocks (`n` rows of `k` values); `None` for a format these
    /// kernels do not implement.
    pub fn from_blocks(
        dtype: GgmlDType,
        raw: &[u8],
        n: usize,
        k: usize,
    ) -> Option<Result<QMatrix, PackError>> {
        match dtype {
            GgmlDType::Q4_1 => Some(Q41Matrix::from_blocks(raw, n, k).map(QMatrix::Q4_1)),
            GgmlDType::Q8_0 => Some(Q80Matrix::from_blocks(raw, n, k).map(QMatrix::Q8_0)),
            _ => None,
        }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        match self {
            QMatrix::Q4_1(w) => w.n,
            QMatrix::Q8_0(w) => w.n,
        }
    }

    /// Inputs per row.
    pub fn k(&self) -> usize {
        match self {
            QMatrix::Q4_1(w) => w.k,
            QMatrix::Q8_0(w) => w.k,
        }
    }

    fn groups(&self) -> usize {
        match self {
            QMatrix::Q4_1(w) => w.groups,
            QMatrix::Q8_0(w) => w.groups,
        }
    }

    /// Row `row` as f32 values (`out` holds `k`): an embedding lookup.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        match self {
            QMatrix::Q4_1(w) => w.dequantize_row(row, out),
            QMatrix::Q8_0(w) => w.dequantize_row(row, out),
        }
    }

    /// The activation format its dot product takes.
    pub fn act_format(&self) -> ActFormat {
        match self {
            QMatrix::Q4_1(_) => ActFormat::Q8_1,
            QMatrix::Q8_0(_) => ActFormat::Q8_0,
        }
    }
}

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest this CPU has.
    pub fn best() -> Isa {
        Isa::available().last().copied().unwrap_or(Isa::Scalar)
    }

    /// Every instruction set this CPU can run, narrowest first (always `Scalar`).
    pub fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if pulp::x86::V3::try_new().is_some() {
                all.push(Isa::Avx2);
            }
            if pulp::x86::V4::try_new().is_some() {
                all.push(Isa::Avx512);
            }
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// `x` (`m` rows of `w.k()` values) times `w` transposed: `m` rows of `w.n()` values,
/// on `pool`, with the widest instruction set this CPU has.
pub fn matmul(pool: &rayon::ThreadPool, x: &[f32], w: &QMatrix) -> Vec<f32> {
    matmul_with(pool, Isa::best(), x, w)
}

/// As [`matmul`], on a chosen instruction set (one the CPU lacks runs the portable
/// code).
pub fn matmul_with(pool: &rayon::ThreadPool, isa: Isa, x: &[f32], w: &QMatrix) -> Vec<f32> {
    let (n, k) = (w.n(), w.k());
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "{} values are not rows of {k}", x.len());
    let mut out = vec![0f32; m * n];
    if m == 0 {
        return out;
    }
    pool.install(|| {
        let acts = quantize(x, k, w.act_format());
        let bounds = task_bounds(w.groups(), rayon::current_num_threads());
        let mut tasks = split_columns(&mut out, n, &bounds);
        tasks
            .par_iter_mut()
            .zip(bounds.par_windows(2))
            .for_each(|(rows, g)| run(isa, w, &acts, g[0]..g[1], rows));
    });
    out
}

/// Group boundaries of the parallel tasks: a few tasks per thread, so that a thread
/// slowed by other work on the machine does not hold the others up.
fn task_bounds(groups: usize, threads: usize) -> Vec<usize> {
    let tasks = (threads * 4).clamp(1, groups.max(1));
    (0..=tasks).map(|t| t * groups / tasks).collect()
}

/// For each task, its columns of every output row.
fn split_columns<'a>(out: &'a mut [f32], n: usize, bounds: &[usize]) -> Vec<Vec<&'a mut [f32]>> {
    let mut tasks: Vec<Vec<&mut [f32]>> = bounds.windows(2).map(|_| Vec::new()).collect();
    for row in out.chunks_mut(n) {
        let mut rest = row;
        for (task, g) in tasks.iter_mut().zip(bounds.windows(2)) {
            let width = (g[1] * GROUP).min(n) - g[0] * GROUP;
            let (head, tail) = rest.split_at_mut(width);
            task.push(head);
            rest = tail;
        }
    }
    tasks
}

fn run(isa: Isa, w: &QMatrix, a: &QActs, groups: Range<usize>, out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 {
            if let Some(simd) = pulp::x86::V4::try_new() {
                return match w {
                    QMatrix::Q4_1(w) => avx512::q4_1(simd, w, a, groups, out),
                    QMatrix::Q8_0(w) => avx512::q8_0(simd, w, a, groups, out),
                };
            }
        }
        if isa == Isa::Avx2 {
            if let Some(simd) = pulp::x86::V3::try_new() {
                return match w {
                    QMatrix::Q4_1(w) => avx2::q4_1(simd, w, a, groups, out),
                    QMatrix::Q8_0(w) => avx2::q8_0(simd, w, a, groups, out),
                };
            }
        }
    }
    let _ = isa;
    match w {
        QMatrix::Q4_1(w) => scalar::q4_1(w, a, groups, out),
        QMatrix::Q8_0(w) => scalar::q8_0(w, a, groups, out),
    }
}
