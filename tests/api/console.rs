//! The console's API: its page and files, usage charts (SVG) for admins and
//! for a tenant itself, a tenant's batches and alerts for admins, keys' last
//! use, and batch reads with a reporting key; tenant-scoped, in the OpenAI
//! error shape.

use std::time::Duration;

use axum::body::Body;
use axum::http::Method;
use serde_json::{json, Value};
use tenantai::batch::jobs::{self, Handled, WorkerConfig};
use tenantai::billing::alerts::{CostAlerts, Notifier, Retry};
use tenantai::store::Receive;

use crate::harness::{Harness, Reply};
use crate::worker;

const MODEL: &str = "all-MiniLM-L6-v2";

async fn setup() -> Harness {
    with_model(Harness::new().await).await
}

async fn with_model(h: Harness) -> Harness {
    h.model(json!({"model": MODEL, "endpoint": worker::url()}))
        .await;
    h
}

/// The SVG text of a chart answer (asserting its type).
fn svg(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), "image/svg+xml; charset=utf-8");
    assert_eq!(r.header("cache-control"), "no-store");
    let text = r.body["raw"].as_str().unwrap().to_string();
    assert!(text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    text
}

/// The value of `attr` on the chart's root element.
fn root_attr(svg: &str, attr: &str) -> String {
    let head = &svg[..svg.find('>').unwrap()];
    let at = head.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3;
    head[at..at + head[at..].find('"').unwrap()].to_string()
}

/// `(model, class, total)` of each legend entry.
fn legend(svg: &str) -> Vec<(String, String, u64)> {
    let attr = |el: &str, a: &str| {
        let at = el.find(&format!(" {a}=\"")).unwrap() + a.len() + 3;
        el[at..at + el[at..].find('"').unwrap()].to_string()
    };
    svg.split("<g class=\"legend-entry\"")
        .skip(1)
        .map(|el| {
            (
                attr(el, "data-model"),
                attr(el, "data-class"),
                attr(el, "data-total").parse().unwrap(),
            )
        })
        .collect()
}

async fn chart(h: &Harness, path: &str, token: &str) -> String {
    svg(&h.call(Method::GET, path, Some(token), None).await)
}

