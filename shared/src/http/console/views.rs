//! The reads the console shows, as API routes: a tenant's usage charts (SVG)
//! for the tenant itself (`GET /v1/usage/chart`, scope `usage`) and for
//! admins (`GET /admin/v1/tenants/{id}/usage/chart`), and, for admins, a
//! tenant's batches and the cost alerts sent to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::chart::{self, Metric};
use super::svg;
use crate::app::App;
use crate::batch::object::BatchObject;
use crate::billing::alerts::SentAlert;
use crate::billing::metering::format_day;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::files::OpenAiPage;
use crate::http::usage::{UsageParams, UsageQuery};
use crate::http::{list_body, ListPage, PageParams};
use crate::tenancy::auth::TenantContext;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChartParams {
    /// `requests` (the default), `tokens` or `cost`.
    #[param(pattern = "^(requests|tokens|cost)$")]
    pub metric: Option<String>,
    /// First day, YYYY-MM-DD (default: the first of this month, UTC).
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (default: today, UTC).
    #[param(format = Date)]
    pub to: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
}

/// The chart of one tenant's usage as an SVG answer.
async fn chart_of(app: &App, tenant_id: &str, p: &ChartParams) -> ApiResult<Response> {
    let metric = Metric::parse(p.metric.as_deref())?;
    let range = UsageParams {
        from: p.from.clone(),
        to: p.to.clone(),
        ..Default::default()
    };
    let today = time::OffsetDateTime::now_utc().date();
    let q = UsageQuery::parse(&range, today, false, "day")?;
    let aggregates = app.meter.aggregates(tenant_id, q.from, q.to).await?;
    let kinds: BTreeMap<String, _> = app
        .registry
        .all()
        .await?
        .iter()
        .map(|v| (v.model.clone(), v.kind))
        .collect();
    let c = chart::build(&aggregates, &kinds, q.from, q.to, metric);
    let what = match metric {
        Metric::Requests => "Requests",
        Metric::Tokens => "Tokens",
        Metric::Cost => "Cost",
    };
    let title = format!(
        "{what} by day and model, {} to {}",
        format_day(q.from),
        format_day(q.to)
    );
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        ],
        svg::render(&c, &title),
    )
        .into_response())
}

/// The calling tenant's usage by day and model as an SVG chart (scope `usage`).
#[utoipa::path(
    get, path = "/v1/usage/chart", operation_id = "get_usage_chart", tag = "usage",
    params(ChartParams),
    responses(
        (status = 200, description = "The chart", content_type = "image/svg+xml", body = String),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn own_chart(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    p: Result<Query<ChartParams>, QueryRejection>,
) -> ApiResult<Response> {
    ctx.require("usage")?;
    let p = query(p)?;
    chart_of(&app, &ctx.tenant_id, &p).await
}

/// A tenant's usage by day and model as an SVG chart.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/usage/chart", operation_id = "get_tenant_usage_chart", tag = "console",
    params(("id" = String, Path, description = "The tenant's id"), ChartParams),
    responses(
        (status = 200, description = "The chart", content_type = "image/svg+xml", body = String),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn tenant_chart(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    p: Result<Query<ChartParams>, QueryRejection>,
) -> ApiResult<Response> {
    let p = query(p)?;
    app.tenants.get(&id).await?;
    chart_of(&app, &id, &p).await
}

/// A tenant's batches, newest first, as `/v1/batches` lists them.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/batches", operation_id = "list_tenant_batches", tag = "console",
    params(("id" = String, Path, description = "The tenant's id"), PageParams),
    responses(
        (status = 200, description = "A page of batches", body = OpenAiPage<BatchObject>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn tenant_batches(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<OpenAiPage<BatchObject>>> {
    let p = query(p)?;
    app.tenants.get(&id).await?;
    Ok(Json(crate::http::batches::page(&app, &id, &p).await?))
}

/// The cost alerts claimed for a tenant (sent, or being sent), newest month first.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/alerts", operation_id = "list_tenant_alerts", tag = "console",
    params(("id" = String, Path, description = "The tenant's id"), PageParams),
    responses(
        (status = 200, description = "A page of alerts", body = ListPage<SentAlert>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn tenant_alerts(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    p: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<ListPage<SentAlert>>> {
    let p = query(p)?;
    app.tenants.get(&id).await?;
    let page = crate::billing::alerts::list_sent(
        app.storage.table.as_ref(),
        &id,
        p.limit()?,
        p.after.clone(),
    )
    .await?;
    Ok(Json(list_body(page)))
}
