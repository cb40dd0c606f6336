//! Usage and spend through the public API: every billable call is metered,
//! /v1/usage adds up to what the calls returned, and a hard cap holds under
//! concurrency with `insufficient_quota`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use serde_json::{json, Value};
use tenantai::app::Config;
use tenantai::tenancy::tenants::{Tier, Tiers};

use crate::harness::{Harness, Reply};
use crate::worker;

#[derive(Default, Debug, PartialEq)]
struct Returned {
    requests: u64,
    inputs: u64,
    tokens: u64,
    cache_hits: u64,
    cost_micros: u64,
}

impl Returned {
    fn add(&mut self, r: &Reply) {
        let body = r.ok();
        self.requests += 1;
        self.inputs += body["data"].as_array().unwrap().len() as u64;
        self.tokens += body["usage"]["prompt_tokens"].as_u64().unwrap();
        self.cache_hits += u64::from(r.header("x-tenantai-cache") == "hit");
        self.cost_micros += r.header("x-tenantai-cost-micros").parse::<u64>().unwrap();
    }

    fn matches(&self, totals: &Value) {
        let got = Returned {
            requests: totals["requests"].as_u64().unwrap(),
            inputs: totals["inputs"].as_u64().unwrap(),
            tokens: totals["tokens"].as_u64().unwrap(),
            cache_hits: totals["cache_hits"].as_u64().unwrap(),
            cost_micros: totals["cost_micros"].as_u64().unwrap(),
        };
        assert_eq!(&got, self, "usage totals against what the API returned");
    }
}

#[tokio::test]
async fn usage_adds_up_to_what_the_api_returned() {
    let h = Harness::new().await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    let t = h.tenant("Metered", "pro").await;
    let other = h.tenant("Other", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let (second_key, _) = h.key(&t, json!({})).await;
    let (other_key, _) = h.key(&other, json!({})).await;

    let mut returned = Returned::default();
    for (k, input) in [
        (&key, json!("hello world")),
        (&key, json!("hello world")),
        (&key, json!(["a b c", "d e f", "the quick brown fox"])),
        (&key, json!([101, 7592, 2088, 102])),
        (&second_key, json!("hello world")),
    ] {
        returned.add(&h.embed(k, input).await);
    }
    assert_eq!(returned.cache_hits, 2);
    assert!(returned.cost_micros > 0);
    // Refused calls are not billed.
    h.embed(&key, json!("")).await.error(400);
    h.call(
        Method::POST,
        "/v1/embeddings",
        Some(&key),
        Some(json!({"model": "no-such-model", "input": "x"})),
    )
    .await
    .error(404);

    h.settle_usage().await;
    let own = h.call(Method::GET, "/v1/usage", Some(&key), None).await;
    let body = own.ok();
    returned.matches(&body["totals"]);
    assert_eq!(body["group_by"], json!(["day"]));
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        body["budget"]["month_to_date_cost_micros"]
            .as_u64()
            .unwrap(),
        returned.cost_micros
    );
    assert_eq!(body["budget"]["monthly_budget_micros"], 500_000_000);
    let by_model = h
        .call(
            Method::GET,
            "/v1/usage?group_by=model,day",
            Some(&key),
            None,
        )
        .await;
    let bucket = &by_model.ok()["data"][0];
    assert_eq!(bucket["model"], "all-MiniLM-L6-v2");
    assert_eq!(bucket["requests"], 5);

    // Another tenant sees only its own (empty) usage.
    let theirs = h
        .call(Method::GET, "/v1/usage", Some(&other_key), None)
        .await;
    assert_eq!(theirs.ok()["totals"]["requests"], 0);
    assert!(theirs.body["data"].as_array().unwrap().is_empty());

    // The admin API reports one tenant, or all of them by tenant.
    let admin_one = h
        .admin(Method::GET, &format!("/tenants/{t}/usage"), None)
        .await;
    returned.matches(&admin_one.ok()["totals"]);
    let all = h.admin(Method::GET, "/usage", None).await;
    returned.matches(&all.ok()["totals"]);
    assert_eq!(all.body["data"][0]["tenant_id"], t.as_str());
    h.admin(Method::GET, "/tenants/ten_nope/usage", None)
        .await
        .error(404);
}

#[tokio::test]
async fn usage_needs_its_scope_and_valid_parameters() {
    let h = Harness::new().await;
    let t = h.tenant("Scoped", "pro").await;
    let (embed_only, _) = h.key(&t, json!({"scopes": ["embeddings"]})).await;
    let (key, _) = h.key(&t, json!({})).await;
    h.call(Method::GET, "/v1/usage", Some(&embed_only), None)
        .await
        .error(403);
    for query in [
        "from=2026-02-30",
        "from=yesterday",
        "from=2026-11-20&to=2026-11-01",
        "from=2024-01-01&to=2026-01-01",
        "group_by=tenant",
        "group_by=week",
        "limit=0",
        "limit=5000",
        "after=%21%21",
    ] {
        let r = h
            .call(Method::GET, &format!("/v1/usage?{query}"), Some(&key), None)
            .await;
        r.error(400);
    }
    h.call(Method::GET, "/v1/usage", None, None)
        .await
        .error(401);
    h.admin(Method::GET, "/usage?group_by=week", None)
        .await
        .error(400);
}

