//! `tenantai dev`: the api, admin and authorizer logic and a worker (embeddings
//! and chat) in one process, on embedded storage (or the AWS adapters with `--aws`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use tenantai::app::{App, Config};
use tenantai::billing::alerts::{CostAlerts, Notifier, Retry};
use tenantai::gateway::models::{ModelKind, ModelVersion};
use tenantai::store::{aws, Resources, Storage};
use tenantai::tenancy::secrets::Secrets;

/// The model `tenantai dev` serves, and the id clients ask for.
pub const DEV_MODEL: &str = "all-MiniLM-L6-v2";
/// OpenAI's small embedding model costs $0.02 per million tokens: 20 micro-dollars per 1k.
const DEV_PRICE_MICROS: u64 = 20;
/// The chat model `tenantai dev` serves.
pub const DEV_CHAT_MODEL: &str = "SmolLM2-135M-Instruct";
/// Its prices per 1k prompt and completion tokens, in micro-dollars ($0.15 and
/// $0.60 per million, the price class of small hosted models).
const DEV_CHAT_PRICES_MICROS: (u64, u64) = (150, 600);

/// The abuse limits and the variables that set them, for `tenantai dev --help`
/// (defaults from `tenantai::limits::Limits` and `tenantai::app::Config`).
pub const LIMITS_HELP: &str = "\
Abuse limits (environment; default):
  TENANTAI_MAX_BODY_BYTES       largest /v1/embeddings and /v1/chat/completions body (6291456); 413
  TENANTAI_BODY_TIMEOUT_SECS    longest a request body may take to arrive (30); 408
  TENANTAI_MAX_HEADERS          most header fields of a request (64); 431
  TENANTAI_MAX_HEADER_BYTES     most bytes of a request head (16384); 431
  TENANTAI_HEADER_TIMEOUT_SECS  longest a head may take, and a keep-alive connection may idle (10)
  TENANTAI_MAX_CONNECTIONS      connections served at once (512); beyond: 503, /health 200
  TENANTAI_MAX_IN_FLIGHT        requests handled at once (256); beyond: 503 with Retry-After
  TENANTAI_RETRY_AFTER_SECS     the Retry-After of a shed request (1)
Fixed: admin bodies 1 MiB, batch/key bodies 64 KiB, uploads the tier's max_file_bytes,
JSON nesting 32 levels, strings per input (see the README's Abuse limits table).";

#[derive(Args)]
pub struct DevArgs {
    /// Where the embedded table, queues and blobs live.
    #[arg(long, env = "TENANTAI_DATA_DIR", default_value = "./.tenantai")]
    data_dir: PathBuf,
    /// Port of the API (/v1) and the admin API (/admin/v1).
    #[arg(long, env = "TENANTAI_PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind; loopback by default.
    #[arg(long, env = "TENANTAI_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Use the AWS adapters (AWS_ENDPOINT_URL, AWS_REGION, credentials chain) instead of
    /// embedded storage; creates the table, queues and bucket when absent.
    #[arg(long)]
    aws: bool,
    /// The model directory (fetched with scripts/fetch-model.sh when absent).
    #[arg(
        long,
        env = "TENANTAI_MODEL_DIR",
        default_value = "models/all-MiniLM-L6-v2"
    )]
    model_dir: PathBuf,
    /// The chat model directory (fetched with scripts/fetch-model.sh when absent).
    #[arg(
        long,
        env = "TENANTAI_CHAT_MODEL_DIR",
        default_value = "models/SmolLM2-135M-Instruct"
    )]
    chat_model_dir: PathBuf,
    /// Serve no chat model (embeddings only).
    #[arg(long)]
    no_chat: bool,
    /// Use a running `gpu-worker serve` at this URL instead of the in-process worker.
    #[arg(long, env = "TENANTAI_WORKER_URL")]
    worker_url: Option<String>,
    /// Seconds between cost-alert runs (the in-process stand-in for the
    /// EventBridge schedule); alerts go to tenants' webhooks and to the log.
    #[arg(long, env = "TENANTAI_ALERTS_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    alerts_interval_secs: u64,
    /// Batch jobs worked on at once by the in-process batch worker (0: none; the
    /// jobs wait in the embedded queue for a `gpu-worker work --data-dir`).
    #[arg(long, env = "TENANTAI_BATCH_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Let webhooks reach loopback, private and link-local addresses, over plain
    /// http too (local testing only; cloud metadata addresses stay blocked).
    #[arg(long, env = "TENANTAI_EGRESS_ALLOW_PRIVATE")]
    allow_private_egress: bool,
}

