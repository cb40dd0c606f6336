//! Scheduled cost alerts: month-to-date spend and a forecast against each
//! tenant's budget; one alert per tenant, threshold, kind and month.
//!
//! **Forecast** (linear run rate): month-to-date spend divided by the share of
//! the month elapsed, counting at least one day elapsed so the first hours of a
//! month do not project wildly. An alert is `crossed` once spend reaches a
//! threshold and `forecast` while only the forecast does.
//!
//! **Once only.** Before delivering, a run claims the alert with a conditional
//! put (`ALERTS#<tenant>`, `<month>#<threshold>#<kind>`). A claim that is
//! delivered is marked `sent` and never fires again; a delivery that fails
//! gives the claim back so the next run retries; a claim left `sending` by a
//! run that crashed is taken over after [`STALE_CLAIM_SECS`].
//!
//! **Webhook signature.** Each POST carries `tenantai-signature:
//! t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` and
//! `tenantai-alert-id` (the same for every retry of one alert). A receiver
//! checks it with [`verify`]: the MAC over the exact body bytes, in constant
//! time, and a timestamp within [`REPLAY_WINDOW_SECS`] of its clock.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use time::{Date, Month, OffsetDateTime, Time};

use crate::billing::metering::Meter;
use crate::billing::webhooks::WebhookRules;
use crate::error::{ApiError, ApiResult};
use crate::gateway::egress::{describe, Egress, EgressError};
use crate::store::{Cond, Item, Key, Query, StoreError, Table, Update};
use crate::tenancy::tenants::{Tenant, Tenants, Tiers, Webhook};

/// The header that carries a webhook's signature.
pub const SIGNATURE_HEADER: &str = "tenantai-signature";
/// The header that names the alert (stable across retries).
pub const ALERT_ID_HEADER: &str = "tenantai-alert-id";
/// How far a signature's timestamp may be from the verifier's clock.
pub const REPLAY_WINDOW_SECS: i64 = 300;
/// A claim still `sending` after this long belongs to a run that died.
pub const STALE_CLAIM_SECS: i64 = 600;
/// Claims are kept long after their month, then expire.
const CLAIM_TTL_SECS: i64 = 400 * 24 * 3600;

pub const FORECAST_METHOD: &str =
    "linear run rate: month-to-date spend / share of the month elapsed (at least one day)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// Spend has reached the threshold.
    Crossed,
    /// Spend has not, but the forecast for the month does.
    Forecast,
}

impl AlertKind {
    fn as_str(self) -> &'static str {
        match self {
            AlertKind::Crossed => "crossed",
            AlertKind::Forecast => "forecast",
        }
    }
}

/// One alert, as posted to SNS and the webhook.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub alert_id: String,
    pub tenant_id: String,
    pub month: String,
    pub kind: AlertKind,
    pub threshold_percent: u16,
    pub budget_micros: u64,
    pub spend_micros: u64,
    pub forecast_micros: u64,
    pub forecast_method: &'static str,
    /// Whether requests are refused once the budget is spent.
    pub hard_cap: bool,
    pub at: i64,
}

/// Spend forecast for the whole month of `now`.
pub fn forecast(spend: u64, now: OffsetDateTime) -> u64 {
    let (start, end) = month_bounds(now);
    let total = (end - start).whole_seconds().max(86_400);
    let elapsed = (now - start).whole_seconds().clamp(86_400, total);
    let (total, elapsed) = (i128::from(total), i128::from(elapsed));
    // A forecast past u64 reads as u64::MAX: above every budget, which is all it is compared with.
    u64::try_from(i128::from(spend) * total / elapsed).unwrap_or(u64::MAX)
}

fn month_bounds(now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let first = |y: i32, m: Month| {
        Date::from_calendar_date(y, m, 1)
            .unwrap_or(Date::MIN)
            .with_time(Time::MIDNIGHT)
            .assume_utc()
    };
    let start = first(now.year(), now.month());
    let end = if now.month() == Month::December {
        first(now.year() + 1, Month::January)
    } else {
        first(now.year(), now.month().next())
    };
    (start, end)
}

