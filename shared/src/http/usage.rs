//! Usage reports: the metered aggregates of a date range, grouped by day,
//! model and (for admins) tenant, with totals and cursor pagination.
//!
//! `GET /v1/usage` reports the calling tenant; the admin API reports any tenant
//! (`/admin/v1/tenants/{id}/usage`) or all of them (`/admin/v1/usage`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use time::{Date, Duration as Days, OffsetDateTime};
use utoipa::{IntoParams, ToSchema};

use crate::app::App;
use crate::billing::metering::{
    format_day, month_of, parse_day, Aggregate, BATCH_COUNTERS, COUNTERS,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::store::{decode_token, encode_token};
use crate::tenancy::auth::TenantContext;
use crate::tenancy::tenants::Tenant;

/// The longest range one report covers.
pub const MAX_DAYS: i64 = 366;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// First day, YYYY-MM-DD (default: the first of this month, UTC).
    #[param(format = Date)]
    pub from: Option<String>,
    /// Last day, YYYY-MM-DD (default: today, UTC); at most 366 days after `from`.
    #[param(format = Date)]
    pub to: Option<String>,
    /// Comma-separated dimensions: `day`, `model` (and `tenant` across tenants).
    #[param(example = "day,model")]
    pub group_by: Option<String>,
    /// Buckets per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The previous page's `next`.
    pub after: Option<String>,
}

/// A usage report: buckets of the range by the asked dimensions, their totals,
/// and (for one tenant) its budget.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct UsageReport {
    #[schema(example = "list")]
    pub object: &'static str,
    #[schema(format = Date)]
    pub from: String,
    #[schema(format = Date)]
    pub to: String,
    /// The dimensions, in their fixed order (`tenant_id`, `day`, `model`).
    pub group_by: Vec<&'static str>,
    pub data: Vec<UsageBucket>,
    pub totals: Counters,
    pub has_more: bool,
    /// The cursor of the next page (`after`), if one follows.
    #[schema(required = true)]
    pub next: Option<String>,
    /// The tenant's budget and month so far (reports of one tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<UsageBudget>,
}

/// One group's counters; its dimensions are named as `group_by` lists them.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct UsageBucket {
    #[schema(example = "usage.bucket")]
    pub object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Date)]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    pub counters: Counters,
}

/// The metered counters: direct use, and batch lines apart (`batch_*`).
/// `prompt_tokens` are the stored `tokens`; `tokens` is prompt plus completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Counters {
    pub requests: u64,
    pub inputs: u64,
    pub tokens: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
    pub cost_micros: u64,
    pub compute_ms: u64,
    pub batch_requests: u64,
    pub batch_tokens: u64,
    pub batch_completion_tokens: u64,
    pub batch_cost_micros: u64,
}

/// The tenant's budget and its month so far.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct UsageBudget {
    /// YYYY-MM (UTC).
    pub month: String,
    pub monthly_budget_micros: u64,
    pub hard_cap: bool,
    pub alert_thresholds: Vec<u16>,
    pub month_to_date_cost_micros: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Tenant,
    Day,
    Model,
}

impl Dimension {
    fn name(self) -> &'static str {
        match self {
            Dimension::Tenant => "tenant_id",
            Dimension::Day => "day",
            Dimension::Model => "model",
        }
    }
}

/// A validated report request.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageQuery {
    pub from: Date,
    pub to: Date,
    pub group_by: Vec<Dimension>,
    pub limit: usize,
    /// The last group of the previous page.
    pub after: Option<String>,
}

