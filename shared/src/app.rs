//! The application: every service of the request path, built once per process
//! over one `Storage` and shared by the api, admin and authorizer hosts.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ApiError, ApiResult};
use crate::gateway::backend::WorkerClient;
use crate::gateway::cache::Cache;
use crate::gateway::models::Registry;
use crate::store::Storage;
use crate::tenancy::audit::Audit;
use crate::tenancy::auth::Authenticator;
use crate::tenancy::jwt::{JwtConfig, JwtVerifier};
use crate::tenancy::keys::{AdminTokens, Keys};
use crate::tenancy::tenants::{Tenant, Tenants, Tiers};

#[derive(Clone, Debug)]
pub struct Config {
    pub tiers: Tiers,
    pub jwt: Option<JwtConfig>,
    /// Longest wait on a backend call.
    pub backend_timeout: Duration,
    /// How long cached embeddings live (L1 and L2).
    pub cache_ttl: Duration,
    /// Size of the in-process cache, in bytes.
    pub l1_cache_bytes: u64,
    /// How long the registry and tenant records are cached in-process.
    pub record_cache_ttl: Duration,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// When a backend's circuit opens and for how long.
    pub breaker: crate::gateway::breaker::BreakerConfig,
    /// How long a usage event waits for others to share its queue message batch.
    pub usage_linger: Duration,
    /// Longest a request body may take to arrive (408 past it).
    pub body_timeout: Duration,
    /// What outbound calls to tenant- or admin-chosen URLs may reach.
    pub egress: crate::gateway::egress::EgressPolicy,
    /// The vault that seals secrets at rest (none: setting a webhook fails).
    pub secrets: crate::tenancy::secrets::Secrets,
    /// Models this process serves itself (model id -> its worker's base URL):
    /// batch lines for them run there, whatever backend their version names
    /// (a batch worker running its own engine).
    pub local_workers: std::collections::BTreeMap<String, String>,
    /// Header, connection and in-flight limits (see [`crate::limits`]).
    pub limits: crate::limits::Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tiers: Tiers::default(),
            jwt: None,
            backend_timeout: Duration::from_secs(30),
            cache_ttl: Duration::from_secs(24 * 3600),
            l1_cache_bytes: 256 * 1024 * 1024,
            record_cache_ttl: Duration::from_secs(5),
            max_body_bytes: 6 * 1024 * 1024,
            breaker: crate::gateway::breaker::BreakerConfig::default(),
            usage_linger: crate::billing::usage::DEFAULT_LINGER,
            body_timeout: crate::http::DEFAULT_BODY_TIMEOUT,
            egress: crate::gateway::egress::EgressPolicy::default(),
            secrets: crate::tenancy::secrets::Secrets::none(),
            local_workers: Default::default(),
            limits: crate::limits::Limits::default(),
        }
    }
}

impl Config {
    /// What webhooks are set up under: this configuration's egress policy and vault.
    pub fn webhook_rules(&self) -> crate::billing::webhooks::WebhookRules {
        crate::billing::webhooks::WebhookRules {
            egress: self.egress.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// Defaults, overridden by `TENANTAI_*` environment variables.
    pub fn from_env() -> Result<Self, String> {
        let secs = |name: &str, default: u64| -> Result<Duration, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map(Duration::from_secs)
                    .map_err(|_| format!("{name} must be a number of seconds")),
                Err(_) => Ok(Duration::from_secs(default)),
            }
        };
        Ok(Config {
            tiers: Tiers::from_env()?,
            jwt: JwtConfig::from_env()?,
            backend_timeout: secs("TENANTAI_BACKEND_TIMEOUT_SECS", 30)?,
            cache_ttl: secs("TENANTAI_CACHE_TTL_SECS", 24 * 3600)?,
            record_cache_ttl: secs("TENANTAI_RECORD_CACHE_SECS", 5)?,
            body_timeout: secs(
                "TENANTAI_BODY_TIMEOUT_SECS",
                crate::http::DEFAULT_BODY_TIMEOUT.as_secs(),
            )?,
            max_body_bytes: match std::env::var("TENANTAI_MAX_BODY_BYTES") {
                Ok(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    "TENANTAI_MAX_BODY_BYTES must be a positive number of bytes".to_string()
                })?,
                Err(_) => Config::default().max_body_bytes,
            },
            limits: crate::limits::Limits::from_env()?,
            egress: crate::gateway::egress::EgressPolicy::from_env(),
            breaker: crate::gateway::breaker::BreakerConfig {
                failures_to_open: match std::env::var("TENANTAI_BREAKER_FAILURES") {
                    Ok(v) => v
                        .parse()
                        .map_err(|_| "TENANTAI_BREAKER_FAILURES must be a number".to_string())?,
                    Err(_) => 5,
                },
                open_for: secs("TENANTAI_BREAKER_OPEN_SECS", 10)?,
                ..Default::default()
            },
            ..Config::default()
        })
    }
}

