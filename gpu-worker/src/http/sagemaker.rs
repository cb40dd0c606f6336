//! The SageMaker inference container contract (`GET /ping`, `POST /invocations`)
//! and the runtime API paths (`POST /endpoints/{name}/invocations` and
//! `.../invocations-response-stream`), so the SageMaker runtime SDK can call the
//! worker directly through `AWS_ENDPOINT_URL`.
//!
//! The body is an OpenAI chat request (`{"messages": ...}`, answered whole, or as
//! server-sent events with `"stream": true`, which SageMaker's response streaming
//! hands on chunk by chunk), an
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
use futures::StreamExt;
use serde_json::{json, Value};

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
    invoke(&state, body, Answer::AsAsked).await
}

/// `POST /endpoints/{name}/invocations`: the runtime API's path; the worker serves
/// its models whatever the endpoint's name.
pub async fn runtime_invocations(
    Path(name): Path<String>,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tracing::debug!(endpoint = %name, "runtime invocation");
    invoke(&state, body, Answer::Whole).await
}

/// `POST /endpoints/{name}/invocations-response-stream`: the runtime API's
/// InvokeEndpointWithResponseStream. The container's answer goes out as the
/// runtime sends it: an AWS event stream of `PayloadPart` events, one per body
/// chunk (a refusal is answered as is, with its status).
pub async fn runtime_invocations_stream(
    Path(name): Path<String>,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    tracing::debug!(endpoint = %name, "runtime streaming invocation");
    let answer = invoke(&state, body, Answer::AsAsked).await?;
    if !answer.status().is_success() {
        return Ok(answer);
    }
    let frames = answer
        .into_body()
        .into_data_stream()
        .map(|chunk| match chunk {
            Ok(bytes) => event_frame(&[(":event-type", "PayloadPart")], "event", bytes),
            Err(e) => event_frame(
                &[(":exception-type", "ModelStreamError")],
                "exception",
                Bytes::from(
                    json!({"Message": e.to_string(), "ErrorCode": "StreamBroken"}).to_string(),
                ),
            ),
        });
    Ok((
        [("content-type", "application/vnd.amazon.eventstream")],
        axum::body::Body::from_stream(frames),
    )
        .into_response())
}

/// One AWS event-stream message (prelude, headers, payload, CRCs).
fn event_frame(
    headers: &[(&'static str, &'static str)],
    message_type: &'static str,
    payload: Bytes,
) -> Result<Bytes, std::io::Error> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let content_type = if message_type == "event" {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let mut message = Message::new(payload)
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String(content_type.into()),
        ));
    for (name, value) in headers {
        message = message.add_header(Header::new(*name, HeaderValue::String((*value).into())));
    }
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .map_err(std::io::Error::other)?;
    Ok(Bytes::from(out))
}

/// Whether a chat body's `stream` is honoured: the container and the
/// response-stream path stream when asked; InvokeEndpoint answers whole.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Whole,
    AsAsked,
}

async fn invoke(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    answer: Answer,
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
        // A chat body: whole, or streamed when it asks to be (and may be).
        let mut req = ChatRequest::from_json(&value)?;
        if answer == Answer::Whole {
            req.stream = false;
            req.include_usage = false;
        }
        return super::chat::complete(state, req).await;
    }
    let req = EmbeddingRequest::from_json(
        &value,
        state.embedder()?.info().dimension,
        state.limits.max_inputs,
    )?;
    embed_openai(state, req).await
}
