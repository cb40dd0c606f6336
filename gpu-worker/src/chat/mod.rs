//! The chat engine: a llama-architecture GGUF model (SmolLM2-135M-Instruct) on
//! candle, with its tokenizer and chat template read from the file itself,
//! continuous batching over per-sequence KV caches, sampling and stop strings, and
//! streamed output. The HTTP side is `crate::http::chat`.
//!
//! Threads: one model thread runs the steps ([`runner`]); candle's quantized
//! matmuls and the attention pool use `threads` cores each step.

pub mod attention;
mod candle_forward;
mod cpu_forward;
pub mod gguf;
mod gguf_align;
pub mod kernels;
pub mod llama;
pub mod metrics;
mod runner;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod template;
pub mod tokenizer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::Device;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub use sampling::SamplingParams;
pub use scheduler::SchedulerConfig;
pub use sequence::{ChatJob, Event, FinishReason};
pub use template::Message;

use crate::error::{ArtifactError, EmbedError};
use gguf::GgufFile;
use metrics::ChatMetrics;
use template::ChatTemplate;
use tokenizer::ChatTokenizer;

/// The model file inside a chat model directory.
pub const MODEL_FILE: &str = "model.gguf";

/// How the chat engine runs.
#[derive(Debug, Clone, Copy)]
pub struct ChatConfig {
    /// CPU threads for matmuls and attention.
    pub threads: usize,
    pub scheduler: SchedulerConfig,
    /// Most requests waiting to join the running batch; beyond it, 503.
    pub max_waiting: usize,
    pub retry_after_secs: u64,
    /// `max_tokens` when a request sets none (bounded by the context).
    pub default_max_tokens: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scheduler: SchedulerConfig::default(),
            max_waiting: 256,
            retry_after_secs: 1,
            default_max_tokens: 1024,
        }
    }
}

/// What a loaded chat model is, for answers and `/health`.
#[derive(Debug, Clone)]
pub struct ChatInfo {
    pub context: usize,
    pub vocab: usize,
    pub layers: usize,
    pub kv_budget_tokens: usize,
    pub max_running: usize,
    pub default_max_tokens: usize,
}

struct Inner {
    jobs: Mutex<Option<Sender<ChatJob>>>,
    tokenizer: Arc<ChatTokenizer>,
    template: ChatTemplate,
    metrics: Arc<ChatMetrics>,
    config: ChatConfig,
    info: ChatInfo,
}

/// A loaded chat model behind its model thread. Cheap to clone.
#[derive(Clone)]
pub struct ChatEngine {
    inner: Arc<Inner>,
}

impl ChatEngine {
    /// Loads `dir/model.gguf` (the directory's manifest is verified by the caller)
    /// onto `device` and starts the model thread; join it after [`ChatEngine::shutdown`].
    pub fn load(
        dir: &Path,
        device: &Device,
        config: ChatConfig,
    ) -> Result<(ChatEngine, JoinHandle<()>), ArtifactError> {
        let mut file = GgufFile::open(&dir.join(MODEL_FILE))?;
        let tokenizer = Arc::new(ChatTokenizer::from_meta(&file.vocab)?);
        let bos = file
            .vocab
            .bos
            .map(|id| tokenizer.token_text(id))
            .unwrap_or_default();
        let eos = tokenizer.token_text(tokenizer.eos());
        let template = ChatTemplate::new(&file.chat_template, bos, eos)?;
        let model = llama::Llama::load(&mut file, device, config.threads)?;
        let info = ChatInfo {
            context: model.config.context,
            vocab: model.config.vocab,
            layers: model.config.layers,
            kv_budget_tokens: config.scheduler.kv_budget_tokens,
            max_running: config.scheduler.max_running,
            default_max_tokens: config.default_max_tokens.min(model.config.context),
        };
        let metrics = Arc::new(ChatMetrics::default());
        let runner =
            runner::Runner::new(model, tokenizer.clone(), metrics.clone(), config.scheduler);
        let (tx, rx) = channel();
        let handle = std::thread::Builder::new()
            .name("chat-model".into())
            .spawn(move || runner.run(rx))
            .map_err(|source| ArtifactError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let engine = ChatEngine {
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(tx)),
                tokenizer,
                template,
                metrics,
                config,
                info,
            }),
        };
        Ok((engine, handle))
    }

    pub fn info(&self) -> &ChatInfo {
        &self.inner.info
    }

    pub fn metrics(&self) -> &Arc<ChatMetrics> {
        &self.inner.metrics
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.inner.tokenizer
    }

    /// The prompt's token ids: the chat template rendered, then tokenised.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>, EmbedError> {
        let text = self
            .inner
            .template
            .render(messages)
            .map_err(|e| EmbedError::invalid("messages", e))?;
        self.inner
            .tokenizer
            .encode(&text)
            .map_err(EmbedError::Tokenizer)
    }

    /// Queues a generation; its events arrive on the returned receiver (dropping
    /// it cancels the generation at the next step).
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        max_tokens: usize,
        sampling: SamplingParams,
        stops: Vec<String>,
    ) -> Result<UnboundedReceiver<Event>, EmbedError> {
        let info = &self.inner.info;
        let total = prompt.len() + max_tokens;
        if prompt.is_empty() || max_tokens == 0 {
            return Err(EmbedError::invalid(
                "messages",
                "the prompt and max_tokens must not be empty",
            ));
        }
        if total > info.context {
            return Err(EmbedError::ContextExceeded {
                prompt: prompt.len(),
                max_tokens,
                limit: info.context,
            });
        }
        if total > info.kv_budget_tokens {
            return Err(EmbedError::invalid(
                "max_tokens",
                format!(
                    "prompt + max_tokens ({total}) exceeds this worker's KV budget of {} tokens",
                    info.kv_budget_tokens
                ),
            ));
        }
        let metrics = &self.inner.metrics;
        let config = &self.inner.config;
        if metrics.waiting.fetch_add(1, Ordering::Relaxed) >= config.max_waiting as u64 {
            metrics.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EmbedError::Overloaded {
                retry_after_secs: config.retry_after_secs,
            });
        }
        let (events, rx) = unbounded_channel();
        let job = ChatJob {
            prompt,
            max_tokens,
            sampling,
            stops,
            events,
            enqueued: Instant::now(),
        };
        let sent = match self.inner.jobs.lock() {
            Ok(guard) => guard
                .as_ref()
                .map(|tx| tx.send(job).is_ok())
                .unwrap_or(false),
            Err(_) => false,
        };
        if !sent {
            metrics.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EmbedError::Stopped);
        }
        Ok(rx)
    }

    /// Stops taking requests; accepted ones are still answered.
    pub fn shutdown(&self) {
        if let Ok(mut guard) = self.inner.jobs.lock() {
            guard.take();
        }
    }
}
