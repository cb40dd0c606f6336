//! The HTTP hosts' shared pieces: request ids, body reading, pagination.

pub mod admin;
pub mod api;
pub mod ops;
pub mod usage;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::store::Page;

/// The id of one request: the client's `x-request-id` when sane, else a new one.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn sane_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Gives every request an id and echoes it in `x-request-id` on every response.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()));
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Reads a body up to `limit` bytes (413 beyond).
pub async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(format!("the request body exceeds {limit} bytes")))
}

/// Parses a JSON body into `T`, every failure a 400 saying why.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Default, Deserialize)]
pub struct PageParams {
    pub limit: Option<usize>,
    pub after: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> ApiResult<usize> {
        match self.limit {
            None => Ok(20),
            Some(n) if (1..=100).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid_param(
                "limit",
                "limit must be between 1 and 100",
            )),
        }
    }
}

/// A page as the API lists it.
pub fn list_body<T: serde::Serialize>(page: Page<T>) -> Value {
    json!({"object": "list", "data": page.items, "has_more": page.next.is_some(), "next": page.next})
}

/// Hosts routes: unknown URLs answer 404 in the OpenAI error shape, and every
/// response carries `x-request-id`.
pub fn host(routes: axum::Router) -> axum::Router {
    routes
        .fallback(no_route)
        .layer(axum::middleware::from_fn(request_id))
}

/// Unknown routes answer 404 in the OpenAI error shape.
pub async fn no_route() -> Response {
    ApiError::NotFound {
        message: "Unknown request URL.".into(),
        code: "unknown_url",
    }
    .into_response()
}
