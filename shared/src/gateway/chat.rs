//! `POST /v1/chat/completions` at the gateway: the request as the gateway checks
//! it, and the chat endpoint's parts of the request pipeline.
//!
//! The gateway checks what it bills and routes by (the model, the messages, the
//! token cap, one choice, streaming) and passes every other option through to the
//! backend, which judges it (its 4xx reaches the client as a 400). The prompt's
//! bound is the byte length of its messages: a byte-level BPE token covers at
//! least one byte, and the JSON around each message outweighs the template's
//! own tokens.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::billing::amounts::{self, Overflow};
use crate::error::{ApiError, ApiResult};
use crate::gateway::backend::BackendFailure;
use crate::gateway::chat_stream::Upstream;
use crate::gateway::models::{ModelKind, ModelVersion};
use crate::gateway::pipeline::{Endpoint, Tokens};

/// Most messages one request may carry.
pub const MAX_MESSAGES: usize = 2048;
/// Completion tokens a request may ask for at most.
pub const MAX_COMPLETION_TOKENS: u64 = 1 << 20;
/// Longest string a message may hold (its content, a content part's text, a
/// tool call's arguments), in bytes.
pub const MAX_MESSAGE_STRING_BYTES: usize = 1024 * 1024;
/// Longest `role`, `name` or `user`, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// The cap when neither the request nor the model version sets one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A chat request as the gateway checked it.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: String,
    /// The client's body, without `model`, `stream` and `stream_options`.
    pub body: Map<String, Value>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    /// Greedy (temperature 0) or seeded: the answer depends on the request only.
    pub deterministic: bool,
    /// Bytes of the messages as JSON: the prompt's token bound.
    prompt_bound: u64,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_param(param, message)
}

fn check_messages(value: Option<&Value>) -> ApiResult<u64> {
    let items = match value {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(invalid(
                "messages",
                "'messages' must hold at least one message",
            ))
        }
        None | Some(Value::Null) => {
            return Err(invalid("messages", "'messages' is a required property"))
        }
        Some(_) => {
            return Err(invalid(
                "messages",
                "'messages' must be an array of message objects",
            ))
        }
    };
    if items.len() > MAX_MESSAGES {
        return Err(invalid(
            "messages",
            format!("at most {MAX_MESSAGES} messages per request"),
        ));
    }
    for (i, m) in items.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(invalid(
                "messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        if !obj.get("role").is_some_and(Value::is_string) {
            return Err(invalid(
                "messages",
                format!("messages[{i}].role is required and must be a string"),
            ));
        }
        check_lengths(i, obj)?;
    }
    let bytes = serde_json::to_vec(items).map_or(usize::MAX, |b| b.len());
    Ok(u64::try_from(bytes).unwrap_or(u64::MAX))
}

/// The longest string anywhere in `v` (its depth is already bounded).
fn longest_string(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(longest_string).max().unwrap_or(0),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| k.len().max(longest_string(v)))
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

/// A message's `role` and `name` are short, and no string in it is longer than
/// [`MAX_MESSAGE_STRING_BYTES`].
fn check_lengths(i: usize, obj: &Map<String, Value>) -> ApiResult<()> {
    for label in ["role", "name"] {
        if obj.get(label).and_then(Value::as_str).map_or(0, str::len) > MAX_LABEL_BYTES {
            return Err(invalid(
                "messages",
                format!("messages[{i}].{label} is longer than {MAX_LABEL_BYTES} bytes"),
            ));
        }
    }
    if obj
        .values()
        .any(|v| longest_string(v) > MAX_MESSAGE_STRING_BYTES)
    {
        return Err(invalid(
            "messages",
            format!("messages[{i}] holds a string longer than {MAX_MESSAGE_STRING_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn max_tokens(obj: &Map<String, Value>) -> ApiResult<Option<u64>> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match obj.get(field) {
            None | Some(Value::Null) => continue,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_COMPLETION_TOKENS).contains(&n) => return Ok(Some(n)),
                _ => {
                    let param = if field == "max_tokens" {
                        "max_tokens"
                    } else {
                        "max_completion_tokens"
                    };
                    return Err(invalid(
                        param,
                        format!("'{field}' must be an integer from 1 to {MAX_COMPLETION_TOKENS}, not {v}"),
                    ));
                }
            },
        }
    }
    Ok(None)
}

