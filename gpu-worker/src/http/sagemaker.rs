//! The SageMaker inference container contract (`GET /ping`, `POST /invocations`)
//! and the runtime API path (`POST /endpoints/{name}/invocations`), so the SageMaker
//! runtime SDK can call the worker directly through `AWS_ENDPOINT_URL`.
//!
//! The body is an OpenAI chat request (`{"messages": ...}`, answered whole), an
//! OpenAI embeddings request (`{"input": ...}`, answered in
//! the OpenAI shape) or the Hugging Face feature-extraction shape
//! (`{"inputs": "text" | ["text", ...], "truncate": bool}`, answered with a JSON
//! array of vectors).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::chat_request::ChatRequest;
use super::openai::{self, EmbeddingRequest};
use super::{embed_openai, ApiError, AppState};

/// Health check: 200 once the model is loaded (the server only listens after).
pub async fn ping() -> StatusCode {
    StatusCode::OK
}

/// `POST /invocations`.
pub async fn invocations(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    invoke(&state, body).await
}

/// `POST /endpoints/{name}/invocations`: the runtime API's path; the worker serves
/// its models whatever the endpoint's name.
pub async fn runtime_invocations(
    Path(name): Path<String>,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tracing::debug!(endpoint = %name, "runtime invocation");
    invoke(&state, body).await
}

async fn invoke(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::body(r, state.limits.max_body_bytes))?;
    let value = openai::parse_body(&body)?;
    if let Some(obj) = value.as_object() {
        if let Some(inputs) = obj.get("inputs") {
            let truncate = openai::optional_bool(obj, "truncate")?;
            let inputs = openai::parse_inputs(inputs, state.limits.max_inputs)?;
            let embedded = state.embedder()?.embed(inputs, truncate).await?;
            let vectors: Vec<Value> = embedded
                .vectors
                .iter()
                .map(|v| Value::from(v.as_slice()))
                .collect();
            return Ok(Json(Value::Array(vectors)).into_response());
        }
    }
    if value.get("messages").is_some() {
        // A chat body: answered whole (the invocation contract does not stream).
        let mut req = ChatRequest::from_json(&value)?;
        req.stream = false;
        req.include_usage = false;
        return super::chat::complete(state, req).await;
    }
    let req = EmbeddingRequest::from_json(
        &value,
        state.embedder()?.info().dimension,
        state.limits.max_inputs,
    )?;
    embed_openai(state, req).await
}
