//! A sentence-transformers BERT model: the transformer forward pass, mean pooling
//! over each input's tokens and L2 normalisation. On a CPU it runs the packed-token
//! encoder of [`crate::cpu`] at the chosen precision (f32, bf16 or int8; one copy of
//! the weights, shared by every model thread); on a GPU, candle's tensors (f32 only,
//! padded batches).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::bert::{mean_pool_normalize, Bert, Config as BertConfig};

use crate::artifacts::verify_dir;
use crate::cpu::{Encoder, Precision};
use crate::error::ArtifactError;
use crate::tokenize::TextEncoder;

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SentenceConfig {
    pub max_seq_length: usize,
    #[serde(default)]
    pub do_lower_case: bool,
}

/// `1_Pooling/config.json` (the modes this engine implements).
#[derive(Debug, Clone, Deserialize)]
pub struct PoolingConfig {
    pub word_embedding_dimension: usize,
    #[serde(default)]
    pub pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pub pooling_mode_cls_token: bool,
    #[serde(default)]
    pub pooling_mode_max_tokens: bool,
    #[serde(default)]
    pub pooling_mode_mean_sqrt_len_tokens: bool,
}

/// What a loaded model is, for logs and `/health`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub dimension: usize,
    pub max_seq_length: usize,
    pub vocab_size: usize,
    /// The dense layers' number format.
    pub precision: Precision,
    /// What runs the dense products: `mkl` or `gemmkit` (the CPU encoder's
    /// library, see [`crate::cpu::matmul`]), or `candle` on a GPU.
    pub matmul: &'static str,
}

/// The model as one model thread runs it.
enum Backend {
    /// The packed-token encoder (f32), shared by every model thread.
    Cpu(Arc<Encoder>),
    /// candle's tensors, padded batches (f32 only).
    Candle { model: Bert, device: Device },
}

