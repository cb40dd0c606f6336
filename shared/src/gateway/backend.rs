//! Backends that compute embeddings (chat calls are in `upstream`): the worker's HTTP API (`gpu-worker serve`)
//! and SageMaker endpoints (InvokeEndpoint; InvokeEndpointWithResponseStream for chat streams). Both speak the OpenAI request shape
//! (the worker's container answers it on /invocations too), so one request body
//! and one answer parser serve both.

use std::time::Duration;

use aws_sdk_sagemakerruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sagemakerruntime::primitives::Blob;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::gateway::chat_stream::{ChunkError, Chunks};
use crate::gateway::embeddings::{decode_base64, EmbeddingRequest, Embeddings};
use crate::gateway::models::ModelVersion;

/// Installs rustls' ring crypto provider for this process (idempotent); every
/// HTTPS client of the process (reqwest, JWKS fetches) uses it.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a backend call did not produce vectors.
#[derive(Debug)]
pub enum BackendFailure {
    /// The backend judged the input (a 4xx): the client's error, not the backend's.
    Rejected(ApiError),
    /// The backend is down, overloaded, slow or answered nonsense.
    Down { message: String, timeout: bool },
}

fn down(message: impl Into<String>) -> BackendFailure {
    BackendFailure::Down {
        message: message.into(),
        timeout: false,
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Vector>,
    usage: Usage,
}

#[derive(Deserialize)]
struct Vector {
    index: usize,
    embedding: String,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
}

/// The body both backends take: the OpenAI request, vectors as base64.
fn request_body(version: &ModelVersion, req: &EmbeddingRequest) -> Vec<u8> {
    json!({
        "model": version.model,
        "input": req.input,
        "encoding_format": "base64",
        "truncate": req.truncate,
    })
    .to_string()
    .into_bytes()
}

/// Judges a backend's answer: a 4xx is the client's error (with the backend's
/// message, e.g. a token limit), anything else that is not vectors is the backend's.
fn parse_answer(
    status: u16,
    bytes: &[u8],
    req: &EmbeddingRequest,
) -> Result<Embeddings, BackendFailure> {
    if (400..500).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("the model rejected the input ({status})"));
        return Err(BackendFailure::Rejected(ApiError::invalid_param(
            "input", message,
        )));
    }
    if !(200..300).contains(&status) {
        return Err(down(format!("status {status}")));
    }
    let answer: Answer =
        serde_json::from_slice(bytes).map_err(|e| down(format!("unreadable answer: {e}")))?;
    let mut vectors = vec![Vec::new(); answer.data.len()];
    for d in answer.data {
        let v = decode_base64(&d.embedding).ok_or_else(|| down("malformed base64 vector"))?;
        match vectors.get_mut(d.index) {
            Some(slot) => *slot = v,
            None => return Err(down("vector index out of range")),
        }
    }
    if vectors.len() != req.len() || vectors.iter().any(Vec::is_empty) {
        return Err(down(format!(
            "expected {} vectors, got {}",
            req.len(),
            vectors.len()
        )));
    }
    Ok(Embeddings {
        vectors,
        prompt_tokens: answer.usage.prompt_tokens,
    })
}

/// A client for workers on the private network: pooled keep-alive connections,
/// a short connect timeout, no Nagle delay; `builder` adds the read limits.
pub fn worker_http(builder: reqwest::ClientBuilder) -> ApiResult<reqwest::Client> {
    install_crypto();
    builder
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ApiError::Internal(format!("cannot build the HTTP client: {e}")))
}

/// The worker's HTTP API, called with pooled keep-alive connections and a timeout.
#[derive(Clone)]
pub struct WorkerClient {
    http: reqwest::Client,
}

impl WorkerClient {
    pub fn new(timeout: Duration) -> ApiResult<Self> {
        install_crypto();
        let http = worker_http(reqwest::Client::builder().timeout(timeout))?;
        Ok(WorkerClient { http })
    }

    /// Embeds the request's inputs with the model version's worker.
    pub async fn embed(
        &self,
        version: &ModelVersion,
        req: &EmbeddingRequest,
    ) -> Result<Embeddings, BackendFailure> {
        let url = format!("{}/v1/embeddings", version.endpoint.trim_end_matches('/'));
        let failed = |e: reqwest::Error| BackendFailure::Down {
            timeout: e.is_timeout(),
            message: e.to_string(),
        };
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(request_body(version, req))
            .send()
            .await
            .map_err(failed)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(failed)?;
        parse_answer(status, &bytes, req)
    }
}

/// SageMaker endpoints through the runtime API (InvokeEndpoint); the endpoint
/// name comes from the model registry.
#[derive(Clone, Debug)]
pub struct SagemakerClient {
    client: aws_sdk_sagemakerruntime::Client,
}

impl SagemakerClient {
    pub fn new(config: &aws_config::SdkConfig, timeout: Duration) -> Self {
        let timeouts = aws_sdk_sagemakerruntime::config::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build();
        let conf = aws_sdk_sagemakerruntime::config::Builder::from(config)
            .timeout_config(timeouts)
            .build();
        SagemakerClient {
            client: aws_sdk_sagemakerruntime::Client::from_conf(conf),
        }
    }

