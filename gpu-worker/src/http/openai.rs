//! The OpenAI embeddings request and response (`POST /v1/embeddings`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::engine::Embedded;
use crate::error::EmbedError;
use crate::tokenize::RawInput;

/// `float` (JSON numbers) or `base64` (little-endian f32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// A validated embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    pub inputs: Vec<RawInput>,
    pub model: Option<String>,
    pub encoding_format: EncodingFormat,
    /// Cut inputs at the token limit instead of refusing them (an extension).
    pub truncate: bool,
}

fn invalid(param: &'static str, message: impl Into<String>) -> EmbedError {
    EmbedError::invalid(param, message)
}

/// Parses a JSON body; every mistake is a 400 naming the field.
pub fn parse_body(body: &[u8]) -> Result<Value, EmbedError> {
    serde_json::from_slice(body).map_err(|e| EmbedError::InvalidRequest {
        message: format!("the body is not valid JSON: {e}"),
        param: None,
    })
}

impl EmbeddingRequest {
    /// Validates an OpenAI request object against this model's `dimension` and
    /// the per-request input limit.
    pub fn from_json(
        value: &Value,
        dimension: usize,
        max_inputs: usize,
    ) -> Result<Self, EmbedError> {
        let obj = value
            .as_object()
            .ok_or_else(|| EmbedError::InvalidRequest {
                message: "the body must be a JSON object".into(),
                param: None,
            })?;
        let input = obj
            .get("input")
            .ok_or_else(|| invalid("input", "'input' is a required property"))?;
        let inputs = parse_inputs(input, max_inputs)?;
        let model = match obj.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) => Some(m.clone()),
            Some(_) => return Err(invalid("model", "'model' must be a string")),
        };
        let encoding_format = match obj.get("encoding_format") {
            None | Some(Value::Null) => EncodingFormat::Float,
            Some(Value::String(f)) if f == "float" => EncodingFormat::Float,
            Some(Value::String(f)) if f == "base64" => EncodingFormat::Base64,
            Some(other) => {
                return Err(invalid(
                    "encoding_format",
                    format!("'encoding_format' must be \"float\" or \"base64\", not {other}"),
                ))
            }
        };
        match obj.get("dimensions") {
            None | Some(Value::Null) => {}
            Some(d) if d.as_u64() == Some(dimension as u64) => {}
            Some(d) => {
                return Err(invalid(
                    "dimensions",
                    format!("this model's vectors have {dimension} dimensions; 'dimensions' {d} is not supported"),
                ))
            }
        }
        let truncate = optional_bool(obj, "truncate")?;
        if let Some(user) = obj.get("user") {
            if !user.is_string() && !user.is_null() {
                return Err(invalid("user", "'user' must be a string"));
            }
        }
        Ok(EmbeddingRequest {
            inputs,
            model,
            encoding_format,
            truncate,
        })
    }
}

/// Reads an optional boolean field (absent = false).
pub fn optional_bool(obj: &Map<String, Value>, field: &'static str) -> Result<bool, EmbedError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(field, format!("'{field}' must be a boolean"))),
    }
}

/// `input`: a string, an array of strings, an array of token ids, or an array of
/// token-id arrays; never empty, no empty element, at most `max_inputs` inputs.
pub fn parse_inputs(input: &Value, max_inputs: usize) -> Result<Vec<RawInput>, EmbedError> {
    let inputs = match input {
        Value::String(s) => vec![text(0, s)?],
        Value::Array(items) if items.is_empty() => {
            return Err(invalid("input", "'input' must not be an empty array"))
        }
        Value::Array(items) if items[0].is_number() => vec![RawInput::Tokens(token_ids(0, items)?)],
        Value::Array(items) => {
            if items.len() > max_inputs {
                return Err(too_many(items.len(), max_inputs));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => text(i, s),
                    Value::Array(ids) => Ok(RawInput::Tokens(token_ids(i, ids)?)),
                    _ => Err(invalid(
                        "input",
                        format!("input[{i}] must be a string or an array of token ids"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => {
            return Err(invalid(
                "input",
                "'input' must be a string, an array of strings, an array of token ids or an array of token-id arrays",
            ))
        }
    };
    Ok(inputs)
}

fn too_many(count: usize, max: usize) -> EmbedError {
    invalid(
        "input",
        format!("too many inputs: {count}; at most {max} inputs per request"),
    )
}

fn text(index: usize, s: &str) -> Result<RawInput, EmbedError> {
    if s.is_empty() {
        return Err(invalid(
            "input",
            format!("input[{index}] is an empty string"),
        ));
    }
    Ok(RawInput::Text(s.to_string()))
}

fn token_ids(index: usize, items: &[Value]) -> Result<Vec<u32>, EmbedError> {
    if items.is_empty() {
        return Err(invalid(
            "input",
            format!("input[{index}] is an empty token array"),
        ));
    }
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    invalid("input", format!("input[{index}] holds {v}, not a token id"))
                })
        })
        .collect()
}

/// The OpenAI response body.
pub fn response(embedded: &Embedded, model: &str, format: EncodingFormat) -> Value {
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match format {
                EncodingFormat::Float => json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = embedded.tokens.iter().sum();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<EmbeddingRequest, EmbedError> {
        EmbeddingRequest::from_json(&v, 384, 4)
    }

    #[test]
    fn accepts_every_input_form() {
        let one = parse(json!({"input": "hi"})).unwrap();
        assert_eq!(one.inputs, vec![RawInput::Text("hi".into())]);
        let many =
            parse(json!({"input": ["a", "b"], "encoding_format": "base64", "model": "m"})).unwrap();
        assert_eq!(many.inputs.len(), 2);
        assert_eq!(many.encoding_format, EncodingFormat::Base64);
        let ids = parse(json!({"input": [1, 2, 3]})).unwrap();
        assert_eq!(ids.inputs, vec![RawInput::Tokens(vec![1, 2, 3])]);
        let lists =
            parse(json!({"input": [[1], [2, 3]], "truncate": true, "dimensions": 384})).unwrap();
        assert_eq!(lists.inputs.len(), 2);
        assert!(lists.truncate);
    }

    #[test]
    fn refuses_bad_inputs_with_the_param_named() {
        let cases = [
            json!([]),
            json!({}),
            json!({"input": ""}),
            json!({"input": []}),
            json!({"input": ["ok", ""]}),
            json!({"input": 5}),
            json!({"input": ["a", 5]}),
            json!({"input": [1, -2]}),
            json!({"input": [[]]}),
            json!({"input": ["a", "b", "c", "d", "e"]}),
            json!({"input": "x", "encoding_format": "int8"}),
            json!({"input": "x", "dimensions": 128}),
            json!({"input": "x", "truncate": "yes"}),
            json!({"input": "x", "model": 3}),
        ];
        for case in cases {
            let err = parse(case.clone()).unwrap_err();
            assert_eq!(err.classify().status, 400, "{case}");
        }
        let err = parse(json!({"input": ["a", "b", "c", "d", "e"]})).unwrap_err();
        assert!(err.to_string().contains("at most 4"));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let e = Embedded {
            vectors: vec![vec![1.0, -0.5]],
            tokens: vec![3],
        };
        let body = response(&e, "m", EncodingFormat::Base64);
        let b = STANDARD
            .decode(body["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(b, [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat());
        assert_eq!(body["usage"]["prompt_tokens"], 3);
    }
}
