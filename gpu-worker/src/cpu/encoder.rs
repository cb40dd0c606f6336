//! The BERT encoder on a CPU over packed tokens: the sequences of a forward pass
//! are laid end to end (tokens x hidden, no padding), every token-wise step (the
//! fused QKV projection, the attention output, the FFN, the layer norms) runs once
//! over all of them, and attention runs per sequence. Then mean pooling and L2
//! normalisation per sequence.

use std::sync::Arc;

use candle_core::Result as CandleResult;
use candle_nn::VarBuilder;

use super::attention::attend;
use super::dense::Dense;
use super::ops::{gelu, Norm};
use super::Precision;
use crate::bert::Config;

/// The embedding tables, shared by every precision of a model.
struct Embeddings {
    words: Vec<f32>,
    positions: Vec<f32>,
    first_type: Vec<f32>,
    norm: Norm,
    vocab: usize,
    max_positions: usize,
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

/// A loaded encoder at one precision. `embed` takes `&self`: one copy serves
/// every model thread.
pub struct Encoder {
    embeddings: Arc<Embeddings>,
    layers: Vec<Layer>,
    precision: Precision,
    heads: usize,
    head_size: usize,
    hidden: usize,
    intermediate: usize,
}

fn tensor(vb: &VarBuilder, dims: &[usize], name: &str) -> CandleResult<Vec<f32>> {
    vb.get(dims, name)?.flatten_all()?.to_vec1::<f32>()
}

fn norm(vb: &VarBuilder, hidden: usize, eps: f64) -> CandleResult<Norm> {
    Ok(Norm {
        gamma: tensor(vb, &[hidden], "weight")?,
        beta: tensor(vb, &[hidden], "bias")?,
        eps: eps as f32,
    })
}

fn dense(
    vb: &VarBuilder,
    precision: Precision,
    outputs: usize,
    inputs: usize,
) -> CandleResult<Dense> {
    let w = tensor(vb, &[outputs, inputs], "weight")?;
    let b = tensor(vb, &[outputs], "bias")?;
    Dense::new(precision, &w, &b, outputs, inputs).map_err(candle_core::Error::Msg)
}

/// The query, key and value projections as one, the query's scaled by
/// 1/sqrt(head size) (so the scores need no scaling).
fn fused_qkv(
    vb: &VarBuilder,
    precision: Precision,
    hidden: usize,
    head_size: usize,
) -> CandleResult<Dense> {
    let scale = 1.0 / (head_size as f32).sqrt();
    let (mut w, mut b) = (
        Vec::with_capacity(3 * hidden * hidden),
        Vec::with_capacity(3 * hidden),
    );
    for (name, s) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
        let part = vb.pp(name);
        w.extend(
            tensor(&part, &[hidden, hidden], "weight")?
                .iter()
                .map(|x| x * s),
        );
        b.extend(tensor(&part, &[hidden], "bias")?.iter().map(|x| x * s));
    }
    Dense::new(precision, &w, &b, 3 * hidden, hidden).map_err(candle_core::Error::Msg)
}

/// Loads one encoder per precision (sentence-transformers' tensor names, with or
/// without a `bert.` prefix); the embedding tables are read once and shared.
pub fn load(
    vb: &VarBuilder,
    config: &Config,
    precisions: &[Precision],
) -> CandleResult<Vec<Arc<Encoder>>> {
    let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
        vb.clone()
    } else {
        vb.pp("bert")
    };
    let hidden = config.hidden_size;
    let heads = config.num_attention_heads.max(1);
    let head_size = hidden / heads;
    let e = vb.pp("embeddings");
    let embeddings = Arc::new(Embeddings {
        words: tensor(
            &e.pp("word_embeddings"),
            &[config.vocab_size, hidden],
            "weight",
        )?,
        positions: tensor(
            &e.pp("position_embeddings"),
            &[config.max_position_embeddings, hidden],
            "weight",
        )?,
        first_type: tensor(
            &e.pp("token_type_embeddings"),
            &[config.type_vocab_size, hidden],
            "weight",
        )?
        .into_iter()
        .take(hidden)
        .collect(),
        norm: norm(&e.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
        vocab: config.vocab_size,
        max_positions: config.max_position_embeddings,
    });
    let mut out = Vec::new();
    for &precision in precisions {
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                let eps = config.layer_norm_eps;
                Ok(Layer {
                    qkv: fused_qkv(&a.pp("self"), precision, hidden, head_size)?,
                    attention_out: dense(&a.pp("output.dense"), precision, hidden, hidden)?,
                    attention_norm: norm(&a.pp("output.LayerNorm"), hidden, eps)?,
                    up: dense(
                        &l.pp("intermediate.dense"),
                        precision,
                        config.intermediate_size,
                        hidden,
                    )?,
                    down: dense(
                        &l.pp("output.dense"),
                        precision,
                        hidden,
                        config.intermediate_size,
                    )?,
                    out_norm: norm(&l.pp("output.LayerNorm"), hidden, eps)?,
                })
            })
            .collect::<CandleResult<Vec<_>>>()?;
        out.push(Arc::new(Encoder {
            embeddings: embeddings.clone(),
            layers,
            precision,
            heads,
            head_size,
            hidden,
            intermediate: config.intermediate_size,
        }));
    }
    Ok(out)
}

