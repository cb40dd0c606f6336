//! tenantai's embeddings engine: sentence-transformers BERT models on candle (CPU
//! by default, CUDA with the `cuda` feature), dynamic batching, and the HTTP API of
//! `gpu-worker serve` (OpenAI embeddings, the SageMaker container contract and
//! runtime path, health and Prometheus metrics), and `gpu-worker work` (batch
//! chunks from the jobs queue on the same engines).

pub mod artifacts;
pub mod batcher;
pub mod bert;
pub mod chat;
pub mod cpu;
pub mod device;
pub mod engine;
pub mod error;
pub mod grouping;
pub mod http;
pub mod metrics;
pub mod model;
pub mod s3;
pub mod serve;
pub mod tokenize;
pub mod work;

pub use engine::{Embedded, Engine};
pub use error::{ArtifactError, EmbedError};
pub use tokenize::RawInput;
