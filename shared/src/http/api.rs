//! The tenant-facing, OpenAI-compatible API: `/v1/embeddings`, `/v1/models`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;

use super::{read_body, RequestId};
use crate::app::App;
use crate::gateway::cache::Cache;
use crate::tenancy::auth::{bearer, TenantContext};
use std::time::Duration;

use crate::billing::metering::{cost_micros, UsageEvent};
use crate::error::{ApiError, ApiResult};
use crate::gateway::backend::BackendFailure;
use crate::gateway::breaker::Outcome;
use crate::gateway::embeddings::{response_body, EmbeddingRequest, Embeddings};
use crate::gateway::models::{BackendKind, ModelVersion, Route};
use crate::gateway::ratelimit::{insert_headers, Scope};
use crate::store::now_millis;
use crate::tenancy::tenants::{CacheScope, Tenant};

/// The API's routes (host them with [`super::host`]).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/usage", get(super::usage::own_usage))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .with_state(app)
}

/// Behind API Gateway the authorizer's context arrives as a request extension
/// and is trusted; elsewhere (the dev host) the bearer token is checked here.
async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    if req.extensions().get::<TenantContext>().is_none() {
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let ctx = match bearer(header) {
            Ok(token) => app.auth.authenticate(token).await,
            Err(e) => Err(e),
        };
        match ctx {
            Ok(ctx) => {
                req.extensions_mut().insert(ctx);
            }
            Err(e) => return e.into_response(),
        }
    }
    next.run(req).await
}

struct CacheControl {
    read: bool,
    write: bool,
}

fn cache_control(headers: &HeaderMap) -> CacheControl {
    let value = headers
        .get_all("cache-control")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    let has = |d: &str| value.split(',').any(|p| p.trim() == d);
    CacheControl {
        read: !has("no-cache"),
        write: !has("no-store"),
    }
}

fn header(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn embeddings(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let started = Instant::now();
    ctx.require("embeddings")?;
    let tenant = app.tenant(&ctx.tenant_id).await?;
    let tier = app.config.tiers.get(&tenant.tier)?;
    let bytes = read_body(body, app.config.max_body_bytes).await?;
    let req = EmbeddingRequest::parse(&bytes, tier.max_inputs_per_request)?;
    if let Some(d) = req.dimensions {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!(
                "model '{}' does not support choosing dimensions ({d} asked)",
                req.model
            ),
        ));
    }
    let tenant_limits = tenant.rate_limits.unwrap_or_else(|| tier.limits());
    let scopes = [
        Scope {
            id: format!("tenant:{}", tenant.id),
            limits: tenant_limits,
        },
        Scope {
            id: format!("key:{}", ctx.key_id),
            limits: ctx.key_limits.unwrap_or(tenant_limits),
        },
    ];
    let spread = u64::from(crate::gateway::models::bucket(&request_id));
    let admission = app
        .limiter
        .admit(&scopes, req.estimate_tokens(), now_millis(), spread)
        .await?;
    let routes = app
        .registry
        .route_chain(&tenant, &req.model, &request_id)
        .await?;
    // The budget gate holds back the most this request can cost (at the dearest
    // version it may fall back to) until the real cost is known.
    let now_ms = now_millis();
    let month = crate::billing::metering::month_of(now_ms);
    let dearest = routes
        .iter()
        .map(|r| r.version.price_per_1k_tokens_micros)
        .max()
        .unwrap_or(0);
    let most = cost_micros(req.max_tokens(), dearest).map_err(money)?;
    let reservation = app
        .budget
        .reserve(&tenant.id, &month, &tenant.budget(tier), most)
        .await?;
    let served = serve(&app, &tenant, &routes, &req, cache_control(&headers)).await;
    // What is billed never passes what was reserved: the tokens are held to
    // the request's bound, at a price no dearer than the dearest reserved for.
    let billed = served.as_ref().ok().map(|s| {
        let tokens = req.billable(s.result.prompt_tokens);
        let cost = cost_micros(tokens, s.version.price_per_1k_tokens_micros).unwrap_or(most);
        (tokens, cost.min(most))
    });
    if let Some(r) = reservation {
        let budget = app.budget.clone();
        let actual = billed.map(|(_, cost)| cost);
        tokio::spawn(async move { budget.settle(&r, actual).await });
    }
    let served = served?;
    let (tokens, cost) = billed.unwrap_or((0, 0));
    let version = &served.version;

    // The real token count replaces the estimate off the response path.
    let (limiter, settled) = (app.limiter.clone(), admission.clone());
    tokio::spawn(async move { limiter.settle(&settled, tokens).await });
    let mut resp = Json(response_body(
        &req.model,
        &served.result.vectors,
        tokens,
        req.encoding_format,
    ))
    .into_response();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let overhead_ms = (latency_ms - served.backend_ms).max(0.0);
    let h = resp.headers_mut();
    insert_headers(h, &admission.standing);
    h.insert(
        "x-tenantai-model-version",
        header(&format!("{}@{}", version.model, version.version)),
    );
    h.insert(
        "x-tenantai-cache",
        HeaderValue::from_static(if served.hit { "hit" } else { "miss" }),
    );
    h.insert(
        "x-tenantai-overhead-ms",
        header(&format!("{overhead_ms:.3}")),
    );
    h.insert("x-tenantai-cost-micros", HeaderValue::from(cost));
    // Cache hits are billed like misses (the price of the version that served
    // them) and marked as hits; compute time is only what a backend spent.
    app.usage.emit(&UsageEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.id.clone(),
        key_id: ctx.key_id.clone(),
        model: version.model.clone(),
        model_version: version.version.clone(),
        requests: 1,
        inputs: u64::try_from(req.len()).unwrap_or(u64::MAX),
        tokens,
        completion_tokens: 0,
        cache_hit: served.hit,
        cache_hits: 0,
        latency_ms,
        compute_ms: if served.hit {
            0
        } else {
            whole_ms(served.backend_ms)
        },
        cost_micros: cost,
        at_ms: now_ms,
    });
    tracing::info!(
        tenant_id = %ctx.tenant_id, key_id = %ctx.key_id, model = %version.model, version = %version.version,
        inputs = req.len(), tokens, cache_hit = served.hit,
        latency_ms, overhead_ms, request_id = %request_id, "embeddings"
    );
    crate::gateway::telemetry::record(&crate::gateway::telemetry::RequestMetrics {
        model: &version.model,
        version: &version.version,
        tenant_id: &tenant.id,
        latency_ms,
        overhead_ms,
        backend_ms: served.backend_ms,
        cache_hit: served.hit,
        tokens,
        inputs: req.len(),
    });
    Ok(resp)
}

