//! Per-request limits every host applies before a handler runs: the size of
//! the request head (431) and each route's largest body (413), both in the
//! OpenAI error shape. The values are in [`crate::limits`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::Config;
use crate::error::ApiError;
use crate::limits::{ADMIN_BODY_BYTES, SMALL_BODY_BYTES, UPLOAD_FORM_OVERHEAD};

/// The limits a host checks on each request, from its configuration.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// `/v1/embeddings` and `/v1/chat/completions`.
    api_body: usize,
    /// `/v1/files` uploads: the largest tier's file and the form around it
    /// (the tenant's own tier limit is checked as the file streams in).
    upload_body: usize,
    max_headers: usize,
    max_header_bytes: usize,
}

impl RequestLimits {
    pub fn new(config: &Config) -> Arc<Self> {
        let largest_file = config
            .tiers
            .0
            .values()
            .map(|t| t.batch.max_file_bytes)
            .max()
            .unwrap_or(0);
        Arc::new(RequestLimits {
            api_body: config.max_body_bytes,
            upload_body: usize::try_from(largest_file)
                .unwrap_or(usize::MAX)
                .saturating_add(UPLOAD_FORM_OVERHEAD),
            max_headers: config.limits.max_headers,
            max_header_bytes: config.limits.max_header_bytes,
        })
    }

    /// The largest body `method path` accepts.
    pub fn body_limit(&self, method: &Method, path: &str) -> usize {
        let writes = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (writes, segments.as_slice()) {
            (true, ["v1", "embeddings"] | ["v1", "chat", "completions"]) => self.api_body,
            (true, ["v1", "files"]) => self.upload_body,
            (true, ["admin", "v1", "tenants", _, "keys"]) => SMALL_BODY_BYTES,
            (true, ["admin", "v1", "tenants", _, "alert-webhook", "rotate-secret"]) => {
                SMALL_BODY_BYTES
            }
            (true, ["admin", "v1", ..]) => ADMIN_BODY_BYTES,
            _ => SMALL_BODY_BYTES,
        }
    }

    /// A 431 when the head has too many fields or too many bytes.
    fn check_head(&self, req: &Request) -> Result<(), ApiError> {
        let headers = req.headers();
        if headers.len() > self.max_headers {
            return Err(ApiError::HeadersTooLarge(format!(
                "the request has {} header fields; at most {} are accepted",
                headers.len(),
                self.max_headers
            )));
        }
        // As on the wire: "METHOD URI HTTP/1.1\r\n" and "name: value\r\n" per field.
        let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
        let bytes = headers
            .iter()
            .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4);
        if bytes > self.max_header_bytes {
            return Err(ApiError::HeadersTooLarge(format!(
                "the request head is {bytes} bytes; at most {} are accepted",
                self.max_header_bytes
            )));
        }
        Ok(())
    }
}

/// Refuses an oversized head (431) or a declared body over the route's limit
/// (413) before anything reads it, and caps a body of unknown length at that
/// limit as it streams (the reader answers 413 when it is passed).
pub async fn enforce(limits: Arc<RequestLimits>, req: Request, next: Next) -> Response {
    if let Err(e) = limits.check_head(&req) {
        return e.into_response();
    }
    let limit = limits.body_limit(req.method(), req.uri().path());
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::PayloadTooLarge(format!(
            "the request body exceeds {limit} bytes, the limit of {} {}",
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = Body::new(http_body_util::Limited::new(body, limit));
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_body_limit() {
        let l = RequestLimits::new(&Config::default());
        let post = Method::POST;
        assert_eq!(l.body_limit(&post, "/v1/embeddings"), 6 * 1024 * 1024);
        assert_eq!(l.body_limit(&post, "/v1/chat/completions"), 6 * 1024 * 1024);
        assert_eq!(
            l.body_limit(&post, "/v1/files"),
            200 * 1024 * 1024 + UPLOAD_FORM_OVERHEAD
        );
        assert_eq!(l.body_limit(&post, "/v1/batches"), SMALL_BODY_BYTES);
        assert_eq!(l.body_limit(&post, "/admin/v1/tenants"), ADMIN_BODY_BYTES);
        assert_eq!(
            l.body_limit(&Method::PATCH, "/admin/v1/models/m/versions/1"),
            ADMIN_BODY_BYTES
        );
        assert_eq!(
            l.body_limit(&post, "/admin/v1/tenants/t/keys"),
            SMALL_BODY_BYTES
        );
        assert_eq!(l.body_limit(&Method::GET, "/v1/models"), SMALL_BODY_BYTES);
    }
}