fn flag(obj: &Map<String, Value>, field: &'static str) -> ApiResult<bool> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(
            field,
            format!("'{field}' must be a boolean, not {v}"),
        )),
    }
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> ApiResult<ChatRequest> {
        crate::limits::check_json_depth(bytes)?;
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(ApiError::invalid("the body must be a JSON object"));
        };
        let model = match obj.remove("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m,
            _ => {
                return Err(invalid(
                    "model",
                    "'model' is required: a string of 1 to 256 characters",
                ))
            }
        };
        let prompt_bound = check_messages(obj.get("messages"))?.saturating_add(16);
        if obj.get("user").and_then(Value::as_str).map_or(0, str::len) > MAX_LABEL_BYTES {
            return Err(invalid(
                "user",
                format!("'user' is longer than {MAX_LABEL_BYTES} bytes"),
            ));
        }
        let max_tokens = max_tokens(&obj)?;
        match obj.get("n") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64() == Some(1) => {}
            Some(v) => {
                return Err(invalid(
                    "n",
                    format!("'n' must be 1 (one choice per request), not {v}"),
                ))
            }
        }
        let temperature = match obj.get("temperature") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(t) if (0.0..=2.0).contains(&t) => Some(t),
                _ => {
                    return Err(invalid(
                        "temperature",
                        format!("'temperature' must be a number from 0 to 2, not {v}"),
                    ))
                }
            },
        };
        let seeded = match obj.get("seed") {
            None | Some(Value::Null) => false,
            Some(v) if v.is_i64() || v.is_u64() => true,
            Some(v) => {
                return Err(invalid(
                    "seed",
                    format!("'seed' must be an integer, not {v}"),
                ))
            }
        };
        let stream = flag(&obj, "stream")?;
        obj.remove("stream");
        let include_usage = match obj.remove("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) if stream => flag(&o, "include_usage")?,
            Some(Value::Object(_)) => {
                return Err(invalid(
                    "stream_options",
                    "'stream_options' is only allowed when 'stream' is true",
                ))
            }
            Some(_) => {
                return Err(invalid(
                    "stream_options",
                    "'stream_options' must be an object",
                ))
            }
        };
        Ok(ChatRequest {
            model,
            max_tokens,
            stream,
            include_usage,
            deterministic: temperature == Some(0.0) || seeded,
            prompt_bound,
            body: obj,
        })
    }

    /// Most completion tokens this request may be billed for at `version`.
    pub fn completion_bound(&self, version: &ModelVersion) -> u64 {
        self.max_tokens
            .or(version.max_output_tokens.map(u64::from))
            .unwrap_or(DEFAULT_MAX_TOKENS)
    }

    /// Most prompt tokens this request may be billed for.
    pub fn prompt_bound(&self) -> u64 {
        self.prompt_bound
    }

    /// A rough prompt size (four bytes a token), billed when a backend reports none.
    pub fn prompt_estimate(&self) -> u64 {
        (self.prompt_bound / 4).max(1)
    }

    /// The body a backend receives: the client's options, the backend's model
    /// id, the cap (when the request or the version sets one, or always for an
    /// upstream provider), and usage asked for on streams (it is what we bill).
    pub fn backend_body(&self, version: &ModelVersion, always_cap: bool) -> Vec<u8> {
        let mut body = self.body.clone();
        body.remove("max_completion_tokens");
        let model = version
            .upstream_model
            .clone()
            .unwrap_or_else(|| version.model.clone());
        body.insert("model".into(), Value::String(model));
        let cap = self.max_tokens.or(version.max_output_tokens.map(u64::from));
        if let Some(n) = cap.or(always_cap.then(|| self.completion_bound(version))) {
            body.insert("max_tokens".into(), n.into());
        }
        if self.stream {
            body.insert("stream".into(), Value::Bool(true));
            body.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        }
        Value::Object(body).to_string().into_bytes()
    }
}

/// A whole chat completion: the body a client receives, and what it bills.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub body: Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Completion {
    /// The first choice's text and finish reason.
    pub fn text(&self) -> (&str, &str) {
        let choice = &self.body["choices"][0];
        (
            choice["message"]["content"].as_str().unwrap_or(""),
            choice["finish_reason"].as_str().unwrap_or("stop"),
        )
    }
}

impl crate::gateway::cache::Entry for Completion {
    fn weight(&self) -> usize {
        self.body.to_string().len() + 64
    }

    fn encode(&self) -> Option<crate::store::Attrs> {
        let text = serde_json::to_string(self).ok()?;
        if text.len() > crate::gateway::cache::MAX_L2_BYTES {
            return None;
        }
        let mut attrs = crate::store::Attrs::new();
        attrs.insert("completion".into(), text.into());
        Some(attrs)
    }

    fn decode(attrs: &crate::store::Attrs) -> Option<Self> {
        serde_json::from_str(attrs.get("completion")?.as_str()?).ok()
    }
}

/// What a chat backend answers: a whole completion, or a stream under way.
pub enum ChatAnswer {
    Whole(Arc<Completion>),
    Stream(Upstream),
}

#[async_trait::async_trait]
impl Endpoint for ChatRequest {
    type Answer = ChatAnswer;
    const KIND: ModelKind = ModelKind::Chat;

    fn model(&self) -> &str {
        &self.model
    }

