//! What the Lambda functions share: building the app from the AWS environment,
//! JSON logs, and the authorizer's context in both directions.

pub mod streaming;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayV2CustomAuthorizerSimpleResponse,
    ApiGatewayV2CustomAuthorizerV2Request,
};
use serde_json::{json, Value};

use crate::app::{App, Config};
use crate::billing::alerts::{CostAlerts, Notifier, Retry};
use crate::billing::metering::{Meter, Record};
use crate::ops::backup::BackupConfig;
use crate::store::{aws, Queue, Resources, Storage};
use crate::tenancy::auth::{bearer, Authenticator, TenantContext};
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

/// JSON logs (CloudWatch) at `RUST_LOG` or `info`. `RUST_LOG` takes levels and
/// `target=level` directives (`info,tenantai=debug`); span-field filters are not
/// supported (the filter that parses them brings a regex engine into every
/// function).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .without_time(),
        )
        .with(filter)
        .try_init();
}

/// The log filter for a `RUST_LOG` value: `info` when unset or unreadable.
fn log_filter(spec: Option<&str>) -> tracing_subscriber::filter::Targets {
    let default = || {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    };
    match spec.map(str::parse) {
        Some(Ok(targets)) => targets,
        Some(Err(e)) => {
            eprintln!(
                "RUST_LOG is not a list of level or target=level directives ({e}); logging at info"
            );
            default()
        }
        None => default(),
    }
}

/// The deployment's resource names: `TENANTAI_RESOURCE_PREFIX` (default
/// `tenantai`), each overridable (`TENANTAI_TABLE`, `TENANTAI_BUCKET`,
/// `TENANTAI_JOBS_QUEUE`: a name ending `-jobs`, its dead-letter queue that
/// name with `-dlq`).
pub fn resources_from_env() -> Result<Resources, String> {
    let prefix = std::env::var("TENANTAI_RESOURCE_PREFIX").unwrap_or_else(|_| "tenantai".into());
    let mut res = Resources::named(&prefix);
    if let Ok(t) = std::env::var("TENANTAI_TABLE") {
        res.table = t;
    }
    if let Ok(b) = std::env::var("TENANTAI_BUCKET") {
        res.bucket = b;
    }
    if let Ok(q) = std::env::var("TENANTAI_JOBS_QUEUE") {
        if !q.ends_with("-jobs") {
            return Err(format!("TENANTAI_JOBS_QUEUE ({q}) must end with '-jobs'"));
        }
        for spec in res.queues.iter_mut().filter(|s| s.name.ends_with("-jobs")) {
            spec.name = q.clone();
            if let Some(d) = spec.dead_letter.as_mut() {
                d.queue = format!("{q}-dlq");
            }
        }
    }
    Ok(res)
}

/// The role the api assumes per tenant for that tenant's items, when set.
pub const TENANT_ROLE_VAR: &str = "TENANTAI_TENANT_ROLE_ARN";

/// The app on the AWS adapters, configured from the environment, without the
/// object store (the authorizer). Built once in `main`, before the runtime
/// starts polling. With `TENANTAI_TENANT_ROLE_ARN` set, each tenant's items are
/// reached with that role assumed for the tenant.
pub async fn app_from_env() -> Result<Arc<App>, String> {
    build_app(false, Default::default()).await
}

/// The api's app: as [`app_from_env`], with the object store (the Files API;
/// batch workers use it too).
pub async fn api_app_from_env() -> Result<Arc<App>, String> {
    build_app(true, Default::default()).await
}

/// A batch worker's app (`gpu-worker work`): as the api's, with the models it
/// serves itself (model id -> its own base URL).
pub async fn worker_app_from_env(
    local_workers: std::collections::BTreeMap<String, String>,
) -> Result<Arc<App>, String> {
    build_app(true, local_workers).await
}

async fn build_app(
    objects: bool,
    local_workers: std::collections::BTreeMap<String, String>,
) -> Result<Arc<App>, String> {
    let mut config = Config::from_env()?;
    config.local_workers = local_workers;
    let (sdk, mut storage) = storage_from_env().await?;
    if objects {
        storage = storage.with_blobs(&sdk);
    }
    // The api's tenant items with tenant-scoped credentials (the CDK app sets it).
    if let Some(role) = std::env::var(TENANT_ROLE_VAR)
        .ok()
        .filter(|r| !r.is_empty())
    {
        storage = storage.with_tenant_credentials(&sdk, &role);
    }
    config.secrets = secrets_from_env(&sdk)?;
    App::with_sagemaker(storage, config, &sdk).map_err(|e| e.to_string())
}

