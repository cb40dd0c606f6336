//! `gpu-worker work`: the batch worker. It loads the models as `serve` does and
//! serves the same HTTP API on its port (the ECS health check reads `/health`),
//! and drains the deployment's jobs queue with tenantai's job loop
//! ([`tenantai::batch::jobs`]); the lines of the models it loaded run on its own
//! engines (through that HTTP API on loopback, so they take the sync path's
//! parsing, grouping and errors), others on their versions' backends.
//!
//! SIGTERM (ECS scale-in, a spot interruption) stops receiving; work in flight
//! has `TENANTAI_BATCH_GRACE_SECS` to finish and is then handed back; then the
//! HTTP server and the engines stop and the process exits 0.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tenantai::app::{App, Config};
use tenantai::batch::jobs::{self, WorkerConfig};
use tenantai::store::{Resources, Storage};

use crate::http::router;
use crate::serve::{bind, load, shutdown_signal, ServeConfig, ServeError};

fn config_error(e: impl std::fmt::Display) -> ServeError {
    ServeError::Config(e.to_string())
}

/// Runs until SIGTERM (or Ctrl-C), then drains (see the module).
pub async fn run(config: ServeConfig, data_dir: Option<PathBuf>) -> Result<(), ServeError> {
    let jobs_config = WorkerConfig::from_env().map_err(config_error)?;
    let loaded = load(&config).await?;
    let listener = bind(&config).await?;
    let base = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let mut local = BTreeMap::new();
    if loaded.state.engine.is_some() {
        local.insert(config.model_id.clone(), base.clone());
    }
    if loaded.state.chat.is_some() {
        local.insert(config.chat_model_id.clone(), base);
    }
    let app = app(data_dir, local).await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let http = {
        let mut stopping = stopping.clone();
        let serve = axum::serve(listener, router(loaded.state.clone())).with_graceful_shutdown(
            async move { tenantai::billing::metering::stopped(&mut stopping).await },
        );
        tokio::spawn(async move { serve.await })
    };
    let grace = jobs_config.grace;
    tracing::info!(
        workers = jobs_config.workers,
        grace_secs = grace.as_secs(),
        "gpu-worker working on the jobs queue"
    );
    let work = tokio::spawn(jobs::run(app.clone(), jobs_config, stopping));
    shutdown_signal().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "stopping: no new work; work in flight may finish"
    );
    let _ = stop.send(true);
    match work.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the jobs loop failed"),
        Err(e) => tracing::error!(error = %e, "the jobs loop panicked"),
    }
    app.usage.flush().await;
    if let Ok(Err(e)) = http.await {
        tracing::warn!(error = %e, "HTTP server error while stopping");
    }
    loaded.shut_down().await;
    tracing::info!("stopped");
    Ok(())
}

/// The tenantai app over embedded storage in `data_dir`, or over the AWS
/// deployment of the environment.
async fn app(
    data_dir: Option<PathBuf>,
    local: BTreeMap<String, String>,
) -> Result<Arc<App>, ServeError> {
    match data_dir {
        Some(dir) => {
            let storage = Storage::embedded(&dir, &Resources::named("tenantai"))
                .await
                .map_err(config_error)?;
            let mut config = Config::from_env().map_err(config_error)?;
            config.local_workers = local;
            App::new(storage, config).map_err(config_error)
        }
        None => tenantai::lambda::worker_app_from_env(local)
            .await
            .map_err(config_error),
    }
}
