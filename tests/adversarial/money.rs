//! Money and limit arithmetic: every figure an admin sets has a documented
//! maximum the API enforces (400 naming the field and the maximum); costs are
//! computed with checked arithmetic; an event that cannot be folded goes to the
//! dead-letter queue with its reason instead of being redelivered forever.

use axum::body::Body;
use axum::http::Method;
use proptest::prelude::*;
use serde_json::{json, Value};
use tenantai::billing::amounts::{
    cost_micros, MAX_BUDGET_MICROS, MAX_PRICE_PER_1K_TOKENS_MICROS, MAX_REQUESTS_PER_MINUTE,
    MAX_TOKENS_PER_MINUTE, MAX_UNIX_SECS,
};
use tenantai::billing::metering::{Record, UsageEvent};
use tenantai::gateway::ratelimit::{Limits, RateLimiter, Scope};
use tenantai::store::{Receive, Storage};

use crate::harness::Harness;
use crate::worker;

/// One admin figure: where it is set, the body that sets it to a value, its
/// field name and its maximum.
struct Figure {
    method: Method,
    path: String,
    body: fn(&str) -> String,
    field: &'static str,
    max: u128,
}

async fn figures(h: &Harness) -> Vec<Figure> {
    let t = h.tenant("Figures", "pro").await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"alert_webhook_url": "https://hooks.example.com/x"})),
    )
    .await
    .ok();
    h.model(json!({"model": "priced"})).await;
    let tenant = format!("/admin/v1/tenants/{t}");
    let keys = format!("/admin/v1/tenants/{t}/keys");
    vec![
        Figure {
            method: Method::PATCH,
            path: tenant.clone(),
            body: |v| format!(r#"{{"monthly_budget_micros": {v}}}"#),
            field: "monthly_budget_micros",
            max: MAX_BUDGET_MICROS.into(),
        },
        Figure {
            method: Method::PATCH,
            path: tenant.clone(),
            body: |v| {
                format!(
                    r#"{{"rate_limits": {{"requests_per_minute": {v}, "tokens_per_minute": 1000}}}}"#
                )
            },
            field: "rate_limits.requests_per_minute",
            max: MAX_REQUESTS_PER_MINUTE.into(),
        },
        Figure {
            method: Method::PATCH,
            path: tenant.clone(),
            body: |v| {
                format!(
                    r#"{{"rate_limits": {{"requests_per_minute": 10, "tokens_per_minute": {v}}}}}"#
                )
            },
            field: "rate_limits.tokens_per_minute",
            max: MAX_TOKENS_PER_MINUTE.into(),
        },
        Figure {
            method: Method::PATCH,
            path: tenant.clone(),
            body: |v| format!(r#"{{"alert_thresholds": [50, {v}]}}"#),
            field: "alert_thresholds",
            max: 1000,
        },
        Figure {
            method: Method::POST,
            path: keys.clone(),
            body: |v| {
                format!(
                    r#"{{"rate_limits": {{"requests_per_minute": {v}, "tokens_per_minute": 1000}}}}"#
                )
            },
            field: "rate_limits.requests_per_minute",
            max: MAX_REQUESTS_PER_MINUTE.into(),
        },
        Figure {
            method: Method::POST,
            path: keys.clone(),
            body: |v| {
                format!(
                    r#"{{"rate_limits": {{"requests_per_minute": 10, "tokens_per_minute": {v}}}}}"#
                )
            },
            field: "rate_limits.tokens_per_minute",
            max: MAX_TOKENS_PER_MINUTE.into(),
        },
        Figure {
            method: Method::POST,
            path: keys,
            body: |v| format!(r#"{{"expires_at": {v}}}"#),
            field: "expires_at",
            max: u128::try_from(MAX_UNIX_SECS).unwrap(),
        },
        Figure {
            method: Method::POST,
            path: "/admin/v1/models".into(),
            body: |v| {
                format!(
                    r#"{{"model": "m{}", "version": "1", "backend": "worker", "endpoint": "http://127.0.0.1:9", "price_per_1k_tokens_micros": {v}, "status": "live"}}"#,
                    uuid::Uuid::new_v4().simple()
                )
            },
            field: "price_per_1k_tokens_micros",
            max: MAX_PRICE_PER_1K_TOKENS_MICROS.into(),
        },
        Figure {
            method: Method::PATCH,
            path: "/admin/v1/models/priced/versions/1".into(),
            body: |v| format!(r#"{{"price_per_1k_tokens_micros": {v}}}"#),
            field: "price_per_1k_tokens_micros",
            max: MAX_PRICE_PER_1K_TOKENS_MICROS.into(),
        },
        Figure {
            method: Method::POST,
            path: format!("{tenant}/alert-webhook/rotate-secret"),
            body: |v| format!(r#"{{"overlap_secs": {v}}}"#),
            field: "overlap_secs",
            max: 7 * 24 * 3600,
        },
        Figure {
            method: Method::POST,
            path: "/admin/v1/models".into(),
            body: |v| {
                format!(
                    r#"{{"model": "c{}", "version": "1", "backend": "worker", "endpoint": "http://127.0.0.1:9", "price_per_1k_tokens_micros": 1, "status": "canary", "canary_weight": {v}}}"#,
                    uuid::Uuid::new_v4().simple()
                )
            },
            field: "canary_weight",
            max: 100,
        },
    ]
}

async fn set(h: &Harness, f: &Figure, value: &str) -> crate::harness::Reply {
    h.raw(
        f.method.clone(),
        &f.path,
        Some(&h.admin.clone()),
        Body::from((f.body)(value)),
        &[],
    )
    .await
}

#[tokio::test]
async fn every_figure_has_an_enforced_maximum() {
    let h = Harness::new().await;
    for f in figures(&h).await {
        let at_max = set(&h, &f, &f.max.to_string()).await;
        assert!(
            at_max.status.is_success(),
            "{} at its maximum {}: {} {}",
            f.field,
            f.max,
            at_max.status,
            at_max.body
        );
        for over in [
            (f.max + 1).to_string(),
            u64::MAX.to_string(),
            "18446744073709551616".into(),
            "-1".into(),
            "1e30".into(),
            "\"5\"".into(),
        ] {
            let r = set(&h, &f, &over).await;
            let msg = r.error(400);
            // Just past the maximum, the answer names the field and the maximum;
            // the rest do not fit the field's type at all.
            if over == (f.max + 1).to_string() {
                assert_eq!(r.body["error"]["param"], f.field, "{over}: {msg}");
                assert!(msg.contains(&f.max.to_string()), "{}: {msg}", f.field);
            }
        }
    }
}

#[tokio::test]
async fn figures_refused_change_nothing() {
    let h = Harness::new().await;
    let t = h.tenant("Unchanged", "pro").await;
    let before = h.admin(Method::GET, &format!("/tenants/{t}"), None).await;
    for body in [
        json!({"name": "renamed", "monthly_budget_micros": MAX_BUDGET_MICROS + 1}),
        json!({"name": "renamed", "rate_limits": {"requests_per_minute": u64::MAX, "tokens_per_minute": 1}}),
        json!({"name": "renamed", "rate_limits": {"requests_per_minute": 1, "tokens_per_minute": 1, "extra": 1}}),
    ] {
        h.admin(Method::PATCH, &format!("/tenants/{t}"), Some(body))
            .await
            .error(400);
    }
    let after = h.admin(Method::GET, &format!("/tenants/{t}"), None).await;
    assert_eq!(before.body, after.body);
}

#[tokio::test]
async fn a_limit_beyond_a_signed_counter_does_not_refuse_everything() {
    // The counters are signed; an unsigned limit past i64::MAX must not wrap.
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::embedded(dir.path(), &tenantai::store::Resources::named("rl"))
        .await
        .unwrap();
    let limiter = RateLimiter::new(storage.table.clone());
    let scope = Scope {
        id: "tenant:huge".into(),
        limits: Limits {
            requests_per_minute: u64::MAX,
            tokens_per_minute: u64::MAX,
        },
    };
    let now = tenantai::store::now_millis();
    for i in 0..20 {
        limiter
            .admit(std::slice::from_ref(&scope), 1000, now, i)
            .await
            .unwrap_or_else(|e| panic!("request {i} refused: {e}"));
    }
}

fn event(id: &str, tenant: &str, cost: u64, tokens: u64) -> UsageEvent {
    UsageEvent {
        event_id: id.into(),
        tenant_id: tenant.into(),
        key_id: "key_1".into(),
        model: "m".into(),
        model_version: "1".into(),
        requests: 1,
        inputs: 1,
        tokens,
        completion_tokens: 0,
        cache_hit: false,
        cache_hits: 0,
        latency_ms: 1.0,
        overhead_ms: 0.25,
        compute_ms: 1,
        cost_micros: cost,
        at_ms: 1_795_000_000_000,
        batch: false,
    }
}

#[tokio::test]
async fn unfoldable_events_are_dead_lettered_with_a_reason_not_redelivered() {
    let h = Harness::new().await;
    let (_, dlq) = h.app.storage.usage_queues().unwrap();
    let big = i64::MAX as u64 - 10;
    let cases = [
        // A counter past the signed range.
        ("over", event("e-over", "t1", u64::MAX, 1)),
        ("tokens", event("e-tokens", "t1", 1, u64::MAX)),
        // Two that fit alone but not together in one aggregate.
        ("sum-1", event("e-sum-1", "t2", big, 1)),
        ("sum-2", event("e-sum-2", "t2", big, 1)),
    ];
    let records: Vec<Record> = cases
        .iter()
        .map(|(id, e)| Record {
            id: id.to_string(),
            body: serde_json::to_string(e).unwrap(),
        })
        .collect();
    let outcome = h.app.meter.process(dlq.as_ref(), &records).await;
    assert!(outcome.failed.is_empty(), "redelivered: {outcome:?}");
    assert_eq!(outcome.added, 1, "{outcome:?}");
    assert_eq!(outcome.dead_lettered, 3, "{outcome:?}");
    let dead = dlq
        .receive(&Receive {
            max: 10,
            wait: std::time::Duration::ZERO,
            visibility: std::time::Duration::from_secs(30),
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 3);
    for m in dead {
        let v: Value = serde_json::from_str(&m.body).unwrap();
        assert!(
            v["reason"].as_str().unwrap().contains("out of range")
                || v["reason"].as_str().unwrap().contains("overflow"),
            "{v}"
        );
        let original: UsageEvent = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        assert!(original.event_id.starts_with("e-"));
    }
    // The spend that was folded is intact.
    let spend = h.app.meter.month_spend("t2", "2026-11").await.unwrap();
    assert_eq!(spend, big);
}

#[tokio::test]
async fn the_dearest_price_on_the_largest_request_is_metered_exactly() {
    let h = Harness::new().await;
    h.model(
        json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url(),
                   "price_per_1k_tokens_micros": MAX_PRICE_PER_1K_TOKENS_MICROS}),
    )
    .await;
    let t = h.tenant("Dear", "enterprise").await;
    let (key, _) = h.key(&t, json!({})).await;
    let inputs: Vec<String> = (0..64).map(|i| format!("input {i} ").repeat(40)).collect();
    let r = h.embed(&key, json!(inputs)).await;
    let tokens = r.ok()["usage"]["prompt_tokens"].as_u64().unwrap();
    let cost: u64 = r.header("x-tenantai-cost-micros").parse().unwrap();
    assert_eq!(
        Ok(cost),
        cost_micros(tokens, MAX_PRICE_PER_1K_TOKENS_MICROS)
    );
    h.settle_usage().await;
    let usage = h.call(Method::GET, "/v1/usage", Some(&key), None).await;
    assert_eq!(usage.ok()["totals"]["cost_micros"], cost);
    assert_eq!(usage.body["totals"]["requests"], 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn costs_are_exact_or_an_error(tokens: u64, price: u64) {
        let exact = (u128::from(tokens) * u128::from(price)).div_ceil(1000);
        match cost_micros(tokens, price) {
            Ok(c) => prop_assert_eq!(u128::from(c), exact),
            Err(_) => prop_assert!(u128::from(tokens) * u128::from(price) > u128::from(u64::MAX)),
        }
    }

    #[test]
    fn within_the_maxima_costs_never_fail(tokens in 0u64..=2048 * 512, price in 0..=MAX_PRICE_PER_1K_TOKENS_MICROS) {
        let cost = cost_micros(tokens, price).unwrap();
        prop_assert!(cost <= MAX_BUDGET_MICROS);
    }

    #[test]
    fn merged_events_never_wrap(a: u64, b: u64) {
        let mut x = event("x", "t", a, 1);
        let y = event("y", "t", b, 1);
        match x.absorb(&y) {
            Ok(()) => prop_assert_eq!(u128::from(x.cost_micros), u128::from(a) + u128::from(b)),
            Err(_) => prop_assert_eq!(x.cost_micros, a, "a failed merge changes nothing"),
        }
    }
}