    /// The prompt's rough size plus the completion cap (the model's is unknown
    /// before routing: the default cap stands in).
    fn estimate_tokens(&self) -> u64 {
        self.prompt_estimate()
            .saturating_add(self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS))
    }

    fn max_cost(&self, version: &ModelVersion) -> Result<u64, Overflow> {
        amounts::add(
            amounts::cost_micros(self.prompt_bound, version.price_per_1k_tokens_micros)?,
            amounts::cost_micros(
                self.completion_bound(version),
                version.price_per_1k_completion_tokens_micros,
            )?,
            "cost",
        )
    }

    /// The canonical request (sorted keys) without how it is delivered.
    fn cache_hash(&self) -> Option<String> {
        if !self.deterministic {
            return None;
        }
        let mut body = self.body.clone();
        body.remove("user");
        let text = Value::Object(body).to_string();
        Some(format!(
            "chat:{}",
            hex::encode(Sha256::digest(text.as_bytes()))
        ))
    }

    async fn cached(&self, app: &App, key: &str) -> Option<ChatAnswer> {
        app.chat_cache.get(key).await.map(ChatAnswer::Whole)
    }

    /// Whole answers are stored here; a stream is stored by its end.
    async fn store(&self, app: &App, key: &str, answer: &ChatAnswer) {
        if let ChatAnswer::Whole(c) = answer {
            app.chat_cache.put(key, c.clone()).await;
        }
    }

    async fn call(&self, app: &App, version: &ModelVersion) -> Result<ChatAnswer, BackendFailure> {
        app.chat.complete(app, version, self).await
    }

    fn tokens(&self, answer: &ChatAnswer) -> Tokens {
        match answer {
            ChatAnswer::Whole(c) => self.bounded(c.prompt_tokens, c.completion_tokens, None),
            ChatAnswer::Stream(_) => Tokens {
                prompt: 0,
                completion: 0,
                inputs: 1,
            },
        }
    }
}

impl ChatRequest {
    /// Tokens held to the request's bounds (at `version` when known, else the
    /// loosest), so billing never passes the reservation.
    pub fn bounded(&self, prompt: u64, completion: u64, version: Option<&ModelVersion>) -> Tokens {
        let cap = match version {
            Some(v) => self.completion_bound(v),
            None => self.max_tokens.unwrap_or(MAX_COMPLETION_TOKENS),
        };
        Tokens {
            prompt: prompt.min(self.prompt_bound),
            completion: completion.min(cap),
            inputs: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> ApiResult<ChatRequest> {
        ChatRequest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_request_keeps_its_options_and_loses_its_delivery() {
        let r = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 5, "temperature": 0, "stream": true,
                             "stream_options": {"include_usage": true}, "top_p": 0.5}),
        )
        .unwrap();
        assert_eq!(
            (r.model.as_str(), r.max_tokens, r.stream, r.include_usage),
            ("m", Some(5), true, true)
        );
        assert!(r.deterministic);
        assert!(!r.body.contains_key("stream") && !r.body.contains_key("model"));
        assert_eq!(r.body["top_p"], 0.5);
        let whole = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 5, "temperature": 0, "top_p": 0.5}),
        )
        .unwrap();
        assert_eq!(
            r.cache_hash(),
            whole.cache_hash(),
            "streamed or not, the same answer"
        );
        let other = parse(
            json!({"model": "m", "messages": [{"role": "user", "content": "ho"}],
                                 "max_tokens": 5, "temperature": 0, "top_p": 0.5}),
        )
        .unwrap();
        assert_ne!(r.cache_hash(), other.cache_hash());
        let sampled =
            parse(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(sampled.cache_hash(), None);
    }

    #[test]
    fn bad_fields_are_400s_naming_them() {
        for (body, param) in [
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                "model",
            ),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": ["x"]}), "messages"),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "messages",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}),
                "max_completion_tokens",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}),
                "n",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1.5}),
                "seed",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}),
                "stream_options",
            ),
        ] {
            match parse(body.clone()) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => {
                    assert_eq!(p, param, "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(ChatRequest::parse(b"[1]").is_err());
        assert!(ChatRequest::parse(b"{\"model\":").is_err());
    }

    #[test]
    fn bounds_hold_billing_to_the_reservation() {
        let r = parse(json!({"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 7})).unwrap();
        let mut v = ModelVersion::live_worker("m", "1", "http://w", 1_000);
        v.kind = ModelKind::Chat;
        v.price_per_1k_completion_tokens_micros = 2_000;
        let t = r.bounded(1_000_000, 1_000_000, Some(&v));
        assert_eq!(t.completion, 7);
        assert_eq!(t.prompt, r.prompt_bound());
        assert_eq!(
            r.max_cost(&v).unwrap(),
            crate::gateway::pipeline::cost(&v, t).unwrap()
        );
        let body: Value = serde_json::from_slice(&r.backend_body(&v, false)).unwrap();
        assert_eq!(
            (body["model"].clone(), body["max_tokens"].clone()),
            (json!("m"), json!(7))
        );
        let open = parse(json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]}))
            .unwrap();
        let body: Value = serde_json::from_slice(&open.backend_body(&v, false)).unwrap();
        assert!(
            body.get("max_tokens").is_none(),
            "the worker applies its own default"
        );
        let body: Value = serde_json::from_slice(&open.backend_body(&v, true)).unwrap();
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
    }
}
