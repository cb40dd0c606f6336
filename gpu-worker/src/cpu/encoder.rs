//! The BERT encoder on a CPU over packed tokens: the sequences of a forward pass
//! are laid end to end (tokens x hidden, no padding), every token-wise step (the
//! fused QKV projection, the attention output, the FFN, the layer norms) runs once
//! over all of them, and attention runs per sequence. Then mean pooling and L2
//! normalisation per sequence.

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::Result as CandleResult;
use candle_nn::VarBuilder;

use super::attention::{attend, Heads, Products};
use super::dense::{Dense, BLOCK_ROWS};
use super::matmul;
use super::ops::{gelu, Norm};
use super::{take, Precision};
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
    shape: Heads,
    products: Products,
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
    if hidden % heads != 0 {
        return Err(candle_core::Error::Msg(format!(
            "a hidden size of {hidden} does not split into {heads} attention heads"
        )));
    }
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
            shape: Heads { heads, head_size },
            products: Products::new(matmul::selected(), precision),
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
    fn embed_tokens(&self, seqs: &[&[u32]], x: &mut [f32]) -> Result<(), String> {
        let (e, hidden) = (&self.embeddings, self.shape.hidden());
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
        e.norm.apply(x, &[]);
        Ok(())
    }

    /// One unit-length, mean-pooled vector per sequence, in order.
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let tokens: usize = lens.iter().sum();
        if tokens == 0 {
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let hidden = self.shape.hidden();
        WORKSPACE.with_borrow_mut(|w| {
            let [x, qkv, context, x1, up] = &mut w.0;
            let x = take(x, tokens * hidden);
            {
                let _span = tracing::trace_span!("embeddings").entered();
                self.embed_tokens(seqs, x)?;
            }
            let qkv = take(qkv, tokens * 3 * hidden);
            let context = take(context, tokens * hidden);
            let x1 = take(x1, BLOCK_ROWS * hidden);
            let up = take(up, BLOCK_ROWS * self.intermediate);
            for layer in &self.layers {
                self.layer(layer, &lens, x, [qkv, context, x1, up]);
            }
            let _span = tracing::trace_span!("pool").entered();
            Ok(mean_pool_normalize(x, &lens, hidden))
        })
    }

    /// One encoder layer over the packed rows `x` (`tokens x hidden`, updated in
    /// place), with the buffers for its intermediate rows: the fused projections
    /// and attention over all the rows, then everything after attention (output
    /// projection, residual and norm, FFN, residual and norm) one block of
    /// [`BLOCK_ROWS`] rows at a time, so that a block's intermediate rows (`x1`,
    /// `up`: one block each) stay in cache from step to step.
    fn layer(
        &self,
        layer: &Layer,
        lens: &[usize],
        x: &mut [f32],
        [qkv, context, x1, up]: [&mut [f32]; 4],
    ) {
        let hidden = self.shape.hidden();
        let tokens = x.len() / hidden;
        {
            let _span = tracing::trace_span!("linear").entered();
            layer.qkv.forward(x, tokens, qkv);
        }
        {
            let _span = tracing::trace_span!("self-attn").entered();
            attend(qkv, lens, self.shape, &self.products, context);
        }
        let _span = tracing::trace_span!("linear").entered();
        let blocks = context
            .chunks(BLOCK_ROWS * hidden)
            .zip(x.chunks_mut(BLOCK_ROWS * hidden));
        for (context, x) in blocks {
            let rows = x.len() / hidden;
            let (x1, up) = (&mut x1[..x.len()], &mut up[..rows * self.intermediate]);
            layer
                .attention_out
                .forward_then(context, rows, x1, |_, block| {
                    let _span = tracing::trace_span!("layer-norm").entered();
                    layer.attention_norm.apply(block, x);
                });
            layer.up.forward_then(x1, rows, up, |_, block| {
                let _span = tracing::trace_span!("hidden-act").entered();
                gelu(block);
            });
            layer.down.forward_then(up, rows, x, |_, block| {
                let _span = tracing::trace_span!("layer-norm").entered();
                layer.out_norm.apply(block, x1);
            });
        }
    }
}

thread_local! {
    /// Each model thread's buffers for a forward pass (the layer's input rows, the
    /// fused projections, the attention's output; a block's normed sum and FFN
    /// hidden rows), kept from pass to pass so that no pass pays for fresh pages.
    /// Every value is written before it is read.
    static WORKSPACE: RefCell<Workspace> = RefCell::default();
}

#[derive(Default)]
struct Workspace([Vec<f32>; 5]);

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
