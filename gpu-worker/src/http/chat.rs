//! `POST /v1/chat/completions`: OpenAI's chat completions, answered whole or
//! streamed as server-sent events (`chat.completion.chunk` objects, then
//! `data: [DONE]`). A client that disconnects drops the event receiver, which frees
//! its sequence at the engine's next step.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::chat_request::ChatRequest;
use super::{ApiError, AppState};
use crate::chat::{ChatEngine, Event, SamplingParams};
use crate::error::EmbedError;

/// A fresh seed when the request names none.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts a generation for a validated request.
pub fn start(
    engine: &ChatEngine,
    req: &ChatRequest,
) -> Result<(usize, UnboundedReceiver<Event>), EmbedError> {
    let prompt = engine.prompt(&req.messages)?;
    let info = engine.info();
    let prompt_len = prompt.len();
    let max_tokens = match req.max_tokens {
        Some(n) => n,
        // Unset: the engine's default, cut to what the context leaves.
        None => info
            .default_max_tokens
            .min(info.context.saturating_sub(prompt_len))
            .max(1),
    };
    let sampling = SamplingParams {
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed.unwrap_or_else(random_seed),
    };
    let rx = engine.submit(prompt, max_tokens, sampling, req.stop.clone())?;
    Ok((prompt_len, rx))
}

/// The handler's core, shared with the SageMaker routes (which never stream).
pub async fn complete(state: &AppState, req: ChatRequest) -> Result<Response, ApiError> {
    let engine = state.chat()?;
    let (_, rx) = start(engine, &req)?;
    let id = format!("chatcmpl-{}", uuid_like());
    let model = state.chat_model_id.to_string();
    if req.stream {
        return Ok(Sse::new(chunks(rx, id, model, req.include_usage)).into_response());
    }
    whole(rx, id, model).await
}

async fn whole(
    mut rx: UnboundedReceiver<Event>,
    id: String,
    model: String,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let body = json!({
                    "id": id,
                    "object": "chat.completion",
                    "created": unix_now(),
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish.as_str(),
                    }],
                    "usage": usage(prompt_tokens, completion_tokens),
                });
                return Ok(Json(body).into_response());
            }
            Event::Failed(message) => return Err(ApiError(EmbedError::Inference(message))),
        }
    }
    Err(ApiError(EmbedError::Stopped))
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

struct StreamState {
    rx: UnboundedReceiver<Event>,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    started: bool,
    /// What is left to send after the finishing chunk.
    tail: Vec<SseEvent>,
    done: bool,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            body["usage"] = Value::Null;
        }
        SseEvent::default().data(body.to_string())
    }

    /// The events for one engine event.
    fn events(&mut self, event: Option<Event>) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        match event {
            Some(Event::Text(piece)) => out.push(self.chunk(json!({"content": piece}), None)),
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                out.push(self.chunk(json!({}), Some(finish.as_str())));
                if self.include_usage {
                    let body = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage(prompt_tokens, completion_tokens),
                    });
                    out.push(SseEvent::default().data(body.to_string()));
                }
                out.push(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
            Some(Event::Failed(message)) => {
                let err = EmbedError::Inference(message);
                let class = err.classify();
                let body = json!({"error": {"message": err.to_string(), "type": class.kind, "param": null, "code": class.code}});
                out.push(SseEvent::default().data(body.to_string()));
                self.done = true;
            }
            None => self.done = true,
        }
        out
    }
}

/// The server-sent events of one generation.
fn chunks(
    rx: UnboundedReceiver<Event>,
    id: String,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let state = StreamState {
        rx,
        id,
        model,
        created: unix_now(),
        include_usage,
        started: false,
        tail: Vec::new(),
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.tail.is_empty() {
            if st.done {
                return None;
            }
            let event = st.rx.recv().await;
            st.tail = st.events(event);
            st.tail.reverse();
        }
        let next = st.tail.pop()?;
        Some((next, st))
    })
    .map(Ok)
}

/// A random id for a completion.
fn uuid_like() -> String {
    format!("{:016x}{:016x}", random_seed(), random_seed())
}
