//! The one mapping from failures to HTTP statuses and OpenAI error bodies:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// An error answer, as OpenAI clients parse it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong: a message for people, a `type` and `code` for programs, the
/// request field at fault (`param`) where one is.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `permission_error`, `rate_limit_exceeded`,
    /// `insufficient_quota` or `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: String,
    #[schema(required = true)]
    pub param: Option<String>,
    #[schema(required = true)]
    pub code: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or violates a limit.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    },
    /// 401: no credentials, or credentials that are forged, expired or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: valid credentials without the right (scope, suspended tenant).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource for this caller (another tenant's ids included).
    #[error("{message}")]
    NotFound { message: String, code: &'static str },
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the write conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 409: the resource's state does not allow this, and retrying cannot
    /// change that (cancelling a finished batch); sent with `x-should-retry: false`.
    #[error("{0}")]
    WrongState(String),
    /// 413: the body exceeds the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 431: the request's header fields are too many or too large.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429: over a requests- or tokens-per-minute limit.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_ms: u64,
        limits: crate::gateway::ratelimit::Limits,
    },
    /// 429: the tenant's hard budget cap leaves no room for this request.
    #[error("{0}")]
    QuotaExceeded(String),
    /// 429: the tenant's batch queue holds as many tokens as its tier allows;
    /// sent with `x-should-retry: false` (it frees as batches finish).
    #[error("{0}")]
    QueueFull(String),
    /// 503: no backend can serve now; retry later.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// 502: an upstream provider refused us (its key, its own fault); the
    /// message names the model, never the upstream's answer or its key.
    #[error("{0}")]
    BadGateway(String),
    /// 500: our fault; the message is logged, the client sees a generic one.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound {
            message: message.into(),
            code: "not_found",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) | ApiError::WrongState(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RateLimited { .. } | ApiError::QuotaExceeded(_) | ApiError::QueueFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error `type` and `code`.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { code, .. } => ("invalid_request_error", *code),
            ApiError::Unauthenticated(_) => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::Forbidden(_) => ("permission_error", Some("forbidden")),
            ApiError::NotFound { code, .. } => ("invalid_request_error", Some(*code)),
            ApiError::RequestTimeout(_) => ("invalid_request_error", Some("request_timeout")),
            ApiError::Conflict(_) => ("invalid_request_error", Some("conflict")),
            ApiError::WrongState(_) => ("invalid_request_error", Some("invalid_state")),
            ApiError::QueueFull(_) => ("invalid_request_error", Some("token_limit_exceeded")),
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", Some("request_too_large")),
            ApiError::UnsupportedMediaType(_) => {
                ("invalid_request_error", Some("unsupported_media_type"))
            }
            ApiError::HeadersTooLarge(_) => (
                "invalid_request_error",
                Some("request_header_fields_too_large"),
            ),
            ApiError::RateLimited { .. } => ("rate_limit_exceeded", Some("rate_limit_exceeded")),
            ApiError::QuotaExceeded(_) => ("insufficient_quota", Some("insufficient_quota")),
            ApiError::Unavailable { .. } => ("server_error", Some("service_unavailable")),
            ApiError::BadGateway(_) => ("server_error", Some("bad_gateway")),
            ApiError::Internal(_) => ("server_error", None),
        }
    }

    /// The error body as OpenAI clients parse it.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code) = self.kind();
        let message = match self {
            ApiError::Internal(_) => {
                "The server had an error while processing your request.".to_string()
            }
            other => other.to_string(),
        };
        let param = match self {
            ApiError::InvalidRequest { param, .. } => *param,
            _ => None,
        };
        serde_json::to_value(ErrorBody {
            error: ErrorObject {
                message,
                kind: kind.into(),
                param: param.map(Into::into),
                code: code.map(Into::into),
            },
        })
        .unwrap_or_default()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::ConditionFailed | StoreError::TransactionCancelled { .. } => {
                ApiError::Conflict("the resource was changed concurrently; retry".into())
            }
            StoreError::Backend(m) => ApiError::Internal(format!("storage: {m}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error");
        }
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        match &self {
            ApiError::Unavailable {
                retry_after_secs, ..
            } => {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from((*retry_after_secs).max(1)));
            }
            ApiError::RateLimited {
                retry_after_ms,
                limits,
                ..
            } => {
                let h = resp.headers_mut();
                h.insert(
                    "retry-after",
                    HeaderValue::from(retry_after_ms.div_ceil(1000).max(1)),
                );
                h.insert("retry-after-ms", HeaderValue::from(*retry_after_ms));
                let standing = crate::gateway::ratelimit::Standing {
                    limit_requests: limits.requests_per_minute,
                    remaining_requests: 0,
                    limit_tokens: limits.tokens_per_minute,
                    remaining_tokens: 0,
                    reset_ms: *retry_after_ms,
                };
                crate::gateway::ratelimit::insert_headers(h, &standing);
            }
            ApiError::QuotaExceeded(_) | ApiError::WrongState(_) | ApiError::QueueFull(_) => {
                // Retrying cannot help until the budget is raised or the month turns.
                resp.headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