/// The vault for secrets at rest: the KMS key `TENANTAI_KMS_KEY_ID` (or a key
/// file, `TENANTAI_SECRETS_KEY_FILE`); without either, setting a webhook fails.
fn secrets_from_env(
    sdk: &aws_config::SdkConfig,
) -> Result<crate::tenancy::secrets::Secrets, String> {
    crate::tenancy::secrets::Secrets::from_env(Some(sdk), None).map_err(|e| e.to_string())
}

/// The admin app: as [`app_from_env`], with the object store (GDPR exports
/// and erasure keep and delete objects).
pub async fn admin_app_from_env() -> Result<Arc<App>, String> {
    let mut config = Config::from_env()?;
    let sdk = aws::sdk_config().await;
    let storage = Storage::aws(&sdk, &resources_from_env()?, false)
        .await
        .map_err(|e| e.to_string())?;
    config.secrets = secrets_from_env(&sdk)?;
    App::with_sagemaker(storage, config, &sdk).map_err(|e| e.to_string())
}

/// The AWS configuration of the environment and the deployment's storage on it,
/// without the object store (functions that keep no objects carry no S3 client).
async fn storage_from_env() -> Result<(aws_config::SdkConfig, Storage), String> {
    let sdk = aws::sdk_config().await;
    let storage = Storage::aws_without_blobs(&sdk, &resources_from_env()?, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok((sdk, storage))
}

/// The backup function's state: the deployment's storage with its bucket, and
/// the backup configuration (`TENANTAI_BACKUP_KEEP_DAILY`,
/// `TENANTAI_BACKUP_KEEP_MONTHLY`, `TENANTAI_BACKUP_SEGMENTS`).
pub async fn backup_from_env() -> Result<(Storage, BackupConfig), String> {
    let config = BackupConfig::from_env()?;
    let sdk = aws::sdk_config().await;
    let storage = Storage::aws(&sdk, &resources_from_env()?, false)
        .await
        .map_err(|e| e.to_string())?;
    Ok((storage, config))
}

/// One scheduled backup: the table to the bucket, then retention. Answers
/// what was written and which old backups went.
pub async fn scheduled_backup(
    storage: &Storage,
    config: &BackupConfig,
    event: aws_lambda_events::eventbridge::EventBridgeEvent<Value>,
) -> Result<Value, crate::ops::OpsError> {
    let summary = crate::ops::backup::run(storage, config, &crate::ops::Quiet).await?;
    let m = &summary.manifest;
    tracing::info!(
        backup_id = %m.backup_id,
        items = m.total_items,
        parts = m.parts.len(),
        deleted = summary.deleted_backups.len(),
        schedule_time = ?event.time,
        "backup written"
    );
    Ok(json!({
        "backup_id": m.backup_id,
        "manifest": crate::ops::backup::Manifest::key(&m.backup_id),
        "total_items": m.total_items,
        "parts": m.parts.len(),
        "bytes": m.parts.iter().map(|p| p.bytes).sum::<u64>(),
        "deleted_backups": summary.deleted_backups,
    }))
}

/// Longest an invocation's usage flush waits for its response.
const FLUSH_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Registers an internal Lambda extension (INVOKE events) that keeps usage
/// events from waiting in memory while the environment is frozen: for each
/// invocation it waits until the api has answered (see
/// [`crate::billing::usage::UsageSink::request_done`]) and flushes the sink. Lambda
/// freezes the environment only once every extension has asked for its next
/// event, so the flush happens after the response is sent and costs the
/// client nothing. Returns the extension's run loop, to run beside the runtime.
pub async fn register_usage_flush(
    sink: crate::billing::usage::UsageSink,
) -> Result<
    impl std::future::Future<Output = Result<(), lambda_extension::Error>>,
    lambda_extension::Error,
> {
    let seen = Arc::new(tokio::sync::Mutex::new(0u64));
    let processor = lambda_extension::service_fn(move |event: lambda_extension::LambdaEvent| {
        let (sink, seen) = (sink.clone(), seen.clone());
        async move {
            if let lambda_extension::NextEvent::Invoke(invoke) = event.next {
                let now_ms = u64::try_from(crate::store::now_millis()).unwrap_or(0);
                let wait =
                    std::time::Duration::from_millis(invoke.deadline_ms.saturating_sub(now_ms))
                        .min(FLUSH_WAIT_MAX);
                let mut seen = seen.lock().await;
                sink.flush_after_request(&mut seen, wait).await;
            }
            Ok::<(), lambda_extension::Error>(())
        }
    });
    let registered = lambda_extension::Extension::new()
        .with_extension_name("tenantai-usage-flush")
        .with_events(&["INVOKE"])
        .with_events_processor(processor)
        .register()
        .await?;
    Ok(registered.run())
}

/// The metering function's state: the meter over the deployment's table and the
/// usage dead-letter queue (where malformed events go).
pub async fn metering_from_env() -> Result<(Meter, Arc<dyn Queue>), String> {
    let (_, storage) = storage_from_env().await?;
    let (_, dlq) = storage.usage_queues().map_err(|e| e.to_string())?;
    Ok((Meter::new(storage.table.clone()), dlq))
}

/// The cost-alerts function's state: alerts go to the SNS topic
/// `TENANTAI_ALERTS_TOPIC_ARN` (when set) and to each tenant's webhook.
pub async fn alerts_from_env() -> Result<CostAlerts, String> {
    let mut config = Config::from_env()?;
    let (sdk, storage) = storage_from_env().await?;
    config.secrets = secrets_from_env(&sdk)?;
    let mut notifier =
        Notifier::new(Retry::default(), config.webhook_rules()).map_err(|e| e.to_string())?;
    if let Ok(topic) = std::env::var("TENANTAI_ALERTS_TOPIC_ARN") {
        notifier = notifier.with_sns(aws_sdk_sns::Client::new(&sdk), topic);
    }
    Ok(CostAlerts::new(
        storage.table.clone(),
        config.tiers,
        notifier,
    ))
}

/// One scheduled run of the cost alerts. The schedule's time is the run's
/// "now", so a retried delivery of the same event judges the same moment.
pub async fn scheduled_alerts(
    alerts: &CostAlerts,
    event: aws_lambda_events::eventbridge::EventBridgeEvent<Value>,
) -> crate::error::ApiResult<crate::billing::alerts::RunSummary> {
    let now = event
        .time
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let summary = alerts.run(now).await?;
    tracing::info!(?summary, "cost alerts run");
    Ok(summary)
}

/// Folds an SQS batch and names the records to redeliver (ReportBatchItemFailures).
pub async fn sqs_batch(meter: &Meter, dlq: &dyn Queue, event: SqsEvent) -> SqsBatchResponse {
    let records: Vec<Record> = event
        .records
        .into_iter()
        .enumerate()
        .map(|(i, m)| Record {
            // A record without an id cannot be named in a failure; give it one.
            id: m.message_id.unwrap_or_else(|| format!("record-{i}")),
            body: m.body.unwrap_or_default(),
        })
        .collect();
    let outcome = meter.process(dlq, &records).await;
    tracing::info!(
        received = records.len(),
        added = outcome.added,
        duplicates = outcome.duplicates,
        dead_lettered = outcome.dead_lettered,
        failed = outcome.failed.len(),
        "usage batch folded"
    );
    let mut resp = SqsBatchResponse::default();
    for id in outcome.failed {
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        resp.batch_item_failures.push(failure);
    }
    resp
}

/// The context the authorizer hands API Gateway (flat strings, as HTTP API
/// simple responses carry them).
pub fn authorizer_context(ctx: &TenantContext) -> Value {
    let mut c = json!({
        "tenant_id": ctx.tenant_id,
        "key_id": ctx.key_id,
        "tier": ctx.tier,
        "scopes": ctx.scopes.join(" "),
    });
    if let Some(l) = ctx.key_limits {
        c["key_rpm"] = json!(l.requests_per_minute.to_string());
        c["key_tpm"] = json!(l.tokens_per_minute.to_string());
    }
    c
}

/// The tenant context API Gateway passes on from the authorizer.
pub fn context_from_authorizer(fields: &HashMap<String, Value>) -> Option<TenantContext> {
    let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_string);
    Some(TenantContext {
        tenant_id: text("tenant_id")?,
        key_id: text("key_id")?,
        tier: text("tier")?,
        scopes: text("scopes")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        key_limits: match (
            text("key_rpm").and_then(|v| v.parse().ok()),
            text("key_tpm").and_then(|v| v.parse().ok()),
        ) {
            (Some(requests_per_minute), Some(tokens_per_minute)) => {
                Some(crate::gateway::ratelimit::Limits {
                    requests_per_minute,
                    tokens_per_minute,
                })
            }
            _ => None,
        },
    })
}

