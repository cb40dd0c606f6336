//! Chat backends: the worker's HTTP API, any OpenAI-compatible upstream (a
//! hosted provider, vLLM, llama.cpp's server) and SageMaker endpoints.
//!
//! Streams have no whole-request timeout: the first event must come within the
//! backend timeout, and each later read within it too. An upstream is reached
//! only under the egress policy (its URL came from an admin) and with its API key
//! read from the named secret: an environment variable in `tenantai dev`, AWS
//! Secrets Manager on AWS (read once, cached a few minutes). The key never
//! reaches a log, an error or the registry; an upstream that refuses it is a 502
//! naming the model only.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::gateway::backend::BackendFailure;
use crate::gateway::chat::{ChatAnswer, ChatRequest, Completion};
use crate::gateway::chat_stream::{response_chunks, Upstream};
use crate::gateway::egress::{Egress, EgressPolicy};
use crate::gateway::models::{BackendKind, ModelVersion};

/// Largest whole answer read from a backend.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// How long a key read from Secrets Manager is used before it is read again.
const KEY_TTL: Duration = Duration::from_secs(300);

fn down(message: impl Into<String>) -> BackendFailure {
    BackendFailure::Down {
        message: message.into(),
        timeout: false,
    }
}

/// Where upstream API keys are read from.
#[derive(Clone)]
pub struct UpstreamKeys {
    secrets_manager: Option<aws_sdk_secretsmanager::Client>,
    cache: moka::future::Cache<String, Arc<str>>,
}

impl UpstreamKeys {
    /// Keys from environment variables (`tenantai dev`).
    pub fn from_env() -> Self {
        UpstreamKeys {
            secrets_manager: None,
            cache: moka::future::Cache::builder()
                .max_capacity(1024)
                .time_to_live(KEY_TTL)
                .build(),
        }
    }

    /// Keys from AWS Secrets Manager: the secret's string, or its `api_key`
    /// field when it is a JSON object.
    pub fn secrets_manager(aws: &aws_config::SdkConfig) -> Self {
        UpstreamKeys {
            secrets_manager: Some(aws_sdk_secretsmanager::Client::new(aws)),
            ..Self::from_env()
        }
    }

    pub async fn get(&self, name: &str) -> Result<Arc<str>, String> {
        if let Some(k) = self.cache.get(name).await {
            return Ok(k);
        }
        let key: String = match &self.secrets_manager {
            None => std::env::var(name)
                .map_err(|_| format!("the environment variable {name} is not set"))?,
            Some(sm) => {
                let out = sm
                    .get_secret_value()
                    .secret_id(name)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "secret {name}: {}",
                            aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                        )
                    })?;
                let text = out
                    .secret_string()
                    .ok_or_else(|| format!("secret {name} holds no string"))?;
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(v) if v.is_object() => v["api_key"]
                        .as_str()
                        .ok_or_else(|| {
                            format!("secret {name} is JSON without an 'api_key' string")
                        })?
                        .to_string(),
                    _ => text.trim().to_string(),
                }
            }
        };
        if key.is_empty() {
            return Err(format!("secret {name} is empty"));
        }
        let key: Arc<str> = key.into();
        self.cache.insert(name.to_string(), key.clone()).await;
        Ok(key)
    }
}

/// The chat backends' HTTP clients.
#[derive(Clone)]
pub struct ChatBackends {
    worker: reqwest::Client,
    upstream: Egress,
    keys: UpstreamKeys,
    timeout: Duration,
}

impl ChatBackends {
    pub fn new(timeout: Duration, egress: &EgressPolicy, keys: UpstreamKeys) -> ApiResult<Self> {
        let worker =
            crate::gateway::backend::worker_http(reqwest::Client::builder().read_timeout(timeout))?;
        let policy = EgressPolicy {
            timeout: Duration::from_secs(3600),
            ..egress.clone()
        };
        let upstream = Egress::streaming(policy, timeout)
            .map_err(|e| ApiError::Internal(format!("cannot build the upstream client: {e}")))?;
        Ok(ChatBackends {
            worker,
            upstream,
            keys,
            timeout,
        })
    }

    /// Asks `version`'s backend for the request's completion.
    pub async fn complete(
        &self,
        app: &App,
        version: &ModelVersion,
        req: &ChatRequest,
    ) -> Result<ChatAnswer, BackendFailure> {
        let builder = match version.backend {
            BackendKind::Worker => {
                let url = format!(
                    "{}/v1/chat/completions",
                    version.endpoint.trim_end_matches('/')
                );
                self.worker.post(url).body(req.backend_body(version, false))
            }
            BackendKind::Openai => self.upstream_request(version, req).await?,
            BackendKind::Sagemaker => return sagemaker(app, version, req).await,
        };
        let sent = builder.header("content-type", "application/json").send();
        let resp = match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => {
                return Err(BackendFailure::Down {
                    message: "timed out".into(),
                    timeout: true,
                })
            }
            Ok(Err(e)) => {
                return Err(BackendFailure::Down {
                    timeout: e.is_timeout(),
                    message: crate::gateway::egress::describe(&e),
                })
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) && req.stream {
            return match tokio::time::timeout(self.timeout, Upstream::open(response_chunks(resp)))
                .await
            {
                Ok(up) => up.map(ChatAnswer::Stream),
                Err(_) => Err(BackendFailure::Down {
                    message: "no first event in time".into(),
                    timeout: true,
                }),
            };
        }
        let bytes = crate::gateway::egress::read_limited(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| down(format!("the answer: {e}")))?;
        judge(status, &bytes, version, req)
    }

