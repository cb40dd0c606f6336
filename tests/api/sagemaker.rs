//! The SageMaker backend: a model version with backend `sagemaker` is served
//! through aws-sdk-sagemakerruntime's InvokeEndpoint (endpoint name from the
//! registry), here against `gpu-worker`'s runtime path through the SDK's endpoint URL.

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

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::embedded(dir.path(), &Resources::named("sm"))
        .await
        .unwrap();
    let app = App::with_sagemaker(
        storage,
        Config::default(),
        &sdk_config_for(&worker::url()).await,
    )
    .unwrap();
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
    let h = harness().await;
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
