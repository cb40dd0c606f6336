//! The tenant-facing, OpenAI-compatible API: `/v1/embeddings`,
//! `/v1/chat/completions` (in `chat`), `/v1/models`, `/v1/usage` (its chart
//! in `console`), `/v1/files` (in `files`) and `/v1/batches` (in `batches`).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{read_body, RequestId};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::gateway::embeddings::{response_body, EmbeddingList, EmbeddingRequest};
use crate::gateway::models::ModelVersion;
use crate::gateway::pipeline::{self, CacheControl, Endpoint};
use crate::tenancy::auth::{bearer, TenantContext};

/// The API's routes (host them with [`super::host`]).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/chat/completions", post(super::chat::chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/usage", get(super::usage::own_usage))
        .route("/v1/usage/chart", get(super::console::views::own_chart))
        .route(
            "/v1/files",
            post(super::files::upload)
                .layer(axum::extract::DefaultBodyLimit::disable())
                .get(super::files::list),
        )
        .route(
            "/v1/files/{id}",
            get(super::files::get).delete(super::files::delete),
        )
        .route("/v1/files/{id}/content", get(super::files::content))
        .route(
            "/v1/batches",
            post(super::batches::create).get(super::batches::list),
        )
        .route("/v1/batches/{id}", get(super::batches::get))
        .route("/v1/batches/{id}/cancel", post(super::batches::cancel))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        // The API's description holds no data: served without credentials.
        .route("/openapi.json", get(super::openapi::tenant_json))
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

/// Embeds one input or many (strings or token ids) with an embedding model.
#[utoipa::path(
    post, path = "/v1/embeddings", operation_id = "create_embedding", tag = "embeddings",
    params(("Cache-Control" = Option<String>, Header, description = "`no-cache` skips the answer cache, `no-store` keeps the answer out of it")),
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One vector per input", body = EmbeddingList),
        (status = 400, description = "A bad field, too many or too long inputs", body = ErrorBody),
        (status = 404, description = "No such model for this tenant", body = ErrorBody),
        (status = 413, description = "The body exceeds the size limit", body = ErrorBody),
        (status = 429, description = "Over a rate limit or the budget's hard cap", body = ErrorBody),
        (status = 503, description = "No backend can serve now; retry later", body = ErrorBody),
    ),
)]
pub async fn embeddings(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let who = pipeline::caller(&app, &ctx, "embeddings").await?;
    let bytes = read_body(body, app.config.max_body_bytes).await?;
    let req = EmbeddingRequest::parse(&bytes, who.1.max_inputs_per_request)?;
    if let Some(d) = req.dimensions {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!(
                "model '{}' does not support choosing dimensions ({d} asked)",
                req.model
            ),
        ));
    }
    let mut admitted = pipeline::admit(&app, &ctx, who, &request_id, &req).await?;
    let served = pipeline::serve(&mut admitted, &req, CacheControl::from_headers(&headers)).await?;
    let tokens = req.tokens(&served.answer);
    let mut resp = Json(response_body(
        &req.model,
        &served.answer.vectors,
        tokens.prompt,
        req.encoding_format,
    ))
    .into_response();
    admitted.headers(resp.headers_mut(), &served.version, served.hit);
    let receipt = admitted.finish(&served.version, tokens, served.hit, served.backend_ms);
    pipeline::receipt_headers(resp.headers_mut(), &receipt);
    Ok(resp)
}

/// A model the tenant may call (OpenAI's model object).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    pub created: i64,
    /// The owning tenant, `tier:<tier>` for a tier's model, else `tenantai`.
    pub owned_by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

fn model_object(v: &ModelVersion) -> ModelObject {
    let owned_by = match (&v.owner_tenant, &v.tier) {
        (Some(t), _) => t.clone(),
        (None, Some(tier)) => format!("tier:{tier}"),
        (None, None) => "tenantai".to_string(),
    };
    ModelObject {
        id: v.model.clone(),
        object: "model",
        created: v.created_at,
        owned_by,
    }
}

/// Lists the models the tenant may call.
#[utoipa::path(
    get, path = "/v1/models", operation_id = "list_models", tag = "models",
    responses((status = 200, description = "The models", body = ModelList)),
)]
pub async fn list_models(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
) -> ApiResult<Json<ModelList>> {
    ctx.require("models")?;
    let tenant = app.tenant(&ctx.tenant_id).await?;
    let models = app.registry.visible(&tenant).await?;
    Ok(Json(ModelList {
        object: "list",
        data: models.iter().map(model_object).collect(),
    }))
}

/// Retrieves a model the tenant may call.
#[utoipa::path(
    get, path = "/v1/models/{id}", operation_id = "retrieve_model", tag = "models",
    params(("id" = String, Path, description = "The model's id")),
    responses(
        (status = 200, description = "The model", body = ModelObject),
        (status = 404, description = "No such model for this tenant", body = ErrorBody),
    ),
)]
pub async fn get_model(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<ModelObject>> {
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
