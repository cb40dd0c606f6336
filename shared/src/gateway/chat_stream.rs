//! Streamed chat answers: a backend's server-sent events passed to the client
//! event by event as they arrive (never buffered whole), metered on the way;
//! and a whole answer (a cache hit, a backend that cannot stream) replayed as
//! chunks.
//!
//! Each `chat.completion.chunk` goes out with the model id the client asked for.
//! The backend is always asked for usage (it is what is billed); the usage chunk
//! reaches the client only if it asked for one. When the stream ends, or its
//! client leaves (the body is dropped, which closes the backend connection and
//! so cancels the generation), the request is settled for what was generated:
//! the backend's usage, or one token per content chunk and the prompt estimate
//! when it sent none.

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use crate::app::App;
use crate::gateway::backend::BackendFailure;
use crate::gateway::chat::{ChatRequest, Completion};
use crate::gateway::models::ModelVersion;
use crate::gateway::pipeline::Admitted;

/// Longest one event may be.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// A backend's body as it arrives: an HTTP response's chunks, or the payload
/// parts of a SageMaker response stream.
pub type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, ChunkError>> + Send>>;

/// Why a backend's body stopped short.
#[derive(Debug)]
pub struct ChunkError {
    pub timeout: bool,
    pub message: String,
}

/// An HTTP response's body as [`Chunks`].
pub fn response_chunks(resp: reqwest::Response) -> Chunks {
    Box::pin(futures::stream::unfold(resp, |mut resp| async move {
        match resp.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), resp)),
            Ok(None) => None,
            Err(e) => Some((
                Err(ChunkError {
                    timeout: e.is_timeout(),
                    message: e.to_string(),
                }),
                resp,
            )),
        }
    }))
}

/// A backend's event stream, opened: its first event has arrived.
pub struct Upstream {
    /// Behind a mutex only to be `Sync` (answers are shared by reference); it is
    /// reached through `&mut self`, never locked.
    chunks: std::sync::Mutex<Chunks>,
    buf: BytesMut,
}

fn down(message: impl Into<String>) -> BackendFailure {
    BackendFailure::Down {
        message: message.into(),
        timeout: false,
    }
}

/// The end of the first complete event in `buf` (after its blank line).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The data of one event block (its `data:` lines joined), if any.
fn event_data(block: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(block);
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

impl Upstream {
    /// Waits for the backend's first event: a stream that fails before it is a
    /// failed backend (the pipeline falls back), one that fails after is the
    /// client's partial answer.
    pub async fn open(chunks: Chunks) -> Result<Upstream, BackendFailure> {
        let mut up = Upstream {
            chunks: std::sync::Mutex::new(chunks),
            buf: BytesMut::new(),
        };
        while event_end(&up.buf).is_none() {
            match up.chunks().next().await {
                Some(Ok(chunk)) => up.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(BackendFailure::Down {
                        timeout: e.timeout,
                        message: format!("the stream failed before its first event: {}", e.message),
                    })
                }
                None => return Err(down("the stream ended before its first event")),
            }
            if up.buf.len() > MAX_EVENT_BYTES {
                return Err(down("the stream's first event is too long"));
            }
        }
        Ok(up)
    }

    fn chunks(&mut self) -> &mut Chunks {
        self.chunks.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The next event's data; `None` at the end of the stream.
    async fn next(&mut self) -> Option<Result<String, String>> {
        loop {
            if let Some((end, next)) = event_end(&self.buf) {
                let block = self.buf.split_to(next);
                match event_data(&block[..end]) {
                    Some(data) => return Some(Ok(data)),
                    None => continue,
                }
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                return Some(Err("an event of the stream is too long".into()));
            }
            match self.chunks().next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e.message)),
                None => return None,
            }
        }
    }
}

