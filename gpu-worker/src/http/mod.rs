//! The worker's HTTP API: the OpenAI embeddings route, the SageMaker container
//! contract and runtime path, health and Prometheus metrics.

mod error;
mod openai;
mod sagemaker;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use error::{ApiError, ErrorKind};
pub use openai::{EmbeddingRequest, EncodingFormat};

use crate::engine::Engine;
use crate::error::EmbedError;

/// Request limits of the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most inputs in one request.
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2_000_000,
            max_inputs: 2048,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub limits: Limits,
    /// The model name answers carry.
    pub model_id: Arc<str>,
}

/// The router with every route, the body limit and the metrics middleware.
pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/ping", get(sagemaker::ping))
        .route("/invocations", post(sagemaker::invocations))
        .route(
            "/endpoints/{name}/invocations",
            post(sagemaker::runtime_invocations),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Counts every answer by route template and status, and errors by kind.
async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/v1/embeddings") => "/v1/embeddings",
        Some("/invocations") => "/invocations",
        Some("/endpoints/{name}/invocations") => "/endpoints/{name}/invocations",
        Some("/ping") => "/ping",
        Some("/health") => "/health",
        Some("/metrics") => "/metrics",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    let metrics = state.engine.metrics();
    metrics.record_request(route, response.status().as_u16());
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        metrics.record_error(kind);
    }
    tracing::debug!(
        route,
        status = response.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Embeds a validated OpenAI request and answers in the OpenAI shape.
pub async fn embed_openai(state: &AppState, req: EmbeddingRequest) -> Result<Response, ApiError> {
    let start = Instant::now();
    let embedded = state.engine.embed(req.inputs, req.truncate).await?;
    let elapsed = start.elapsed();
    let tokens: usize = embedded.tokens.iter().sum();
    let body = openai::response(&embedded, &state.model_id, req.encoding_format);
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-compute-tokens", tokens.to_string()),
        ("x-compute-time", elapsed.as_millis().to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    Ok(response)
}

async fn embeddings(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::body(r, state.limits.max_body_bytes))?;
    let value = openai::parse_body(&body)?;
    let req = EmbeddingRequest::from_json(
        &value,
        state.engine.info().dimension,
        state.limits.max_inputs,
    )?;
    embed_openai(&state, req).await
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let info = state.engine.info();
    let batch = state.engine.batch_config();
    Json(json!({
        "status": "ok",
        "model": &*state.model_id,
        "device": state.engine.device(),
        "dimension": info.dimension,
        "max_seq_length": info.max_seq_length,
        "max_batch_tokens": batch.max_batch_tokens,
        "max_batch_size": batch.max_batch_size,
        "max_queue": batch.max_queue,
        "queue_depth": state.engine.metrics().queue_depth.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.engine.metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError(EmbedError::NotFound(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    )))
}

async fn method_not_allowed() -> ApiError {
    ApiError(EmbedError::MethodNotAllowed)
}
