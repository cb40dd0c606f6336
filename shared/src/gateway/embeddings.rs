//! The OpenAI embeddings request and response, validated and canonicalised.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::gateway::backend::BackendFailure;
use crate::gateway::models::{BackendKind, ModelVersion};

/// Most inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;
/// Longest single string input, in bytes (well above any model's token limit).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// The most tokens one input is billed for: the longest sequence of the
/// BERT-family models served (512 positions; the worker's limit is its model's
/// `max_seq_length`, at most this).
pub const MAX_BILLED_TOKENS_PER_INPUT: u64 = 512;

/// The special tokens the worker adds to every input, token ids included
/// (`[CLS]` and `[SEP]`; gpu-worker/src/tokenize.rs).
pub const SPECIAL_TOKENS_PER_INPUT: u64 = 2;

/// The counting rule of the worker (gpu-worker/src/tokenize.rs), as a bound:
/// an input of at most `raw` tokens before the special tokens is billed at most
/// `raw + 2`, and never more than [`MAX_BILLED_TOKENS_PER_INPUT`] (longer inputs
/// are refused, or truncated to the model's limit with `truncate`). The one
/// place the gateway counts tokens a request may be billed for.
pub fn billed_tokens_bound(raw: u64) -> u64 {
    raw.saturating_add(SPECIAL_TOKENS_PER_INPUT)
        .min(MAX_BILLED_TOKENS_PER_INPUT)
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// The inputs: strings, or token-id arrays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// An embeddings request (OpenAI's); `dimensions` other than unset is refused.
#[derive(Clone, Debug, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Input,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    #[serde(default)]
    pub user: Option<String>,
    /// Not supported: the served models have one size, and a request that
    /// chooses one is refused (400).
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// Cut inputs at the model's token limit instead of refusing them.
    #[serde(default)]
    pub truncate: bool,
}

impl EmbeddingRequest {
    /// Parses and validates a request body; every failure is a 400 that says why.
    pub fn parse(body: &[u8], max_inputs: usize) -> ApiResult<Self> {
        crate::limits::check_json_depth(body)?;
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        if value.get("input").is_none() {
            return Err(ApiError::invalid_param(
                "input",
                "'input' is a required property",
            ));
        }
        if !value.get("model").is_some_and(Value::is_string) {
            return Err(ApiError::invalid_param(
                "model",
                "'model' is required and must be a string",
            ));
        }
        let req: EmbeddingRequest = serde_json::from_value(value).map_err(|e| {
            ApiError::invalid_param(
                "input",
                format!("invalid request: {e}; 'input' must be a string, an array of strings, an array of token ids or an array of token-id arrays"),
            )
        })?;
        req.validate(max_inputs)?;
        Ok(req)
    }