fn sse(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// What a streamed request needs at its end.
pub struct Finish {
    pub app: Arc<App>,
    pub admitted: Admitted,
    pub version: ModelVersion,
    pub req: Arc<ChatRequest>,
    /// Where a complete deterministic answer is cached.
    pub cache_key: Option<String>,
    pub hit: bool,
    /// Time spent waiting for the backend's first event.
    pub backend_ms: f64,
}

/// A stream being passed to the client, metered.
struct Passing {
    finish: Option<Finish>,
    upstream: Option<Upstream>,
    queued: std::collections::VecDeque<Bytes>,
    usage: Option<(u64, u64)>,
    chunks: u64,
    content: String,
    finish_reason: Option<String>,
    head: Option<(Value, Value)>,
    complete: bool,
    first_sent: Option<f64>,
}

impl Passing {
    /// One backend event: the bytes to send (none for a usage chunk the client
    /// did not ask for).
    fn pass(&mut self, data: &str) -> Option<Bytes> {
        let Some(f) = &self.finish else { return None };
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            return Some(sse(data));
        };
        if !chunk.is_object() {
            return Some(sse(data));
        }
        if chunk.get("error").is_some() {
            self.upstream = None;
            return Some(sse(data));
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            let n = |k: &str| u[k].as_u64().unwrap_or(0);
            self.usage = Some((n("prompt_tokens"), n("completion_tokens")));
        }
        if self.head.is_none() {
            self.head = Some((chunk["id"].clone(), chunk["created"].clone()));
        }
        let choice = &chunk["choices"][0];
        if let Some(text) = choice["delta"]["content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            self.chunks += 1;
            self.content.push_str(text);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_string());
        }
        chunk["model"] = Value::String(f.req.model.clone());
        if !f.req.include_usage {
            if chunk["choices"].as_array().is_some_and(Vec::is_empty) {
                return None;
            }
            if let Some(obj) = chunk.as_object_mut() {
                obj.remove("usage");
            }
        }
        Some(sse(&chunk.to_string()))
    }

    /// The usage chunk the client asked for when the backend sent none.
    fn own_usage(&self) -> Option<Bytes> {
        let f = self.finish.as_ref()?;
        if !f.req.include_usage || self.usage.is_some() {
            return None;
        }
        let t = self.tokens(f);
        let (id, created) = self.head.clone().unwrap_or((Value::Null, Value::Null));
        Some(sse(
            &json!({"id": id, "object": "chat.completion.chunk", "created": created,
            "model": f.req.model, "choices": [],
            "usage": {"prompt_tokens": t.prompt, "completion_tokens": t.completion,
                      "total_tokens": t.prompt + t.completion}})
            .to_string(),
        ))
    }

    fn tokens(&self, f: &Finish) -> crate::gateway::pipeline::Tokens {
        let (prompt, completion) = self.usage.unwrap_or((f.req.prompt_estimate(), self.chunks));
        f.req.bounded(prompt, completion, Some(&f.version))
    }

    /// The next bytes for the client; `None` when the stream is over.
    async fn step(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.queued.pop_front() {
                return Some(b);
            }
            let Some(up) = self.upstream.as_mut() else {
                self.settle();
                return None;
            };
            match up.next().await {
                Some(Ok(data)) if data.trim() == "[DONE]" => {
                    self.upstream = None;
                    self.complete = self.finish_reason.is_some();
                    self.queued.extend(self.own_usage());
                    self.queued.push_back(sse("[DONE]"));
                }
                Some(Ok(data)) => {
                    if let Some(b) = self.pass(&data) {
                        return Some(b);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "a backend stream failed part-way");
                    self.upstream = None;
                    let err = json!({"error": {"message": "the model's backend failed part-way through the answer",
                                                "type": "server_error", "param": null, "code": "stream_interrupted"}});
                    self.queued.push_back(sse(&err.to_string()));
                }
                None => self.upstream = None,
            }
        }
    }

    /// Bills what was generated and caches a complete deterministic answer.
    fn settle(&mut self) {
        let Some(f) = self.finish.take() else { return };
        let tokens = self.tokens(&f);
        let overhead = self.first_sent.map_or(0.0, |t| (t - f.backend_ms).max(0.0));
        if let (true, Some(key)) = (self.complete && !f.hit, f.cache_key.clone()) {
            let (id, created) = self.head.clone().unwrap_or((Value::Null, Value::Null));
            let completion = Completion {
                body: json!({"id": id, "object": "chat.completion", "created": created, "model": f.req.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                                 "logprobs": null, "finish_reason": self.finish_reason}],
                    "usage": {"prompt_tokens": tokens.prompt, "completion_tokens": tokens.completion,
                              "total_tokens": tokens.prompt + tokens.completion}}),
                prompt_tokens: tokens.prompt,
                completion_tokens: tokens.completion,
            };
            let cache = f.app.chat_cache.clone();
            tokio::spawn(async move { cache.put(&key, Arc::new(completion)).await });
        }
        f.admitted
            .finish_stream(&f.version, tokens, f.hit, overhead);
    }
}

