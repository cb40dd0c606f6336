//! `gpu-worker serve`: resolve and verify the model, start the engine, serve HTTP
//! until SIGTERM/Ctrl-C, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::artifacts::{resolve, ModelSource};
use crate::batcher::BatchConfig;
use crate::chat::{ChatConfig, ChatEngine};
use crate::cpu::Precision;
use crate::device::DeviceChoice;
use crate::engine::Engine;
use crate::http::{router, AppState, Limits};
use crate::metrics::Metrics;

/// Everything `serve` needs, validated by the binary's flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// The embedding model (None: serve no embeddings).
    pub model: Option<String>,
    pub cache_dir: PathBuf,
    pub model_id: String,
    /// The chat model (None: serve no chat).
    pub chat_model: Option<String>,
    pub chat_model_id: String,
    pub chat: ChatConfig,
    pub device: DeviceChoice,
    /// The embedding model's dense-layer precision (bf16 and int8: CPU only).
    pub precision: Precision,
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

/// The loaded models, their HTTP state and the threads that run them.
pub struct Loaded {
    pub state: AppState,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Loaded {
    /// Stops the engines once queued work is done, and waits for their threads.
    pub async fn shut_down(self) {
        tracing::info!("shutting down: draining queued work");
        if let Some(engine) = &self.state.engine {
            engine.shutdown();
        }
        if let Some(chat) = &self.state.chat {
            chat.shutdown();
        }
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Loads the models and serves until a shutdown signal.
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    let loaded = load(&config).await?;
    let listener = bind(&config).await?;
    axum::serve(listener, router(loaded.state.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    loaded.shut_down().await;
    Ok(())
}

/// Listens on the configured address, logging what is served.
pub async fn bind(config: &ServeConfig) -> Result<TcpListener, ServeError> {
    let listener = TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    tracing::info!(
        addr = %listener.local_addr()?,
        embeddings = config.model.as_deref().unwrap_or("none"),
        chat = config.chat_model.as_deref().unwrap_or("none"),
        max_batch_tokens = config.batch.max_batch_tokens,
        max_queue = config.batch.max_queue,
        model_threads = config.batch.model_threads,
        precision = %config.precision,
        chat_kv_budget_tokens = config.chat.scheduler.kv_budget_tokens,
        chat_max_running = config.chat.scheduler.max_running,
        "gpu-worker listening"
    );
    Ok(listener)
}

/// Resolves, verifies and loads the configured models.
pub async fn load(config: &ServeConfig) -> Result<Loaded, ServeError> {
    if config.limits.max_inputs > config.batch.max_queue {
        return Err(ServeError::Config(format!(
            "max inputs per request ({}) exceeds the queue size ({})",
            config.limits.max_inputs, config.batch.max_queue
        )));
    }
    if config.model.is_none() && config.chat_model.is_none() {
        return Err(ServeError::Config(
            "no model to serve: give --model, --chat-model or both".into(),
        ));
    }
    let device = config.device.open()?;
    tracing::info!(device = crate::device::describe(&device), "device opened");
    let metrics = Arc::new(Metrics::default());
    let mut threads = Vec::new();
    let mut state = None;
    if let Some(uri) = &config.model {
        let dir = resolve(&ModelSource::parse(uri)?, &config.cache_dir).await?;
        let (engine, handles) = load_embeddings(
            dir,
            device.clone(),
            config.batch,
            config.precision,
            metrics.clone(),
        )
        .await?;
        threads.extend(handles);
        state = Some(AppState::embeddings(
            engine,
            config.limits,
            &config.model_id,
        ));
    }
    let mut state = state.unwrap_or_else(|| AppState {
        engine: None,
        chat: None,
        metrics: metrics.clone(),
        limits: config.limits,
        model_id: config.model_id.as_str().into(),
        chat_model_id: "".into(),
    });
    if let Some(uri) = &config.chat_model {
        let dir = crate::artifacts::resolve_kind(
            &ModelSource::parse(uri)?,
            &config.cache_dir,
            crate::artifacts::ModelKind::Chat,
        )
        .await?;
        let chat_config = config.chat;
        let load_device = device.clone();
        let (chat, handle) =
            tokio::task::spawn_blocking(move || ChatEngine::load(&dir, &load_device, chat_config))
                .await
                .map_err(|e| ServeError::Config(format!("chat model loading failed: {e}")))??;
        threads.push(handle);
        state = state.with_chat(chat, &config.chat_model_id);
    }
    Ok(Loaded { state, threads })
}

/// Loads the embedding model and warms it up with one real pass.
async fn load_embeddings(
    dir: PathBuf,
    device: candle_core::Device,
    batch: BatchConfig,
    precision: Precision,
    metrics: Arc<Metrics>,
) -> Result<(Engine, Vec<std::thread::JoinHandle<()>>), ServeError> {
    let (engine, handles) = tokio::task::spawn_blocking(move || {
        Engine::load_at(&dir, &device, batch, precision, metrics)
    })
    .await
    .map_err(|e| ServeError::Config(format!("model loading failed: {e}")))??;
    if let Err(e) = engine
        .embed(vec![crate::RawInput::Text("warm up".into())], false)
        .await
    {
        tracing::warn!(error = %e, "warm-up failed");
    }
    Ok((engine, handles))
}

pub async fn shutdown_signal() {
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
