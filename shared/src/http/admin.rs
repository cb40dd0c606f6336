//! The admin API under `/admin/v1`: tenants, keys, models, overrides; the audit
//! trail, export and erasure routes are in [`super::ops`], the console's reads
//! (a tenant's charts, batches, alerts) and the console page in [`super::console`].
//! Every call needs an admin bearer token; every change writes an audit record.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{list_body, parse_json, read_body, PageParams};
use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::gateway::models::{ModelVersion, VersionStatus};
use crate::store::Page;
use crate::tenancy::auth::bearer;
use crate::tenancy::keys::KeyRequest;
use crate::tenancy::tenants::{Tenant, TenantPatch, TenantUpdate};

/// The admin making the call (the token's name, and the IAM caller), for the audit log.
pub use crate::tenancy::audit::Actor;

/// The header that carries the admin token where `Authorization` holds an AWS
/// signature (the admin API behind IAM auth).
pub const ADMIN_TOKEN_HEADER: &str = "x-tenantai-admin-token";

/// The admin routes (host them with [`super::host`]).
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/tenants/{id}",
            get(get_tenant)
                .patch(update_tenant)
                .delete(super::ops::erase_tenant),
        )
        .route(
            "/tenants/{id}/alert-webhook/rotate-secret",
            post(rotate_webhook_secret),
        )
        .route("/tenants/{id}/keys", post(create_key).get(list_keys))
        .route("/tenants/{id}/usage", get(super::usage::tenant_usage))
        .route("/usage", get(super::usage::all_usage))
        .route(
            "/tenants/{id}/keys/{key_id}",
            axum::routing::delete(revoke_key),
        )
        .route(
            "/tenants/{id}/model-overrides/{model}",
            put(set_override).delete(clear_override),
        )
        .route("/models", post(register_model).get(list_models))
        .route(
            "/models/{model}/versions/{version}",
            get(get_version).patch(update_version),
        )
        .route("/models/{model}/versions/{version}/promote", post(promote))
        .route("/models/{model}/rollback", post(rollback))
        .merge(super::ops::routes())
        .merge(super::console::admin_routes());
    Router::new()
        .nest("/admin/v1", v1)
        .layer(middleware::from_fn_with_state(app.clone(), admin_auth))
        // The console's own files hold no data: served without credentials.
        .merge(super::console::routes())
        .with_state(app)
}

