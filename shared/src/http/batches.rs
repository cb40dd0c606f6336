//! `/v1/batches`: create (with `Idempotency-Key`), retrieve, list (newest
//! first, `after` and `limit`), cancel. Key scope `batches`, plus the scope
//! of the endpoint the batch runs; retrieving and listing (progress and
//! counts, read only) also answer a key with the `usage` scope (the console's).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use serde_json::Value;

use super::{parse_json, read_body, PageParams};
use crate::app::App;
use crate::batch::batches;
use crate::batch::create::CreateBatch;
use crate::batch::BatchEndpoint;
use crate::error::{ApiError, ApiResult};
use crate::gateway::pipeline;
use crate::tenancy::auth::TenantContext;

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<Value>> {
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

pub async fn get(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    may_read(&ctx)?;
    let (b, n) = batches::get(app.storage.table.as_ref(), &ctx.tenant_id, &id).await?;
    Ok(Json(b.object(&n)))
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Value>> {
    may_read(&ctx)?;
    Ok(Json(page(&app, &ctx.tenant_id, &p).await?))
}

/// A page of the tenant's batches, newest first, as `/v1/batches` lists them
/// (the admin API lists a tenant's the same way).
pub async fn page(app: &App, tenant_id: &str, p: &PageParams) -> ApiResult<Value> {
    let after = p.after.as_deref().filter(|a| !a.is_empty());
    if after.is_some_and(|a| a.len() > 128) {
        return Err(ApiError::invalid_param("after", "after names a batch id"));
    }
    let (page, more) =
        batches::list(app.storage.table.as_ref(), tenant_id, p.limit()?, after).await?;
    let data = page.iter().map(|(b, n)| b.object(n)).collect();
    Ok(super::files::page(data, more))
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
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