/// YYYY-MM of a time.
pub fn month_of(now: OffsetDateTime) -> String {
    format!("{:04}-{:02}", now.year(), u8::from(now.month()))
}

/// The alerts a tenant's spend and forecast call for (before deduplication).
pub fn due(
    tenant: &str,
    budget: &crate::tenancy::tenants::Budget,
    spend: u64,
    now: OffsetDateTime,
) -> Vec<Alert> {
    if budget.monthly_micros == 0 {
        return Vec::new();
    }
    let month = month_of(now);
    let projected = forecast(spend, now);
    let mut thresholds = budget.thresholds.clone();
    thresholds.sort_unstable();
    thresholds.dedup();
    thresholds
        .into_iter()
        .filter_map(|pct| {
            let line = u128::from(budget.monthly_micros) * u128::from(pct) / 100;
            let kind = if u128::from(spend) >= line {
                AlertKind::Crossed
            } else if u128::from(projected) >= line {
                AlertKind::Forecast
            } else {
                return None;
            };
            Some(Alert {
                alert_id: format!("{tenant}:{month}:{pct}:{}", kind.as_str()),
                tenant_id: tenant.to_string(),
                month: month.clone(),
                kind,
                threshold_percent: pct,
                budget_micros: budget.monthly_micros,
                spend_micros: spend,
                forecast_micros: projected,
                forecast_method: FORECAST_METHOD,
                hard_cap: budget.hard_cap,
                at: now.unix_timestamp(),
            })
        })
        .collect()
}

// ---- signatures ----

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    sign_all(&[secret], timestamp, body)
}

/// The signature header with one `v1=` per secret (while a secret rotates, the
/// new one and the previous one both sign).
pub fn sign_all<S: AsRef<str>>(secrets: &[S], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let tag = mac(secret.as_ref(), timestamp, body)
            .finalize()
            .into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(tag));
    }
    header
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the replay window")]
    Stale,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a webhook delivery: the header's MAC over the exact body, and its
/// timestamp within `window_secs` of `now` (either side).
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    window_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => tags.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // Any i64 may arrive in the header: the distance cannot overflow.
    if now.abs_diff(timestamp) > window_secs.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    // Several v1 tags may be present while a secret is rotated.
    if tags
        .iter()
        .any(|t| mac(secret, timestamp, body).verify_slice(t).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

// ---- delivery ----

/// How webhook deliveries are retried.
#[derive(Clone, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_delay: Duration::from_millis(500),
        }
    }
}

/// Where alerts go: an SNS topic (on AWS), each tenant's webhook, and the log.
/// Webhooks are reached only through the egress policy.
#[derive(Clone)]
pub struct Notifier {
    egress: Egress,
    rules: WebhookRules,
    sns: Option<(aws_sdk_sns::Client, String)>,
    retry: Retry,
}

impl Notifier {
    /// Posts to webhooks under `rules`' egress policy, signing with the secrets
    /// its vault opens.
    pub fn new(retry: Retry, rules: WebhookRules) -> ApiResult<Self> {
        let egress = Egress::new(rules.egress.clone())
            .map_err(|e| ApiError::Internal(format!("http client: {e}")))?;
        Ok(Self::with_egress(retry, rules, egress))
    }

    /// As [`Notifier::new`], over a given egress client (its own resolver).
    pub fn with_egress(retry: Retry, rules: WebhookRules, egress: Egress) -> Self {
        Notifier {
            egress,
            rules,
            sns: None,
            retry,
        }
    }

    /// Publishes every alert to this SNS topic as well.
    pub fn with_sns(mut self, client: aws_sdk_sns::Client, topic_arn: String) -> Self {
        self.sns = Some((client, topic_arn));
        self
    }