/// What the first start creates, kept in `<data-dir>/credentials.json` (mode 0600).
#[derive(Serialize, Deserialize)]
struct Credentials {
    admin_token: String,
    tenant_id: String,
    api_key: String,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_logging();
    let mut config = Config::from_env().map_err(anyhow::Error::msg)?;
    config.egress.allow_private |= args.allow_private_egress;
    if config.egress.allow_private {
        tracing::warn!(
            "webhooks may reach private and loopback addresses (--allow-private-egress)"
        );
    }
    tenantai::store::embedded::private_dir(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let key_file = args.data_dir.join("secrets.key");
    let (storage, secrets) = if args.aws {
        let sdk = aws::sdk_config().await;
        let storage = Storage::aws(
            &sdk,
            &tenantai::lambda::resources_from_env().map_err(anyhow::Error::msg)?,
            true,
        )
        .await
        .context("AWS storage")?;
        (storage, Secrets::from_env(Some(&sdk), Some(&key_file)))
    } else {
        let storage = Storage::embedded(&args.data_dir, &Resources::named("tenantai"))
            .await
            .context("embedded storage")?;
        (storage, Secrets::from_env(None, Some(&key_file)))
    };
    config.secrets = secrets.context("the key for secrets at rest")?;
    let app = App::new(storage, config)?;

    let worker_url = match &args.worker_url {
        Some(url) => url.clone(),
        None => {
            let chat = (!args.no_chat).then_some(args.chat_model_dir.as_path());
            crate::worker::start(&args.model_dir, chat).await?
        }
    };
    ensure_model(&app, &dev_model(&worker_url)).await?;
    if !args.no_chat {
        ensure_model(&app, &dev_chat_model(&worker_url)).await?;
    }
    let creds = bootstrap(&app, &args.data_dir).await?;

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .context("--host/--port")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let base = format!("http://{}", listener.local_addr()?);
    print_banner(&base, &creds, &args.data_dir);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metering = spawn_metering(&app, stopped.clone())?;
    let alerts = spawn_alerts(
        &app,
        Duration::from_secs(args.alerts_interval_secs),
        stopped.clone(),
    )?;
    let batches = spawn_batch_worker(&app, args.workers, stopped)?;
    let router = tenantai::http::host_with(
        tenantai::http::api::router(app.clone()).merge(tenantai::http::admin::router(app.clone())),
        &app.config,
    );
    tenantai::http::serve::Server::new(router, &app.config.limits)
        .run(listener, shutdown())
        .await?;
    // Events still buffered reach the (persistent) usage queue; the next start folds them.
    app.usage.flush().await;
    let _ = stop.send(true);
    let _ = tokio::join!(metering, alerts, batches);
    Ok(())
}

/// Folds the embedded usage queue as the metering function does on AWS.
fn spawn_metering(
    app: &Arc<App>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (queue, dlq) = app.storage.usage_queues()?;
    let meter = app.meter.clone();
    Ok(tokio::spawn(
        async move { meter.drain(queue, dlq, stop).await },
    ))
}

/// Drains the embedded jobs queue (batch validation and chunks) as the GPU
/// worker fleet does on AWS; on a stop, work in flight has its grace period.
fn spawn_batch_worker(
    app: &Arc<App>,
    workers: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut config = tenantai::batch::jobs::WorkerConfig::from_env().map_err(anyhow::Error::msg)?;
    config.workers = workers;
    if std::env::var_os("TENANTAI_BATCH_GRACE_SECS").is_none() {
        // On Ctrl-C a chunk still running is handed back soon: the next start takes it.
        config.grace = Duration::from_secs(5);
    }
    let app = app.clone();
    Ok(tokio::spawn(async move {
        if workers == 0 {
            return;
        }
        if let Err(e) = tenantai::batch::jobs::run(app, config, stop).await {
            tracing::error!(error = %e, "the batch worker stopped");
        }
    }))
}

/// Runs the cost alerts every `interval`, as the EventBridge schedule does on AWS.
fn spawn_alerts(
    app: &Arc<App>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let alerts = CostAlerts::new(
        app.storage.table.clone(),
        app.config.tiers.clone(),
        Notifier::new(Retry::default(), app.config.webhook_rules())?,
    );
    Ok(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = tenantai::billing::metering::stopped(&mut stop) => return,
            }
            match alerts.run(time::OffsetDateTime::now_utc()).await {
                Ok(summary) if summary.sent + summary.failed > 0 => {
                    tracing::info!(?summary, "cost alerts run")
                }
                Ok(summary) => tracing::debug!(?summary, "cost alerts run"),
                Err(e) => tracing::error!(error = %e, "cost alerts run failed"),
            }
        }
    }))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tenantai=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

