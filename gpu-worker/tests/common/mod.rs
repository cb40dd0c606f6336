//! Shared test helpers: the model directory, the reference fixture, and a spawned
//! `gpu-worker serve` on a free loopback port.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_worker::batcher::BatchConfig;
use gpu_worker::metrics::Metrics;
use gpu_worker::Engine;
use serde::Deserialize;

/// The model directory: `TENANTAI_MODEL_DIR`, else `models/all-MiniLM-L6-v2` under
/// the workspace root. A missing model fails the test (never a silent pass).
pub fn model_dir() -> PathBuf {
    let dir = match std::env::var_os("TENANTAI_MODEL_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("models/all-MiniLM-L6-v2"),
    };
    assert!(
        dir.join("manifest.json").is_file(),
        "the embedding model is missing at {}: run scripts/fetch-model.sh (or set TENANTAI_MODEL_DIR)",
        dir.display()
    );
    dir
}

/// The chat model directory: `TENANTAI_CHAT_MODEL_DIR`, else
/// `models/SmolLM2-135M-Instruct` under the workspace root (missing: the test fails).
pub fn chat_model_dir() -> PathBuf {
    let dir = match std::env::var_os("TENANTAI_CHAT_MODEL_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("models/SmolLM2-135M-Instruct"),
    };
    assert!(
        dir.join("manifest.json").is_file(),
        "the chat model is missing at {}: run scripts/fetch-model.sh (or set TENANTAI_CHAT_MODEL_DIR)",
        dir.display()
    );
    dir
}

#[derive(Deserialize)]
pub struct Reference {
    pub max_seq_length: usize,
    pub items: Vec<ReferenceItem>,
}

#[derive(Deserialize, Clone)]
pub struct ReferenceItem {
    pub text: String,
    pub tokens_with_special: usize,
    pub tokens_without_special: usize,
    pub embedding: Vec<f32>,
}

/// sentence-transformers' vectors for the fixture sentences.
pub fn reference() -> Reference {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm-reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The model on the CPU behind a batcher.
pub fn engine(config: BatchConfig) -> Engine {
    let (engine, _thread) = Engine::load(
        &model_dir(),
        &candle_core::Device::Cpu,
        config,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    engine
}

/// A running `gpu-worker serve`, killed on drop.
pub struct Worker {
    child: Child,
    pub url: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Spawns the real binary on a free loopback port and waits for `/ping`.
pub async fn spawn_worker(extra: &[&str]) -> Worker {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gpu-worker"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--device",
            "cpu",
        ])
        .arg("--model")
        .arg(model_dir())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut worker = Worker {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{}/ping", worker.url)).send().await {
            if r.status().is_success() {
                return worker;
            }
        }
        if let Ok(Some(status)) = worker.child.try_wait() {
            panic!("gpu-worker exited before answering /ping: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "gpu-worker did not answer /ping in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for the tests. The workspace builds reqwest's rustls without a
/// bundled crypto provider (the ring one is installed per process), so install it.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