impl UsageQuery {
    /// Validates the parameters; `from` defaults to the first of `today`'s
    /// month, `to` to `today`, `group_by` to `default_group`.
    pub fn parse(
        p: &UsageParams,
        today: Date,
        admin_across_tenants: bool,
        default_group: &str,
    ) -> ApiResult<Self> {
        let day = |param: &'static str, v: &Option<String>, default: Date| match v {
            None => Ok(default),
            Some(s) => parse_day(s).ok_or_else(|| {
                ApiError::invalid_param(
                    param,
                    format!("{param} must be a date YYYY-MM-DD, not '{s}'"),
                )
            }),
        };
        let from = day("from", &p.from, today.replace_day(1).unwrap_or(today))?;
        let to = day("to", &p.to, today)?;
        if to < from {
            return Err(ApiError::invalid_param("to", "to must not be before from"));
        }
        if (to - from) >= Days::days(MAX_DAYS) {
            return Err(ApiError::invalid_param(
                "to",
                format!("a report covers at most {MAX_DAYS} days"),
            ));
        }
        let mut group_by = Vec::new();
        let groups = p.group_by.as_deref().unwrap_or(default_group);
        for g in groups.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            let d = match g {
                "day" => Dimension::Day,
                "model" => Dimension::Model,
                "tenant" | "tenant_id" if admin_across_tenants => Dimension::Tenant,
                other => {
                    let allowed = if admin_across_tenants {
                        "tenant, day, model"
                    } else {
                        "day, model"
                    };
                    return Err(ApiError::invalid_param(
                        "group_by",
                        format!("cannot group by '{other}'; group_by is a comma-separated list of {allowed}"),
                    ));
                }
            };
            if !group_by.contains(&d) {
                group_by.push(d);
            }
        }
        // A fixed order keeps pages stable whatever order the caller listed.
        group_by.sort_by_key(|d| *d as u8);
        let limit = match &p.limit {
            None => DEFAULT_LIMIT,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_param(
                        "limit",
                        format!("limit must be between 1 and {MAX_LIMIT}"),
                    ))
                }
            },
        };
        let after = p
            .after
            .as_deref()
            .map(|c| {
                decode_token(c).ok_or_else(|| {
                    ApiError::invalid_param("after", "after is not a cursor this API returned")
                })
            })
            .transpose()?;
        Ok(UsageQuery {
            from,
            to,
            group_by,
            limit,
            after,
        })
    }
}

