//! `gpu-worker serve --precision f32|bf16|int8` as a real process: each precision
//! answers the OpenAI route with vectors that agree with sentence-transformers'
//! f32 reference (f32: cosine >= 0.9999, bf16: >= 0.999, int8: >= 0.99 per item),
//! says its precision on /health and /metrics, and an unknown precision is refused
//! at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};

use common::{cosine, reference, spawn_worker};
use serde_json::{json, Value};

async fn check_precision(precision: &str, floor: f64) {
    let worker = spawn_worker(&["--precision", precision]).await;
    let http = common::http();
    let items: Vec<_> = reference()
        .items
        .into_iter()
        .filter(|i| !i.text.is_empty())
        .collect();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let resp = http
        .post(format!("{}/v1/embeddings", worker.url))
        .json(&json!({"model": "all-MiniLM-L6-v2", "input": texts}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), items.len());
    let mut worst = 1.0f64;
    for (d, item) in data.iter().zip(&items) {
        let v: Vec<f32> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let c = cosine(&v, &item.embedding);
        assert!(c >= floor, "{precision} {:?}: cosine {c}", item.text);
        worst = worst.min(c);
    }
    eprintln!("{precision}: worst cosine against the f32 reference {worst:.6}");

    let health: Value = http
        .get(format!("{}/health", worker.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["precision"], precision, "{health}");
    assert_eq!(health["embeddings"]["precision"], precision);

    let metrics = http
        .get(format!("{}/metrics", worker.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "tenantai_worker_embeddings_model_info{{model=\"all-MiniLM-L6-v2\",precision=\"{precision}\"}} 1"
    );
    assert!(metrics.lines().any(|l| l == line), "{metrics}");
}

#[tokio::test]
async fn f32_worker_matches_the_reference() {
    check_precision("f32", 0.9999).await;
}

#[tokio::test]
async fn bf16_worker_agrees_with_the_f32_reference() {
    check_precision("bf16", 0.999).await;
}

#[tokio::test]
async fn int8_worker_agrees_with_the_f32_reference() {
    check_precision("int8", 0.99).await;
}

#[test]
fn an_unknown_precision_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-worker"))
        .args(["serve", "--precision", "fp8", "--port", "0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fp8"), "{stderr}");
}
