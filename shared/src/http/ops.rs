//! Admin routes of operations: the audit trail (filters, a JSONL export, chain
//! verification) and per-tenant GDPR export and erasure.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use utoipa::{IntoParams, ToSchema};

use super::admin::Actor;
use super::{list_body, ListPage, PageParams};
use crate::app::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ops::erase::{Eraser, ErasureJob, Outcome};
use crate::ops::export::Index;
use crate::store::BlobReader;
use crate::tenancy::audit::{AuditRecord, Filter, Verdict};

/// The operations routes, nested under `/admin/v1` by the admin router.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/audit", get(list_audit))
        .route("/audit/export", get(export_audit))
        .route("/audit/verify", get(verify_audit))
        .route("/tenants/{id}/export", post(export_tenant))
        .route("/tenants/{id}/exports/{export_id}", get(download_export))
        .route("/tenants/{id}/erasure", get(erasure_status))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// The tenant's chain (default: the platform's chain).
    tenant_id: Option<String>,
    /// Unix seconds, or a day (YYYY-MM-DD, from its first second).
    from: Option<String>,
    /// Unix seconds, or a day (YYYY-MM-DD, to its last second).
    to: Option<String>,
    /// Only entries by this admin.
    actor: Option<String>,
    /// Only entries of this action (`tenant.create`, `key.revoke`, ...).
    action: Option<String>,
    /// 1 to 100 (default 20); not for the export.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The previous page's `next`; not for the export.
    after: Option<String>,
}

/// Query parameters, a malformed query string answering 400 in the OpenAI shape.
pub(crate) fn query<T>(p: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    p.map(|Query(p)| p)
        .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
}

/// A time bound: Unix seconds, or a day (YYYY-MM-DD: its first second for
/// `from`, its last for `to`).
fn bound(param: &'static str, value: Option<&str>, end_of_day: bool) -> ApiResult<Option<i64>> {
    let Some(v) = value else { return Ok(None) };
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(Some(secs));
    }
    let day = crate::billing::metering::parse_day(v).ok_or_else(|| {
        ApiError::invalid_param(param, format!("{param} must be Unix seconds or YYYY-MM-DD"))
    })?;
    let start = day.midnight().assume_utc().unix_timestamp();
    Ok(Some(if end_of_day { start + 86_399 } else { start }))
}

impl AuditParams {
    fn filter(&self) -> ApiResult<Filter> {
        let f = Filter {
            from: bound("from", self.from.as_deref(), false)?,
            to: bound("to", self.to.as_deref(), true)?,
            actor: self.actor.clone(),
            action: self.action.clone(),
        };
        if let (Some(a), Some(b)) = (f.from, f.to) {
            if a > b {
                return Err(ApiError::invalid_param("from", "from is after to"));
            }
        }
        Ok(f)
    }
}

/// Lists audit entries, newest first, with filters.
#[utoipa::path(
    get, path = "/admin/v1/audit", operation_id = "list_audit", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of entries", body = ListPage<AuditRecord>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn list_audit(
    State(app): State<Arc<App>>,
    p: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Json<ListPage<AuditRecord>>> {
    let p = query(p)?;
    let limit = PageParams {
        limit: p.limit,
        after: None,
    }
    .limit()?;
    let filter = p.filter()?;
    Ok(Json(list_body(
        app.audit
            .list(p.tenant_id.as_deref(), &filter, p.after.clone(), limit)
            .await?,
    )))
}

