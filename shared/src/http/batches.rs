//! `/v1/batches`: create (with `Idempotency-Key`), retrieve, list (newest
//! first, `after` and `limit`), cancel. Key scope `batches`, plus the scope
//! of the endpoint the batch runs; retrieving and listing (progress and
//! counts, read only) also answer a key with the `usage` scope (the console's).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};

use super::files::OpenAiPage;
use super::{parse_json, read_body, PageParams};
use crate::app::App;
use crate::batch::batches;
use crate::batch::create::CreateBatch;
use crate::batch::object::BatchObject;
use crate::batch::BatchEndpoint;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::gateway::pipeline;
use crate::tenancy::auth::TenantContext;

/// Creates a batch of an uploaded file's lines; the same `Idempotency-Key`
/// answers the batch it created before.
#[utoipa::path(
    post, path = "/v1/batches", operation_id = "create_batch", tag = "batches",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried create answer the first one's batch")),
    request_body = CreateBatch,
    responses(
        (status = 200, description = "The batch, validating", body = BatchObject),
        (status = 400, description = "A bad field, or an input file that cannot run", body = ErrorBody),
        (status = 404, description = "No such input file for this tenant", body = ErrorBody),
        (status = 409, description = "The Idempotency-Key was used for another request", body = ErrorBody),
        (status = 413, description = "The body exceeds 64 KiB", body = ErrorBody),
        (status = 429, description = "The batch queue or the budget is full", body = ErrorBody),
    ),
)]
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<BatchObject>> {
    let (tenant, tier) = pipeline::caller(&app, &ctx, "batches").await?;
    let bytes = read_body(body, crate::limits::SMALL_BODY_BYTES).await?;
    let req: CreateBatch = parse_json(&bytes)?;
    if let Ok(endpoint) = BatchEndpoint::parse(&req.endpoint) {
        ctx.require(endpoint.scope())?;
    }
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII."))?,
        ),
        None => None,
    };
    let b =
        crate::batch::create::create(&app, (&tenant, &tier), &ctx.key_id, &req, idempotency_key)
            .await?;
    let (b, n) = batches::get(app.storage.table.as_ref(), &tenant.id, &b.id).await?;
    Ok(Json(b.object(&n)))
}

/// Reading batches needs `batches`, or `usage` (a reporting key sees progress).
fn may_read(ctx: &TenantContext) -> ApiResult<()> {
    if ctx.scopes.iter().any(|s| s == "usage") {
        Ok(())
    } else {
        ctx.require("batches")
    }
}

/// Retrieves one of the tenant's batches (scope `batches` or `usage`).
#[utoipa::path(
    get, path = "/v1/batches/{id}", operation_id = "retrieve_batch", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch", body = BatchObject),
        (status = 404, description = "No such batch for this tenant", body = ErrorBody),
    ),
)]
pub async fn get(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchObject>> {
    may_read(&ctx)?;
    let (b, n) = batches::get(app.storage.table.as_ref(), &ctx.tenant_id, &id).await?;
    Ok(Json(b.object(&n)))
}

/// Lists the tenant's batches, newest first (scope `batches` or `usage`).
#[utoipa::path(
    get, path = "/v1/batches", operation_id = "list_batches", tag = "batches",
    params(PageParams),
    responses(
        (status = 200, description = "A page of batches", body = OpenAiPage<BatchObject>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<OpenAiPage<BatchObject>>> {
    let p = super::ops::query(p)?;
    may_read(&ctx)?;
    Ok(Json(page(&app, &ctx.tenant_id, &p).await?))
}

/// A page of the tenant's batches, newest first, as `/v1/batches` lists them
/// (the admin API lists a tenant's the same way).
pub async fn page(
    app: &App,
    tenant_id: &str,
    p: &PageParams,
) -> ApiResult<OpenAiPage<BatchObject>> {
    let after = p.after.as_deref().filter(|a| !a.is_empty());
    if after.is_some_and(|a| a.len() > 128) {
        return Err(ApiError::invalid_param("after", "after names a batch id"));
    }
    let (page, more) =
        batches::list(app.storage.table.as_ref(), tenant_id, p.limit()?, after).await?;
    let data = page.iter().map(|(b, n)| b.object(n)).collect();
    Ok(super::files::page(data, more, |b: &BatchObject| &b.id))
}

/// Cancels a batch: lines not yet run are not run.
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", operation_id = "cancel_batch", tag = "batches",
    params(("id" = String, Path, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch, cancelling or cancelled", body = BatchObject),
        (status = 404, description = "No such batch for this tenant", body = ErrorBody),
        (status = 409, description = "The batch has already ended", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchObject>> {
    ctx.require("batches")?;
    let table = app.storage.table.as_ref();
    let b = batches::cancel(table, &ctx.tenant_id, &id).await?;
    if b.chunks == 0 {
        // Not split yet: nothing runs, so it ends now (a validation under way
        // finds it changed and stops).
        batches::fail(table, &ctx.tenant_id, &id, Vec::new()).await?;
    }
    let (b, n) = batches::get(table, &ctx.tenant_id, &id).await?;
    Ok(Json(b.object(&n)))
}
