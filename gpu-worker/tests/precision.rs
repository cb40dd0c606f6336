//! `gpu-worker serve --precision f32|bf16|int8` as a real process: each precision
//! answers the OpenAI route with vectors that agree with sentence-transformers'
//! f32 reference (f32: cosine >= 0.9999, bf16: >= 0.999, int8: >= 0.99 per item),
//! says its precision and matmul library on /health and /metrics, and an unknown
//! precision is refused at start-up. Each precision runs on gemmkit and, where
//! `TENANTAI_MKL_LIB` names oneMKL (scripts/test.sh sets it, and
//! `TENANTAI_REQUIRE_MKL=1`), on oneMKL too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};

use common::{cosine, reference, spawn_worker};
use serde_json::{json, Value};

/// The libraries to run each precision on.
fn libraries() -> Vec<&'static str> {
    let required = std::env::var("TENANTAI_REQUIRE_MKL").is_ok_and(|v| v == "1");
    let present = std::env::var_os("TENANTAI_MKL_LIB").is_some();
    assert!(
        present || !required,
        "TENANTAI_REQUIRE_MKL=1 but TENANTAI_MKL_LIB is unset"
    );
    if present {
        vec!["gemmkit", "mkl"]
    } else {
        eprintln!("TENANTAI_MKL_LIB is unset: oneMKL is not exercised");
        vec!["gemmkit"]
    }
}

async fn check_precision(precision: &str, floor: f64) {
    for matmul in libraries() {
        check_precision_on(precision, matmul, floor).await;
    }
}

async fn check_precision_on(precision: &str, matmul: &str, floor: f64) {
    let worker = spawn_worker(&["--precision", precision, "--matmul", matmul]).await;
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
        assert!(
            c >= floor,
            "{precision} on {matmul} {:?}: cosine {c}",
            item.text
        );
        worst = worst.min(c);
    }
    eprintln!("{precision} on {matmul}: worst cosine against the f32 reference {worst:.6}");

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
    assert_eq!(health["embeddings"]["matmul"], matmul, "{health}");

    let metrics = http
        .get(format!("{}/metrics", worker.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "tenantai_worker_embeddings_model_info{{model=\"all-MiniLM-L6-v2\",precision=\"{precision}\",matmul=\"{matmul}\"}} 1"
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

#[test]
fn mkl_that_does_not_open_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_gpu-worker"))
        .args([
            "serve",
            "--matmul",
            "mkl",
            "--mkl-lib",
            "/nonexistent/libmkl_rt.so.2",
        ])
        .args(["--port", "0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/libmkl_rt.so.2"), "{stderr}");
}
