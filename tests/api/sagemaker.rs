//! The SageMaker backend: a model version with backend `sagemaker` is served
//! through aws-sdk-sagemakerruntime's InvokeEndpoint, and a chat stream through
//! InvokeEndpointWithResponseStream (endpoint name from the registry), here
//! against `gpu-worker`'s runtime paths through the SDK's endpoint URL.

use std::sync::Arc;

use axum::http::Method;
use serde_json::json;
use tenantai::app::{App, Config};
use tenantai::store::{Resources, Storage};

use crate::harness::Harness;
use crate::worker;

async fn sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sagemakerruntime::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .http_client(http)
        .load()
        .await
}

async fn harness(runtime: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::embedded(dir.path(), &Resources::named("sm"))
        .await
        .unwrap();
    let config = Config {
        // One CPU chat worker shared by many tests.
        backend_timeout: std::time::Duration::from_secs(600),
        ..Config::default()
    };
    let app = App::with_sagemaker(storage, config, &sdk_config_for(runtime).await).unwrap();
    let admin = app.admins.create("test-admin").await.unwrap();
    let router = tenantai::http::host(
        tenantai::http::api::router(app.clone()).merge(tenantai::http::admin::router(app.clone())),
    );
    Harness {
        app,
        router,
        admin,
        _dir: Arc::new(dir),
    }
}

#[tokio::test]
async fn sagemaker_versions_are_served_through_invoke_endpoint() {
    let h = harness(&worker::url()).await;
    h.model(json!({"model": "minilm-sm", "backend": "sagemaker", "endpoint": "minilm-prod"}))
        .await;
    let t = h.tenant("T", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let local = h
        .call(
            Method::POST,
            "/v1/embeddings",
            Some(&key),
            Some(json!({"model": "minilm-sm", "input": ["hello world", "second"]})),
        )
        .await;
    let body = local.ok();
    assert_eq!(local.headers["x-tenantai-model-version"], "minilm-sm@1");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["usage"]["prompt_tokens"], 4 + 3);
    // The same vectors as the worker's own HTTP API gives.
    let direct: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", worker::url()))
        .json(&json!({"input": ["hello world", "second"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for i in 0..2 {
        let a: Vec<f64> = body["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let b: Vec<f64> = direct["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
    }
    // The container's 4xx (an input over the token limit) stays the client's 400.
    let long = "word ".repeat(400);
    let r = h
        .call(
            Method::POST,
            "/v1/embeddings",
            Some(&key),
            Some(json!({"model": "minilm-sm", "input": long})),
        )
        .await;
    assert!(r.error(400).contains("256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chat_stream_comes_through_invoke_endpoint_with_response_stream() {
    let h = harness(&worker::chat_url()).await;
    h.model(json!({"model": "smol-sm", "kind": "chat", "backend": "sagemaker", "endpoint": "smol-prod",
                   "price_per_1k_tokens_micros": 150, "price_per_1k_completion_tokens_micros": 600}))
        .await;
    let t = h.tenant("T", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let ask = |stream: bool| {
        let mut body = json!({"model": "smol-sm", "messages": [{"role": "user", "content": "Name a colour."}],
                              "max_tokens": 8, "temperature": 0});
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    };
    let whole = h
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            Some(ask(false)),
        )
        .await;
    let whole = whole.ok().clone();
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    let streamed = h
        .raw(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            axum::body::Body::from(ask(true).to_string()),
            &[("cache-control", "no-cache, no-store")],
        )
        .await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.headers["content-type"], "text/event-stream");
    let body = streamed.body["raw"].as_str().unwrap().to_string();
    let chunks: Vec<serde_json::Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let content: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|c| !c.is_empty())
        .collect();
    // The greedy answer, token by token (a whole answer replayed would be one piece), as the payload parts brought it.
    assert_eq!(content.concat(), text);
    assert!(content.len() > 1, "{body}");
    assert!(chunks.iter().all(|c| c["model"] == "smol-sm"), "{body}");
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"], "{body}");
}
