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
use crate::auth::{bearer, TenantContext};
use crate::cache::Cache;
use crate::embeddings::{response_body, EmbeddingRequest};
use crate::error::{ApiError, ApiResult};
use crate::models::{BackendKind, ModelVersion};
use crate::tenants::CacheScope;

/// The API's routes (host them with [`super::host`]).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
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
    let route = app.registry.route(&tenant, &req.model, &request_id).await?;
    let version = &route.version;
    if let Some(d) = req.dimensions {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!(
                "model '{}' does not support choosing dimensions ({d} asked)",
                req.model
            ),
        ));
    }
    let scope = if tenant.cache_scope == CacheScope::Shared && version.is_shared() {
        "shared".to_string()
    } else {
        tenant.id.clone()
    };
    let key = Cache::key(
        &scope,
        &version.model,
        &version.version,
        &req.canonical_hash(),
    );
    let control = cache_control(&headers);
    let cached = if control.read {
        app.cache.get(&key).await
    } else {
        None
    };
    let hit = cached.is_some();
    let result = match cached {
        Some(e) => e,
        None => {
            let e = Arc::new(call_backend(&app, version, &req).await?);
            if control.write {
                app.cache.put(&key, e.clone()).await;
            }
            e
        }
    };
    tracing::info!(
        tenant_id = %ctx.tenant_id, key_id = %ctx.key_id, model = %version.model, version = %version.version,
        inputs = req.len(), tokens = result.prompt_tokens, cache_hit = hit,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0, request_id = %request_id, "embeddings"
    );
    let mut resp = Json(response_body(&req.model, &result, req.encoding_format)).into_response();
    let h = resp.headers_mut();
    h.insert(
        "x-tenantai-model-version",
        header(&format!("{}@{}", version.model, version.version)),
    );
    h.insert(
        "x-tenantai-cache",
        HeaderValue::from_static(if hit { "hit" } else { "miss" }),
    );
    Ok(resp)
}

async fn call_backend(
    app: &App,
    version: &ModelVersion,
    req: &EmbeddingRequest,
) -> ApiResult<crate::embeddings::Embeddings> {
    match version.backend {
        BackendKind::Worker => app.worker.embed(version, req).await,
        BackendKind::Sagemaker => Err(ApiError::Unavailable {
            message: format!(
                "model '{}' is served by SageMaker, which this deployment does not reach",
                version.model
            ),
            retry_after_secs: 60,
        }),
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