#[tokio::test]
async fn the_page_and_its_files_are_served_without_credentials_under_a_strict_policy() {
    let h = Harness::new().await;
    for (path, kind, marker) in [
        ("/console", "text/html", "<form id=\"sign-in-form\""),
        ("/console/", "text/html", "<form id=\"sign-in-form\""),
        ("/console/console.js", "text/javascript", "Authorization"),
        ("/console/console.css", "text/css", ":focus-visible"),
    ] {
        let r = h.raw(Method::GET, path, None, Body::empty(), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").starts_with(kind), "{path}");
        let csp = r.header("content-security-policy");
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        assert!(csp.contains("form-action 'none'"));
        assert_eq!(r.header("x-content-type-options"), "nosniff");
        assert_eq!(r.header("referrer-policy"), "no-referrer");
        let text = r.body["raw"].as_str().unwrap();
        assert!(text.contains(marker), "{path}");
        // Nothing comes from elsewhere: no CDN, no absolute URL to load.
        for outside in ["src=\"http", "href=\"http", "url(http", "import "] {
            assert!(!text.contains(outside), "{path} loads {outside}");
        }
    }
    // The token field is never sent by a form (it has no name).
    let page = h
        .raw(Method::GET, "/console", None, Body::empty(), &[])
        .await;
    let page = page.body["raw"].as_str().unwrap();
    let field = &page[page.find("<input id=\"token\"").unwrap()..];
    assert!(!field[..field.find('>').unwrap()].contains("name="));
    h.raw(Method::GET, "/console/secrets", None, Body::empty(), &[])
        .await
        .error(404);
}

#[tokio::test]
async fn charts_show_each_tenants_own_usage_by_kind_for_admins_and_for_the_tenant() {
    let h = setup().await;
    let t = h.tenant("Charted", "pro").await;
    let other = h.tenant("Elsewhere", "pro").await;
    let (key, _) = h.key(&t, json!({"scopes": ["embeddings", "usage"]})).await;
    let (other_key, _) = h.key(&other, json!({})).await;
    let (embed_only, _) = h.key(&t, json!({"scopes": ["embeddings"]})).await;
    for input in [json!("hello world"), json!(["a b c", "d e f"]), json!("x")] {
        h.embed(&key, input).await.ok();
    }
    h.embed(&other_key, json!("only theirs")).await.ok();
    h.settle_usage().await;
    let usage = h
        .admin(Method::GET, &format!("/tenants/{t}/usage"), None)
        .await;
    let totals = usage.ok()["totals"].clone();
    assert_eq!(totals["requests"], 3);

    for (metric, field) in [
        ("requests", "requests"),
        ("tokens", "tokens"),
        ("cost", "cost_micros"),
    ] {
        let admin = chart(
            &h,
            &format!("/admin/v1/tenants/{t}/usage/chart?metric={metric}"),
            &h.admin.clone(),
        )
        .await;
        let own = chart(&h, &format!("/v1/usage/chart?metric={metric}"), &key).await;
        assert_eq!(admin, own, "the tenant sees what its operator sees");
        let expected = totals[field].as_u64().unwrap();
        assert!(expected > 0);
        assert_eq!(root_attr(&own, "data-metric"), metric);
        assert_eq!(root_attr(&own, "data-total"), expected.to_string());
        assert_eq!(
            legend(&own),
            [(MODEL.to_string(), "embeddings".to_string(), expected)]
        );
        // The other tenant's call is in its own chart only.
        let theirs = chart(&h, &format!("/v1/usage/chart?metric={metric}"), &other_key).await;
        assert_ne!(root_attr(&theirs, "data-total"), expected.to_string());
    }
    let theirs = chart(&h, "/v1/usage/chart", &other_key).await;
    assert_eq!(root_attr(&theirs, "data-total"), "1");

    // A range: the days it names, and nothing before the usage happened.
    let past = chart(
        &h,
        "/v1/usage/chart?metric=requests&from=2025-01-01&to=2025-01-31",
        &key,
    )
    .await;
    assert_eq!(root_attr(&past, "data-total"), "0");
    assert_eq!(root_attr(&past, "data-from"), "2025-01-01");
    assert_eq!(root_attr(&past, "data-to"), "2025-01-31");
    assert!(past.contains("No usage in this range"));

    // Refusals, in the OpenAI shape.
    let bad = h
        .call(
            Method::GET,
            "/v1/usage/chart?metric=euros",
            Some(&key),
            None,
        )
        .await;
    bad.error(400);
    assert_eq!(bad.body["error"]["param"], "metric");
    h.call(
        Method::GET,
        "/v1/usage/chart?from=2026-13-01",
        Some(&key),
        None,
    )
    .await
    .error(400);
    h.call(
        Method::GET,
        "/v1/usage/chart?metric=a&metric=b",
        Some(&key),
        None,
    )
    .await
    .error(400);
    h.call(Method::GET, "/v1/usage/chart", Some(&embed_only), None)
        .await
        .error(403);
    h.call(Method::GET, "/v1/usage/chart", None, None)
        .await
        .error(401);
    h.call(
        Method::GET,
        &format!("/admin/v1/tenants/{t}/usage/chart"),
        Some(&key),
        None,
    )
    .await
    .error(401);
    h.admin(Method::GET, "/tenants/ten_nobody/usage/chart", None)
        .await
        .error(404);
}

/// Runs every job on the jobs queue, as a worker would.
async fn run_jobs(h: &Harness) {
    let (queue, _) = jobs::queues(&h.app.storage).unwrap();
    let config = WorkerConfig {
        chunk_lines: 2,
        ..WorkerConfig::default()
    };
    let now = Receive {
        max: 10,
        wait: Duration::ZERO,
        visibility: Duration::from_secs(300),
    };
    loop {
        let got = queue.receive(&now).await.unwrap();
        if got.is_empty() {
            return;
        }
        for m in got {
            let done = jobs::handle(&h.app, &config, &m.body, false).await.unwrap();
            assert_eq!(done, Handled::Done);
            queue.delete(&m.receipt).await.unwrap();
        }
    }
}

async fn new_batch(h: &Harness, key: &str, lines: usize) -> String {
    let file: String = (0..lines)
        .map(|i| {
            json!({"custom_id": format!("l{i}"), "method": "POST", "url": "/v1/embeddings",
                   "body": {"model": MODEL, "input": format!("line {i}")}})
            .to_string()
                + "\n"
        })
        .collect();
    let boundary = "console-test";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n{file}\r\n--{boundary}--\r\n"
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let up = h
        .raw(
            Method::POST,
            "/v1/files",
            Some(key),
            Body::from(body),
            &[("content-type", &ct)],
        )
        .await;
    let file_id = up.ok()["id"].as_str().unwrap().to_string();
    let b = h
        .call(
            Method::POST,
            "/v1/batches",
            Some(key),
            Some(json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"})),
        )
        .await;
    b.ok()["id"].as_str().unwrap().to_string()
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn admins_see_a_tenants_batches_with_progress_and_its_batch_usage_apart() {
    let h = setup().await;
    let t = h.tenant("Batcher", "pro").await;
    let other = h.tenant("Neighbour", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let (other_key, _) = h.key(&other, json!({})).await;
    let (reporting, _) = h.key(&t, json!({"scopes": ["usage"]})).await;
    let (embed_only, _) = h.key(&t, json!({"scopes": ["embeddings"]})).await;
    let first = new_batch(&h, &key, 3).await;
    let theirs = new_batch(&h, &other_key, 1).await;

    let listed = h
        .admin(Method::GET, &format!("/tenants/{t}/batches"), None)
        .await;
    assert_eq!(ids(listed.ok()), std::slice::from_ref(&first));
    let b = &listed.body["data"][0];
    assert_eq!(b["status"], "validating");
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 0})
    );

    run_jobs(&h).await;
    let second = new_batch(&h, &key, 2).await;
    let listed = h
        .admin(Method::GET, &format!("/tenants/{t}/batches?limit=1"), None)
        .await;
    assert_eq!(
        ids(listed.ok()),
        std::slice::from_ref(&second),
        "newest first"
    );
    assert_eq!(listed.body["has_more"], true);
    let rest = h
        .admin(
            Method::GET,
            &format!("/tenants/{t}/batches?limit=1&after={second}"),
            None,
        )
        .await;
    assert_eq!(ids(rest.ok()), std::slice::from_ref(&first));
    let done = &rest.body["data"][0];
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 3, "failed": 0})
    );
    // What the tenant's own API says about it, a reporting key included.
    let own = h
        .call(
            Method::GET,
            &format!("/v1/batches/{first}"),
            Some(&reporting),
            None,
        )
        .await;
    assert_eq!(own.ok()["request_counts"], done["request_counts"]);
    let own_list = h
        .call(Method::GET, "/v1/batches", Some(&reporting), None)
        .await;
    assert_eq!(ids(own_list.ok()), [second.clone(), first.clone()]);
    assert!(!ids(&own_list.body).contains(&theirs));
    h.call(Method::GET, "/v1/batches", Some(&embed_only), None)
        .await
        .error(403);
    h.call(
        Method::GET,
        &format!("/v1/batches/{theirs}"),
        Some(&reporting),
        None,
    )
    .await
    .error(404);

    // The batch's lines are charted apart from direct use.
    h.embed(&key, json!("direct")).await.ok();
    h.settle_usage().await;
    let requests = chart(&h, "/v1/usage/chart?metric=requests", &reporting).await;
    assert_eq!(
        legend(&requests),
        [
            (MODEL.to_string(), "embeddings".to_string(), 1),
            (MODEL.to_string(), "batch".to_string(), 3)
        ]
    );
    let usage = h
        .call(Method::GET, "/v1/usage", Some(&reporting), None)
        .await;
    let totals = &usage.ok()["totals"];
    let cost = chart(&h, "/v1/usage/chart?metric=cost", &reporting).await;
    let by_class = legend(&cost);
    assert_eq!(by_class[1].2, totals["batch_cost_micros"].as_u64().unwrap());
    assert_eq!(
        by_class[0].2 + by_class[1].2,
        totals["cost_micros"].as_u64().unwrap()
    );

    // Refusals.
    h.admin(Method::GET, "/tenants/ten_nobody/batches", None)
        .await
        .error(404);
    h.admin(Method::GET, &format!("/tenants/{t}/batches?limit=0"), None)
        .await
        .error(400);
    h.admin(Method::GET, &format!("/tenants/{t}/batches?limit=x"), None)
        .await
        .error(400);
    let long = "b".repeat(200);
    h.admin(
        Method::GET,
        &format!("/tenants/{t}/batches?after={long}"),
        None,
    )
    .await
    .error(400);
    h.call(
        Method::GET,
        &format!("/admin/v1/tenants/{t}/batches"),
        Some(&key),
        None,
    )
    .await
    .error(401);
}