pub struct App {
    pub config: Config,
    pub storage: Storage,
    pub tenants: Tenants,
    pub keys: Keys,
    pub admins: AdminTokens,
    pub registry: Registry,
    pub cache: Cache,
    /// Deterministic chat completions, cached like embeddings.
    pub chat_cache: Cache<crate::gateway::chat::Completion>,
    pub audit: Audit,
    pub auth: Authenticator,
    pub worker: WorkerClient,
    /// Chat backends: workers, upstream providers, SageMaker (through `sagemaker`).
    pub chat: crate::gateway::upstream::ChatBackends,
    /// SageMaker endpoints, where the deployment has an AWS configuration.
    pub sagemaker: Option<crate::gateway::backend::SagemakerClient>,
    pub limiter: crate::gateway::ratelimit::RateLimiter,
    pub breakers: crate::gateway::breaker::Breakers,
    /// Where usage events leave the request path.
    pub usage: crate::billing::usage::UsageSink,
    pub meter: crate::billing::metering::Meter,
    pub budget: crate::billing::budget::BudgetGate,
    tenant_cache: moka::future::Cache<String, Tenant>,
}

impl App {
    /// Builds the services; must run inside a Tokio runtime (the usage sink
    /// starts its sender task).
    pub fn new(storage: Storage, config: Config) -> ApiResult<Arc<App>> {
        let table = storage.table.clone();
        let (usage_queue, _) = storage.usage_queues()?;
        let tenants = Tenants::new(table.clone()).with_webhooks(config.webhook_rules());
        let keys = Keys::new(table.clone());
        let jwt = config.jwt.clone().map(JwtVerifier::new).transpose()?;
        Ok(Arc::new(App {
            auth: Authenticator::new(keys.clone(), tenants.clone(), jwt),
            admins: AdminTokens::new(table.clone()),
            registry: Registry::new(table.clone(), config.record_cache_ttl),
            cache: Cache::new(table.clone(), config.l1_cache_bytes, config.cache_ttl),
            chat_cache: Cache::new(table.clone(), config.l1_cache_bytes / 4, config.cache_ttl),
            audit: Audit::new(table.clone()),
            worker: WorkerClient::new(config.backend_timeout)?,
            chat: crate::gateway::upstream::ChatBackends::new(
                config.backend_timeout,
                &config.egress,
                crate::gateway::upstream::UpstreamKeys::from_env(),
            )?,
            sagemaker: None,
            limiter: crate::gateway::ratelimit::RateLimiter::new(table.clone()),
            breakers: crate::gateway::breaker::Breakers::new(config.breaker.clone()),
            usage: crate::billing::usage::UsageSink::new(usage_queue, config.usage_linger),
            meter: crate::billing::metering::Meter::new(table.clone()),
            budget: crate::billing::budget::BudgetGate::new(table.clone()),
            tenant_cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.record_cache_ttl)
                .build(),
            tenants,
            keys,
            storage,
            config,
        }))
    }

    /// Serves `sagemaker` model versions through this AWS configuration, and
    /// reads upstream API keys from its Secrets Manager.
    pub fn with_sagemaker(
        storage: Storage,
        config: Config,
        aws: &aws_config::SdkConfig,
    ) -> ApiResult<Arc<App>> {
        let timeout = config.backend_timeout;
        let mut app = Arc::try_unwrap(App::new(storage, config)?)
            .map_err(|_| ApiError::Internal("app is shared before it is built".into()))?;
        app.sagemaker = Some(crate::gateway::backend::SagemakerClient::new(aws, timeout));
        app.chat = crate::gateway::upstream::ChatBackends::new(
            timeout,
            &app.config.egress,
            crate::gateway::upstream::UpstreamKeys::secrets_manager(aws),
        )?;
        Ok(Arc::new(app))
    }

    /// Files in this deployment's object store (an error where it has none).
    pub fn files(&self) -> ApiResult<crate::batch::files::Files> {
        Ok(crate::batch::files::Files::new(
            self.storage.table.clone(),
            self.storage.blobs()?.clone(),
        ))
    }

    /// The tenant record for the request path, cached briefly.
    pub async fn tenant(&self, id: &str) -> ApiResult<Tenant> {
        if let Some(t) = self.tenant_cache.get(id).await {
            return Ok(t);
        }
        let t = self.tenants.get(id).await?;
        self.tenant_cache.insert(id.to_string(), t.clone()).await;
        Ok(t)
    }

    pub fn forget_tenant(&self, id: &str) {
        let cache = self.tenant_cache.clone();
        let id = id.to_string();
        tokio::spawn(async move { cache.invalidate(&id).await });
    }
}

/// Fails when a required environment value is missing, with a clear message.
pub fn require_env(name: &str) -> Result<String, ApiError> {
    std::env::var(name).map_err(|_| ApiError::Internal(format!("{name} is not set")))
}
