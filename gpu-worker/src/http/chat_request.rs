//! The OpenAI chat completions request, validated field by field: every mistake is
//! a 400 naming the field, and options this engine does not implement are refused
//! rather than silently ignored.

use serde_json::{Map, Value};

use crate::chat::Message;
use crate::error::EmbedError;

/// Most messages in one request.
pub const MAX_MESSAGES: usize = 1024;
/// Most stop strings (OpenAI's limit) and their longest length in bytes.
pub const MAX_STOPS: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;

/// A validated chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// `max_completion_tokens`, else `max_tokens`, else None (the engine's default).
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> EmbedError {
    EmbedError::invalid(param, message)
}

fn number(
    obj: &Map<String, Value>,
    field: &'static str,
    lo: f64,
    hi: f64,
    default: f64,
) -> Result<f32, EmbedError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default as f32),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(x as f32),
            _ => Err(invalid(
                field,
                format!("'{field}' must be between {lo} and {hi}, not {n}"),
            )),
        },
        Some(other) => Err(invalid(
            field,
            format!("'{field}' must be a number, not {other}"),
        )),
    }
}

fn count(obj: &Map<String, Value>, field: &'static str) -> Result<Option<usize>, EmbedError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) | None => Err(invalid(
                field,
                format!("'{field}' must be a positive integer, not {n}"),
            )),
            Some(x) => Ok(Some(usize::try_from(x).unwrap_or(usize::MAX))),
        },
        Some(other) => Err(invalid(
            field,
            format!("'{field}' must be an integer, not {other}"),
        )),
    }
}

fn content(i: usize, value: &Value) -> Result<String, EmbedError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    (Some("text"), _) => {
                        return Err(invalid("messages", format!("messages[{i}].content[{j}] is a text part without a string 'text'")))
                    }
                    (Some(other), _) => {
                        return Err(invalid("messages", format!("messages[{i}].content[{j}] has type '{other}'; this model reads text parts only")))
                    }
                    (None, _) => return Err(invalid("messages", format!("messages[{i}].content[{j}] has no 'type'"))),
                }
            }
            Ok(text)
        }
        Value::Null => Err(invalid(
            "messages",
            format!("messages[{i}].content is required"),
        )),
        _ => Err(invalid(
            "messages",
            format!("messages[{i}].content must be a string or an array of text parts"),
        )),
    }
}

