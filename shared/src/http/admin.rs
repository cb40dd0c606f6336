//! The admin API under `/admin/v1`: tenants, keys, overrides; the model registry
//! is in [`super::registry`], the audit trail, export and erasure routes in
//! [`super::ops`], the console's reads (a tenant's charts, batches, alerts) and
//! the console page in [`super::console`].
//! Every call needs an admin bearer token; every change writes an audit record.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{list_body, parse_json, read_body, ListPage, PageParams};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::store::Page;
use crate::tenancy::auth::bearer;
use crate::tenancy::keys::{ApiKey, KeyRequest, NewKey};
use crate::tenancy::tenants::{Tenant, TenantPatch, TenantUpdate, TenantView};

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
        .merge(super::registry::routes())
        .merge(super::ops::routes())
        .merge(super::console::admin_routes());
    Router::new()
        .nest("/admin/v1", v1)
        .layer(middleware::from_fn_with_state(app.clone(), admin_auth))
        // The console's own files hold no data: served without credentials.
        .merge(super::console::routes())
        // The admin API's description holds no data: served without credentials.
        .route("/admin/v1/openapi.json", get(super::openapi::admin_json))
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

pub(crate) async fn body_json<T: serde::de::DeserializeOwned>(
    body: axum::body::Body,
) -> ApiResult<T> {
    parse_json(&read_body(body, crate::limits::ADMIN_BODY_BYTES).await?)
}

pub(crate) fn value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A new tenant: its name and tier (default `free`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
    #[serde(default = "default_tier")]
    #[schema(example = "free")]
    tier: String,
}

fn default_tier() -> String {
    "free".into()
}

/// Creates a tenant.
#[utoipa::path(
    post, path = "/admin/v1/tenants", operation_id = "create_tenant", tag = "tenants",
    request_body = NewTenant,
    responses(
        (status = 201, description = "The tenant", body = TenantView),
        (status = 400, description = "A bad name or an unknown tier", body = ErrorBody),
    ),
)]
pub async fn create_tenant(
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
            value(&tenant.view()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(tenant.view())).into_response())
}