#[tokio::test]
async fn usage_pages_with_a_cursor() {
    let h = Harness::new().await;
    let t = h.tenant("Paged", "pro").await;
    let (key, key_id) = h.key(&t, json!({})).await;
    // Three days of usage, folded as the metering function would.
    let meter = &h.app.meter;
    for (i, day) in ["2026-10-30", "2026-10-31", "2026-11-01"]
        .iter()
        .enumerate()
    {
        let at = tenantai::billing::metering::parse_day(day)
            .unwrap()
            .midnight()
            .assume_utc();
        meter
            .fold(&tenantai::billing::metering::UsageEvent {
                event_id: format!("page-{i}"),
                tenant_id: t.clone(),
                key_id: key_id.clone(),
                model: "all-MiniLM-L6-v2".into(),
                model_version: "1".into(),
                inputs: 1,
                tokens: 10 + i as u64,
                completion_tokens: 0,
                requests: 1,
                cache_hit: false,
                cache_hits: 0,
                latency_ms: 2.0,
                overhead_ms: 0.25,
                compute_ms: 1,
                cost_micros: 1,
                at_ms: at.unix_timestamp() * 1000 + 5,
                batch: false,
            })
            .await
            .unwrap();
    }
    let mut days = Vec::new();
    let mut url = "/v1/usage?from=2026-10-01&to=2026-11-30&limit=2".to_string();
    loop {
        let r = h.call(Method::GET, &url, Some(&key), None).await;
        let body = r.ok().clone();
        assert_eq!(body["totals"]["tokens"], 33, "totals cover the whole range");
        for b in body["data"].as_array().unwrap() {
            days.push(b["day"].as_str().unwrap().to_string());
        }
        match body["next"].as_str() {
            Some(c) => {
                assert_eq!(body["has_more"], true);
                url = format!("/v1/usage?from=2026-10-01&to=2026-11-30&limit=2&after={c}");
            }
            None => break,
        }
    }
    assert_eq!(days, ["2026-10-30", "2026-10-31", "2026-11-01"]);
}

pub(crate) fn capped_config(budget: u64) -> Config {
    let capped = Tier {
        requests_per_minute: 100_000,
        tokens_per_minute: 1_000_000_000,
        max_inputs_per_request: 16,
        monthly_budget_micros: budget,
        shared_cache_allowed: false,
        hard_cap: true,
        batch: Default::default(),
    };
    let mut tiers = Tiers::default();
    tiers.0.insert("capped".into(), capped);
    Config {
        tiers,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hard_cap_holds_under_32_concurrent_clients() {
    const CAP: u64 = 100_000;
    let h = Harness::with_config(capped_config(CAP)).await;
    // $1 per 1k tokens: each request costs a few thousand micro-dollars.
    h.model(
        json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url(),
                   "price_per_1k_tokens_micros": 1_000_000}),
    )
    .await;
    let t = h.tenant("Capped", "capped").await;
    let (key, _) = h.key(&t, json!({})).await;
    let soft = h.tenant("Soft", "pro").await;
    let (soft_key, _) = h.key(&soft, json!({})).await;

    let key = Arc::new(key);
    let mut clients = Vec::new();
    for c in 0..32 {
        let (h, key) = (h.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..3 {
                let r = h.embed(&key, json!(format!("client {c} asks {i}"))).await;
                outcomes.push(r);
            }
            outcomes
        }));
    }
    let (mut served, mut refused, mut spent) = (0, 0, 0u64);
    for c in clients {
        for r in c.await.unwrap() {
            if r.status.is_success() {
                served += 1;
                spent += r.header("x-tenantai-cost-micros").parse::<u64>().unwrap();
            } else {
                r.error(429);
                assert_eq!(r.body["error"]["type"], "insufficient_quota");
                assert_eq!(r.body["error"]["code"], "insufficient_quota");
                assert_eq!(r.header("x-should-retry"), "false");
                refused += 1;
            }
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    assert!(spent <= CAP, "spent {spent} past the cap {CAP}");

    // Settlements land off the response path: the committed spend converges
    // on exactly what was served.
    let month = &tenantai::billing::metering::month_of(tenantai::store::now_millis());
    let mut committed = 0;
    for _ in 0..100 {
        committed = h.app.budget.committed(&t, month).await.unwrap();
        if committed == spent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(committed, spent);

    // One at a time, requests are served until the next one could overrun.
    let mut last = None;
    for i in 0..100 {
        let r = h.embed(&key, json!(format!("sequential {i}"))).await;
        if !r.status.is_success() {
            last = Some(r);
            break;
        }
        spent += r.header("x-tenantai-cost-micros").parse::<u64>().unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = last.expect("the cap stops requests");
    assert_eq!(last.body["error"]["type"], "insufficient_quota");
    // The refused request's worst case ("sequential NN": 13 bytes + 2 tokens at $1/1k).
    assert!(
        CAP - spent < 15_000,
        "refused with {} micro-dollars left",
        CAP - spent
    );
    assert!(spent <= CAP);

    h.settle_usage().await;
    let usage = h.call(Method::GET, "/v1/usage", Some(&key), None).await;
    assert_eq!(usage.ok()["totals"]["cost_micros"].as_u64().unwrap(), spent);
    assert_eq!(usage.body["budget"]["hard_cap"], true);
    // A tenant without a hard cap is not stopped.
    h.embed(&soft_key, json!("not capped")).await.ok();

    // Raising the budget lets the tenant back in.
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"monthly_budget_micros": CAP * 10})),
    )
    .await
    .ok();
    h.app.forget_tenant(&t);
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.embed(&key, json!("after the raise")).await.ok();
}
