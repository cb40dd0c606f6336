//! The circuit breaker and fallback along the model hierarchy, with a backend
//! that fails and recovers on command.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use tenantai::app::Config;
use tenantai::gateway::breaker::BreakerConfig;

use crate::harness::Harness;
use crate::worker;

/// A backend in front of the real worker that fails (500) while `down` is set.
struct Flaky {
    url: String,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

async fn flaky() -> Flaky {
    let down = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (d, c) = (down.clone(), calls.clone());
    let upstream = worker::url();
    let http = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/v1/embeddings",
        axum::routing::post(move |body: String| {
            let (d, c, http, upstream) = (d.clone(), c.clone(), http.clone(), upstream.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "down on command".to_string(),
                    );
                }
                let resp = http
                    .post(format!("{upstream}/v1/embeddings"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (axum::http::StatusCode::OK, resp.text().await.unwrap())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Flaky { url, down, calls }
}

async fn embed(h: &Harness, key: &str) -> crate::harness::Reply {
    let body = axum::body::Body::from(json!({"model": "base", "input": "circuit"}).to_string());
    h.raw(
        Method::POST,
        "/v1/embeddings",
        Some(key),
        body,
        &[("cache-control", "no-cache")],
    )
    .await
}

fn served_by(r: &crate::harness::Reply) -> String {
    r.ok();
    r.headers["x-tenantai-model-version"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn failing_backends_open_their_circuit_and_traffic_falls_back() {
    let config = Config {
        breaker: BreakerConfig {
            failures_to_open: 2,
            open_for: Duration::from_millis(300),
            ..Default::default()
        },
        ..Config::default()
    };
    let h = Harness::with_config(config).await;
    let f = flaky().await;
    let t = h.tenant("T", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.model(json!({"model": "base", "endpoint": worker::url()}))
        .await;
    h.model(json!({"model": "special", "owner_tenant": t, "endpoint": f.url}))
        .await;
    h.admin(
        Method::PUT,
        &format!("/tenants/{t}/model-overrides/base"),
        Some(json!({"target": "special"})),
    )
    .await
    .ok();

    assert_eq!(served_by(&embed(&h, &key).await), "special@1");
    // Down: each request still succeeds through the base model...
    f.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(served_by(&embed(&h, &key).await), "base@1");
    }
    // ...and after two failures the circuit is open: the broken backend is not called.
    let calls = f.calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(served_by(&embed(&h, &key).await), "base@1");
    }
    assert_eq!(
        f.calls.load(Ordering::SeqCst),
        calls,
        "an open circuit sends nothing to the backend"
    );
    // Recovered: after the cool-down one probe goes through and closes the circuit.
    f.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(served_by(&embed(&h, &key).await), "special@1");
    assert_eq!(served_by(&embed(&h, &key).await), "special@1");
}

#[tokio::test]
async fn with_nothing_left_the_answer_is_503_with_retry_after() {
    let config = Config {
        breaker: BreakerConfig {
            failures_to_open: 1,
            open_for: Duration::from_secs(5),
            ..Default::default()
        },
        ..Config::default()
    };
    let h = Harness::with_config(config).await;
    let f = flaky().await;
    let t = h.tenant("T", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.model(json!({"model": "base", "endpoint": f.url})).await;
    f.down.store(true, Ordering::SeqCst);
    let r = embed(&h, &key).await;
    r.error(503);
    assert!(
        r.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Open now: refused at once, with the time left on the circuit.
    let r = embed(&h, &key).await;
    r.error(503);
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&secs), "{secs}");
    // A dead endpoint (nothing listening) is a failure too, never a 5xx other than 503.
    h.model(json!({"model": "gone", "endpoint": "http://127.0.0.1:9"}))
        .await;
    let body = axum::body::Body::from(json!({"model": "gone", "input": "x"}).to_string());
    h.raw(Method::POST, "/v1/embeddings", Some(&key), body, &[])
        .await
        .error(503);
}
