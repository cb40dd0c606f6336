//! The BERT encoder forward pass, written for sentence embeddings on candle.
//!
//! Against a textbook port it saves passes over the attention scores, which
//! dominate long inputs on a GPU (see GPU-NOTES.md):
//! - the query, key and value projections are one matmul (weights concatenated);
//! - 1/sqrt(head size) is folded into the query weights at load time, so the
//!   scores need no division;
//! - the padding mask is one additive bias with a finite value, then one fused
//!   softmax over the last dimension (no max, sub, exp, sum, div passes), which
//!   also keeps the mask finite in half precision.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// What the mask adds to the scores of padding positions: far below any real
/// score, and finite in every float type.
const MASKED: f64 = -10_000.0;

/// The fields of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "two")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}
fn absolute() -> String {
    "absolute".into()
}

impl Config {
    /// Refuses what this encoder does not implement.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (gelu only)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type {:?} is not supported (absolute only)",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        Ok(())
    }
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A BERT encoder: token ids in, one hidden state per token out.
pub struct Bert {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
}

/// The tensors of one layer's query, key and value projections as one matmul,
/// the query's scaled by 1/sqrt(head size).
fn fused_qkv(vb: &VarBuilder, hidden: usize, head_size: usize) -> Result<Linear> {
    let scale = 1.0 / (head_size as f64).sqrt();
    let part = |name: &str| -> Result<(Tensor, Tensor)> {
        let vb = vb.pp(name);
        Ok((vb.get((hidden, hidden), "weight")?, vb.get(hidden, "bias")?))
    };
    let (qw, qb) = part("query")?;
    let (kw, kb) = part("key")?;
    let (vw, vbias) = part("value")?;
    let weight = Tensor::cat(&[(qw * scale)?, kw, vw], 0)?;
    let bias = Tensor::cat(&[(qb * scale)?, kb, vbias], 0)?;
    Ok(Linear::new(weight, Some(bias)))
}

impl Bert {
    /// Loads the weights (sentence-transformers' names: `embeddings.*`,
    /// `encoder.layer.N.*`, with or without a `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let hidden = config.hidden_size;
        let head_size = hidden / config.num_attention_heads.max(1);
        let e = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    qkv: fused_qkv(&a.pp("self"), hidden, head_size)?,
                    attention_out: linear(hidden, hidden, a.pp("output.dense"))?,
                    attention_norm: layer_norm(
                        hidden,
                        config.layer_norm_eps,
                        a.pp("output.LayerNorm"),
                    )?,
                    up: linear(hidden, config.intermediate_size, l.pp("intermediate.dense"))?,
                    down: linear(config.intermediate_size, hidden, l.pp("output.dense"))?,
                    out_norm: layer_norm(hidden, config.layer_norm_eps, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            words: embedding(config.vocab_size, hidden, e.pp("word_embeddings"))?,
            positions: embedding(
                config.max_position_embeddings,
                hidden,
                e.pp("position_embeddings"),
            )?,
            token_types: embedding(
                config.type_vocab_size,
                hidden,
                e.pp("token_type_embeddings"),
            )?,
            embeddings_norm: layer_norm(hidden, config.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            heads: config.num_attention_heads,
            head_size,
        })
    }

    /// Hidden states `[batch, length, hidden]` for token ids `[batch, length]`
    /// (u32) and a mask `[batch, length]` (1 for tokens, 0 for padding, in the
    /// model's float type). All tokens are of type 0.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, length) = ids.dims2()?;
        let mut x = {
            let _span = tracing::trace_span!("embeddings").entered();
            let positions = Tensor::arange(0u32, length as u32, ids.device())?;
            let first_type = Tensor::zeros(1, DType::U32, ids.device())?;
            let x = self
                .words
                .forward(ids)?
                .broadcast_add(&self.positions.forward(&positions)?)?
                .broadcast_add(&self.token_types.forward(&first_type)?)?;
            self.embeddings_norm.forward(&x)?
        };
        // [batch, 1, 1, length]: 0 for tokens, MASKED for padding.
        let bias = ((mask - 1.0)? * -MASKED)?.reshape((batch, 1, 1, length))?;
        let hidden = self.heads * self.head_size;
        for layer in &self.layers {
            let attended = {
                let _span = tracing::trace_span!("self-attn").entered();
                let qkv = layer
                    .qkv
                    .forward(&x)?
                    .reshape((batch, length, 3, self.heads, self.head_size))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?;
                let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
                let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
                let probs = {
                    let _span = tracing::trace_span!("softmax").entered();
                    candle_nn::ops::softmax_last_dim(&scores)?
                };
                probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((batch, length, hidden))?
            };
            let x1 = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&attended)? + &x)?)?;
            let up = {
                let _span = tracing::trace_span!("hidden-act").entered();
                layer.up.forward(&x1)?.gelu_erf()?
            };
            x = layer.out_norm.forward(&(layer.down.forward(&up)? + &x1)?)?;
        }
        Ok(x)
    }
}

/// Mean pooling over the mask's tokens, then L2 normalisation (as torch's
/// `F.normalize`: x / max(|x|, 1e-12)), in f32.
pub fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let hidden = hidden.to_dtype(DType::F32)?;
    let mask = mask.to_dtype(DType::F32)?;
    let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f32::MAX)?;
    mean.broadcast_div(&norm)
}
