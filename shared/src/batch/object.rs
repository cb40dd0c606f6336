//! The batch object as the API shows it (OpenAI's, as its SDK parses it).

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::batches::{BatchRecord, Counts, COMPLETION_WINDOW};
use super::lines::LineError;

/// A batch: its input, state, timestamps, counts and token usage.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct BatchObject {
    pub id: String,
    #[schema(example = "batch")]
    pub object: &'static str,
    /// `/v1/embeddings` or `/v1/chat/completions`.
    #[schema(example = "/v1/embeddings")]
    pub endpoint: &'static str,
    /// Why the input cannot run, line by line (set when validation failed).
    #[schema(required = true)]
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    #[schema(example = "24h")]
    pub completion_window: &'static str,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`,
    /// `expired`, `cancelling` or `cancelled`.
    #[schema(example = "in_progress")]
    pub status: &'static str,
    #[schema(required = true)]
    pub output_file_id: Option<String>,
    #[schema(required = true)]
    pub error_file_id: Option<String>,
    pub created_at: i64,
    #[schema(required = true)]
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    #[schema(required = true)]
    pub finalizing_at: Option<i64>,
    #[schema(required = true)]
    pub completed_at: Option<i64>,
    #[schema(required = true)]
    pub failed_at: Option<i64>,
    #[schema(required = true)]
    pub expired_at: Option<i64>,
    #[schema(required = true)]
    pub cancelling_at: Option<i64>,
    #[schema(required = true)]
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    #[schema(required = true)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The model of the input's lines (known once validated).
    #[schema(required = true)]
    pub model: Option<String>,
    pub usage: BatchUsage,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct BatchErrors {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<LineError>,
}

/// Lines in all, done, and failed (failed, expired or cancelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Tokens the batch's lines used so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct BatchUsage {
    pub input_tokens: u64,
    pub input_tokens_details: CachedTokens,
    pub output_tokens: u64,
    pub output_tokens_details: ReasoningTokens,
    pub total_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct CachedTokens {
    pub cached_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u64,
}

impl BatchRecord {
    /// The batch object as OpenAI's SDK parses it.
    pub fn object(&self, n: &Counts) -> BatchObject {
        let t = |k: &str| self.times.get(k).copied();
        BatchObject {
            id: self.id.clone(),
            object: "batch",
            endpoint: self.endpoint.as_str(),
            errors: (!self.errors.is_empty()).then(|| BatchErrors {
                object: "list",
                data: self.errors.clone(),
            }),
            input_file_id: self.input_file_id.clone(),
            completion_window: COMPLETION_WINDOW,
            status: self.status.as_str(),
            output_file_id: self.output_file_id.clone(),
            error_file_id: self.error_file_id.clone(),
            created_at: self.created_at,
            in_progress_at: t("in_progress_at"),
            expires_at: self.expires_at,
            finalizing_at: t("finalizing_at"),
            completed_at: t("completed_at"),
            failed_at: t("failed_at"),
            expired_at: t("expired_at"),
            cancelling_at: t("cancelling_at"),
            cancelled_at: t("cancelled_at"),
            request_counts: RequestCounts {
                total: self.total,
                completed: n.completed,
                failed: n.failed + n.expired + n.cancelled,
            },
            metadata: self.metadata.clone(),
            model: self.model.clone(),
            usage: BatchUsage {
                input_tokens: n.prompt_tokens,
                input_tokens_details: CachedTokens { cached_tokens: 0 },
                output_tokens: n.completion_tokens,
                output_tokens_details: ReasoningTokens {
                    reasoning_tokens: 0,
                },
                total_tokens: n.prompt_tokens.saturating_add(n.completion_tokens),
            },
        }
    }
}