async fn admin_auth(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let actor = match admin_token(req.headers()) {
        Some(token) => app.admins.verify(token).await,
        None => Err(ApiError::Unauthenticated(format!(
            "an admin token is required (`Authorization: Bearer ...` or `{ADMIN_TOKEN_HEADER}`)"
        ))),
    };
    match actor {
        Ok(name) => {
            let iam_arn = iam_caller(&req);
            req.extensions_mut().insert(Actor { name, iam_arn });
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The admin token: `x-tenantai-admin-token` when present (then `Authorization`
/// may hold a SigV4 signature), else the `Authorization` bearer token.
fn admin_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    match headers.get(ADMIN_TOKEN_HEADER) {
        Some(v) => v.to_str().ok().map(str::trim).filter(|t| !t.is_empty()),
        None => bearer(headers.get("authorization").and_then(|v| v.to_str().ok())).ok(),
    }
}

/// The IAM caller API Gateway authenticated (a REST API with IAM auth), if any.
fn iam_caller(req: &Request) -> Option<String> {
    use lambda_http::request::RequestContext;
    use lambda_http::RequestExt;
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.identity.user_arn.clone().filter(|arn| {
            arn.starts_with("arn:")
                && crate::tenancy::text::check_label("userArn", arn, 2048).is_ok()
        }),
        _ => None,
    }
}

async fn body_json<T: serde::de::DeserializeOwned>(body: axum::body::Body) -> ApiResult<T> {
    parse_json(&read_body(body, crate::limits::ADMIN_BODY_BYTES).await?)
}

fn value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    name: String,
    #[serde(default = "default_tier")]
    tier: String,
}

fn default_tier() -> String {
    "free".into()
}

async fn create_tenant(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let req: NewTenant = body_json(body).await?;
    let tenant = app
        .tenants
        .create(&req.name, &req.tier, &app.config.tiers)
        .await?;
    app.audit
        .record(
            &actor,
            "tenant.create",
            Some(&tenant.id),
            &tenant.id,
            Value::Null,
            tenant.view(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(tenant.view())).into_response())
}

async fn list_tenants(
    State(app): State<Arc<App>>,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Value>> {
    let page = app.tenants.list(p.after.clone(), p.limit()?).await?;
    Ok(Json(list_body(Page {
        items: page.items.iter().map(Tenant::view).collect(),
        next: page.next,
    })))
}

async fn get_tenant(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(app.tenants.get(&id).await?.view()))
}

async fn update_tenant(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
    let patch: TenantPatch = body_json(body).await?;
    let update = app.tenants.update(&id, &patch, &app.config.tiers).await?;
    audit_update(&app, &actor, "tenant.update", &update).await
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    overlap_secs: Option<u64>,
}

/// A new webhook signing secret, shown this once; the previous one keeps
/// signing for `overlap_secs` (default a day, at most a week).
async fn rotate_webhook_secret(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
    let bytes = read_body(body, crate::limits::SMALL_BODY_BYTES).await?;
    let req: RotateBody = if bytes.is_empty() {
        RotateBody::default()
    } else {
        parse_json(&bytes)?
    };
    let overlap = req
        .overlap_secs
        .unwrap_or(crate::billing::webhooks::DEFAULT_OVERLAP_SECS);
    let update = app.tenants.rotate_webhook_secret(&id, overlap).await?;
    audit_update(&app, &actor, "tenant.webhook.rotate", &update).await
}

/// Audits a tenant change and answers the tenant as it now is, with a signing
/// secret the change made (the only time it is shown).
async fn audit_update(
    app: &App,
    actor: &Actor,
    action: &str,
    update: &TenantUpdate,
) -> ApiResult<Json<Value>> {
    let id = &update.after.id;
    app.forget_tenant(id);
    app.audit
        .record(
            actor,
            action,
            Some(id),
            id,
            update.before.view(),
            update.after.view(),
        )
        .await?;
    let mut answer = update.after.view();
    if let (Some(secret), Some(hook)) = (&update.new_secret, answer.get_mut("alert_webhook")) {
        hook["secret"] = Value::from(secret.as_str());
    }
    Ok(Json(answer))
}

async fn create_key(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, crate::limits::SMALL_BODY_BYTES).await?;
    let req: KeyRequest = if bytes.is_empty() {
        KeyRequest::default()
    } else {
        parse_json(&bytes)?
    };
    app.tenants.get(&id).await?;
    let new = app.keys.create(&id, &req).await?;
    app.audit
        .record(
            &actor,
            "key.create",
            Some(&id),
            &new.key.key_id,
            Value::Null,
            value(&new.key),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(new)).into_response())
}