    async fn upstream_request(
        &self,
        version: &ModelVersion,
        req: &ChatRequest,
    ) -> Result<reqwest::RequestBuilder, BackendFailure> {
        let refused = |m: String| BackendFailure::Rejected(ApiError::BadGateway(m));
        let url = format!(
            "{}/chat/completions",
            version.endpoint.trim_end_matches('/')
        );
        let builder = self.upstream.post(&url).map_err(|e| {
            tracing::warn!(model = %version.model, error = %e, "upstream refused by the egress policy");
            refused(format!("the upstream of model '{}' is not reachable from here", version.model))
        })?;
        let builder = builder.body(req.backend_body(version, true));
        let Some(secret) = &version.api_key_secret else {
            return Ok(builder);
        };
        match self.keys.get(secret).await {
            Ok(key) => Ok(builder.bearer_auth(&*key)),
            Err(e) => {
                tracing::error!(model = %version.model, error = %e, "no API key for the upstream");
                Err(refused(format!(
                    "the upstream API key of model '{}' is not configured",
                    version.model
                )))
            }
        }
    }
}

/// A whole answer judged: a completion, the client's error, or the backend's.
fn judge(
    status: u16,
    bytes: &[u8],
    version: &ModelVersion,
    req: &ChatRequest,
) -> Result<ChatAnswer, BackendFailure> {
    match status {
        200..=299 => {}
        401 | 403 => {
            tracing::error!(model = %version.model, status, "the upstream refused our credentials");
            return Err(BackendFailure::Rejected(ApiError::BadGateway(format!(
                "the upstream provider of model '{}' refused our credentials ({status})",
                version.model
            ))));
        }
        408 | 429 => return Err(down(format!("status {status}"))),
        400..=499 => {
            let message = serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| {
                    v["error"]["message"]
                        .as_str()
                        .map(|m| m.chars().take(500).collect::<String>())
                })
                .unwrap_or_else(|| format!("the model rejected the request ({status})"));
            return Err(BackendFailure::Rejected(ApiError::invalid(message)));
        }
        _ => return Err(down(format!("status {status}"))),
    }
    let mut body: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| down(format!("unreadable answer: {e}")))?;
    if !body["choices"].is_array() {
        return Err(down("the answer has no choices"));
    }
    let usage = &body["usage"];
    let prompt = usage["prompt_tokens"]
        .as_u64()
        .unwrap_or_else(|| req.prompt_estimate());
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    body["model"] = serde_json::Value::String(req.model.clone());
    Ok(ChatAnswer::Whole(Arc::new(Completion {
        body,
        prompt_tokens: prompt,
        completion_tokens: completion,
    })))
}

/// SageMaker: InvokeEndpoint for a whole answer, InvokeEndpointWithResponseStream
/// for a stream (the container's server-sent events arrive as payload parts).
async fn sagemaker(
    app: &App,
    version: &ModelVersion,
    req: &ChatRequest,
) -> Result<ChatAnswer, BackendFailure> {
    let Some(sm) = &app.sagemaker else {
        return Err(down(
            "this deployment has no AWS configuration for SageMaker",
        ));
    };
    if req.stream {
        return match sm
            .invoke_stream(&version.endpoint, req.backend_body(version, false))
            .await
        {
            Ok(chunks) => Upstream::open(chunks).await.map(ChatAnswer::Stream),
            Err(Ok((status, bytes))) => judge(status, &bytes, version, req),
            Err(Err(failure)) => Err(failure),
        };
    }
    let mut whole = req.clone();
    whole.stream = false;
    let (status, bytes) = sm
        .invoke(&version.endpoint, whole.backend_body(version, false))
        .await?;
    judge(status, &bytes, version, req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ChatRequest {
        ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap()
    }

    #[test]
    fn upstream_answers_are_judged_without_echoing_them() {
        let v = ModelVersion::live_worker("m", "1", "http://w", 1);
        let r = request();
        match judge(
            401,
            br#"{"error":{"message":"Incorrect API key provided: sk-secret"}}"#,
            &v,
            &r,
        ) {
            Err(BackendFailure::Rejected(e)) => {
                assert_eq!(e.status().as_u16(), 502);
                assert!(!e.to_string().contains("sk-secret"), "{e}");
            }
            _ => panic!("a refused key is a 502"),
        }
        assert!(matches!(
            judge(429, b"", &v, &r),
            Err(BackendFailure::Down { .. })
        ));
        assert!(matches!(
            judge(503, b"", &v, &r),
            Err(BackendFailure::Down { .. })
        ));
        match judge(400, br#"{"error":{"message":"bad top_k"}}"#, &v, &r) {
            Err(BackendFailure::Rejected(e)) => assert_eq!(e.to_string(), "bad top_k"),
            _ => panic!("a 400 is the client's"),
        }
        assert!(matches!(
            judge(200, b"{}", &v, &r),
            Err(BackendFailure::Down { .. })
        ));
        let ok = br#"{"id":"x","choices":[{"message":{"content":"yo"}}],"model":"upstream-name","usage":{"prompt_tokens":4,"completion_tokens":1}}"#;
        match judge(200, ok, &v, &r) {
            Ok(ChatAnswer::Whole(c)) => {
                assert_eq!((c.prompt_tokens, c.completion_tokens), (4, 1));
                assert_eq!(
                    c.body["model"], "m",
                    "the client sees the model it asked for"
                );
            }
            _ => panic!("a completion"),
        }
    }
}