/// The matching entries of one chain, oldest first, one JSON object per line.
#[utoipa::path(
    get, path = "/admin/v1/audit/export", operation_id = "export_audit", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "JSON Lines, one entry each", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn export_audit(
    State(app): State<Arc<App>>,
    p: Result<Query<AuditParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(p)?;
    let filter = p.filter()?;
    // The first page now, so a bad request fails with a status, not a cut body.
    let first = app
        .audit
        .page(p.tenant_id.as_deref(), &filter, None, 100, true)
        .await?;
    let tenant = p.tenant_id.clone();
    let state = (Some(first), app, tenant, filter);
    let stream = futures::stream::unfold(state, |(page, app, tenant, filter)| async move {
        let page = match page {
            Some(p) => p,
            None => return None,
        };
        let mut lines = Vec::new();
        for r in &page.items {
            if let Ok(mut l) = serde_json::to_vec(r) {
                l.push(b'\n');
                lines.extend(l);
            }
        }
        let next = match page.next {
            Some(cursor) => match app
                .audit
                .page(tenant.as_deref(), &filter, Some(cursor), 100, true)
                .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed part-way");
                    let err = std::io::Error::other(e.to_string());
                    return Some((Err(err), (None, app, tenant, filter)));
                }
            },
            None => None,
        };
        Some((Ok(Bytes::from(lines)), (next, app, tenant, filter)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChainParams {
    /// The tenant's chain (default: the platform's chain).
    tenant_id: Option<String>,
}

/// Walks a chain and says whether every entry and link holds.
#[utoipa::path(
    get, path = "/admin/v1/audit/verify", operation_id = "verify_audit", tag = "audit",
    params(ChainParams),
    responses(
        (status = 200, description = "The verdict", body = Verdict),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn verify_audit(
    State(app): State<Arc<App>>,
    p: Result<Query<ChainParams>, QueryRejection>,
) -> ApiResult<Json<Verdict>> {
    let p = query(p)?;
    Ok(Json(app.audit.verify(p.tenant_id.as_deref()).await?))
}

/// A finished export: its archive's size, digest, index and download path.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TenantExport {
    #[schema(example = "tenant.export")]
    pub object: &'static str,
    pub id: String,
    pub tenant_id: String,
    pub bytes: u64,
    /// SHA-256 (hex) of the archive.
    pub sha256: String,
    pub index: Index,
    /// Where to download the archive (`GET`, with the admin token).
    pub download: String,
}

/// Exports everything held about a tenant (GDPR access) as a tar.gz archive.
#[utoipa::path(
    post, path = "/admin/v1/tenants/{id}/export", operation_id = "export_tenant", tag = "gdpr",
    params(("id" = String, Path, description = "The tenant's id")),
    responses(
        (status = 201, description = "The archive is written", body = TenantExport),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn export_tenant(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let blobs = app.storage.blobs()?.clone();
    let export = crate::ops::export::export(&app.storage.table, &blobs, &id).await?;
    let download = format!("/admin/v1/tenants/{id}/exports/{}", export.export_id);
    let summary = json!({
        "id": export.export_id, "bytes": export.bytes, "sha256": export.sha256,
        "kinds": export.index.kinds.iter().map(|k| json!({"name": k.name, "items": k.items, "objects": k.objects.len()})).collect::<Vec<_>>(),
    });
    app.audit
        .record(
            &actor,
            "tenant.export",
            Some(&id),
            &export.export_id,
            Value::Null,
            summary,
        )
        .await?;
    let body = TenantExport {
        object: "tenant.export",
        id: export.export_id,
        tenant_id: id,
        bytes: export.bytes,
        sha256: export.sha256,
        index: export.index,
        download,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// An object's bytes as a response body, read a chunk at a time.
fn stream_body(reader: BlobReader) -> Body {
    let stream = futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; 64 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Body::from_stream(stream)
}

/// Downloads an export's archive.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/exports/{export_id}", operation_id = "download_tenant_export", tag = "gdpr",
    params(("id" = String, Path, description = "The tenant's id"), ("export_id" = String, Path, description = "The export's id (`exp_...`)")),
    responses(
        (status = 200, description = "The archive", content_type = "application/gzip", body = inline(super::openapi::Binary)),
        (status = 404, description = "No such export of this tenant", body = ErrorBody),
    ),
)]
pub async fn download_export(
    State(app): State<Arc<App>>,
    Path((id, export_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let blobs = app.storage.blobs()?.clone();
    let (reader, size) = crate::ops::export::open(&blobs, &id, &export_id).await?;
    let disposition = format!("attachment; filename=\"{id}-{export_id}.tar.gz\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        stream_body(reader),
    )
        .into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EraseParams {
    /// Must be `true`: tenants are never simply deleted, only erased.
    #[param(required = true, example = "true")]
    erase: Option<String>,
}

/// How long one erase call works before answering 202 (the caller calls
/// again to go on): `TENANTAI_ERASE_BUDGET_SECS`, 20 by default.
fn erase_budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let secs = std::env::var("TENANTAI_ERASE_BUDGET_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        Duration::from_secs(secs)
    })
}

/// A running erasure as the API shows it (never the key hashes it holds).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ErasureRunning {
    #[schema(example = "tenant.erasure")]
    pub object: &'static str,
    #[schema(example = "in_progress")]
    pub status: &'static str,
    pub tenant_id: String,
    pub requested_by: String,
    pub requested_at: i64,
    pub keys_revoked: bool,
    pub kinds_done: Vec<String>,
    pub sweep_segments_done: usize,
    pub sweep_segments: usize,
    pub objects_done: bool,
    /// Items and objects removed (or anonymised) so far, by kind.
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// A finished erasure: its receipt in the platform's audit chain.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ErasureDone {
    #[schema(example = "tenant.erasure")]
    pub object: &'static str,
    #[schema(example = "completed")]
    pub status: &'static str,
    pub tenant_id: String,
    pub receipt: AuditRecord,
}

fn job_view(job: &ErasureJob) -> ErasureRunning {
    ErasureRunning {
        object: "tenant.erasure",
        status: "in_progress",
        tenant_id: job.tenant_id.clone(),
        requested_by: job.requested_by.clone(),
        requested_at: job.requested_at,
        keys_revoked: job.keys_revoked,
        kinds_done: job.kinds_done.clone(),
        sweep_segments_done: job.sweep.iter().filter(|s| s.done).count(),
        sweep_segments: job.sweep.len(),
        objects_done: job.objects_done,
        counts: job.counts.clone(),
    }
}

fn outcome_response(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Erased(receipt) => (
            StatusCode::OK,
            Json(ErasureDone {
                object: "tenant.erasure",
                status: "completed",
                tenant_id: receipt.target.clone(),
                receipt,
            }),
        )
            .into_response(),
        Outcome::Running(job) => (StatusCode::ACCEPTED, Json(job_view(&job))).into_response(),
    }
}

/// Erases everything held about a tenant (GDPR erasure): starts the erasure,
/// or goes on with it; call again while it answers 202.
#[utoipa::path(
    delete, path = "/admin/v1/tenants/{id}", operation_id = "erase_tenant", tag = "gdpr",
    params(("id" = String, Path, description = "The tenant's id"), EraseParams),
    responses(
        (status = 200, description = "Erased: the receipt", body = ErasureDone),
        (status = 202, description = "Under way: call again to go on", body = ErasureRunning),
        (status = 400, description = "`erase=true` is missing", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn erase_tenant(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
    p: Result<Query<EraseParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(p)?;
    if p.erase.as_deref() != Some("true") {
        return Err(ApiError::invalid_param(
            "erase",
            "tenants are never simply deleted: pass erase=true to erase everything held about the tenant",
        ));
    }
    let eraser = Eraser::new(&app.storage)?;
    let outcome = eraser.erase(&id, &actor.name, erase_budget()).await?;
    app.forget_tenant(&id);
    Ok(outcome_response(outcome))
}

/// How a tenant's erasure stands: under way (202) or its receipt (200).
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/erasure", operation_id = "get_erasure", tag = "gdpr",
    params(("id" = String, Path, description = "The tenant's id")),
    responses(
        (status = 200, description = "Erased: the receipt", body = ErasureDone),
        (status = 202, description = "Under way", body = ErasureRunning),
        (status = 404, description = "No erasure of this tenant", body = ErrorBody),
    ),
)]
pub async fn erasure_status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let eraser = Eraser::new(&app.storage)?;
    Ok(match eraser.job(&id).await? {
        Some(job) => outcome_response(Outcome::Running(job)),
        None => outcome_response(Outcome::Erased(eraser.receipt(&id).await?)),
    })
}