    async fn deliver(&self, alert: &Alert, webhook: Option<&Webhook>) -> Result<(), String> {
        let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
        tracing::info!(
            alert_id = %alert.alert_id, tenant_id = %alert.tenant_id, kind = alert.kind.as_str(),
            threshold_percent = alert.threshold_percent, spend_micros = alert.spend_micros,
            forecast_micros = alert.forecast_micros, budget_micros = alert.budget_micros,
            "cost alert"
        );
        if let Some((sns, topic)) = &self.sns {
            let text = String::from_utf8_lossy(&body).into_owned();
            sns.publish()
                .topic_arn(topic)
                .subject(format!(
                    "tenantai: tenant {} {} {} % of its budget",
                    alert.tenant_id,
                    if alert.kind == AlertKind::Crossed {
                        "reached"
                    } else {
                        "is forecast to reach"
                    },
                    alert.threshold_percent
                ))
                .message(text)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "SNS publish: {}",
                        aws_sdk_sns::error::DisplayErrorContext(e)
                    )
                })?;
        }
        if let Some(hook) = webhook {
            self.post(alert, hook, &body).await?;
        }
        Ok(())
    }

    /// POSTs to the webhook, retrying network errors, 429 and 5xx with
    /// exponential backoff; each attempt is signed afresh (by every live
    /// secret). A URL or address the egress policy refuses, and a redirect, are
    /// not retried.
    async fn post(&self, alert: &Alert, hook: &Webhook, body: &[u8]) -> Result<(), String> {
        let mut delay = self.retry.first_delay;
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts.max(1) {
            let now = crate::store::now_secs();
            let secrets = self
                .rules
                .signing_secrets(&alert.tenant_id, hook, now)
                .await?;
            let request = self.egress.post(&hook.url).map_err(|e| e.to_string())?;
            let sent = request
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, sign_all(&secrets, now, body))
                .header(ALERT_ID_HEADER, &alert.alert_id)
                .body(body.to_vec())
                .send()
                .await;
            let retryable = match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    last = format!("webhook answered {}", r.status());
                    r.status().is_server_error() || r.status().as_u16() == 429
                }
                Err(e) => {
                    last = format!("webhook unreachable: {}", describe(&e));
                    !is_refusal(&e)
                }
            };
            if !retryable {
                break;
            }
            if attempt < self.retry.attempts {
                tracing::warn!(alert_id = %alert.alert_id, attempt, error = %last, "webhook delivery failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        }
        Err(last)
    }
}

/// Whether a send failed because the egress policy refused the address.
fn is_refusal(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if matches!(
            e.downcast_ref::<EgressError>(),
            Some(EgressError::Blocked { .. })
        ) {
            return true;
        }
        source = e.source();
    }
    false
}

// ---- the scheduled run ----

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    pub tenants: usize,
    pub sent: usize,
    /// Alerts already sent (or being sent) by an earlier or concurrent run.
    pub already_sent: usize,
    pub failed: usize,
}

#[derive(Clone)]
pub struct CostAlerts {
    tenants: Tenants,
    meter: Meter,
    table: Arc<dyn Table>,
    tiers: Tiers,
    notifier: Notifier,
}

fn claims_pk(tenant_id: &str) -> String {
    format!("ALERTS#{tenant_id}")
}

fn claim_key(a: &Alert) -> Key {
    Key::new(
        claims_pk(&a.tenant_id),
        format!("{}#{:04}#{}", a.month, a.threshold_percent, a.kind.as_str()),
    )
}

/// One alert as its claim records it: what the admin API lists.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SentAlert {
    /// As in the `tenantai-alert-id` header: `<tenant>:<month>:<threshold>:<kind>`.
    pub alert_id: String,
    pub month: String,
    pub threshold_percent: u16,
    pub kind: String,
    /// `sent`, or `sending` (claimed; its delivery is under way or its run died).
    pub status: String,
    /// Month-to-date spend when it was claimed.
    pub spend_micros: u64,
    pub claimed_at: i64,
    #[schema(required = true)]
    pub sent_at: Option<i64>,
}

