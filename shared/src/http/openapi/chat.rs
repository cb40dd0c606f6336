//! The chat completions wire format, as the documents describe it. The gateway
//! checks `model`, `messages`, the token caps, `n`, `temperature`, `seed`,
//! `stream` and `stream_options` itself ([`crate::gateway::chat::ChatRequest`])
//! and passes every other field through to the model's backend, which judges
//! it; the completion is the backend's, passed through as it answered.

#![allow(dead_code)] // schema types: they describe bodies read and written as JSON values

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;

/// A chat completions request (OpenAI's). Fields not listed pass through to
/// the backend; the bundled worker refuses options it does not implement
/// (tools, `response_format` other than `text`) with a 400.
#[derive(ToSchema)]
pub struct ChatCompletionRequest {
    /// 1 to 256 characters.
    model: String,
    /// At least one message, each with a `role`.
    #[schema(min_items = 1, max_items = 2048)]
    messages: Vec<ChatMessage>,
    #[schema(minimum = 1, maximum = 1048576)]
    max_completion_tokens: Option<u64>,
    /// Deprecated by OpenAI for `max_completion_tokens`; either caps the answer.
    #[schema(minimum = 1, maximum = 1048576)]
    max_tokens: Option<u64>,
    /// One choice per request.
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u8>,
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    #[schema(minimum = 0, maximum = 1)]
    top_p: Option<f64>,
    /// With `temperature: 0` the answer depends on the request only (and may be cached).
    seed: Option<i64>,
    /// A string or up to 4 strings.
    stop: Option<Value>,
    /// Server-sent events of `chat.completion.chunk` objects, then `data: [DONE]`.
    stream: Option<bool>,
    /// Only with `stream: true`.
    stream_options: Option<StreamOptions>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logit_bias: Option<BTreeMap<String, f64>>,
    logprobs: Option<bool>,
    top_logprobs: Option<u8>,
    response_format: Option<ResponseFormat>,
    /// Function tools, for backends that call them.
    tools: Option<Vec<Tool>>,
    /// `none`, `auto`, `required` or a named function.
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    /// An id of the tenant's end user, at most 256 characters.
    user: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    store: Option<bool>,
}

/// One message: a `role`, and `content` as a string or an array of parts.
#[derive(ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[schema(example = "user")]
    role: String,
    content: Option<Value>,
    name: Option<String>,
    tool_calls: Option<Vec<Value>>,
    tool_call_id: Option<String>,
}

#[derive(ToSchema)]
pub struct StreamOptions {
    /// A last chunk carries the usage (what the request is billed).
    include_usage: Option<bool>,
}

/// `{"type": "text"}`, `{"type": "json_object"}`, or `{"type": "json_schema", "json_schema": {...}}`.
#[derive(ToSchema)]
pub struct ResponseFormat {
    #[schema(rename = "type", example = "text")]
    kind: String,
    json_schema: Option<Value>,
}

/// A function tool.
#[derive(ToSchema)]
pub struct Tool {
    #[schema(rename = "type", example = "function")]
    kind: String,
    function: FunctionDef,
}

#[derive(ToSchema)]
pub struct FunctionDef {
    name: String,
    description: Option<String>,
    /// A JSON Schema of the arguments.
    parameters: Option<Value>,
    strict: Option<bool>,
}

/// A whole chat completion (OpenAI's `chat.completion`), as the backend answered.
#[derive(ToSchema)]
pub struct ChatCompletion {
    id: String,
    #[schema(example = "chat.completion")]
    object: String,
    created: i64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: Option<ChatUsage>,
    system_fingerprint: Option<String>,
}

#[derive(ToSchema)]
pub struct ChatChoice {
    index: u32,
    message: ChatMessage,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    finish_reason: Option<String>,
    logprobs: Option<Value>,
}

#[derive(ToSchema)]
pub struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}