/// Copies the authorizer's tenant context from an API Gateway request into the
/// request's extensions, where the api's routes find it (and trust it).
pub fn with_tenant_context<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    let (ctx, stage) = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => (
            c.authorizer
                .as_ref()
                .and_then(|a| context_from_authorizer(&a.fields)),
            None,
        ),
        // A REST API hands the authorizer's context over flat, and lambda_http
        // puts its stage in front of the path (the routes have none).
        Some(RequestContext::ApiGatewayV1(c)) => (
            context_from_authorizer(&c.authorizer.fields),
            c.stage.clone(),
        ),
        _ => (None, None),
    };
    if let Some(stage) = stage {
        strip_stage(&mut req, &stage);
    }
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx);
    }
    req
}

/// The authorizer: a bearer token in, `isAuthorized` and the context out.
/// Anything but a valid credential (storage trouble included) is refused.
pub async fn authorize(
    auth: &Authenticator,
    event: &ApiGatewayV2CustomAuthorizerV2Request,
) -> ApiGatewayV2CustomAuthorizerSimpleResponse {
    let header = event
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            event
                .identity_source
                .as_ref()
                .and_then(|s| s.first().cloned())
        });
    let outcome = match bearer(header.as_deref()) {
        Ok(token) => auth.authenticate(token).await,
        Err(e) => Err(e),
    };
    let mut resp = ApiGatewayV2CustomAuthorizerSimpleResponse::default();
    match outcome {
        Ok(ctx) => {
            resp.is_authorized = true;
            resp.context = authorizer_context(&ctx);
        }
        Err(e) => {
            tracing::info!(reason = %e, route = event.route_key.as_deref().unwrap_or(""), "request refused");
            resp.is_authorized = false;
            resp.context = json!({});
        }
    }
    resp
}

