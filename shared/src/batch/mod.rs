//! The heavy path: OpenAI's Files and Batch APIs, run on workers fed by the
//! jobs queue (see DESIGN.md, "The heavy path").
//!
//! - [`files`]: uploaded and output files, records in the table and content in
//!   Blobs, streamed both ways;
//! - [`batches`]: batch records and their state machine (`validating` →
//!   `in_progress` → `finalizing` → `completed`, or `failed`, `expired`,
//!   `cancelling` → `cancelled`);
//! - [`create`]: creating a batch, with the money gates and idempotency keys;
//! - [`lines`]: input files line by line (offsets, estimates, validation);
//! - [`plan`]: the validation job, which splits a batch into chunks;
//! - [`jobs`]: the jobs queue's messages and the worker loop (heartbeats,
//!   redelivery, the dead-letter queue, draining on SIGTERM);
//! - [`chunk`]: one chunk of lines through the request pipeline, its results
//!   made durable before it counts;
//! - [`finalize`]: the output and error files assembled from the chunks.
//!
//! Table layout, all under the tenant's partitions: `FILE#<t>` / `F#<file id>`;
//! `BATCH#<t>` / `B#<batch id>` (the record, written under a version check),
//! `N#<batch id>` (its counters, atomic adds), `C#<batch id>#<chunk>` (a chunk's
//! claim: its results counted once), `I#<hash>` (idempotency keys), `QUEUED`
//! (tokens enqueued). Objects: `files/<t>/<file id>` and
//! `batches/<t>/<batch id>/<chunk>.{out,err}.jsonl`.

pub mod batches;
pub mod chunk;
pub mod create;
pub mod files;
pub mod finalize;
pub mod jobs;
pub mod lines;
pub mod object;
pub mod plan;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

/// Limits on a tenant's batches, per tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchLimits {
    /// Largest batch input file.
    pub max_file_bytes: u64,
    /// Most requests (lines) in one batch input file.
    pub max_lines: u64,
    /// Most tokens (their bound) of batches enqueued and not yet finished.
    pub max_enqueued_tokens: u64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_file_bytes: 200 * 1024 * 1024,
            max_lines: 50_000,
            max_enqueued_tokens: 2_000_000_000,
        }
    }
}

/// Largest file any tier may allow.
pub const MAX_FILE_BYTES: u64 = 1 << 40;

impl BatchLimits {
    pub fn validate(&self) -> ApiResult<()> {
        if self.max_file_bytes == 0 || self.max_file_bytes > MAX_FILE_BYTES {
            return Err(ApiError::invalid_param(
                "batch.max_file_bytes",
                format!("must be between 1 and {MAX_FILE_BYTES}"),
            ));
        }
        if self.max_lines == 0 || self.max_enqueued_tokens == 0 {
            return Err(ApiError::invalid_param(
                "batch",
                "max_lines and max_enqueued_tokens must be positive",
            ));
        }
        Ok(())
    }
}

/// The endpoints a batch may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchEndpoint {
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
}

impl BatchEndpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchEndpoint::Embeddings => "/v1/embeddings",
            BatchEndpoint::ChatCompletions => "/v1/chat/completions",
        }
    }

    pub fn parse(s: &str) -> ApiResult<BatchEndpoint> {
        match s {
            "/v1/embeddings" => Ok(BatchEndpoint::Embeddings),
            "/v1/chat/completions" => Ok(BatchEndpoint::ChatCompletions),
            other => Err(ApiError::invalid_param(
                "endpoint",
                format!("Unsupported endpoint '{other}': a batch runs /v1/embeddings or /v1/chat/completions."),
            )),
        }
    }

    /// The key scope a line of this endpoint needs.
    pub fn scope(self) -> &'static str {
        match self {
            BatchEndpoint::Embeddings => "embeddings",
            BatchEndpoint::ChatCompletions => "chat",
        }
    }
}

/// A new id with `prefix`: UUIDv7 hex, so ids sort by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// The id of a batch's output (`output`) or error (`error`) file: the same for
/// every finalizer of the batch, sorting at the batch's creation time.
pub fn result_file_id(batch_id: &str, which: &str) -> String {
    let time = batch_id
        .strip_prefix("batch_")
        .and_then(|hex| hex.get(..12))
        .unwrap_or("000000000000");
    let digest = hex::encode(Sha256::digest(format!("{batch_id}\n{which}")));
    format!("file-{time}{}", &digest[..20])
}

/// A short hex digest of `parts`, joined by newlines (ids derived from ids).
pub fn digest(parts: &[&str]) -> String {
    hex::encode(Sha256::digest(parts.join("\n")))[..32].to_string()
}

/// Whether `id` could be one of our ids with `prefix` (anything else is a 404
/// without a lookup).
pub fn plausible_id(id: &str, prefix: &str) -> bool {
    id.len() <= 128
        && id.starts_with(prefix)
        && id[prefix.len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_files_are_named_by_their_batch() {
        let b = new_id("batch_");
        let out = result_file_id(&b, "output");
        assert_eq!(out, result_file_id(&b, "output"));
        assert_ne!(out, result_file_id(&b, "error"));
        assert_eq!(&out[5..17], &b[6..18], "sorts at the batch's time");
        assert!(plausible_id(&out, "file-"));
        assert!(!plausible_id("file-../x", "file-"));
    }

    #[test]
    fn endpoints_round_trip_and_others_are_refused() {
        for e in [BatchEndpoint::Embeddings, BatchEndpoint::ChatCompletions] {
            assert_eq!(BatchEndpoint::parse(e.as_str()).unwrap(), e);
        }
        assert!(BatchEndpoint::parse("/v1/completions").is_err());
    }
}
