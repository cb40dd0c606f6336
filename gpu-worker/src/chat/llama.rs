//! The llama model, for a step that packs the new tokens of many sequences: every
//! token-wise operation (norms, projections, RoPE, the feed-forward) runs once over all
//! of them as one matrix; attention runs per sequence against its own KV cache
//! ([`super::attention`]). On the CPU the step runs on plain buffers with this crate's
//! quantized kernels ([`super::cpu_forward`]); on other devices as candle tensor ops
//! over candle's quantized matmuls ([`super::candle_forward`]).
//!
//! Weights stay in the file's quantized formats and compute as llama.cpp computes
//! them (for Q4_1: weights times activations quantized to Q8_1 per 32 values), which
//! is what the reference tests hold the logits to: re-quantizing to another format,
//! or even computing in f32, moves the logits further from llama.cpp's. Q, K and V
//! are fused into one matrix, as are the gate and up projections, by concatenating
//! their quantized rows (lossless), so each is one pass over the input.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

use super::attention::{SeqCache, Span};
use super::gguf::{GgufFile, LlamaConfig};
use super::kernels::{self, QMatrix};
use crate::error::ArtifactError;

/// A quantized projection: this crate's kernels on the CPU for the formats they
/// implement ([`kernels`]), candle's `QMatMul` otherwise (CUDA, other formats).
pub(super) enum Linear {
    Cpu(Arc<QMatrix>),
    Candle(QMatMul),
}

impl Linear {
    /// `x` (`[m, k]`) times the weights, as a tensor.
    pub(super) fn forward_tensor(
        &self,
        x: &Tensor,
        pool: &rayon::ThreadPool,
    ) -> candle_core::Result<Tensor> {
        match self {
            Linear::Candle(w) => w.forward(x),
            Linear::Cpu(w) => {
                let (m, _) = x.dims2()?;
                let values = x.flatten_all()?.to_vec1::<f32>()?;
                let out = kernels::matmul(pool, &values, w);
                Tensor::from_vec(out, (m, w.n()), x.device())
            }
        }
    }

    /// `x` (rows of `k` values, on the CPU) times the weights: rows of `n` values.
    pub(super) fn forward(
        &self,
        x: &[f32],
        k: usize,
        pool: &rayon::ThreadPool,
    ) -> candle_core::Result<Vec<f32>> {
        match self {
            Linear::Cpu(w) => Ok(kernels::matmul(pool, x, w)),
            Linear::Candle(w) => {
                let t = Tensor::from_slice(x, (x.len() / k, k), &Device::Cpu)?;
                w.forward(&t)?.flatten_all()?.to_vec1()
            }
        }
    }
}

/// The token embedding table.
pub(super) enum Embedding {
    /// Kept quantized; rows are dequantized as they are looked up (CPU).
    Packed(Arc<QMatrix>),
    /// Dequantized, on the model's device.
    Dense(Tensor),
}

/// An RMSNorm weight, as values (CPU) and as a tensor on the model's device.
pub(super) struct Norm {
    pub values: Vec<f32>,
    pub tensor: Tensor,
}

pub(super) struct Layer {
    pub attn_norm: Norm,
    pub qkv: Linear,
    pub out: Linear,
    pub ffn_norm: Norm,
    pub gate_up: Linear,
    pub down: Linear,
}

/// The model's weights, on one device.
pub struct Llama {
    pub config: LlamaConfig,
    pub(super) embed: Embedding,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Norm,
    pub(super) output: Linear,
    /// cos and sin of every position's rotation angles, `[context][head_dim / 2]`.
    pub(super) cos: Vec<f32>,
    pub(super) sin: Vec<f32>,
    pub(super) device: Device,
    pub(super) pool: rayon::ThreadPool,
}

/// Which positions of a chunk are projected to next-token logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The last position (the end of a prompt, or a decode step).
    Last,
    /// Every position (scoring a given continuation).
    All,
}