/// The transformer and its pooling, owned by the model thread.
pub struct Embedder {
    backend: Backend,
    pub info: ModelInfo,
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, file: &str) -> Result<T, ArtifactError> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|source| ArtifactError::Io { path, source })?;
    serde_json::from_slice(&bytes).map_err(|e| ArtifactError::BadFile {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// Verifies the model directory's manifest, then loads the tokenizer and one f32
/// [`Embedder`] per model thread (`copies`; on a CPU they share one copy of the
/// weights).
pub fn load(
    dir: &Path,
    device: &Device,
    copies: usize,
) -> Result<(TextEncoder, Vec<Embedder>), ArtifactError> {
    load_at(dir, device, copies, Precision::F32)
}

/// [`load`] at a precision: bf16 and int8 run on a CPU only (the weights are
/// converted at load from the checkpoint's f32).
pub fn load_at(
    dir: &Path,
    device: &Device,
    copies: usize,
    precision: Precision,
) -> Result<(TextEncoder, Vec<Embedder>), ArtifactError> {
    if precision != Precision::F32 && !device.is_cpu() {
        return Err(ArtifactError::Device {
            device: crate::device::describe(device),
            reason: format!("precision {precision} runs on a CPU only; use f32 on a GPU"),
        });
    }
    verify_dir(dir)?;
    let sentence: SentenceConfig = read_json(dir, "sentence_bert_config.json")?;
    let pooling: PoolingConfig = read_json(dir, "1_Pooling/config.json")?;
    let config: BertConfig = read_json(dir, "config.json")?;
    config.check().map_err(|reason| ArtifactError::BadFile {
        file: "config.json".into(),
        reason,
    })?;
    check_pooling(&pooling, &config)?;
    let max_len = sentence.max_seq_length.min(config.max_position_embeddings);
    let encoder = TextEncoder::load(&dir.join("tokenizer.json"), max_len)?;
    let weights = dir.join("model.safetensors");
    // Read into memory (memory-mapping would need unsafe code).
    let bytes = std::fs::read(&weights).map_err(|source| ArtifactError::Io {
        path: weights.clone(),
        source,
    })?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
    let info = ModelInfo {
        dimension: config.hidden_size,
        max_seq_length: max_len,
        vocab_size: config.vocab_size,
        precision,
        matmul: if device.is_cpu() {
            crate::cpu::matmul::selected().name()
        } else {
            "candle"
        },
    };
    let embedders = embedders(&vb, &config, device, copies, info)?;
    Ok((encoder, embedders))
}

/// Only mean pooling over the model's own hidden size is served.
fn check_pooling(pooling: &PoolingConfig, config: &BertConfig) -> Result<(), ArtifactError> {
    let only_mean = pooling.pooling_mode_mean_tokens
        && !pooling.pooling_mode_cls_token
        && !pooling.pooling_mode_max_tokens
        && !pooling.pooling_mode_mean_sqrt_len_tokens;
    if !only_mean {
        return Err(ArtifactError::BadFile {
            file: "1_Pooling/config.json".into(),
            reason: "only mean pooling is supported".into(),
        });
    }
    if pooling.word_embedding_dimension != config.hidden_size {
        return Err(ArtifactError::BadFile {
            file: "1_Pooling/config.json".into(),
            reason: format!(
                "word_embedding_dimension {} differs from the model's hidden size {}",
                pooling.word_embedding_dimension, config.hidden_size
            ),
        });
    }
    Ok(())
}

/// `copies` embedders of the loaded weights: one shared CPU encoder at
/// `info.precision`, or a candle model per copy on a GPU.
fn embedders(
    vb: &VarBuilder,
    config: &BertConfig,
    device: &Device,
    copies: usize,
    info: ModelInfo,
) -> Result<Vec<Embedder>, ArtifactError> {
    if device.is_cpu() {
        let Some(encoder) = crate::cpu::encoder::load(vb, config, &[info.precision])?
            .into_iter()
            .next()
        else {
            return Err(ArtifactError::BadFile {
                file: "model.safetensors".into(),
                reason: "no encoder was built".into(),
            });
        };
        return Ok((0..copies.max(1))
            .map(|_| Embedder {
                backend: Backend::Cpu(encoder.clone()),
                info: info.clone(),
            })
            .collect());
    }
    (0..copies.max(1))
        .map(|_| {
            Ok(Embedder {
                backend: Backend::Candle {
                    model: Bert::load(vb.clone(), config)?,
                    device: device.clone(),
                },
                info: info.clone(),
            })
        })
        .collect()
}

impl Embedder {
    /// Whether a forward pass packs its inputs end to end (no padding).
    pub fn packs_tokens(&self) -> bool {
        matches!(self.backend, Backend::Cpu(_))
    }

    /// Embeds a batch of token-id sequences in one forward pass; returns one
    /// unit-length vector per sequence, in order.
    pub fn embed(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        match &self.backend {
            Backend::Cpu(encoder) => encoder.embed(seqs),
            Backend::Candle { model, device } => {
                padded_forward(model, device, seqs).map_err(|e| e.to_string())
            }
        }
    }
}

/// One padded forward pass on candle's tensors.
fn padded_forward(
    model: &Bert,
    device: &Device,
    seqs: &[&[u32]],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let n = seqs.len();
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    if n == 0 || width == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let mut ids = vec![0u32; n * width];
    let mut mask = vec![0f32; n * width];
    for (row, seq) in seqs.iter().enumerate() {
        let start = row * width;
        ids[start..start + seq.len()].copy_from_slice(seq);
        mask[start..start + seq.len()].fill(1.0);
    }
    let ids = Tensor::from_vec(ids, (n, width), device)?;
    let mask = Tensor::from_vec(mask, (n, width), device)?;
    let hidden = model.forward(&ids, &mask)?;
    mean_pool_normalize(&hidden, &mask)?.to_vec2::<f32>()
}