/// `/{stage}/v1/models?x` -> `/v1/models?x`.
fn strip_stage<B>(req: &mut axum::http::Request<B>, stage: &str) {
    let prefix = format!("/{stage}/");
    let Some(pq) = req.uri().path_and_query() else {
        return;
    };
    let Some(rest) = pq.as_str().strip_prefix(prefix.as_str()) else {
        return;
    };
    if let Ok(uri) = format!("/{rest}").parse() {
        *req.uri_mut() = uri;
    }
}

/// The resource a REST API authorizer's answer allows: every method and path of
/// the stage the request came through, so the cached answer serves them all.
fn stage_wildcard(method_arn: &str) -> String {
    let mut parts = method_arn.splitn(3, '/');
    match (parts.next(), parts.next()) {
        (Some(api), Some(stage)) => format!("{api}/{stage}/*"),
        _ => method_arn.to_string(),
    }
}

/// The REST API REQUEST authorizer: a bearer token in; an IAM policy allowing the
/// stage and the tenant context out. Anything but a valid credential is
/// `Err("Unauthorized")`, which API Gateway answers with a 401.
pub async fn authorize_rest(
    auth: &Authenticator,
    event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Result<Value, &'static str> {
    let header = event
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let outcome = match bearer(header) {
        Ok(token) => auth.authenticate(token).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(ctx) => Ok(json!({
            "principalId": ctx.tenant_id,
            "policyDocument": {"Version": "2012-10-17", "Statement": [{
                "Action": "execute-api:Invoke", "Effect": "Allow",
                "Resource": stage_wildcard(event.method_arn.as_deref().unwrap_or("*")),
            }]},
            "context": authorizer_context(&ctx),
        })),
        Err(e) => {
            tracing::info!(reason = %e, path = event.path.as_deref().unwrap_or(""), "request refused");
            Err("Unauthorized")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn a_rest_answer_allows_the_whole_stage() {
        assert_eq!(
            super::stage_wildcard(
                "arn:aws:execute-api:eu-west-1:1:abc/prod/POST/v1/chat/completions"
            ),
            "arn:aws:execute-api:eu-west-1:1:abc/prod/*"
        );
        assert_eq!(super::stage_wildcard("odd"), "odd");
    }

    #[test]
    fn log_filters_read_levels_and_targets() {
        let f = log_filter(Some("warn,tenantai=debug"));
        assert!(f.would_enable("tenantai::app", &Level::DEBUG));
        assert!(!f.would_enable("hyper", &Level::INFO));
        assert!(f.would_enable("hyper", &Level::WARN));
        let default = log_filter(None);
        assert!(default.would_enable("tenantai", &Level::INFO));
        assert!(!default.would_enable("tenantai", &Level::DEBUG));
        // Unreadable: the default, not silence.
        assert!(log_filter(Some("tenantai=[span{x=1}]")).would_enable("x", &Level::INFO));
    }
}