#[tokio::test]
async fn admins_see_the_alerts_sent_to_a_tenant_and_no_others() {
    alerts_sent(setup().await).await;
}

/// The same on DynamoDB (the emulator): claims read newest first, paged.
#[tokio::test]
async fn alerts_sent_on_the_aws_adapters() {
    if let Some(h) = Harness::on_aws(tenantai::app::Config::default()).await {
        alerts_sent(with_model(h).await).await;
    }
}

async fn alerts_sent(h: Harness) {
    let t = h.tenant("Spender", "pro").await;
    let quiet = h.tenant("Quiet", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"monthly_budget_micros": 1, "alert_thresholds": [50, 100]})),
    )
    .await
    .ok();
    h.embed(&key, json!("hello world")).await.ok();
    h.settle_usage().await;
    let alerts = CostAlerts::new(
        h.app.storage.table.clone(),
        h.app.config.tiers.clone(),
        Notifier::new(Retry::default(), h.app.config.webhook_rules()).unwrap(),
    );
    let run = alerts.run(time::OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(run.sent, 2, "{run:?}");

    let month = tenantai::billing::metering::month_of(tenantai::store::now_millis());
    let spend = h
        .admin(Method::GET, &format!("/tenants/{t}/usage"), None)
        .await
        .ok()["budget"]["month_to_date_cost_micros"]
        .clone();
    let listed = h
        .admin(Method::GET, &format!("/tenants/{t}/alerts"), None)
        .await;
    let got: Vec<(String, u64, String, String)> = listed.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["month"], month.as_str());
            assert_eq!(a["spend_micros"], spend);
            assert!(a["sent_at"].as_i64().unwrap() >= a["claimed_at"].as_i64().unwrap());
            (
                a["alert_id"].as_str().unwrap().to_string(),
                a["threshold_percent"].as_u64().unwrap(),
                a["kind"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let id = |pct: u64| format!("{t}:{month}:{pct}:crossed");
    assert_eq!(
        got,
        [
            (id(100), 100, "crossed".into(), "sent".into()),
            (id(50), 50, "crossed".into(), "sent".into())
        ]
    );
    let page = h
        .admin(Method::GET, &format!("/tenants/{t}/alerts?limit=1"), None)
        .await;
    assert_eq!(page.ok()["data"].as_array().unwrap().len(), 1);
    let next = page.body["next"].as_str().unwrap().to_string();
    let rest = h
        .admin(
            Method::GET,
            &format!("/tenants/{t}/alerts?limit=1&after={next}"),
            None,
        )
        .await;
    assert_eq!(rest.ok()["data"][0]["threshold_percent"], 50);
    let none = h
        .admin(Method::GET, &format!("/tenants/{quiet}/alerts"), None)
        .await;
    assert_eq!(none.ok()["data"], json!([]));
    h.admin(Method::GET, "/tenants/ten_nobody/alerts", None)
        .await
        .error(404);
    h.admin(
        Method::GET,
        &format!("/tenants/{t}/alerts?limit=1000"),
        None,
    )
    .await
    .error(400);
}

#[tokio::test]
async fn keys_show_when_they_were_last_used_and_a_late_event_does_not_move_it_back() {
    last_use(setup().await).await;
}

/// The same on DynamoDB (the emulator): the conditional update creates the
/// use item once and never moves it back.
#[tokio::test]
async fn keys_last_use_on_the_aws_adapters() {
    if let Some(h) = Harness::on_aws(tenantai::app::Config::default()).await {
        last_use(with_model(h).await).await;
    }
}

async fn last_use(h: Harness) {
    let t = h.tenant("Keyed", "pro").await;
    let (used, used_id) = h.key(&t, json!({"name": "used"})).await;
    let (_, idle_id) = h.key(&t, json!({"name": "idle"})).await;
    let before = tenantai::store::now_secs();
    h.embed(&used, json!("hello world")).await.ok();
    h.settle_usage().await;
    let after = tenantai::store::now_secs();
    let listed = |h: &Harness| {
        let h = h.clone();
        let t = t.clone();
        async move {
            let r = h
                .admin(Method::GET, &format!("/tenants/{t}/keys"), None)
                .await;
            r.ok()["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    (
                        k["key_id"].as_str().unwrap().to_string(),
                        k["last_used_at"].clone(),
                    )
                })
                .collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    let keys = listed(&h).await;
    let at = keys[&used_id].as_i64().unwrap();
    assert!(
        (before..=after).contains(&at),
        "{at} not in {before}..={after}"
    );
    assert_eq!(keys[&idle_id], Value::Null);

    // A use folded late (an older event) leaves the later one standing.
    let table = h.app.storage.table.as_ref();
    tenantai::tenancy::keys::record_use(table, &t, &used_id, at - 3600)
        .await
        .unwrap();
    assert_eq!(listed(&h).await[&used_id], at);
    tenantai::tenancy::keys::record_use(table, &t, &used_id, at + 60)
        .await
        .unwrap();
    assert_eq!(listed(&h).await[&used_id], at + 60);
    // Revoking keeps what was recorded.
    h.admin(
        Method::DELETE,
        &format!("/tenants/{t}/keys/{used_id}"),
        None,
    )
    .await
    .ok();
    assert_eq!(listed(&h).await[&used_id], at + 60);
}
