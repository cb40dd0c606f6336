//! The worker's errors, and the one place that maps each to an HTTP status and an
//! OpenAI error type.

use std::path::PathBuf;

/// Why a model could not be loaded (at start-up; never an HTTP answer).
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("model directory {0} does not exist (fetch it with scripts/fetch-model.sh)")]
    MissingDir(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is not a JSON object of file -> sha256: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    #[error("manifest does not list required file {0}")]
    Unlisted(String),
    #[error("checksum mismatch for {file}: manifest says {expected}, file has {actual}; refusing to load a modified model")]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("invalid model file {file}: {reason}")]
    BadFile { file: String, reason: String },
    #[error("invalid model URI {0}: expected a local path or s3://bucket/prefix")]
    BadUri(String),
    #[error("S3 error fetching {key}: {reason}")]
    S3 { key: String, reason: String },
    #[error("cannot use device {device}: {reason}")]
    Device { device: String, reason: String },
    #[error("cannot build the model: {0}")]
    Model(#[from] candle_core::Error),
}

/// Why an embedding request failed. Client mistakes name the offending input.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("input {index} has {tokens} tokens, more than this model's limit of {limit} tokens; shorten it or send \"truncate\": true")]
    TooLong {
        index: usize,
        tokens: usize,
        limit: usize,
    },
    #[error("the prompt has {prompt} tokens and max_tokens is {max_tokens}: together more than this model's context of {limit} tokens; shorten the messages or lower max_tokens")]
    ContextExceeded {
        prompt: usize,
        max_tokens: usize,
        limit: usize,
    },
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the worker is overloaded (queue full); retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    #[error("the model worker has stopped")]
    Stopped,
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

impl EmbedError {
    /// A 400 about `param` with a message saying what is wrong.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        EmbedError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// The HTTP status, OpenAI error type, `param` and `code` of this error.
    pub fn classify(&self) -> ErrorClass {
        use EmbedError::*;
        let (status, kind, code) = match self {
            InvalidRequest { .. } => (400, "invalid_request_error", None),
            TooLong { .. } => (
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
            ),
            ContextExceeded { .. } => (
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
            ),
            PayloadTooLarge { .. } => (413, "invalid_request_error", Some("payload_too_large")),
            NotFound(_) => (404, "invalid_request_error", Some("not_found")),
            MethodNotAllowed => (405, "invalid_request_error", Some("method_not_allowed")),
            Overloaded { .. } => (503, "server_error", Some("overloaded")),
            Stopped => (503, "server_error", Some("unavailable")),
            Tokenizer(_) | Inference(_) => (500, "server_error", None),
        };
        let param = match self {
            InvalidRequest { param, .. } => *param,
            TooLong { .. } => Some("input"),
            ContextExceeded { .. } => Some("messages"),
            _ => None,
        };
        ErrorClass {
            status,
            kind,
            param,
            code,
        }
    }

    /// Seconds a client should wait before retrying, for answers that invite a retry.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            EmbedError::Overloaded { retry_after_secs } => Some(*retry_after_secs),
            EmbedError::Stopped => Some(5),
            _ => None,
        }
    }

    /// The metrics label of this error.
    pub fn label(&self) -> &'static str {
        match self {
            EmbedError::InvalidRequest { .. } => "invalid_request",
            EmbedError::TooLong { .. } => "too_long",
            EmbedError::ContextExceeded { .. } => "context_exceeded",
            EmbedError::PayloadTooLarge { .. } => "payload_too_large",
            EmbedError::NotFound(_) => "not_found",
            EmbedError::MethodNotAllowed => "method_not_allowed",
            EmbedError::Overloaded { .. } => "overloaded",
            EmbedError::Stopped => "stopped",
            EmbedError::Tokenizer(_) => "tokenizer",
            EmbedError::Inference(_) => "inference",
        }
    }
}

/// How an error is presented over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    pub status: u16,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_4xx_and_overload_is_503() {
        let too_long = EmbedError::TooLong {
            index: 2,
            tokens: 300,
            limit: 256,
        };
        assert_eq!(too_long.classify().status, 400);
        assert!(too_long.to_string().contains("256"));
        assert_eq!(EmbedError::invalid("input", "x").classify().status, 400);
        assert_eq!(
            EmbedError::PayloadTooLarge { limit: 10 }.classify().status,
            413
        );
        let busy = EmbedError::Overloaded {
            retry_after_secs: 1,
        };
        assert_eq!(busy.classify().status, 503);
        assert_eq!(busy.retry_after_secs(), Some(1));
        assert_eq!(EmbedError::Inference("x".into()).classify().status, 500);
    }
}
