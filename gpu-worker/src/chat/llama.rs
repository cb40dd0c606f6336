//! The llama forward pass over candle's quantized matmuls, for a step that packs the
//! new tokens of many sequences: every token-wise operation (norms, projections,
//! RoPE, the feed-forward) runs once over all of them as one matrix; attention runs
//! per sequence against its own KV cache ([`super::attention`]).
//!
//! Weights stay in the file's quantized formats and compute as llama.cpp computes
//! them (for Q4_1: weights times activations quantized to Q8_1 per 32 values), which
//! is what the reference tests hold the logits to: re-quantizing to another format,
//! or even computing in f32, moves the logits further from llama.cpp's. Q, K and V
//! are fused into one matrix, as are the gate and up projections, by concatenating
//! their quantized rows (lossless), so each is one pass over the input.

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::attention::{attend, SeqCache, Shape, Span};
use super::gguf::{GgufFile, LlamaConfig};
use crate::error::ArtifactError;

/// A quantized projection.
struct Linear {
    w: QMatMul,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.w.forward(x)
    }
}

struct Layer {
    attn_norm: Tensor,
    qkv: Linear,
    out: Linear,
    ffn_norm: Tensor,
    gate_up: Linear,
    down: Linear,
}

/// The model's weights, on one device.
pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    pool: rayon::ThreadPool,
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

fn model_err(e: candle_core::Error) -> ArtifactError {
    ArtifactError::Model(e)
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
            return Err(ArtifactError::BadFile {
                file: "model.gguf".into(),
                reason: format!(
                    "{name} is {:?}, {} is {dtype:?}: a fused projection needs one format",
                    t.dtype(),
                    parts[0].0
                ),
            });
        }
    }
    let rows: usize = parts.iter().map(|(_, n)| n).sum();
    let mut bytes = Vec::new();
    for t in &stored {
        bytes.extend_from_slice(&t.data().map_err(model_err)?);
    }
    let storage = QStorage::from_data(Cow::Owned(bytes), device, dtype).map_err(model_err)?;
    let qt = QTensor::new(storage, (rows, k)).map_err(model_err)?;
    Ok(Linear {
        w: QMatMul::from_qtensor(qt).map_err(model_err)?,
    })
}

fn vector(
    file: &mut GgufFile,
    name: &str,
    n: usize,
    device: &Device,
) -> Result<Tensor, ArtifactError> {
    file.tensor(name, &[n])?
        .dequantize(device)
        .map_err(model_err)
}

/// cos and sin of every position's rotation angles, `[context, head_dim / 2]`.
fn rope_tables(c: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos = Tensor::arange(0u32, c.context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((c.context, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
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
        let embed_q = file.tensor("token_embd.weight", &[c.vocab, c.hidden])?;
        let embed = embed_q.dequantize(device).map_err(model_err)?;
        let output = if file.has_tensor("output.weight") {
            fused(file, &[("output.weight".into(), c.vocab)], c.hidden, device)?
        } else {
            // Tied embeddings: the output projection is the embedding matrix.
            fused(
                file,
                &[("token_embd.weight".into(), c.vocab)],
                c.hidden,
                device,
            )?
        };
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(file, &n("attn_norm"), c.hidden, device)?,
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
                ffn_norm: vector(file, &n("ffn_norm"), c.hidden, device)?,
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
        let norm = vector(file, "output_norm.weight", c.hidden, device)?;
        let (cos, sin) = rope_tables(&c, device).map_err(model_err)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("chat-attn-{i}"))
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
        let result = self.forward_inner(chunks);
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

    fn forward_inner(&self, chunks: &mut [Chunk]) -> candle_core::Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (h, kv, d) = (c.heads, c.kv_heads, c.head_dim);
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for chunk in chunks.iter() {
            if chunk.tokens.is_empty() {
                candle_core::bail!("a chunk without tokens");
            }
            let start = chunk.cache.len();
            if start + chunk.tokens.len() > c.context {
                candle_core::bail!("a sequence is past the context of {} tokens", c.context);
            }
            ids.extend_from_slice(chunk.tokens);
            positions.extend((start..start + chunk.tokens.len()).map(|p| p as u32));
        }
        let t = ids.len();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary");
        }
        let ids = Tensor::from_vec(ids, t, &self.device)?;
        let positions = Tensor::from_vec(positions, t, &self.device)?;
        let cos = self
            .cos
            .index_select(&positions, 0)?
            .reshape((t, 1, d / 2))?;
        let sin = self
            .sin
            .index_select(&positions, 0)?
            .reshape((t, 1, d / 2))?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let eps = c.rms_eps as f32;
        let shape = Shape {
            heads: h,
            kv_heads: kv,
            head_dim: d,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let hn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let qkv = layer.qkv.forward(&hn)?;
            let q = qkv.narrow(1, 0, h * d)?.reshape((t, h, 1, d))?;
            let k = qkv.narrow(1, h * d, kv * d)?.reshape((t, kv, 1, d))?;
            let v = qkv.narrow(1, (h + kv) * d, kv * d)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let attn = self.attention(li, shape, chunks, &q, &k, &v)?;
            x = (x + layer.out.forward(&attn)?)?;
            let hn = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let gu = layer.gate_up.forward(&hn)?;
            let i = c.intermediate;
            let act = (candle_nn::ops::silu(&gu.narrow(1, 0, i)?)? * gu.narrow(1, i, i)?)?;
            x = (x + layer.down.forward(&act)?)?;
        }
        // Only the last position of each chunk that asked is projected to the vocabulary.
        let mut rows = Vec::new();
        let mut end = 0u32;
        for chunk in chunks.iter() {
            let start = end;
            end += chunk.tokens.len() as u32;
            match chunk.logits {
                Logits::None => {}
                Logits::Last => rows.push(end - 1),
                Logits::All => rows.extend(start..end),
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, &self.device)?;
        let last = candle_nn::ops::rms_norm(&x.index_select(&rows, 0)?, &self.norm, eps)?;
        self.output.forward(&last)?.to_dtype(DType::F32)?.to_vec2()
    }

    /// Attention of one layer for every chunk; answers `[token, heads * head_dim]`.
    fn attention(
        &self,
        layer: usize,
        shape: Shape,
        chunks: &mut [Chunk],
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let t = q.dim(0)?;
        let flat = |x: &Tensor| x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (qv, kv, vv) = (flat(q)?, flat(k)?, flat(v)?);
        let mut offset = 0;
        let mut spans: Vec<Span> = chunks
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
            .collect();
        let out = attend(&self.pool, layer, shape, &mut spans, &qv, &kv, &vv)
            .map_err(candle_core::Error::Msg)?;
        Tensor::from_vec(out, (t, shape.heads * shape.head_dim), &self.device)
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
