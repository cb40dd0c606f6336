//! The CPU forward pass of the embedding model, on packed tokens (no padding):
//! dense layers on gemmkit (see [`dense`]), attention per sequence
//! ([`attention`]), and fused, vectorised element-wise work ([`ops`]).
//!
//! `gpu-worker serve --precision f32|bf16|int8` picks the encoder's precision;
//! each reduced one is meant to be registered as its own version of the model.

pub mod attention;
pub mod dense;
pub mod encoder;
pub mod matmul;
pub mod ops;
pub mod quant;

use std::str::FromStr;

pub use dense::Dense;
pub use encoder::Encoder;

/// The first `len` values of a thread's scratch buffer `buf`, grown to hold
/// them (the values are whatever the last use left).
fn take<T: Copy + Default>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    &mut buf[..len]
}

/// The number format of a model's dense-layer weights (and of their inputs):
/// the checkpoint's f32; bf16 (inputs rounded to bf16, f32 accumulation, as
/// PyTorch's bf16 autocast); or int8 (weights quantized per output channel,
/// activations per token at run time, i32 accumulation). Element-wise work
/// (layer norms, GELU, softmax, pooling) stays in f32 for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Int8];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            other => Err(format!(
                "unknown precision {other:?}: expected f32, bf16 or int8"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_parse_and_print() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>(), Ok(p));
        }
        assert_eq!("BF16".parse(), Ok(Precision::Bf16));
        assert!("fp8".parse::<Precision>().is_err());
    }
}
