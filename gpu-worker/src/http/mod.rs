//! The worker's HTTP API: the OpenAI embeddings and chat completions routes, the
//! SageMaker container contract and runtime path, health and Prometheus metrics.

pub mod chat;
pub mod chat_request;
mod error;
mod openai;
mod sagemaker;

use std::fmt::Write as _;
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
use std::sync::atomic::Ordering;

pub use error::{ApiError, ErrorKind};
pub use openai::{EmbeddingRequest, EncodingFormat};

use crate::chat::ChatEngine;
use crate::engine::Engine;
use crate::error::EmbedError;
use crate::metrics::Metrics;

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

/// What every handler shares: the models this worker serves (an embedding model,
/// a chat model, or both).
#[derive(Clone)]
pub struct AppState {
    pub engine: Option<Engine>,
    pub chat: Option<ChatEngine>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The embedding model's name in answers.
    pub model_id: Arc<str>,
    /// The chat model's name in answers.
    pub chat_model_id: Arc<str>,
}

impl AppState {
    /// A worker serving one embedding model.
    pub fn embeddings(engine: Engine, limits: Limits, model_id: &str) -> AppState {
        AppState {
            metrics: engine.metrics().clone(),
            engine: Some(engine),
            chat: None,
            limits,
            model_id: model_id.into(),
            chat_model_id: "".into(),
        }
    }

    /// Adds a chat model.
    pub fn with_chat(mut self, chat: ChatEngine, model_id: &str) -> AppState {
        self.chat = Some(chat);
        self.chat_model_id = model_id.into();
        self
    }

    pub fn embedder(&self) -> Result<&Engine, ApiError> {
        self.engine.as_ref().ok_or_else(|| {
            ApiError(EmbedError::NotFound(
                "this worker serves no embedding model".into(),
            ))
        })
    }

    pub fn chat(&self) -> Result<&ChatEngine, ApiError> {
        self.chat.as_ref().ok_or_else(|| {
            ApiError(EmbedError::NotFound(
                "this worker serves no chat model".into(),
            ))
        })
    }
}

/// The router with every route, the body limit and the metrics middleware.
pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/ping", get(sagemaker::ping))
        .route("/invocations", post(sagemaker::invocations))
        .route(
            "/endpoints/{name}/invocations",
            post(sagemaker::runtime_invocations),
        )
        .route(
            "/endpoints/{name}/invocations-response-stream",
            post(sagemaker::runtime_invocations_stream),
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
        Some("/v1/chat/completions") => "/v1/chat/completions",
        Some("/invocations") => "/invocations",
        Some("/endpoints/{name}/invocations") => "/endpoints/{name}/invocations",
        Some("/endpoints/{name}/invocations-response-stream") => {
            "/endpoints/{name}/invocations-response-stream"
        }
        Some("/ping") => "/ping",
        Some("/health") => "/health",
        Some("/metrics") => "/metrics",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.metrics;
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
    let embedded = state.embedder()?.embed(req.inputs, req.truncate).await?;
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
        state.embedder()?.info().dimension,
        state.limits.max_inputs,
    )?;
    embed_openai(&state, req).await
}

async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::body(r, state.limits.max_body_bytes))?;
    let value = openai::parse_body(&body)?;
    let req = chat_request::ChatRequest::from_json(&value)?;
    chat::complete(&state, req).await
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let embeddings = state.engine.as_ref().map(|engine| {
        let info = engine.info();
        let batch = engine.batch_config();
        json!({
            "model": &*state.model_id,
            "device": engine.device(),
            "precision": info.precision.as_str(),
            "matmul": info.matmul,
            "dimension": info.dimension,
            "max_seq_length": info.max_seq_length,
            "max_batch_tokens": batch.max_batch_tokens,
            "max_batch_size": batch.max_batch_size,
            "max_queue": batch.max_queue,
            "queue_depth": engine.metrics().queue_depth.load(Ordering::Relaxed),
        })
    });
    let chat = state.chat.as_ref().map(|chat| {
        let info = chat.info();
        let m = chat.metrics();
        json!({
            "model": &*state.chat_model_id,
            "context": info.context,
            "kv_budget_tokens": info.kv_budget_tokens,
            "max_running": info.max_running,
            "default_max_tokens": info.default_max_tokens,
            "queue_depth": m.waiting.load(Ordering::Relaxed),
            "running": m.running.load(Ordering::Relaxed),
        })
    });
    let mut body = json!({"status": "ok", "embeddings": embeddings, "chat": chat});
    // The embedding model's fields stay at the top level, as before chat existed.
    flatten_embeddings(&mut body);
    Json(body)
}

/// Copies the embedding model's fields to the top level of `/health`.
fn flatten_embeddings(body: &mut serde_json::Value) {
    let fields = body.get("embeddings").and_then(|e| e.as_object()).cloned();
    if let (Some(fields), Some(top)) = (fields, body.as_object_mut()) {
        for (k, v) in fields {
            top.entry(k).or_insert(v);
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    if let Some(engine) = &state.engine {
        let _ = writeln!(
            text,
            "# HELP tenantai_worker_embeddings_model_info The embedding model served, its precision and what runs its dense products.\n# TYPE tenantai_worker_embeddings_model_info gauge\ntenantai_worker_embeddings_model_info{{model=\"{}\",precision=\"{}\",matmul=\"{}\"}} 1",
            label_value(&state.model_id),
            engine.info().precision,
            engine.info().matmul
        );
    }
    if let Some(chat) = &state.chat {
        chat.metrics().render(&mut text);
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// A Prometheus label value: backslashes, quotes and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