fn dev_model(worker_url: &str) -> ModelVersion {
    ModelVersion::live_worker(DEV_MODEL, "1", worker_url, DEV_PRICE_MICROS)
}

fn dev_chat_model(worker_url: &str) -> ModelVersion {
    let mut v =
        ModelVersion::live_worker(DEV_CHAT_MODEL, "1", worker_url, DEV_CHAT_PRICES_MICROS.0);
    v.kind = ModelKind::Chat;
    v.price_per_1k_completion_tokens_micros = DEV_CHAT_PRICES_MICROS.1;
    v.context_length = Some(8192);
    v
}

/// Registers a dev model as the live base model, pointing at this run's worker.
async fn ensure_model(app: &Arc<App>, model: &ModelVersion) -> anyhow::Result<()> {
    match app.registry.get(&model.model, &model.version).await {
        Ok(mut v) => {
            if v.endpoint != model.endpoint {
                v.endpoint = model.endpoint.clone();
                app.registry.update(&v).await?;
            }
        }
        Err(_) => {
            app.registry.register(model.clone()).await?;
        }
    }
    Ok(())
}

/// On the first start: an admin token, a demo tenant and its key, written to
/// the credentials file; later starts read them back.
async fn bootstrap(app: &Arc<App>, data_dir: &Path) -> anyhow::Result<Credentials> {
    let path = data_dir.join("credentials.json");
    if let Ok(bytes) = std::fs::read(&path) {
        let creds: Credentials = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is unreadable", path.display()))?;
        if app.admins.verify(&creds.admin_token).await.is_ok() {
            return Ok(creds);
        }
        tracing::warn!(
            "{} does not match this storage; creating new credentials",
            path.display()
        );
    }
    let admin_token = app.admins.create("dev-admin").await?;
    let tenant = app.tenants.create("demo", "pro", &app.config.tiers).await?;
    let key = app.keys.create(&tenant.id, &Default::default()).await?;
    let creds = Credentials {
        admin_token,
        tenant_id: tenant.id,
        api_key: key.secret,
    };
    write_private(&path, &serde_json::to_vec_pretty(&creds)?)?;
    Ok(creds)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode through `open`: set it.
    tenantai::store::embedded::restrict(path)?;
    f.write_all(bytes)?;
    Ok(())
}

fn print_banner(base: &str, c: &Credentials, data_dir: &Path) {
    let lines = [
        format!("tenantai dev is serving on {base}"),
        format!("  OpenAI-compatible API: {base}/v1   (models: {DEV_MODEL}, {DEV_CHAT_MODEL})"),
        format!("  admin API:             {base}/admin/v1"),
        format!("  demo tenant:           {}", c.tenant_id),
        format!("  API key:               {}", c.api_key),
        format!("  admin token:           {}", c.admin_token),
        format!("  (saved in {}, mode 0600)", data_dir.join("credentials.json").display()),
        String::new(),
        format!("  curl {base}/v1/embeddings -H 'Authorization: Bearer {}' \\", c.api_key),
        format!("       -H 'Content-Type: application/json' -d '{{\"model\":\"{DEV_MODEL}\",\"input\":\"hello\"}}'"),
        format!("  curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {}' \\", c.api_key),
        format!("       -H 'Content-Type: application/json' -d '{{\"model\":\"{DEV_CHAT_MODEL}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'"),
    ];
    for l in lines {
        println!("{l}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_shows_the_default_limits() {
        let d = tenantai::limits::Limits::default();
        let c = Config::default();
        for (name, value) in [
            ("TENANTAI_MAX_BODY_BYTES", c.max_body_bytes as u64),
            ("TENANTAI_BODY_TIMEOUT_SECS", c.body_timeout.as_secs()),
            ("TENANTAI_MAX_HEADERS", d.max_headers as u64),
            ("TENANTAI_MAX_HEADER_BYTES", d.max_header_bytes as u64),
            ("TENANTAI_HEADER_TIMEOUT_SECS", d.header_timeout.as_secs()),
            ("TENANTAI_MAX_CONNECTIONS", d.max_connections as u64),
            ("TENANTAI_MAX_IN_FLIGHT", d.max_in_flight as u64),
            ("TENANTAI_RETRY_AFTER_SECS", d.retry_after_secs),
        ] {
            let line = LIMITS_HELP.lines().find(|l| l.contains(name));
            assert!(
                line.is_some_and(|l| l.contains(&format!("({value})"))),
                "{name} {value}: {line:?}"
            );
        }
    }
}