/// Lists the tenants.
#[utoipa::path(
    get, path = "/admin/v1/tenants", operation_id = "list_tenants", tag = "tenants",
    params(PageParams),
    responses(
        (status = 200, description = "A page of tenants", body = ListPage<TenantView>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn list_tenants(
    State(app): State<Arc<App>>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<ListPage<TenantView>>> {
    let p = super::ops::query(p)?;
    let page = app.tenants.list(p.after.clone(), p.limit()?).await?;
    Ok(Json(list_body(Page {
        items: page.items.iter().map(Tenant::view).collect(),
        next: page.next,
    })))
}

/// Retrieves a tenant.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}", operation_id = "retrieve_tenant", tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn get_tenant(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantView>> {
    Ok(Json(app.tenants.get(&id).await?.view()))
}

/// Changes a tenant: name, tier, status, budget, limits, cache scope, alerts.
/// Setting `alert_webhook_url` answers the new signing secret, this once.
#[utoipa::path(
    patch, path = "/admin/v1/tenants/{id}", operation_id = "update_tenant", tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id")),
    request_body = TenantPatch,
    responses(
        (status = 200, description = "The tenant as it now is", body = TenantView),
        (status = 400, description = "A bad field", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Changed concurrently; retry", body = ErrorBody),
    ),
)]
pub async fn update_tenant(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Json<TenantView>> {
    let patch: TenantPatch = body_json(body).await?;
    let update = app.tenants.update(&id, &patch, &app.config.tiers).await?;
    audit_update(&app, &actor, "tenant.update", &update).await
}

/// How long the previous secret keeps signing (an empty body: the default).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// Seconds (default 86400, at most 604800).
    #[schema(maximum = 604800)]
    overlap_secs: Option<u64>,
}

/// A new webhook signing secret, shown this once; the previous one keeps
/// signing for `overlap_secs` (default a day, at most a week).
#[utoipa::path(
    post, path = "/admin/v1/tenants/{id}/alert-webhook/rotate-secret", operation_id = "rotate_webhook_secret", tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id")),
    request_body(content = Option<RotateBody>, description = "May be empty"),
    responses(
        (status = 200, description = "The tenant, its webhook with the new `secret`", body = TenantView),
        (status = 400, description = "A bad field, or no webhook to rotate", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn rotate_webhook_secret(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    body: axum::body::Body,
) -> ApiResult<Json<TenantView>> {
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
) -> ApiResult<Json<TenantView>> {
    let id = &update.after.id;
    app.forget_tenant(id);
    app.audit
        .record(
            actor,
            action,
            Some(id),
            id,
            value(&update.before.view()),
            value(&update.after.view()),
        )
        .await?;
    let mut answer = update.after.view();
    if let (Some(secret), Some(hook)) = (&update.new_secret, answer.alert_webhook.as_mut()) {
        hook.secret = Some(secret.clone());
    }
    Ok(Json(answer))
}

/// Creates an API key for a tenant; the answer holds its secret, this once.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{id}/keys", operation_id = "create_key", tag = "keys",
    params(("id" = String, Path, description = "The tenant's id")),
    request_body(content = Option<KeyRequest>, description = "May be empty: a key with every scope"),
    responses(
        (status = 201, description = "The key and its secret", body = NewKey),
        (status = 400, description = "A bad field", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn create_key(
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

/// A key as listed: with when it last authenticated a request.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct KeyView {
    #[serde(flatten)]
    pub key: ApiKey,
    /// Unix seconds (to the minute), or null if never used.
    #[schema(required = true)]
    pub last_used_at: Option<i64>,
}

/// Lists a tenant's keys (never their secrets).
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/keys", operation_id = "list_keys", tag = "keys",
    params(("id" = String, Path, description = "The tenant's id"), PageParams),
    responses(
        (status = 200, description = "A page of keys", body = ListPage<KeyView>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn list_keys(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<ListPage<KeyView>>> {
    let p = super::ops::query(p)?;
    app.tenants.get(&id).await?;
    let page = app.keys.list(&id, p.after.clone(), p.limit()?).await?;
    let used = app.keys.last_used(&id).await?;
    let items = page
        .items
        .iter()
        .map(|k| KeyView {
            key: k.clone(),
            last_used_at: used.get(&k.key_id).copied(),
        })
        .collect();
    Ok(Json(list_body(Page {
        items,
        next: page.next,
    })))
}

/// Revokes a key: it authenticates nothing from now on.
#[utoipa::path(
    delete, path = "/admin/v1/tenants/{id}/keys/{key_id}", operation_id = "revoke_key", tag = "keys",
    params(("id" = String, Path, description = "The tenant's id"), ("key_id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "The revoked key", body = ApiKey),
        (status = 404, description = "No such key of this tenant", body = ErrorBody),
    ),
)]
pub async fn revoke_key(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, key_id)): Path<(String, String)>,
) -> ApiResult<Json<ApiKey>> {
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
    Ok(Json(after))
}

/// The model to serve instead.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideBody {
    target: String,
}

/// Serves `target` whenever the tenant asks for `model`.
#[utoipa::path(
    put, path = "/admin/v1/tenants/{id}/model-overrides/{model}", operation_id = "set_model_override", tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id"), ("model" = String, Path, description = "The model id the tenant asks for")),
    request_body = OverrideBody,
    responses(
        (status = 200, description = "The tenant as it now is", body = TenantView),
        (status = 400, description = "No such target this tenant may use", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn set_override(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, model)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<TenantView>> {
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

/// Serves `model` itself again.
#[utoipa::path(
    delete, path = "/admin/v1/tenants/{id}/model-overrides/{model}", operation_id = "clear_model_override", tag = "tenants",
    params(("id" = String, Path, description = "The tenant's id"), ("model" = String, Path, description = "The model id the tenant asks for")),
    responses(
        (status = 200, description = "The tenant as it now is", body = TenantView),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn clear_override(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((id, model)): Path<(String, String)>,
) -> ApiResult<Json<TenantView>> {
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
) -> ApiResult<Json<TenantView>> {
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