/// A money figure that does not fit: our arithmetic, not the client's request.
fn money(e: crate::billing::amounts::Overflow) -> ApiError {
    ApiError::Internal(format!("cost: {e}"))
}

/// Milliseconds as a whole, non-negative count.
fn whole_ms(ms: f64) -> u64 {
    // Float-to-int `as` saturates (NaN is 0): the one safe cast here.
    ms.round().max(0.0) as u64
}

/// What served a request.
struct Served {
    version: ModelVersion,
    result: Arc<Embeddings>,
    hit: bool,
    /// Time spent waiting on backends (failed attempts included).
    backend_ms: f64,
}

/// Serves from the cache or a backend, falling back along the route chain past
/// open circuits and failing backends; 503 with Retry-After when none is left.
async fn serve(
    app: &App,
    tenant: &Tenant,
    routes: &[Route],
    req: &EmbeddingRequest,
    control: CacheControl,
) -> ApiResult<Served> {
    let mut backend_ms = 0.0;
    let mut retry_after = Duration::from_secs(1);
    let request_hash = req.canonical_hash();
    for route in routes {
        let version = &route.version;
        let scope = if tenant.cache_scope == CacheScope::Shared && version.is_shared() {
            "shared"
        } else {
            tenant.id.as_str()
        };
        let key = Cache::key(scope, &version.model, &version.version, &request_hash);
        if control.read {
            if let Some(result) = app.cache.get(&key).await {
                return Ok(Served {
                    version: version.clone(),
                    result,
                    hit: true,
                    backend_ms,
                });
            }
        }
        let backend = format!("{:?}:{}", version.backend, version.endpoint);
        if let Err(wait) = app.breakers.allow(&backend) {
            retry_after = retry_after.max(wait);
            tracing::info!(model = %version.model, backend = %backend, "circuit open; trying the next route");
            continue;
        }
        let call = Instant::now();
        let outcome = call_backend(app, version, req).await;
        backend_ms += call.elapsed().as_secs_f64() * 1000.0;
        match outcome {
            Ok(e) => {
                app.breakers.record(&backend, Outcome::Success);
                let result = Arc::new(e);
                if control.write {
                    app.cache.put(&key, result.clone()).await;
                }
                return Ok(Served {
                    version: version.clone(),
                    result,
                    hit: false,
                    backend_ms,
                });
            }
            Err(BackendFailure::Rejected(e)) => {
                app.breakers.record(&backend, Outcome::Success);
                return Err(e);
            }
            Err(BackendFailure::Down { message, timeout }) => {
                tracing::warn!(model = %version.model, version = %version.version, backend = %backend, error = %message, timeout, "backend failed; trying the next route");
                app.breakers.record(
                    &backend,
                    if timeout {
                        Outcome::Timeout
                    } else {
                        Outcome::Failure
                    },
                );
            }
        }
    }
    Err(ApiError::Unavailable {
        message: format!(
            "no backend for model '{}' can serve now; retry shortly",
            req.model
        ),
        retry_after_secs: retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
    })
}

async fn call_backend(
    app: &App,
    version: &ModelVersion,
    req: &EmbeddingRequest,
) -> Result<Embeddings, BackendFailure> {
    match version.backend {
        BackendKind::Worker => app.worker.embed(version, req).await,
        BackendKind::Sagemaker => match &app.sagemaker {
            Some(sm) => sm.embed(version, req).await,
            None => Err(BackendFailure::Down {
                message: "this deployment has no AWS configuration for SageMaker".into(),
                timeout: false,
            }),
        },
    }
}

fn model_object(v: &ModelVersion) -> serde_json::Value {
    let owned_by = match (&v.owner_tenant, &v.tier) {
        (Some(t), _) => t.clone(),
        (None, Some(tier)) => format!("tier:{tier}"),
        (None, None) => "tenantai".to_string(),
    };
    json!({"id": v.model, "object": "model", "created": v.created_at, "owned_by": owned_by})
}

async fn list_models(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
) -> ApiResult<Json<serde_json::Value>> {
    ctx.require("models")?;
    let tenant = app.tenant(&ctx.tenant_id).await?;
    let models = app.registry.visible(&tenant).await?;
    Ok(Json(
        json!({"object": "list", "data": models.iter().map(model_object).collect::<Vec<_>>()}),
    ))
}

async fn get_model(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    ctx.require("models")?;
    let tenant = app.tenant(&ctx.tenant_id).await?;
    let models = app.registry.visible(&tenant).await?;
    models
        .iter()
        .find(|m| m.model == id)
        .map(|m| Json(model_object(m)))
        .ok_or(ApiError::NotFound {
            message: format!("The model '{id}' does not exist or you do not have access to it."),
            code: "model_not_found",
        })
}
