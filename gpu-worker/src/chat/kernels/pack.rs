//! Weight matrices repacked once at load from the GGUF's raw blocks into the layout the
//! kernels read: rows in groups of [`GROUP`] (16), and per (group, block) the 16 rows'
//! quantized values interleaved four bytes at a time, so that one 64-byte vector holds
//! four consecutive values of each of the 16 rows. A kernel multiplies it by four
//! activation values broadcast to every lane and gets one partial sum per row: the
//! lanes are output columns, and no horizontal reduction is ever needed.
//!
//! Q4_1 (per row and block: f16 `d`, f16 `m`, 16 bytes of nibbles, value `j` in the low
//! nibble of byte `j` and value `j + 16` in the high one) keeps its nibble pairing:
//! vector `p` (0..4) holds bytes `4p..4p+4` of every row, so its low nibbles are values
//! `4p..4p+4` and its high nibbles values `16+4p..16+4p+4`. Q8_0 (f16 `d`, 32 signed
//! bytes) gets eight vectors, vector `s` holding values `4s..4s+4`. Scales are widened
//! to f32 (exactly) and stored 16 to a row group. Rows past `n` in the last group are
//! zero.

use half::f16;

use super::quant::BLOCK;

/// Weight rows per interleaved group (one 512-bit vector of four bytes per row).
pub const GROUP: usize = 16;

const Q4_1_BYTES: usize = 20;
const Q8_0_BYTES: usize = 34;

/// Why raw blocks could not be packed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("k = {0} is not a positive multiple of {BLOCK}")]
    BadK(usize),
    #[error("{got} bytes of blocks, expected {want} for {n} x {k}")]
    BadLength {
        got: usize,
        want: usize,
        n: usize,
        k: usize,
    },
}

fn check(raw: &[u8], n: usize, k: usize, block_bytes: usize) -> Result<usize, PackError> {
    if k == 0 || k % BLOCK != 0 {
        return Err(PackError::BadK(k));
    }
    let blocks = k / BLOCK;
    let want = n * blocks * block_bytes;
    if raw.len() != want || n == 0 {
        return Err(PackError::BadLength {
            got: raw.len(),
            want,
            n,
            k,
        });
    }
    Ok(blocks)
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// A Q4_1 matrix `[n, k]` (n output rows, k inputs), repacked.
#[derive(Debug, Clone)]
pub struct Q41Matrix {
    pub n: usize,
    pub k: usize,
    pub groups: usize,
    pub blocks: usize,
    /// Per (group, block): four vectors of nibble pairs.
    pub quants: Vec<[[u8; 64]; 4]>,
    /// Per (group, block): `d` and `m` of the 16 rows.
    pub scales: Vec<[[f32; GROUP]; 2]>,
}

impl Q41Matrix {
    /// From GGUF Q4_1 blocks, row-major (`n` rows of `k / 32` blocks).
    pub fn from_blocks(raw: &[u8], n: usize, k: usize) -> Result<Q41Matrix, PackError> {
        let blocks = check(raw, n, k, Q4_1_BYTES)?;
        let groups = n.div_ceil(GROUP);
        let mut quants = vec![[[0u8; 64]; 4]; groups * blocks];
        let mut scales = vec![[[0f32; GROUP]; 2]; groups * blocks];
        for row in 0..n {
            let (g, l) = (row / GROUP, row % GROUP);
            for b in 0..blocks {
                let src = &raw[(row * blocks + b) * Q4_1_BYTES..][..Q4_1_BYTES];
                let at = g * blocks + b;
                scales[at][0][l] = half_at(src, 0);
                scales[at][1][l] = half_at(src, 2);
                let qs = &src[4..];
                for (p, vector) in quants[at].iter_mut().enumerate() {
                    vector[4 * l..4 * l + 4].copy_from_slice(&qs[4 * p..4 * p + 4]);
                }
            }
        }
        Ok(Q41Matrix {
            n,
            k,
            groups,
            blocks,
            quants,
            scales,
        })
    }

    /// Row `row` as f32 (`d * q + m`, as ggml's `dequantize_row_q4_1`). `out` has `k`
    /// values.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (g, l) = (row / GROUP, row % GROUP);
        for (b, chunk) in out.chunks_exact_mut(BLOCK).enumerate().take(self.blocks) {
            let at = g * self.blocks + b;
            let [d, m] = &self.scales[at];
            for (p, vector) in self.quants[at].iter().enumerate() {
                for t in 0..4 {
                    let byte = vector[4 * l + t];
                    chunk[4 * p + t] = f32::from(byte & 15) * d[l] + m[l];
                    chunk[16 + 4 * p + t] = f32::from(byte >> 4) * d[l] + m[l];
                }
            }
        }
    }
}

/// A Q8_0 matrix `[n, k]`, repacked.
#[derive(Debug, Clone)]
pub struct Q80Matrix {
    pub n: usize,
    pub k: usize,
    pub groups: usize,
    pub blocks: usize,
    /// Per (group, block): eight vectors of signed bytes.
    pub quants: Vec<[[u8; 64]; 8]>,
    /// Per (group, block): `d` of the 16 rows.
    pub scales: Vec<[f32; GROUP]>,
}

impl Q80Matrix {
    /// From GGUF Q8_0 blocks, row-major.
    pub fn from_blocks(raw: &[u8], n: usize, k: usize) -> Result<Q80Matrix, PackError> {
        let blocks = check(raw, n, k, Q8_0_BYTES)?;
        let groups = n.div_ceil(GROUP);
        let mut quants = vec![[[0u8; 64]; 8]; groups * blocks];
        let mut scales = vec![[0f32; GROUP]; groups * blocks];
        for row in 0..n {
            let (g, l) = (row / GROUP, row % GROUP);
            for b in 0..blocks {
                let src = &raw[(row * blocks + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                let at = g * blocks + b;
                scales[at][l] = half_at(src, 0);
                let qs = &src[2..];
                for (s, vector) in quants[at].iter_mut().enumerate() {
                    vector[4 * l..4 * l + 4].copy_from_slice(&qs[4 * s..4 * s + 4]);
                }
            }
        }
        Ok(Q80Matrix {
            n,
            k,
            groups,
            blocks,
            quants,
            scales,
        })
    }

    /// Row `row` as f32 (`d * q`, as ggml's `dequantize_row_q8_0`): an embedding
    /// lookup without keeping a dequantized copy of the table. `out` has `k` values.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (g, l) = (row / GROUP, row % GROUP);
        for (b, chunk) in out.chunks_exact_mut(BLOCK).enumerate().take(self.blocks) {
            let at = g * self.blocks + b;
            let d = self.scales[at][l];
            for (s, vector) in self.quants[at].iter().enumerate() {
                for t in 0..4 {
                    chunk[4 * s + t] = f32::from(vector[4 * l + t] as i8) * d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rows_dequantize_as_candle_does() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let (n, k) = (21, 64);
        let values: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
            .collect();
        let t = Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let want = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let m = Q80Matrix::from_blocks(&q.data().unwrap(), n, k).unwrap();
        assert_eq!(m.groups, 2);
        let mut row = vec![0f32; k];
        for (r, want) in want.iter().enumerate() {
            m.dequantize_row(r, &mut row);
            assert_eq!(&row, want, "row {r}");
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert_eq!(
            Q41Matrix::from_blocks(&[0; 20], 1, 33).unwrap_err(),
            PackError::BadK(33)
        );
        assert!(matches!(
            Q80Matrix::from_blocks(&[0; 33], 1, 32),
            Err(PackError::BadLength {
                got: 33,
                want: 34,
                ..
            })
        ));
    }
}