    pub async fn embed(
        &self,
        version: &ModelVersion,
        req: &EmbeddingRequest,
    ) -> Result<Embeddings, BackendFailure> {
        let (status, bytes) = self
            .invoke(&version.endpoint, request_body(version, req))
            .await?;
        parse_answer(status, &bytes, req)
    }

    /// Invokes the endpoint with a JSON body: the container's answer with its
    /// status (its own 4xx included), or why none came.
    pub async fn invoke(
        &self,
        endpoint: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), BackendFailure> {
        let result = self
            .client
            .invoke_endpoint()
            .endpoint_name(endpoint)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body))
            .send()
            .await;
        match result {
            Ok(out) => Ok((200, out.body.map(Blob::into_inner).unwrap_or_default())),
            Err(e) => {
                let model_error = e.as_service_error().and_then(|s| match s {
                    aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError::ModelError(m) => Some(m.clone()),
                    _ => None,
                });
                refusal(e, model_error)
            }
        }
    }

    /// Invokes the endpoint with InvokeEndpointWithResponseStream: the payload
    /// parts as they arrive, or the container's own refusal (its status and body)
    /// as `Err(Ok(..))`, or why nothing came as `Err(Err(..))`.
    pub async fn invoke_stream(
        &self,
        endpoint: &str,
        body: Vec<u8>,
    ) -> Result<Chunks, Result<(u16, Vec<u8>), BackendFailure>> {
        use aws_sdk_sagemakerruntime::operation::invoke_endpoint_with_response_stream::InvokeEndpointWithResponseStreamError as StreamError;
        let result = self
            .client
            .invoke_endpoint_with_response_stream()
            .endpoint_name(endpoint)
            .content_type("application/json")
            .accept("text/event-stream")
            .body(Blob::new(body))
            .send()
            .await;
        match result {
            Ok(out) => Ok(payload_parts(out.body)),
            Err(e) => {
                let model_error = e.as_service_error().and_then(|s| match s {
                    StreamError::ModelError(m) => Some(m.clone()),
                    _ => None,
                });
                match refusal(e, model_error) {
                    Ok(answer) => Err(Ok(answer)),
                    Err(down) => Err(Err(down)),
                }
            }
        }
    }
}

/// A failed invocation: the container's own answer (`Ok`: its status and body,
/// for the caller to judge) or a failed backend.
fn refusal<E>(
    e: SdkError<E, aws_sdk_sagemakerruntime::config::http::HttpResponse>,
    model_error: Option<aws_sdk_sagemakerruntime::types::error::ModelError>,
) -> Result<(u16, Vec<u8>), BackendFailure>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let SdkError::TimeoutError(_) = e {
        return Err(BackendFailure::Down {
            message: "timed out".into(),
            timeout: true,
        });
    }
    // The container's own 4xx arrives as a ModelError carrying its status and body.
    if let Some(m) = model_error {
        let status = m.original_status_code().unwrap_or(500) as u16;
        let body = m.original_message().unwrap_or_default().as_bytes().to_vec();
        return Ok((status, body));
    }
    // A container answering the runtime path itself (the worker) sends its
    // 4xx as is: an OpenAI error body is the client's error.
    if let Some(raw) = e.raw_response() {
        let status = raw.status().as_u16();
        let bytes = raw.body().bytes().unwrap_or_default();
        let openai_error = serde_json::from_slice::<serde_json::Value>(bytes)
            .is_ok_and(|v| v["error"]["message"].is_string());
        if (400..500).contains(&status) && status != 429 && openai_error {
            return Ok((status, bytes.to_vec()));
        }
    }
    let message = match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("")
        ),
        None => aws_sdk_sagemakerruntime::error::DisplayErrorContext(&e).to_string(),
    };
    Err(down(message))
}

/// A response stream's payload parts as [`Chunks`]; an exception event (the
/// model's stream broke) ends them with an error.
fn payload_parts(
    receiver: aws_sdk_sagemakerruntime::primitives::event_stream::EventReceiver<
        aws_sdk_sagemakerruntime::types::ResponseStream,
        aws_sdk_sagemakerruntime::types::error::ResponseStreamError,
    >,
) -> Chunks {
    use aws_sdk_sagemakerruntime::types::ResponseStream;
    Box::pin(futures::stream::unfold(
        Some(receiver),
        |receiver| async move {
            let mut receiver = receiver?;
            loop {
                match receiver.recv().await {
                    Ok(Some(ResponseStream::PayloadPart(part))) => {
                        let bytes = part.bytes.map(Blob::into_inner).unwrap_or_default();
                        return Some((Ok(bytes::Bytes::from(bytes)), Some(receiver)));
                    }
                    // Event types this client does not know carry nothing for it.
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => {
                        let failure = ChunkError {
                            timeout: matches!(e, SdkError::TimeoutError(_)),
                            message: aws_sdk_sagemakerruntime::error::DisplayErrorContext(&e)
                                .to_string(),
                        };
                        return Some((Err(failure), None));
                    }
                }
            }
        },
    ))
}