fn messages(value: Option<&Value>) -> Result<Vec<Message>, EmbedError> {
    let items = match value {
        Some(Value::Array(items)) => items,
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
    if items.is_empty() {
        return Err(invalid(
            "messages",
            "'messages' must hold at least one message",
        ));
    }
    if items.len() > MAX_MESSAGES {
        return Err(invalid(
            "messages",
            format!("at most {MAX_MESSAGES} messages per request"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m
                .as_object()
                .ok_or_else(|| invalid("messages", format!("messages[{i}] must be an object")))?;
            let role = match obj.get("role").and_then(Value::as_str) {
                Some("developer") | Some("system") => "system",
                Some("user") => "user",
                Some("assistant") => "assistant",
                Some(other) => {
                    return Err(invalid("messages", format!("messages[{i}].role '{other}' is not supported (system, developer, user or assistant)")))
                }
                None => return Err(invalid("messages", format!("messages[{i}].role is required and must be a string"))),
            };
            if obj.get("tool_calls").is_some_and(|v| !v.is_null()) || obj.get("function_call").is_some_and(|v| !v.is_null()) {
                return Err(invalid("messages", format!("messages[{i}] carries tool calls; this model has no tools")));
            }
            Ok(Message { role: role.to_string(), content: content(i, obj.get("content").unwrap_or(&Value::Null))? })
        })
        .collect()
}

fn stops(value: Option<&Value>) -> Result<Vec<String>, EmbedError> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("stop", "'stop' must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                "stop",
                "'stop' must be a string or an array of strings",
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(invalid("stop", format!("at most {MAX_STOPS} stop strings")));
    }
    if list
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
    {
        return Err(invalid(
            "stop",
            format!("stop strings hold 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok(list)
}

/// Options this engine does not implement: refused unless absent or at their default.
fn refuse_unsupported(obj: &Map<String, Value>) -> Result<(), EmbedError> {
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
    for field in ["presence_penalty", "frequency_penalty"] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_f64() == Some(0.0) => {}
            Some(_) => {
                return Err(invalid(
                    field,
                    format!("'{field}' is not supported by this model; leave it at 0"),
                ))
            }
        }
    }
    let refused = [
        ("logprobs", "log probabilities"),
        ("tools", "tools"),
        ("functions", "functions"),
        ("tool_choice", "tools"),
        ("logit_bias", "logit bias"),
        ("top_logprobs", "log probabilities"),
    ];
    for (field, what) in refused {
        let set = match obj.get(field) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::String(s)) => s != "none",
            Some(_) => true,
        };
        if set {
            return Err(EmbedError::InvalidRequest {
                message: format!("'{field}': {what} are not supported by this model"),
                param: None,
            });
        }
    }
    match obj
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => Ok(()),
        Some(other) => Err(invalid(
            "response_format",
            format!("response_format '{other}' is not supported; only 'text'"),
        )),
    }
}

impl ChatRequest {
    pub fn from_json(value: &Value) -> Result<ChatRequest, EmbedError> {
        let obj = value
            .as_object()
            .ok_or_else(|| EmbedError::InvalidRequest {
                message: "the body must be a JSON object".into(),
                param: None,
            })?;
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() && m.len() <= 256 => m.clone(),
            _ => {
                return Err(invalid(
                    "model",
                    "'model' is required: a string of 1 to 256 characters",
                ))
            }
        };
        let messages = messages(obj.get("messages"))?;
        refuse_unsupported(obj)?;
        let max_tokens = match count(obj, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => count(obj, "max_tokens")?,
        };
        let seed = match obj.get("seed") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Some(u),
                (None, Some(i)) => Some(i as u64),
                _ => return Err(invalid("seed", "'seed' must be an integer")),
            },
            Some(_) => return Err(invalid("seed", "'seed' must be an integer")),
        };
        let stream = super::openai::optional_bool(obj, "stream")?;
        let include_usage = match obj.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) if stream => super::openai::optional_bool(o, "include_usage")?,
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
        if let Some(user) = obj.get("user") {
            if !user.is_string() && !user.is_null() {
                return Err(invalid("user", "'user' must be a string"));
            }
        }
        Ok(ChatRequest {
            model,
            messages,
            max_tokens,
            temperature: number(obj, "temperature", 0.0, 2.0, 1.0)?,
            top_p: number(obj, "top_p", 0.0, 1.0, 1.0)?,
            seed,
            stop: stops(obj.get("stop"))?,
            stream,
            include_usage,
        })
    }

    /// Whether the answer depends only on the request (greedy, or seeded).
    pub fn is_deterministic(&self) -> bool {
        self.temperature == 0.0 || self.seed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, EmbedError> {
        ChatRequest::from_json(&v)
    }

    #[test]
    fn accepts_the_openai_shapes() {
        let r = parse(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}
            ],
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "seed": -3,
            "stop": "\n", "stream": true, "stream_options": {"include_usage": true}, "n": 1,
            "presence_penalty": 0, "response_format": {"type": "text"}, "user": "u"
        }))
        .unwrap();
        assert_eq!(r.messages[0].role, "system");
        assert_eq!(r.messages[1].content, "hi there");
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert!(r.stream && r.include_usage && r.is_deterministic());
        let defaults =
            parse(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})).unwrap();
        assert_eq!(
            (defaults.temperature, defaults.top_p, defaults.max_tokens),
            (1.0, 1.0, None)
        );
        assert!(!defaults.is_deterministic());
    }

    #[test]
    fn refuses_bad_requests_naming_the_field() {
        let user = json!([{"role": "user", "content": "x"}]);
        for (body, param) in [
            (json!({"messages": user}), Some("model")),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": user, "temperature": 3}),
                Some("temperature"),
            ),
            (
                json!({"model": "m", "messages": user, "temperature": "hot"}),
                Some("temperature"),
            ),
            (
                json!({"model": "m", "messages": user, "top_p": 1.5}),
                Some("top_p"),
            ),
            (
                json!({"model": "m", "messages": user, "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": user, "max_tokens": -1}),
                Some("max_tokens"),
            ),
            (
                json!({"model": "m", "messages": user, "max_tokens": 1.5}),
                Some("max_tokens"),
            ),
            (json!({"model": "m", "messages": user, "n": 2}), Some("n")),
            (
                json!({"model": "m", "messages": user, "stop": ["a", "b", "c", "d", "e"]}),
                Some("stop"),
            ),
            (
                json!({"model": "m", "messages": user, "stop": [""]}),
                Some("stop"),
            ),
            (
                json!({"model": "m", "messages": user, "stop": 4}),
                Some("stop"),
            ),
            (
                json!({"model": "m", "messages": user, "seed": "x"}),
                Some("seed"),
            ),
            (
                json!({"model": "m", "messages": user, "stream": "yes"}),
                Some("stream"),
            ),
            (
                json!({"model": "m", "messages": user, "stream_options": {"include_usage": true}}),
                Some("stream_options"),
            ),
            (
                json!({"model": "m", "messages": user, "frequency_penalty": 1}),
                Some("frequency_penalty"),
            ),
            (
                json!({"model": "m", "messages": user, "response_format": {"type": "json_object"}}),
                Some("response_format"),
            ),
            (
                json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}),
                None,
            ),
            (
                json!({"model": "m", "messages": user, "logprobs": true}),
                None,
            ),
            (json!([1, 2]), None),
        ] {
            let err = parse(body.clone()).unwrap_err();
            let class = err.classify();
            assert_eq!(class.status, 400, "{body}");
            assert_eq!(class.param, param, "{body}: {err}");
        }
    }
}