impl Drop for Passing {
    /// A client that left mid-stream is billed for what was generated.
    fn drop(&mut self) {
        if self.finish.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            self.complete = false;
            self.settle();
        }
    }
}

/// The body of a streamed answer: the backend's events as they come, or a whole
/// answer's replay.
pub fn body(
    finish: Finish,
    upstream: Option<Upstream>,
    whole: Option<&Completion>,
) -> axum::body::Body {
    let queued = whole
        .map(|c| replay(c, &finish.req.model, finish.req.include_usage))
        .unwrap_or_default();
    let usage = whole.map(|c| (c.prompt_tokens, c.completion_tokens));
    let state = Passing {
        finish: Some(finish),
        upstream,
        queued,
        usage,
        chunks: 0,
        content: String::new(),
        finish_reason: None,
        head: None,
        complete: false,
        first_sent: None,
    };
    let stream = futures::stream::unfold(state, move |mut st| async move {
        let next = st.step().await?;
        if st.first_sent.is_none() {
            st.first_sent = st.finish.as_ref().map(|f| f.admitted.elapsed_ms());
        }
        Some((Ok::<_, std::convert::Infallible>(next), st))
    });
    axum::body::Body::from_stream(stream)
}

/// A whole completion as the chunks a stream of it would have sent.
pub fn replay(
    c: &Completion,
    model: &str,
    include_usage: bool,
) -> std::collections::VecDeque<Bytes> {
    let (text, finish) = c.text();
    let (id, created) = (&c.body["id"], &c.body["created"]);
    let chunk = |delta: Value, finish: Option<&str>| {
        sse(&json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        .to_string())
    };
    let mut out = std::collections::VecDeque::new();
    out.push_back(chunk(json!({"role": "assistant", "content": ""}), None));
    if !text.is_empty() {
        out.push_back(chunk(json!({"content": text}), None));
    }
    out.push_back(chunk(json!({}), Some(finish)));
    if include_usage {
        out.push_back(sse(&json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                                     "total_tokens": c.prompt_tokens + c.completion_tokens}})
        .to_string()));
    }
    out.push_back(sse("[DONE]"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_in_either_line_ending() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 9)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((7, 11)));
        assert_eq!(event_end(b"data: a\n"), None);
        assert_eq!(event_data(b"data: {\"x\":1}").as_deref(), Some("{\"x\":1}"));
        assert_eq!(event_data(b": keep-alive"), None);
        assert_eq!(
            event_data(b"event: x\ndata:a\ndata: b").as_deref(),
            Some("a\nb")
        );
    }

    #[test]
    fn a_replay_is_the_whole_answer_in_chunks() {
        let c = Completion {
            body: json!({"id": "c1", "created": 5, "choices": [{"message": {"content": "hi there"}, "finish_reason": "length"}]}),
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let events: Vec<String> = replay(&c, "m", true)
            .into_iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(events.len(), 5);
        assert!(events[1].contains("\"content\":\"hi there\""));
        assert!(events[2].contains("\"finish_reason\":\"length\""));
        assert!(events[3].contains("\"total_tokens\":5"));
        assert_eq!(events[4], "data: [DONE]\n\n");
        assert_eq!(replay(&c, "m", false).len(), 4);
    }
}