    fn validate(&self, max_inputs: usize) -> ApiResult<()> {
        let limit = max_inputs.min(MAX_INPUTS);
        let n = self.len();
        if n == 0 {
            return Err(ApiError::invalid_param(
                "input",
                "'input' must not be empty",
            ));
        }
        if n > limit {
            return Err(ApiError::invalid_param(
                "input",
                format!("too many inputs: {n}; at most {limit} per request"),
            ));
        }
        let empty = match &self.input {
            Input::Text(s) => s.is_empty(),
            Input::Texts(v) => v.iter().any(String::is_empty),
            Input::Tokens(_) => false,
            Input::TokenBatches(v) => v.iter().any(Vec::is_empty),
        };
        if empty {
            return Err(ApiError::invalid_param(
                "input",
                "inputs must not be empty strings or empty token arrays",
            ));
        }
        let too_long = match &self.input {
            Input::Text(s) => s.len() > MAX_INPUT_BYTES,
            Input::Texts(v) => v.iter().any(|s| s.len() > MAX_INPUT_BYTES),
            _ => false,
        };
        if too_long {
            return Err(ApiError::invalid_param(
                "input",
                format!("an input exceeds {MAX_INPUT_BYTES} bytes"),
            ));
        }
        if self.user.as_ref().is_some_and(|u| u.len() > 256) {
            return Err(ApiError::invalid_param(
                "user",
                "'user' holds at most 256 characters",
            ));
        }
        if self.model.is_empty() || self.model.len() > 128 {
            return Err(ApiError::invalid_param(
                "model",
                "'model' holds 1 to 128 characters",
            ));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        match &self.input {
            Input::Text(_) | Input::Tokens(_) => 1,
            Input::Texts(v) => v.len(),
            Input::TokenBatches(v) => v.len(),
        }
    }

    /// A cautious token estimate for the rate limiter, before the model counts:
    /// about 4 bytes a token for text; token ids count as [`billed_tokens_bound`].
    pub fn estimate_tokens(&self) -> u64 {
        let text = |s: &String| billed_tokens_bound(len_u64(s.len()) / 4).min(258);
        match &self.input {
            Input::Text(s) => text(s),
            Input::Texts(v) => v.iter().map(text).sum(),
            Input::Tokens(t) => billed_tokens_bound(len_u64(t.len())),
            Input::TokenBatches(v) => v
                .iter()
                .map(|t| billed_tokens_bound(len_u64(t.len())))
                .sum(),
        }
    }

    /// The most tokens the request can be billed for, by construction: each
    /// input at most [`billed_tokens_bound`] of its length (a word-piece
    /// tokenizer makes at most one token per byte of text; token ids are one
    /// each). Billing never exceeds it (see [`EmbeddingRequest::billable`]), so
    /// a budget reservation of this many tokens bounds the bill.
    pub fn max_tokens(&self) -> u64 {
        match &self.input {
            Input::Text(s) => billed_tokens_bound(len_u64(s.len())),
            Input::Texts(v) => v
                .iter()
                .map(|s| billed_tokens_bound(len_u64(s.len())))
                .sum(),
            Input::Tokens(t) => billed_tokens_bound(len_u64(t.len())),
            Input::TokenBatches(v) => v
                .iter()
                .map(|t| billed_tokens_bound(len_u64(t.len())))
                .sum(),
        }
    }

    /// The tokens to bill for a backend's count: the count, held to
    /// [`EmbeddingRequest::max_tokens`] (a backend claiming more is logged and
    /// billed the bound, so no bill passes what the budget gate reserved).
    pub fn billable(&self, reported: u64) -> u64 {
        let bound = self.max_tokens();
        if reported > bound {
            tracing::error!(
                reported,
                bound,
                "a backend reported more tokens than the request can hold; billing the bound"
            );
        }
        reported.min(bound)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hash of what determines the vectors (inputs and truncation; not the
    /// encoding, `user` or the model name, which the cache key holds apart).
    pub fn canonical_hash(&self) -> String {
        let canonical = json!({"input": &self.input, "truncate": self.truncate});
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// The embeddings endpoint's parts of the request pipeline.
#[async_trait::async_trait]
impl crate::gateway::pipeline::Endpoint for EmbeddingRequest {
    type Answer = std::sync::Arc<Embeddings>;
    const KIND: crate::gateway::models::ModelKind = crate::gateway::models::ModelKind::Embedding;

    fn model(&self) -> &str {
        &self.model
    }

    fn estimate_tokens(&self) -> u64 {
        EmbeddingRequest::estimate_tokens(self)
    }

    /// The most tokens the request can be billed for, at the version's price.
    fn max_cost(&self, version: &ModelVersion) -> Result<u64, crate::billing::amounts::Overflow> {
        crate::billing::amounts::cost_micros(self.max_tokens(), version.price_per_1k_tokens_micros)
    }

    fn cache_hash(&self) -> Option<String> {
        Some(self.canonical_hash())
    }

    async fn cached(&self, app: &App, key: &str) -> Option<Self::Answer> {
        app.cache.get(key).await
    }

    async fn store(&self, app: &App, key: &str, answer: &Self::Answer) {
        app.cache.put(key, answer.clone()).await;
    }

    async fn call(
        &self,
        app: &App,
        version: &ModelVersion,
    ) -> Result<Self::Answer, BackendFailure> {
        let e = match version.backend {
            BackendKind::Worker => app.worker.embed(version, self).await,
            BackendKind::Sagemaker => match &app.sagemaker {
                Some(sm) => sm.embed(version, self).await,
                None => Err(BackendFailure::Down {
                    message: "this deployment has no AWS configuration for SageMaker".into(),
                    timeout: false,
                }),
            },
            // Registration keeps `openai` backends to chat models.
            BackendKind::Openai => Err(BackendFailure::Down {
                message: "an `openai` backend serves no embeddings".into(),
                timeout: false,
            }),
        };
        e.map(std::sync::Arc::new)
    }

    /// Tokens held to the request's bound, so billing never passes the reservation.
    fn tokens(&self, answer: &Self::Answer) -> crate::gateway::pipeline::Tokens {
        crate::gateway::pipeline::Tokens {
            prompt: self.billable(answer.prompt_tokens),
            completion: 0,
            inputs: u64::try_from(self.len()).unwrap_or(u64::MAX),
        }
    }
}

/// Vectors and token count, as the backend computed them.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
}

/// Little-endian f32 bytes in base64, as OpenAI's `encoding_format: base64`.
pub fn encode_base64(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    STANDARD.encode(bytes)
}

pub fn decode_base64(s: &str) -> Option<Vec<f32>> {
    let bytes = STANDARD.decode(s).ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// The OpenAI response body, for the tokens billed.
/// The embeddings answer (`object: "list"`).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// One input's vector, in the order of the inputs.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Embedding {
    #[schema(example = "embedding")]
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

/// Floats, or (`encoding_format: base64`) their little-endian f32 bytes in base64.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

pub fn response_body(
    model: &str,
    vectors: &[Vec<f32>],
    prompt_tokens: u64,
    format: EncodingFormat,
) -> EmbeddingList {
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => Vector::Float(v.clone()),
                EncodingFormat::Base64 => Vector::Base64(encode_base64(v)),
            },
        })
        .collect();
    EmbeddingList {
        object: "list",
        data,
        model: model.to_string(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_four_input_shapes() {
        for (body, n) in [
            (r#"{"model":"m","input":"hi"}"#, 1),
            (r#"{"model":"m","input":["a","b"]}"#, 2),
            (r#"{"model":"m","input":[1,2,3]}"#, 1),
            (
                r#"{"model":"m","input":[[1],[2,3]],"encoding_format":"base64"}"#,
                2,
            ),
        ] {
            assert_eq!(
                EmbeddingRequest::parse(body.as_bytes(), 2048)
                    .unwrap()
                    .len(),
                n,
                "{body}"
            );
        }
    }

    #[test]
    fn refuses_bad_requests_with_400s() {
        for body in [
            "not json",
            "[]",
            r#"{"input":"x"}"#,
            r#"{"model":"m"}"#,
            r#"{"model":"m","input":""}"#,
            r#"{"model":"m","input":[]}"#,
            r#"{"model":"m","input":["a",""]}"#,
            r#"{"model":"m","input":[[]]}"#,
            r#"{"model":"m","input":42}"#,
            r#"{"model":"m","input":[1,"a"]}"#,
            r#"{"model":7,"input":"x"}"#,
            r#"{"model":"m","input":"x","encoding_format":"hex"}"#,
        ] {
            let err = EmbeddingRequest::parse(body.as_bytes(), 2048).unwrap_err();
            assert_eq!(err.status(), 400, "{body}");
        }
        let many = format!(
            r#"{{"model":"m","input":{}}}"#,
            serde_json::to_string(&vec!["a"; 65]).unwrap()
        );
        assert!(EmbeddingRequest::parse(many.as_bytes(), 64).is_err());
        assert!(EmbeddingRequest::parse(many.as_bytes(), 65).is_ok());
    }

    #[test]
    fn base64_round_trip_and_canonical_hash() {
        let v = vec![0.25f32, -1.0, 3.5];
        assert_eq!(decode_base64(&encode_base64(&v)).unwrap(), v);
        let a = EmbeddingRequest::parse(br#"{"model":"m","input":["a"],"user":"u1"}"#, 10).unwrap();
        let b = EmbeddingRequest::parse(
            br#"{"model":"m","input":["a"],"encoding_format":"base64"}"#,
            10,
        )
        .unwrap();
        let c = EmbeddingRequest::parse(br#"{"model":"m","input":["b"]}"#, 10).unwrap();
        assert_eq!(a.canonical_hash(), b.canonical_hash());
        assert_ne!(a.canonical_hash(), c.canonical_hash());
    }
}