/// One sequence's part of a step: its new tokens, its cache, and which logits it needs.
pub struct Chunk<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    pub logits: Logits,
}

/// What a step computes: the packed tokens, their positions, and the packed rows
/// whose logits are asked for.
pub(super) struct Step {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub rows: Vec<u32>,
}

fn model_err(e: candle_core::Error) -> ArtifactError {
    ArtifactError::Model(e)
}

fn bad_file(reason: String) -> ArtifactError {
    ArtifactError::BadFile {
        file: "model.gguf".into(),
        reason,
    }
}

/// Rows of several `[n_i, k]` tensors of one format stacked into one projection.
fn fused(
    file: &mut GgufFile,
    parts: &[(String, usize)],
    k: usize,
    device: &Device,
) -> Result<Linear, ArtifactError> {
    let mut stored = Vec::with_capacity(parts.len());
    for (name, n) in parts {
        stored.push(file.tensor(name, &[*n, k])?);
    }
    let dtype = stored[0].dtype();
    for ((name, _), t) in parts.iter().zip(&stored) {
        if t.dtype() != dtype {
            return Err(bad_file(format!(
                "{name} is {:?}, {} is {dtype:?}: a fused projection needs one format",
                t.dtype(),
                parts[0].0
            )));
        }
    }
    let rows: usize = parts.iter().map(|(_, n)| n).sum();
    let mut bytes = Vec::new();
    for t in &stored {
        bytes.extend_from_slice(&t.data().map_err(model_err)?);
    }
    if device.is_cpu() {
        if let Some(packed) = QMatrix::from_blocks(dtype, &bytes, rows, k) {
            return packed
                .map(|w| Linear::Cpu(Arc::new(w)))
                .map_err(|e| bad_file(format!("{}: {e}", parts[0].0)));
        }
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype).map_err(model_err)?;
    let qt = QTensor::new(storage, (rows, k)).map_err(model_err)?;
    Ok(Linear::Candle(
        QMatMul::from_qtensor(qt).map_err(model_err)?,
    ))
}

fn norm(file: &mut GgufFile, name: &str, n: usize, device: &Device) -> Result<Norm, ArtifactError> {
    let values = file
        .tensor(name, &[n])?
        .dequantize(&Device::Cpu)
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(model_err)?;
    let tensor = Tensor::from_slice(&values, n, device).map_err(model_err)?;
    Ok(Norm { values, tensor })
}