fn zero() -> BTreeMap<String, u64> {
    COUNTERS
        .iter()
        .chain(BATCH_COUNTERS.iter())
        .map(|c| (c.to_string(), 0))
        .collect()
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) -> ApiResult<()> {
    for (k, v) in from {
        let sum = into.entry(k.clone()).or_default();
        *sum = crate::billing::amounts::add(*sum, *v, "a usage total")
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(())
}

/// A bucket's counters as reported: the stored `tokens` (prompt tokens) appear as
/// `prompt_tokens`, beside `completion_tokens`; `tokens` is their sum.
fn token_kinds(counters: &BTreeMap<String, u64>) -> Counters {
    let n = |c: &str| counters.get(c).copied().unwrap_or(0);
    let prompt = n("tokens");
    let completion = n("completion_tokens");
    Counters {
        requests: n("requests"),
        inputs: n("inputs"),
        tokens: prompt.saturating_add(completion),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cache_hits: n("cache_hits"),
        cost_micros: n("cost_micros"),
        compute_ms: n("compute_ms"),
        batch_requests: n("batch_requests"),
        batch_tokens: n("batch_tokens"),
        batch_completion_tokens: n("batch_completion_tokens"),
        batch_cost_micros: n("batch_cost_micros"),
    }
}

/// Groups `(tenant, aggregate)` rows and cuts the page after the cursor.
pub fn report(rows: &[(String, Aggregate)], q: &UsageQuery) -> ApiResult<UsageReport> {
    let mut groups: BTreeMap<Vec<String>, BTreeMap<String, u64>> = BTreeMap::new();
    let mut totals = zero();
    for (tenant, agg) in rows {
        let key = q
            .group_by
            .iter()
            .map(|d| match d {
                Dimension::Tenant => tenant.clone(),
                Dimension::Day => agg.day.clone(),
                Dimension::Model => agg.model.clone(),
            })
            .collect::<Vec<_>>();
        add(groups.entry(key).or_insert_with(zero), &agg.counters)?;
        add(&mut totals, &agg.counters)?;
    }
    // Group keys hold no NUL, so joining on it keeps the order and is reversible.
    let cursor_of = |key: &[String]| key.join("\u{0}");
    let mut data = Vec::new();
    let mut next = None;
    let pending = groups
        .iter()
        .filter(|(k, _)| q.after.as_ref().is_none_or(|a| cursor_of(k) > *a));
    for (key, counters) in pending {
        if data.len() == q.limit {
            next = data
                .last()
                .map(|(k, _): &(&Vec<String>, _)| encode_token(&cursor_of(k)));
            break;
        }
        data.push((key, counters));
    }
    let data = data
        .into_iter()
        .map(|(key, counters)| {
            let mut bucket = UsageBucket {
                object: "usage.bucket",
                tenant_id: None,
                day: None,
                model: None,
                counters: token_kinds(counters),
            };
            for (d, v) in q.group_by.iter().zip(key) {
                let slot = match d {
                    Dimension::Tenant => &mut bucket.tenant_id,
                    Dimension::Day => &mut bucket.day,
                    Dimension::Model => &mut bucket.model,
                };
                *slot = Some(v.clone());
            }
            bucket
        })
        .collect::<Vec<_>>();
    Ok(UsageReport {
        object: "list",
        from: format_day(q.from),
        to: format_day(q.to),
        group_by: q.group_by.iter().map(|d| d.name()).collect(),
        data,
        totals: token_kinds(&totals),
        has_more: next.is_some(),
        next,
        budget: None,
    })
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

fn params(p: Result<Query<UsageParams>, QueryRejection>) -> ApiResult<UsageParams> {
    p.map(|Query(p)| p)
        .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
}

async fn tenant_rows(
    app: &App,
    tenant_id: &str,
    q: &UsageQuery,
) -> ApiResult<Vec<(String, Aggregate)>> {
    Ok(app
        .meter
        .aggregates(tenant_id, q.from, q.to)
        .await?
        .into_iter()
        .map(|a| (tenant_id.to_string(), a))
        .collect())
}

/// The tenant's budget and its month so far, beside its report.
async fn budget_block(app: &App, tenant: &Tenant) -> ApiResult<UsageBudget> {
    let budget = tenant.budget(app.config.tiers.get(&tenant.tier)?);
    let month = month_of(crate::store::now_millis());
    let spent = app.meter.month_spend(&tenant.id, &month).await?;
    Ok(UsageBudget {
        month,
        monthly_budget_micros: budget.monthly_micros,
        hard_cap: budget.hard_cap,
        alert_thresholds: budget.thresholds,
        month_to_date_cost_micros: spent,
    })
}

async fn tenant_report(app: &App, tenant: &Tenant, p: &UsageParams) -> ApiResult<UsageReport> {
    let q = UsageQuery::parse(p, today(), false, "day")?;
    let mut body = report(&tenant_rows(app, &tenant.id, &q).await?, &q)?;
    body.budget = Some(budget_block(app, tenant).await?);
    Ok(body)
}

/// The calling tenant's usage by day and model, with its budget (scope `usage`).
#[utoipa::path(
    get, path = "/v1/usage", operation_id = "get_usage", tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn own_usage(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<TenantContext>,
    p: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<Json<UsageReport>> {
    ctx.require("usage")?;
    let p = params(p)?;
    let tenant = app.tenant(&ctx.tenant_id).await?;
    Ok(Json(tenant_report(&app, &tenant, &p).await?))
}

/// One tenant's usage, with its budget.
#[utoipa::path(
    get, path = "/admin/v1/tenants/{id}/usage", operation_id = "get_tenant_usage", tag = "usage",
    params(("id" = String, Path, description = "The tenant's id"), UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ),
)]
pub async fn tenant_usage(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    p: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<Json<UsageReport>> {
    let p = params(p)?;
    let tenant = app.tenants.get(&id).await?;
    Ok(Json(tenant_report(&app, &tenant, &p).await?))
}

/// Every tenant's usage, grouped by tenant by default.
#[utoipa::path(
    get, path = "/admin/v1/usage", operation_id = "get_all_usage", tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "The report", body = UsageReport),
        (status = 400, description = "A bad parameter", body = ErrorBody),
    ),
)]
pub async fn all_usage(
    State(app): State<Arc<App>>,
    p: Result<Query<UsageParams>, QueryRejection>,
) -> ApiResult<Json<UsageReport>> {
    let q = UsageQuery::parse(&params(p)?, today(), true, "tenant")?;
    let mut rows = Vec::new();
    for tenant in app.tenants.all().await? {
        rows.extend(tenant_rows(&app, &tenant.id, &q).await?);
    }
    Ok(Json(report(&rows, &q)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn agg(day: &str, model: &str, tokens: u64) -> Aggregate {
        let mut counters = zero();
        counters.insert("tokens".into(), tokens);
        counters.insert("requests".into(), 1);
        Aggregate {
            day: day.into(),
            model: model.into(),
            counters,
        }
    }

    fn query(group_by: &str, limit: &str) -> UsageQuery {
        let p = UsageParams {
            from: Some("2026-11-01".into()),
            group_by: Some(group_by.into()),
            limit: Some(limit.into()),
            ..Default::default()
        };
        UsageQuery::parse(&p, date!(2026 - 11 - 25), true, "day").unwrap()
    }

    #[test]
    fn groups_total_and_pages_through_every_bucket_once() {
        let rows = vec![
            ("t1".to_string(), agg("2026-11-02", "a", 5)),
            ("t1".to_string(), agg("2026-11-02", "b", 7)),
            ("t2".to_string(), agg("2026-11-03", "a", 11)),
        ];
        let by_model = serde_json::to_value(report(&rows, &query("model", "10")).unwrap()).unwrap();
        assert_eq!(by_model["data"].as_array().unwrap().len(), 2);
        assert_eq!(by_model["data"][0]["model"], "a");
        assert_eq!(by_model["data"][0]["tokens"], 16);
        assert_eq!(by_model["totals"]["tokens"], 23);
        assert_eq!(by_model["totals"]["requests"], 3);

        let mut q = query("model,day,tenant", "1");
        assert_eq!(
            q.group_by,
            vec![Dimension::Tenant, Dimension::Day, Dimension::Model]
        );
        let mut seen = Vec::new();
        loop {
            let page = serde_json::to_value(report(&rows, &q).unwrap()).unwrap();
            assert_eq!(page["totals"]["tokens"], 23);
            seen.extend(
                page["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b["tokens"].as_u64().unwrap()),
            );
            match page["next"].as_str() {
                Some(c) => {
                    q = UsageQuery::parse(
                        &UsageParams {
                            from: Some("2026-11-01".into()),
                            group_by: Some("tenant,day,model".into()),
                            limit: Some("1".into()),
                            after: Some(c.into()),
                            ..Default::default()
                        },
                        date!(2026 - 11 - 25),
                        true,
                        "day",
                    )
                    .unwrap()
                }
                None => break,
            }
        }
        assert_eq!(seen, vec![5, 7, 11]);
    }

    #[test]
    fn bad_parameters_are_400s() {
        let today = date!(2026 - 11 - 25);
        let bad = [
            UsageParams {
                from: Some("2026-13-01".into()),
                ..Default::default()
            },
            UsageParams {
                from: Some("2026-11-20".into()),
                to: Some("2026-11-19".into()),
                ..Default::default()
            },
            UsageParams {
                from: Some("2024-01-01".into()),
                to: Some("2026-01-01".into()),
                ..Default::default()
            },
            UsageParams {
                group_by: Some("tenant".into()),
                ..Default::default()
            },
            UsageParams {
                group_by: Some("week".into()),
                ..Default::default()
            },
            UsageParams {
                limit: Some("0".into()),
                ..Default::default()
            },
            UsageParams {
                limit: Some("x".into()),
                ..Default::default()
            },
            UsageParams {
                after: Some("!!".into()),
                ..Default::default()
            },
        ];
        for p in bad {
            let e = UsageQuery::parse(&p, today, false, "day").unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{p:?}");
        }
        let q = UsageQuery::parse(&UsageParams::default(), today, false, "day").unwrap();
        assert_eq!((q.from, q.to), (date!(2026 - 11 - 01), today));
        assert_eq!(q.group_by, vec![Dimension::Day]);
    }
}
