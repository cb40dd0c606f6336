//! A sentence-transformers BERT model on candle: the transformer forward pass,
//! mean pooling over the attention mask and L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::bert::{mean_pool_normalize, Bert, Config as BertConfig};

use crate::artifacts::verify_dir;
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
}

/// The transformer and its pooling, owned by the model thread.
pub struct Embedder {
    model: Bert,
    device: Device,
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

/// Verifies the model directory's manifest, then loads the tokenizer and `copies`
/// copies of the weights (one per model thread).
pub fn load(
    dir: &Path,
    device: &Device,
    copies: usize,
) -> Result<(TextEncoder, Vec<Embedder>), ArtifactError> {
    verify_dir(dir)?;
    let sentence: SentenceConfig = read_json(dir, "sentence_bert_config.json")?;
    let pooling: PoolingConfig = read_json(dir, "1_Pooling/config.json")?;
    let config: BertConfig = read_json(dir, "config.json")?;
    config.check().map_err(|reason| ArtifactError::BadFile {
        file: "config.json".into(),
        reason,
    })?;
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
    };
    let embedders = (0..copies.max(1))
        .map(|_| {
            Ok(Embedder {
                model: Bert::load(vb.clone(), &config)?,
                device: device.clone(),
                info: info.clone(),
            })
        })
        .collect::<Result<Vec<_>, ArtifactError>>()?;
    Ok((encoder, embedders))
}

impl Embedder {
    /// Embeds a batch of token-id sequences in one forward pass (padded to the
    /// longest); returns one unit-length vector per sequence, in order.
    pub fn embed(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
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
        let ids = Tensor::from_vec(ids, (n, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, width), &self.device)?;
        let hidden = self.model.forward(&ids, &mask)?;
        mean_pool_normalize(&hidden, &mask)?.to_vec2::<f32>()
    }
}
