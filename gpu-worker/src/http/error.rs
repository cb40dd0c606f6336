//! Errors as HTTP answers in the OpenAI shape `{"error":{"message","type","param","code"}}`.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::EmbedError;

/// Marks an error answer with its kind, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

/// An [`EmbedError`] on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub EmbedError);

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    /// A body that could not be read: over `limit` bytes (413), or unreadable (400).
    pub fn body(rejection: BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(EmbedError::PayloadTooLarge { limit })
        } else {
            ApiError(EmbedError::InvalidRequest {
                message: format!("cannot read the request body: {rejection}"),
                param: None,
            })
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let class = self.0.classify();
        let status =
            StatusCode::from_u16(class.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self.0, status = class.status, "request failed");
        }
        let body = json!({
            "error": {
                "message": self.0.to_string(),
                "type": class.kind,
                "param": class.param,
                "code": class.code,
            }
        });
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.0.retry_after_secs() {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response.extensions_mut().insert(ErrorKind(self.0.label()));
        response
    }
}
