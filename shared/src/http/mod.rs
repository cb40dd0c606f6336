//! The HTTP hosts' shared pieces: request ids, body reading and its deadline,
//! the health route, pagination.

pub mod admin;
pub mod api;
pub mod batches;
pub mod chat;
pub mod console;
pub mod files;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod registry;
pub mod serve;
pub mod usage;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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

/// Longest a request body may take to arrive, unless configured.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The error a body past its deadline fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(Duration);

/// A request body that fails once its deadline passes, however it trickles.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.limit)))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives every request body a deadline of `limit` from when its head arrived:
/// a body still arriving then fails, and [`read_body`] answers 408 (the
/// connection is closed and its buffers freed).
pub async fn body_deadline(limit: Duration, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limit)),
        limit,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// Whether an error, or one it was caused by, is an `E`.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(err);
    while let Some(e) = at {
        if e.is::<E>() {
            return true;
        }
        at = e.source();
    }
    false
}

/// The 408 or 413 a failed body read stands for, when it is either (the
/// body's deadline passed, or its route's limit).
pub(crate) fn body_refusal(err: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    if caused_by::<BodyTimedOut>(err) {
        Some(ApiError::RequestTimeout(
            "the request body did not arrive in time; send it whole and promptly".into(),
        ))
    } else if caused_by::<http_body_util::LengthLimitError>(err) {
        Some(ApiError::PayloadTooLarge(
            "the request body exceeds this route's limit".into(),
        ))
    } else {
        None
    }
}

/// Reads a body up to `limit` bytes (413 beyond; 408 past the host's deadline;
/// 400 for a body the client broke off).
pub async fn read_body(body: Body, limit: usize) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if caused_by::<BodyTimedOut>(e.as_ref()) {
            ApiError::RequestTimeout(
                "the request body did not arrive in time; send it whole and promptly".into(),
            )
        } else if caused_by::<http_body_util::LengthLimitError>(e.as_ref()) {
            ApiError::PayloadTooLarge(format!("the request body exceeds {limit} bytes"))
        } else {
            ApiError::invalid(format!("the request body could not be read: {e}"))
        }
    })
}

/// Parses a JSON body into `T`, every failure a 400 saying why.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    crate::limits::check_json_depth(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Where the previous page ended (its `next`, or its last id).
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

/// A page as the admin API lists it: `next` is the cursor of the page after.
#[derive(Clone, Debug, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ListPage<T> {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    #[schema(required = true)]
    pub next: Option<String>,
}

/// A page as the API lists it.
pub fn list_body<T>(page: Page<T>) -> ListPage<T> {
    ListPage {
        object: "list",
        has_more: page.next.is_some(),
        data: page.items,
        next: page.next,
    }
}

/// Hosts routes under the default configuration (see [`host_with`]).
pub fn host(routes: axum::Router) -> axum::Router {
    host_with(routes, &crate::app::Config::default())
}

/// Hosts routes: `GET /health` answers without credentials, unknown URLs
/// answer 404 in the OpenAI error shape, every request's head and body are
/// held to `config`'s limits ([`limits`]), every request body must arrive
/// within `config.body_timeout`, and every response carries `x-request-id`.
pub fn host_with(routes: axum::Router, config: &crate::app::Config) -> axum::Router {
    let body_timeout = config.body_timeout;
    let request_limits = limits::RequestLimits::new(config);
    routes
        .route("/health", axum::routing::get(health))
        .fallback(no_route)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| body_deadline(body_timeout, req, next),
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| limits::enforce(request_limits.clone(), req, next),
        ))
        .layer(axum::middleware::from_fn(error_shape))
        .layer(axum::middleware::from_fn(request_id))
}

/// What axum answers itself (an unreadable query string or path, a method a
/// route does not take) is plain text or empty: it gets the OpenAI error shape.
pub async fn error_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let kind = resp.headers().get(axum::http::header::CONTENT_TYPE);
    let plain = kind.is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !status.is_client_error() || !plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_string();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("Bad request")
            .to_string();
    }
    let body = json!({"error": {"message": message, "type": "invalid_request_error",
                                "param": null, "code": null}});
    let mut shaped = (status, axum::Json(body)).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// The health route: the process is up and serving.
pub async fn health() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// Unknown routes answer 404 in the OpenAI error shape.
pub async fn no_route() -> Response {
    ApiError::NotFound {
        message: "Unknown request URL.".into(),
        code: "unknown_url",
    }
    .into_response()
}