/// A tenant's alerts, newest month first, a page at a time.
pub async fn list_sent(
    table: &dyn Table,
    tenant_id: &str,
    limit: usize,
    cursor: Option<String>,
) -> ApiResult<crate::store::Page<SentAlert>> {
    let page = table
        .query(
            &Query::new(claims_pk(tenant_id))
                .backward()
                .limit(limit)
                .after(cursor),
        )
        .await?;
    let items = page
        .items
        .into_iter()
        .filter_map(|item| {
            let mut parts = item.key.sk.splitn(3, '#');
            let (month, threshold, kind) = (parts.next()?, parts.next()?, parts.next()?);
            let threshold_percent = threshold.parse::<u16>().ok()?;
            let text = |a: &str| {
                item.attrs
                    .get(a)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
            };
            Some(SentAlert {
                alert_id: format!("{tenant_id}:{month}:{threshold_percent}:{kind}"),
                month: month.to_string(),
                threshold_percent,
                kind: kind.to_string(),
                status: text("status").to_string(),
                spend_micros: crate::billing::amounts::from_counter(item.number("spend_micros")),
                claimed_at: item.number("claimed_at"),
                sent_at: item.attrs.get("sent_at").and_then(|v| v.as_i64()),
            })
        })
        .collect();
    Ok(crate::store::Page {
        items,
        next: page.next,
    })
}

enum Claimed {
    /// Ours to deliver, at this item version.
    Ours(u64),
    Taken,
}

impl CostAlerts {
    pub fn new(table: Arc<dyn Table>, tiers: Tiers, notifier: Notifier) -> Self {
        CostAlerts {
            tenants: Tenants::new(table.clone()),
            meter: Meter::new(table.clone()),
            table,
            tiers,
            notifier,
        }
    }

    /// Checks every tenant at `now`, sending each due alert that has not been sent.
    pub async fn run(&self, now: OffsetDateTime) -> ApiResult<RunSummary> {
        let mut summary = RunSummary::default();
        for tenant in self.tenants.all().await? {
            summary.tenants += 1;
            self.check(&tenant, now, &mut summary).await?;
        }
        Ok(summary)
    }