async fn list_keys(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Value>> {
    app.tenants.get(&id).await?;
    let page = app.keys.list(&id, p.after.clone(), p.limit()?).await?;
    let used = app.keys.last_used(&id).await?;
    let items = page
        .items
        .iter()
        .map(|k| {
            let mut v = value(k);
            v["last_used_at"] = used.get(&k.key_id).copied().into();
            v
        })
        .collect();
    Ok(Json(list_body(Page {
        items,
        next: page.next,
    })))
}

async fn revoke_key(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, key_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (before, after) = app.keys.revoke(&id, &key_id).await?;
    app.audit
        .record(
            &actor,
            "key.revoke",
            Some(&id),
            &key_id,
            value(&before),
            value(&after),
        )
        .await?;
    Ok(Json(value(&after)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    target: String,
}

async fn set_override(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, model)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
    let req: OverrideBody = body_json(body).await?;
    let versions = app.registry.all().await?;
    let tenant = app.tenants.get(&id).await?;
    if !versions
        .iter()
        .any(|v| v.model == req.target && v.visible_to(&tenant))
    {
        return Err(ApiError::invalid_param(
            "target",
            format!("no model '{}' this tenant may use", req.target),
        ));
    }
    change_override(&app, &actor, &id, "tenant.override.set", |t| {
        t.model_overrides.insert(model.clone(), req.target.clone());
    })
    .await
}

async fn clear_override(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, model)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    change_override(&app, &actor, &id, "tenant.override.clear", |t| {
        t.model_overrides.remove(&model);
    })
    .await
}

/// Changes a tenant's model overrides and audits the change.
async fn change_override(
    app: &App,
    actor: &Actor,
    id: &str,
    action: &str,
    change: impl Fn(&mut crate::tenancy::tenants::Tenant),
) -> ApiResult<Json<Value>> {
    let (before, after) = app
        .tenants
        .modify(id, |t| {
            change(t);
            Ok(())
        })
        .await?;
    app.forget_tenant(id);
    let target = format!("{id}/model-overrides");
    app.audit
        .record(
            actor,
            action,
            Some(id),
            &target,
            value(&before.model_overrides),
            value(&after.model_overrides),
        )
        .await?;
    Ok(Json(after.view()))
}

async fn register_model(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let v: ModelVersion = body_json(body).await?;
    if let Some(owner) = &v.owner_tenant {
        app.tenants.get(owner).await?;
    }
    if let Some(tier) = &v.tier {
        app.config.tiers.get(tier)?;
    }
    let v = app.registry.register(v).await?;
    let target = format!("{}@{}", v.model, v.version);
    app.audit
        .record(
            &actor,
            "model.register",
            v.owner_tenant.as_deref(),
            &target,
            Value::Null,
            value(&v),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_models(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    app.registry.invalidate();
    let all = app.registry.all().await?;
    Ok(Json(
        json!({"object": "list", "data": &*all, "has_more": false}),
    ))
}

async fn get_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(value(&app.registry.get(&model, &version).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionPatch {
    status: Option<VersionStatus>,
    canary_weight: Option<u8>,
    endpoint: Option<String>,
    price_per_1k_tokens_micros: Option<u64>,
}

async fn update_version(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((model, version)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
    let patch: VersionPatch = body_json(body).await?;
    if patch.status == Some(VersionStatus::Live) {
        return Err(ApiError::invalid_param(
            "status",
            "use the promote action to make a version live",
        ));
    }
    let before = app.registry.get(&model, &version).await?;
    let mut after = before.clone();
    if let Some(s) = patch.status {
        after.status = s;
    }
    if let Some(w) = patch.canary_weight {
        after.canary_weight = w;
    }
    if let Some(e) = patch.endpoint {
        after.endpoint = e;
    }
    if let Some(p) = patch.price_per_1k_tokens_micros {
        after.price_per_1k_tokens_micros = p;
    }
    app.registry.update(&after).await?;
    app.audit
        .record(
            &actor,
            "model.update",
            after.owner_tenant.as_deref(),
            &format!("{model}@{version}"),
            value(&before),
            value(&after),
        )
        .await?;
    Ok(Json(value(&after)))
}

async fn record_changes(
    app: &App,
    actor: &Actor,
    action: &str,
    changes: &[(ModelVersion, ModelVersion)],
) -> ApiResult<Value> {
    for (before, after) in changes {
        let target = format!("{}@{}", after.model, after.version);
        app.audit
            .record(
                actor,
                action,
                after.owner_tenant.as_deref(),
                &target,
                value(before),
                value(after),
            )
            .await?;
    }
    Ok(json!({"object": "list", "data": changes.iter().map(|(_, a)| a).collect::<Vec<_>>()}))
}

async fn promote(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let changes = app.registry.promote(&model, &version).await?;
    Ok(Json(
        record_changes(&app, &actor, "model.promote", &changes).await?,
    ))
}

async fn rollback(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    let changes = app.registry.rollback(&model).await?;
    Ok(Json(
        record_changes(&app, &actor, "model.rollback", &changes).await?,
    ))
}
