//! The embeddings engine: tokenisation (on the blocking pool, off the model thread)
//! in front of the batcher.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::Device;

use crate::batcher::{BatchConfig, Batcher};
use crate::cpu::Precision;
use crate::error::{ArtifactError, EmbedError};
use crate::metrics::Metrics;
use crate::model::{self, ModelInfo};
use crate::tokenize::{RawInput, TextEncoder};

/// Fewest inputs worth a tokenizer task of their own (16 short texts take about
/// 0.5 ms, far above a blocking task's start-up).
const MIN_TOKENIZE_CHUNK: usize = 16;

/// Vectors for a request's inputs, in order, and the tokens each took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per input, special tokens included.
    pub tokens: Vec<usize>,
}

/// A loaded model behind its batcher. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    encoder: Arc<TextEncoder>,
    batcher: Batcher,
    metrics: Arc<Metrics>,
    info: ModelInfo,
    device: String,
    /// Cores to tokenise a large request on (read once: on Linux the standard
    /// library reads the cgroup CPU quota from files for it).
    cores: usize,
}

impl Engine {
    /// Loads (and verifies) the model in `dir` onto `device` and starts its model
    /// threads (`config.model_threads`). Join the handles after
    /// [`Engine::shutdown`] to drain.
    pub fn load(
        dir: &Path,
        device: &Device,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Engine, Vec<JoinHandle<()>>), ArtifactError> {
        Self::load_at(dir, device, config, Precision::F32, metrics)
    }

    /// [`Engine::load`] at a precision of the dense layers (bf16 and int8: CPU only).
    pub fn load_at(
        dir: &Path,
        device: &Device,
        config: BatchConfig,
        precision: Precision,
        metrics: Arc<Metrics>,
    ) -> Result<(Engine, Vec<JoinHandle<()>>), ArtifactError> {
        let (encoder, embedders) = model::load_at(dir, device, config.model_threads, precision)?;
        let Some(info) = embedders.first().map(|e| e.info.clone()) else {
            return Err(ArtifactError::BadFile {
                file: "model_threads".into(),
                reason: "at least one model thread is needed".into(),
            });
        };
        if config.max_batch_tokens < info.max_seq_length {
            return Err(ArtifactError::BadFile {
                file: "max_batch_tokens".into(),
                reason: format!(
                    "must be at least the model's max_seq_length {}",
                    info.max_seq_length
                ),
            });
        }
        let (batcher, handles) =
            Batcher::start_many(embedders, config, metrics.clone()).map_err(|source| {
                ArtifactError::Io {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        let engine = Engine {
            encoder: Arc::new(encoder),
            batcher,
            metrics,
            info,
            device: crate::device::describe(device),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok((engine, handles))
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn batch_config(&self) -> BatchConfig {
        self.batcher.config()
    }

    /// Tokenises `inputs` (rejecting any over the token limit unless `truncate`)
    /// and embeds them.
    pub async fn embed(
        &self,
        inputs: Vec<RawInput>,
        truncate: bool,
    ) -> Result<Embedded, EmbedError> {
        let seqs = self.tokenize_all(inputs, truncate).await?;
        let tokens = seqs.iter().map(Vec::len).collect();
        let vectors = self.batcher.embed(seqs).await?;
        Ok(Embedded { vectors, tokens })
    }

    /// Tokenises a request's inputs on the blocking pool, in up to one chunk per
    /// core for a large request (a 2048-input request of long texts takes about
    /// 0.4 s on one core, as long as the GPU needs to embed it).
    async fn tokenize_all(
        &self,
        mut inputs: Vec<RawInput>,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, EmbedError> {
        let chunk = inputs.len().div_ceil(self.cores).max(MIN_TOKENIZE_CHUNK);
        let mut tasks = Vec::new();
        let mut start = 0;
        while !inputs.is_empty() {
            let rest = inputs.split_off(chunk.min(inputs.len()));
            let part = std::mem::replace(&mut inputs, rest);
            let (encoder, offset) = (self.encoder.clone(), start);
            start += part.len();
            tasks.push(tokio::task::spawn_blocking(move || {
                part.iter()
                    .enumerate()
                    .map(|(i, input)| encoder.encode(offset + i, input, truncate))
                    .collect::<Result<Vec<_>, _>>()
            }));
        }
        let mut seqs = Vec::with_capacity(start);
        for task in tasks {
            let part = task
                .await
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))??;
            seqs.extend(part);
        }
        Ok(seqs)
    }

    /// Tokenises without embedding (token counts, limit checks).
    pub fn tokenize(
        &self,
        index: usize,
        input: &RawInput,
        truncate: bool,
    ) -> Result<Vec<u32>, EmbedError> {
        self.encoder.encode(index, input, truncate)
    }

    /// Stops accepting work; queued inputs are still answered.
    pub fn shutdown(&self) {
        self.batcher.shutdown();
    }
}
