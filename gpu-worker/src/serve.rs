//! `gpu-worker serve`: resolve and verify the model, start the engine, serve HTTP
//! until SIGTERM/Ctrl-C, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::artifacts::{resolve, ModelSource};
use crate::batcher::BatchConfig;
use crate::device::DeviceChoice;
use crate::engine::Engine;
use crate::http::{router, AppState, Limits};
use crate::metrics::Metrics;

/// Everything `serve` needs, validated by the binary's flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub model: String,
    pub cache_dir: PathBuf,
    pub model_id: String,
    pub device: DeviceChoice,
    pub batch: BatchConfig,
    pub limits: Limits,
}

/// Why `serve` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Model(#[from] crate::error::ArtifactError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the model and serves until a shutdown signal.
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    if config.limits.max_inputs > config.batch.max_queue {
        return Err(ServeError::Config(format!(
            "max inputs per request ({}) exceeds the queue size ({})",
            config.limits.max_inputs, config.batch.max_queue
        )));
    }
    let source = ModelSource::parse(&config.model)?;
    let dir = resolve(&source, &config.cache_dir).await?;
    let device = config.device.open()?;
    let metrics = Arc::new(Metrics::default());
    let load_dir = dir.clone();
    let batch = config.batch;
    let (engine, model_threads) =
        tokio::task::spawn_blocking(move || Engine::load(&load_dir, &device, batch, metrics))
            .await
            .map_err(|e| ServeError::Config(format!("model loading failed: {e}")))??;
    // Warm-up: one real pass so the first request does not pay for lazy set-up.
    if let Err(e) = engine
        .embed(vec![crate::RawInput::Text("warm up".into())], false)
        .await
    {
        tracing::warn!(error = %e, "warm-up failed");
    }
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    tracing::info!(
        addr = %listener.local_addr()?,
        model = %config.model_id,
        dir = %dir.display(),
        device = engine.device(),
        dimension = engine.info().dimension,
        max_seq_length = engine.info().max_seq_length,
        max_batch_tokens = batch.max_batch_tokens,
        max_batch_size = batch.max_batch_size,
        max_queue = batch.max_queue,
        model_threads = batch.model_threads,
        "gpu-worker listening"
    );
    let state = AppState {
        engine: engine.clone(),
        limits: config.limits,
        model_id: config.model_id.into(),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: draining queued work");
    engine.shutdown();
    let _ = tokio::task::spawn_blocking(move || {
        for thread in model_threads {
            let _ = thread.join();
        }
    })
    .await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
