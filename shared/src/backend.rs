//! Backends that compute embeddings: the worker's HTTP API (`gpu-worker serve`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::embeddings::{decode_base64, EmbeddingRequest, Embeddings};
use crate::error::{ApiError, ApiResult};
use crate::models::ModelVersion;

/// Installs rustls' ring crypto provider for this process (idempotent); every
/// HTTPS client of the process (reqwest, JWKS fetches) uses it.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The worker's HTTP API, called with pooled keep-alive connections and a timeout.
#[derive(Clone)]
pub struct WorkerClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct WorkerResponse {
    data: Vec<WorkerVector>,
    usage: WorkerUsage,
}

#[derive(Deserialize)]
struct WorkerVector {
    index: usize,
    embedding: String,
}

#[derive(Deserialize)]
struct WorkerUsage {
    prompt_tokens: u64,
}

impl WorkerClient {
    pub fn new(timeout: Duration) -> ApiResult<Self> {
        install_crypto();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ApiError::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(WorkerClient { http })
    }

    /// Embeds the request's inputs with the model version's worker.
    pub async fn embed(
        &self,
        version: &ModelVersion,
        req: &EmbeddingRequest,
    ) -> ApiResult<Embeddings> {
        let url = format!("{}/v1/embeddings", version.endpoint.trim_end_matches('/'));
        let body = json!({
            "model": version.model,
            "input": req.input,
            "encoding_format": "base64",
            "truncate": req.truncate,
        });
        let unavailable = |why: String| {
            tracing::warn!(model = %version.model, version = %version.version, endpoint = %version.endpoint, error = %why, "backend failed");
            ApiError::Unavailable {
                message: format!("the model backend is unavailable: {why}"),
                retry_after_secs: 1,
            }
        };
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        if status.is_client_error() {
            // The worker judged the inputs (e.g. a token limit): the client's 400.
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("the model rejected the input ({status})"));
            return Err(ApiError::invalid_param("input", message));
        }
        if status.as_u16() == 503 {
            return Err(ApiError::Unavailable {
                message: "the model backend is overloaded; retry shortly".into(),
                retry_after_secs: retry_after.unwrap_or(1),
            });
        }
        if !status.is_success() {
            return Err(unavailable(format!("status {status}")));
        }
        let parsed: WorkerResponse = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable(format!("unreadable response: {e}")))?;
        let mut vectors = vec![Vec::new(); parsed.data.len()];
        for d in parsed.data {
            let v = decode_base64(&d.embedding)
                .ok_or_else(|| unavailable("malformed base64 vector".into()))?;
            match vectors.get_mut(d.index) {
                Some(slot) => *slot = v,
                None => return Err(unavailable("vector index out of range".into())),
            }
        }
        if vectors.len() != req.len() || vectors.iter().any(Vec::is_empty) {
            return Err(unavailable(format!(
                "expected {} vectors, got {}",
                req.len(),
                vectors.len()
            )));
        }
        Ok(Embeddings {
            vectors,
            prompt_tokens: parsed.usage.prompt_tokens,
        })
    }
}
