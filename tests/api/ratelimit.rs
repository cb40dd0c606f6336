//! Rate limits at the front door: OpenAI's headers on every answer, 429s with
//! Retry-After, per-key limits and per-tenant overrides.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::json;
use tenantai::app::Config;
use tenantai::tenancy::tenants::{Tier, Tiers};

use crate::harness::Harness;
use crate::worker;

async fn setup() -> Harness {
    let tiny = Tier {
        requests_per_minute: 3,
        tokens_per_minute: 1_000_000,
        max_inputs_per_request: 16,
        monthly_budget_micros: 1_000_000,
        shared_cache_allowed: false,
        hard_cap: false,
        batch: Default::default(),
    };
    let config = Config {
        tiers: Tiers(BTreeMap::from([("tiny".to_string(), tiny)])),
        ..Config::default()
    };
    let h = Harness::with_config(config).await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    h
}

#[tokio::test]
async fn requests_over_the_tier_limit_get_429_with_retry_after() {
    let h = setup().await;
    let t = h.tenant("T", "tiny").await;
    let (key, _) = h.key(&t, json!({})).await;
    for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
        let r = h.embed(&key, format!("request {i}")).await;
        r.ok();
        assert_eq!(r.header("x-ratelimit-limit-requests"), "3");
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            remaining.to_string()
        );
        assert_eq!(r.header("x-ratelimit-limit-tokens"), "1000000");
        assert!(
            r.header("x-ratelimit-remaining-tokens")
                .parse::<u64>()
                .unwrap()
                < 1_000_000
        );
        assert!(r.header("x-ratelimit-reset-requests").ends_with('s'));
        assert!(!r.header("x-ratelimit-reset-tokens").is_empty());
    }
    let refused = h.embed(&key, "one too many").await;
    refused.error(429);
    assert_eq!(refused.body["error"]["type"], "rate_limit_exceeded");
    assert_eq!(refused.body["error"]["code"], "rate_limit_exceeded");
    let secs: u64 = refused.header("retry-after").parse().unwrap();
    let ms: u64 = refused.header("retry-after-ms").parse().unwrap();
    assert!(
        (1..=60).contains(&secs) && ms <= 60_000 && secs * 1000 >= ms,
        "{secs}s {ms}ms"
    );
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), "0");
    // A cache hit is still a request: it is limited too.
    assert_eq!(h.embed(&key, "request 0").await.status.as_u16(), 429);
}

#[tokio::test]
async fn keys_and_tenants_have_their_own_limits() {
    let h = setup().await;
    let t = h.tenant("T", "tiny").await;
    let (slow, _) = h
        .key(
            &t,
            json!({"rate_limits": {"requests_per_minute": 1, "tokens_per_minute": 1000}}),
        )
        .await;
    let (other, _) = h.key(&t, json!({})).await;
    h.embed(&slow, "a").await.ok();
    h.embed(&slow, "b").await.error(429);
    // The tenant still had room: another key of it is served.
    h.embed(&other, "c").await.ok();
    // A tenant override lifts the tier's limit.
    let u = h.tenant("U", "tiny").await;
    let (key_u, _) = h.key(&u, json!({})).await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{u}"),
        Some(json!({"rate_limits": {"requests_per_minute": 5, "tokens_per_minute": 1000000}})),
    )
    .await
    .ok();
    h.app.forget_tenant(&u);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for i in 0..5 {
        let r = h.embed(&key_u, format!("u{i}")).await;
        r.ok();
        assert_eq!(r.header("x-ratelimit-limit-requests"), "5");
    }
    h.embed(&key_u, "u5").await.error(429);
}
