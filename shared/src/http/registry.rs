//! Admin routes of the model registry, nested under `/admin/v1` by the admin
//! router: registering versions, reading and changing them, promotion and
//! rollback. Every change writes an audit record.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::admin::{body_json, value, Actor};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::gateway::models::{ModelVersion, VersionStatus};

/// The registry's routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/models", post(register_model).get(list_models))
        .route(
            "/models/{model}/versions/{version}",
            get(get_version).patch(update_version),
        )
        .route("/models/{model}/versions/{version}/promote", post(promote))
        .route("/models/{model}/rollback", post(rollback))
}

/// Registers a model version (`staged` until promoted, unless registered `live`).
#[utoipa::path(
    post, path = "/admin/v1/models", operation_id = "register_model", tag = "models",
    request_body = ModelVersion,
    responses(
        (status = 201, description = "The version", body = ModelVersion),
        (status = 400, description = "A bad field, an unknown tier or owner", body = ErrorBody),
        (status = 409, description = "That version exists", body = ErrorBody),
    ),
)]
pub async fn register_model(
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

/// Every registered version, in one list.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VersionList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelVersion>,
    /// Always false: the registry is listed whole.
    pub has_more: bool,
}

/// The versions a promotion or rollback changed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct VersionChanges {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelVersion>,
}

/// Lists every model version, of every model.
#[utoipa::path(
    get, path = "/admin/v1/models", operation_id = "list_model_versions", tag = "models",
    responses((status = 200, description = "The versions", body = VersionList)),
)]
pub async fn list_models(State(app): State<Arc<App>>) -> ApiResult<Json<VersionList>> {
    app.registry.invalidate();
    let all = app.registry.all().await?;
    Ok(Json(VersionList {
        object: "list",
        data: all.to_vec(),
        has_more: false,
    }))
}

/// Retrieves a model version.
#[utoipa::path(
    get, path = "/admin/v1/models/{model}/versions/{version}", operation_id = "retrieve_model_version", tag = "models",
    params(("model" = String, Path, description = "The model id"), ("version" = String, Path, description = "The version")),
    responses(
        (status = 200, description = "The version", body = ModelVersion),
        (status = 404, description = "No such version", body = ErrorBody),
    ),
)]
pub async fn get_version(
    State(app): State<Arc<App>>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<ModelVersion>> {
    Ok(Json(app.registry.get(&model, &version).await?))
}

/// The changes an admin may make to a version (`live` only by promoting).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionPatch {
    status: Option<VersionStatus>,
    canary_weight: Option<u8>,
    endpoint: Option<String>,
    price_per_1k_tokens_micros: Option<u64>,
}

/// Changes a version's status (not to `live`), canary weight, endpoint or price.
#[utoipa::path(
    patch, path = "/admin/v1/models/{model}/versions/{version}", operation_id = "update_model_version", tag = "models",
    params(("model" = String, Path, description = "The model id"), ("version" = String, Path, description = "The version")),
    request_body = VersionPatch,
    responses(
        (status = 200, description = "The version as it now is", body = ModelVersion),
        (status = 400, description = "A bad field", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
    ),
)]
pub async fn update_version(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((model, version)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<ModelVersion>> {
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
    Ok(Json(after))
}

async fn record_changes(
    app: &App,
    actor: &Actor,
    action: &str,
    changes: &[(ModelVersion, ModelVersion)],
) -> ApiResult<VersionChanges> {
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
    Ok(VersionChanges {
        object: "list",
        data: changes.iter().map(|(_, a)| a.clone()).collect(),
    })
}

/// Makes a version live (the model's live version before is retired).
#[utoipa::path(
    post, path = "/admin/v1/models/{model}/versions/{version}/promote", operation_id = "promote_model_version", tag = "models",
    params(("model" = String, Path, description = "The model id"), ("version" = String, Path, description = "The version")),
    responses(
        (status = 200, description = "The versions it changed", body = VersionChanges),
        (status = 404, description = "No such version", body = ErrorBody),
        (status = 409, description = "Changed concurrently; retry", body = ErrorBody),
    ),
)]
pub async fn promote(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path((model, version)): Path<(String, String)>,
) -> ApiResult<Json<VersionChanges>> {
    let changes = app.registry.promote(&model, &version).await?;
    Ok(Json(
        record_changes(&app, &actor, "model.promote", &changes).await?,
    ))
}

/// Makes the model's previous live version live again.
#[utoipa::path(
    post, path = "/admin/v1/models/{model}/rollback", operation_id = "rollback_model", tag = "models",
    params(("model" = String, Path, description = "The model id")),
    responses(
        (status = 200, description = "The versions it changed", body = VersionChanges),
        (status = 400, description = "No version to roll back to", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    ),
)]
pub async fn rollback(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(model): Path<String>,
) -> ApiResult<Json<VersionChanges>> {
    let changes = app.registry.rollback(&model).await?;
    Ok(Json(
        record_changes(&app, &actor, "model.rollback", &changes).await?,
    ))
}