    async fn check(
        &self,
        tenant: &Tenant,
        now: OffsetDateTime,
        summary: &mut RunSummary,
    ) -> ApiResult<()> {
        let Ok(tier) = self.tiers.get(&tenant.tier) else {
            tracing::warn!(tenant_id = %tenant.id, tier = %tenant.tier, "tenant's tier is not configured; no alerts");
            return Ok(());
        };
        let month = month_of(now);
        let spend = self.meter.month_spend(&tenant.id, &month).await?;
        let alerts = due(&tenant.id, &tenant.budget(tier), spend, now);
        if alerts.is_empty() {
            return Ok(());
        }
        // One read of the month's claims: an alert already sent needs no claim
        // attempt (each run would otherwise repeat a refused put and a get).
        let sent = self.sent_this_month(&tenant.id, &month).await?;
        for alert in alerts {
            if sent.contains(&claim_key(&alert).sk) {
                summary.already_sent += 1;
                continue;
            }
            match self.claim(&alert, now.unix_timestamp()).await? {
                Claimed::Taken => summary.already_sent += 1,
                Claimed::Ours(version) => {
                    match self
                        .notifier
                        .deliver(&alert, tenant.alert_webhook.as_ref())
                        .await
                    {
                        Ok(()) => {
                            self.table
                                .update(
                                    &Update::new(claim_key(&alert))
                                        .set("status", json!("sent"))
                                        .set("sent_at", json!(now.unix_timestamp()))
                                        .when(Cond::Version(version)),
                                )
                                .await?;
                            summary.sent += 1;
                        }
                        Err(e) => {
                            tracing::error!(alert_id = %alert.alert_id, error = %e, "cost alert not delivered; the next run retries it");
                            // Give the claim back so the next run tries again.
                            let _ = self
                                .table
                                .delete(&claim_key(&alert), &Cond::Version(version))
                                .await;
                            summary.failed += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sort keys of the tenant's alerts marked sent in `month`.
    async fn sent_this_month(
        &self,
        tenant_id: &str,
        month: &str,
    ) -> ApiResult<std::collections::HashSet<String>> {
        let page = self
            .table
            .query(
                &Query::new(claims_pk(tenant_id))
                    .prefix(format!("{month}#"))
                    .limit(100),
            )
            .await?;
        Ok(page
            .items
            .into_iter()
            .filter(|i| i.attrs.get("status").and_then(|s| s.as_str()) == Some("sent"))
            .map(|i| i.key.sk)
            .collect())
    }

    async fn claim(&self, alert: &Alert, now: i64) -> ApiResult<Claimed> {
        let key = claim_key(alert);
        let item = |version: u64| {
            let mut attrs = crate::store::Attrs::new();
            attrs.insert("status".into(), json!("sending"));
            attrs.insert("claimed_at".into(), json!(now));
            attrs.insert("spend_micros".into(), json!(alert.spend_micros));
            let mut item = Item::new(key.clone(), attrs);
            item.version = version;
            item.expires_at = Some(now + CLAIM_TTL_SECS);
            item
        };
        match self.table.put(&item(1), &Cond::Absent).await {
            Ok(()) => return Ok(Claimed::Ours(1)),
            Err(StoreError::ConditionFailed) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = self.table.get(&key).await? else {
            // Given back between our put and get: the next run takes it.
            return Ok(Claimed::Taken);
        };
        let sending = existing.attrs.get("status").and_then(|s| s.as_str()) == Some("sending");
        if !sending || existing.number("claimed_at") > now - STALE_CLAIM_SECS {
            return Ok(Claimed::Taken);
        }
        let next = existing.version + 1;
        match self
            .table
            .put(&item(next), &Cond::Version(existing.version))
            .await
        {
            Ok(()) => {
                tracing::warn!(alert_id = %alert.alert_id, "taking over a stale alert claim");
                Ok(Claimed::Ours(next))
            }
            Err(StoreError::ConditionFailed) => Ok(Claimed::Taken),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::tenants::Budget;
    use time::macros::datetime;

    #[test]
    fn signatures_verify_only_for_the_same_secret_body_and_a_fresh_time() {
        let h = sign("whsec_a", 1_700_000_000, b"{\"x\":1}");
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(
            verify("whsec_a", &h, b"{\"x\":1}", 1_700_000_100, 300),
            Ok(())
        );
        assert_eq!(
            verify("whsec_b", &h, b"{\"x\":1}", 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", &h, b"{\"x\":2}", 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", &h, b"{\"x\":1}", 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("whsec_a", "v1=00", b"", 0, 300),
            Err(SignatureError::Malformed)
        );
        // A replayed body with a forged newer timestamp does not match.
        let forged = h.replace("t=1700000000", "t=1700000200");
        assert_eq!(
            verify("whsec_a", &forged, b"{\"x\":1}", 1_700_000_200, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_forecast_is_a_linear_run_rate_with_at_least_a_day_elapsed() {
        // November has 30 days; 10 days elapsed -> x3.
        assert_eq!(forecast(100, datetime!(2026-11-11 00:00 UTC)), 300);
        // Two hours into the month count as one day: x30, not x360.
        assert_eq!(forecast(100, datetime!(2026-11-01 02:00 UTC)), 3000);
        assert_eq!(forecast(100, datetime!(2026-12-31 23:59:59 UTC)), 100);
        assert_eq!(month_of(datetime!(2026-12-31 23:59:59 UTC)), "2026-12");
    }

    #[test]
    fn alerts_are_due_for_crossed_and_forecast_thresholds() {
        let budget = Budget {
            monthly_micros: 1000,
            hard_cap: false,
            thresholds: vec![100, 50, 80, 50],
        };
        // 10 of 30 days: spend 600 crosses 50 %, the forecast (1800) reaches 80 and 100.
        let due = due("t", &budget, 600, datetime!(2026-11-11 00:00 UTC));
        let got: Vec<_> = due.iter().map(|a| (a.threshold_percent, a.kind)).collect();
        assert_eq!(
            got,
            vec![
                (50, AlertKind::Crossed),
                (80, AlertKind::Forecast),
                (100, AlertKind::Forecast)
            ]
        );
        assert_eq!(due[0].alert_id, "t:2026-11:50:crossed");
        let none = Budget {
            monthly_micros: 0,
            ..budget
        };
        assert!(super::due("t", &none, 600, datetime!(2026-11-11 00:00 UTC)).is_empty());
    }
}