/// cos and sin of every position's rotation angles, `[context][head_dim / 2]`.
fn rope_tables(c: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let half = c.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(c.context * half);
    let mut sin = Vec::with_capacity(c.context * half);
    for pos in 0..c.context {
        for f in &inv {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

impl Llama {
    /// Loads the weights of an opened GGUF onto `device`; matmuls and attention use
    /// `threads` CPU threads.
    pub fn load(
        file: &mut GgufFile,
        device: &Device,
        threads: usize,
    ) -> Result<Llama, ArtifactError> {
        let c = file.config.clone();
        let kv = c.kv_heads * c.head_dim;
        let tied = !file.has_tensor("output.weight");
        let output_name = if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let output = fused(file, &[(output_name.into(), c.vocab)], c.hidden, device)?;
        let embed = match &output {
            Linear::Cpu(w) if tied => Embedding::Packed(Arc::clone(w)),
            _ => {
                let q = file.tensor("token_embd.weight", &[c.vocab, c.hidden])?;
                match QMatrix::from_blocks(
                    q.dtype(),
                    &q.data().map_err(model_err)?,
                    c.vocab,
                    c.hidden,
                ) {
                    Some(packed) if device.is_cpu() => Embedding::Packed(Arc::new(
                        packed.map_err(|e| bad_file(format!("token_embd.weight: {e}")))?,
                    )),
                    _ => Embedding::Dense(q.dequantize(device).map_err(model_err)?),
                }
            }
        };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: norm(file, &n("attn_norm"), c.hidden, device)?,
                qkv: fused(
                    file,
                    &[
                        (n("attn_q"), c.hidden),
                        (n("attn_k"), kv),
                        (n("attn_v"), kv),
                    ],
                    c.hidden,
                    device,
                )?,
                out: fused(file, &[(n("attn_output"), c.hidden)], c.hidden, device)?,
                ffn_norm: norm(file, &n("ffn_norm"), c.hidden, device)?,
                gate_up: fused(
                    file,
                    &[
                        (n("ffn_gate"), c.intermediate),
                        (n("ffn_up"), c.intermediate),
                    ],
                    c.hidden,
                    device,
                )?,
                down: fused(file, &[(n("ffn_down"), c.hidden)], c.intermediate, device)?,
            });
        }
        let norm = norm(file, "output_norm.weight", c.hidden, device)?;
        let (cos, sin) = rope_tables(&c);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("chat-{i}"))
            .build()
            .map_err(|e| ArtifactError::BadFile {
                file: "threads".into(),
                reason: e.to_string(),
            })?;
        Ok(Llama {
            config: c,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            device: device.clone(),
            pool,
        })
    }

    /// Runs one step: appends every chunk's tokens to its cache and returns the
    /// next-token logits each chunk asked for, in order (one row per position). On an
    /// error no cache keeps any of the step's positions.
    pub fn forward(&self, chunks: &mut [Chunk]) -> candle_core::Result<Vec<Vec<f32>>> {
        let starts: Vec<usize> = chunks.iter().map(|c| c.cache.len()).collect();
        let result = self.step(chunks).and_then(|step| {
            if self.device.is_cpu() {
                self.pool
                    .install(|| super::cpu_forward::forward(self, &step, chunks))
            } else {
                super::candle_forward::forward(self, &step, chunks)
            }
        });
        match &result {
            Ok(_) => {
                for c in chunks.iter_mut() {
                    c.cache.advance(c.tokens.len());
                }
            }
            Err(_) => {
                for (c, start) in chunks.iter_mut().zip(starts) {
                    c.cache.truncate(start);
                }
            }
        }
        result
    }

    /// Checks the chunks and packs their tokens.
    fn step(&self, chunks: &[Chunk]) -> candle_core::Result<Step> {
        let c = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut rows = Vec::new();
        for chunk in chunks {
            if chunk.tokens.is_empty() {
                candle_core::bail!("a chunk without tokens");
            }
            let start = chunk.cache.len();
            if start + chunk.tokens.len() > c.context {
                candle_core::bail!("a sequence is past the context of {} tokens", c.context);
            }
            let first = ids.len() as u32;
            ids.extend_from_slice(chunk.tokens);
            let end = ids.len() as u32;
            positions.extend((start..start + chunk.tokens.len()).map(|p| p as u32));
            match chunk.logits {
                Logits::None => {}
                Logits::Last => rows.push(end - 1),
                Logits::All => rows.extend(first..end),
            }
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary");
        }
        Ok(Step {
            ids,
            positions,
            rows,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A fresh cache for a sequence of at most `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> SeqCache {
        let c = &self.config;
        SeqCache::new(c.layers, c.kv_heads, c.head_dim, capacity)
    }
}

/// Where each chunk's tokens sit in the packed step, with its cache, for attention.
pub(super) fn spans<'a>(chunks: &'a mut [Chunk]) -> Vec<Span<'a>> {
    let mut offset = 0;
    chunks
        .iter_mut()
        .map(|c| {
            let span = Span {
                offset,
                len: c.tokens.len(),
                cache: &mut *c.cache,
            };
            offset += c.tokens.len();
            span
        })
        .collect()
}

/// The index of the largest value (the greedy choice).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in logits.iter().enumerate() {
        if *x > logits[best] {
            best = i;
        }
    }
    best as u32
}