impl Encoder {
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The packed input rows: word + position + first token type embeddings,
    /// layer-normed.
    fn embed_tokens(&self, seqs: &[&[u32]], tokens: usize) -> Result<Vec<f32>, String> {
        let (e, hidden) = (&self.embeddings, self.hidden);
        let mut x = vec![0f32; tokens * hidden];
        let mut rows = x.chunks_exact_mut(hidden);
        for seq in seqs {
            if seq.len() > e.max_positions {
                return Err(format!(
                    "an input of {} tokens exceeds the model's {} positions",
                    seq.len(),
                    e.max_positions
                ));
            }
            for (p, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= e.vocab {
                    return Err(format!(
                        "token id {id} is outside the vocabulary of {}",
                        e.vocab
                    ));
                }
                let Some(row) = rows.next() else {
                    return Err("token count mismatch".into());
                };
                let word = &e.words[id * hidden..(id + 1) * hidden];
                let pos = &e.positions[p * hidden..(p + 1) * hidden];
                for (((x, w), p), t) in row.iter_mut().zip(word).zip(pos).zip(&e.first_type) {
                    *x = w + p + t;
                }
            }
        }
        e.norm.apply(&mut x, &[]);
        Ok(x)
    }

    /// One unit-length, mean-pooled vector per sequence, in order.
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let tokens: usize = lens.iter().sum();
        if tokens == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let hidden = self.hidden;
        let mut x = {
            let _span = tracing::trace_span!("embeddings").entered();
            self.embed_tokens(seqs, tokens)?
        };
        let mut qkv = vec![0f32; tokens * 3 * hidden];
        let mut context = vec![0f32; tokens * hidden];
        let mut x1 = vec![0f32; tokens * hidden];
        let mut up = vec![0f32; tokens * self.intermediate];
        for layer in &self.layers {
            {
                let _span = tracing::trace_span!("linear").entered();
                layer.qkv.forward(&x, tokens, &mut qkv);
            }
            {
                let _span = tracing::trace_span!("self-attn").entered();
                attend(&qkv, &lens, self.heads, self.head_size, &mut context);
            }
            {
                let _span = tracing::trace_span!("linear").entered();
                layer.attention_out.forward(&context, tokens, &mut x1);
            }
            {
                let _span = tracing::trace_span!("layer-norm").entered();
                layer.attention_norm.apply(&mut x1, &x);
            }
            {
                let _span = tracing::trace_span!("linear").entered();
                layer.up.forward(&x1, tokens, &mut up);
            }
            {
                let _span = tracing::trace_span!("hidden-act").entered();
                gelu(&mut up);
            }
            {
                let _span = tracing::trace_span!("linear").entered();
                layer.down.forward(&up, tokens, &mut x);
            }
            {
                let _span = tracing::trace_span!("layer-norm").entered();
                layer.out_norm.apply(&mut x, &x1);
            }
        }
        let _span = tracing::trace_span!("pool").entered();
        Ok(mean_pool_normalize(&x, &lens, hidden))
    }
}

/// Mean over each sequence's rows, then x / max(|x|, 1e-12) (torch's F.normalize).
fn mean_pool_normalize(x: &[f32], lens: &[usize], hidden: usize) -> Vec<Vec<f32>> {
    let mut start = 0;
    lens.iter()
        .map(|&len| {
            let mut mean = vec![0f32; hidden];
            for row in x[start * hidden..(start + len) * hidden].chunks_exact(hidden) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            start += len;
            if len == 0 {
                return Vec::new();
            }
            let inv_len = 1.0 / len as f32;
            mean.iter_mut().for_each(|m| *m *= inv_len);
            let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            mean
        })
        .collect()
}
