//! /v1/embeddings end to end with a real worker: vectors, encodings, caching.

use axum::http::Method;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::{Harness, Reply};
use crate::worker;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../gpu-worker/tests/fixtures/minilm-reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::String(s) => STANDARD
            .decode(s)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

/// A harness with the base model on the real worker, and one pro tenant's key.
async fn setup() -> (Harness, String, String) {
    let h = Harness::new().await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    let t = h.tenant("Acme", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    (h, t, key)
}

async fn embed(h: &Harness, key: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
    h.raw(
        Method::POST,
        "/v1/embeddings",
        Some(key),
        axum::body::Body::from(body.to_string()),
        headers,
    )
    .await
}

fn cache(r: &Reply) -> &str {
    r.headers["x-tenantai-cache"].to_str().unwrap()
}

#[tokio::test]
async fn vectors_match_sentence_transformers_in_both_encodings() {
    let (h, _, key) = setup().await;
    let items: Vec<Value> = reference()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["text"] != "")
        .cloned()
        .collect();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    for format in ["float", "base64"] {
        let r = embed(
            &h,
            &key,
            json!({"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": format}),
            &[("cache-control", "no-cache")],
        )
        .await;
        let body = r.ok();
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "all-MiniLM-L6-v2");
        assert_eq!(r.headers["x-tenantai-model-version"], "all-MiniLM-L6-v2@1");
        let want_tokens: u64 = items
            .iter()
            .map(|i| i["tokens_with_special"].as_u64().unwrap())
            .sum();
        assert_eq!(body["usage"]["prompt_tokens"], want_tokens);
        assert_eq!(body["usage"]["total_tokens"], want_tokens);
        for (i, item) in items.iter().enumerate() {
            assert_eq!(body["data"][i]["index"], i);
            let got = floats(&body["data"][i]["embedding"]);
            let want = floats(&item["embedding"]);
            assert!(
                cosine(&got, &want) >= 0.9999,
                "{format} {}: {}",
                item["text"],
                cosine(&got, &want)
            );
        }
    }
    // Token-id input works too.
    let r = embed(
        &h,
        &key,
        json!({"model": "all-MiniLM-L6-v2", "input": [[101, 7592, 2088, 102]]}),
        &[],
    )
    .await;
    assert_eq!(floats(&r.ok()["data"][0]["embedding"]).len(), 384);
}

#[tokio::test]
async fn cache_hits_misses_and_directives() {
    let (h, _, key) = setup().await;
    let body = json!({"model": "all-MiniLM-L6-v2", "input": ["cache me"]});
    let first = embed(&h, &key, body.clone(), &[]).await;
    assert_eq!(cache(&first), "miss");
    let second = embed(&h, &key, body.clone(), &[]).await;
    assert_eq!(cache(&second), "hit");
    // Time not spent waiting on the backend: all of a hit's latency, a part of a miss's.
    for r in [&first, &second] {
        let overhead: f64 = r.headers["x-tenantai-overhead-ms"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(overhead >= 0.0 && overhead.is_finite());
    }
    assert_eq!(first.body["data"], second.body["data"]);
    assert_eq!(first.body["usage"], second.body["usage"]);
    // The encoding and `user` are not part of the key; the input is.
    let b64 = embed(&h, &key, json!({"model": "all-MiniLM-L6-v2", "input": ["cache me"], "encoding_format": "base64", "user": "u1"}), &[]).await;
    assert_eq!(cache(&b64), "hit");
    assert_eq!(
        cache(
            &embed(
                &h,
                &key,
                json!({"model": "all-MiniLM-L6-v2", "input": ["other"]}),
                &[]
            )
            .await
        ),
        "miss"
    );
    // no-cache skips the read; no-store skips the write.
    assert_eq!(
        cache(&embed(&h, &key, body.clone(), &[("cache-control", "no-cache")]).await),
        "miss"
    );
    let fresh = json!({"model": "all-MiniLM-L6-v2", "input": ["never stored"]});
    assert_eq!(
        cache(&embed(&h, &key, fresh.clone(), &[("cache-control", "no-store")]).await),
        "miss"
    );
    assert_eq!(cache(&embed(&h, &key, fresh.clone(), &[]).await), "miss");
    assert_eq!(cache(&embed(&h, &key, fresh, &[]).await), "hit");
}

#[tokio::test]
async fn cache_entries_stay_within_their_scope() {
    let (h, a, key_a) = setup().await;
    let b = h.tenant("B", "pro").await;
    let (key_b, _) = h.key(&b, json!({})).await;
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "shared sentence"});
    assert_eq!(cache(&embed(&h, &key_a, body.clone(), &[]).await), "miss");
    assert_eq!(cache(&embed(&h, &key_a, body.clone(), &[]).await), "hit");
    // B never reads A's entry...
    assert_eq!(cache(&embed(&h, &key_b, body.clone(), &[]).await), "miss");
    // ...unless both opted into the shared scope of this shared model.
    for t in [&a, &b] {
        h.admin(
            Method::PATCH,
            &format!("/tenants/{t}"),
            Some(json!({"cache_scope": "shared"})),
        )
        .await
        .ok();
        h.app.forget_tenant(t);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let opted = json!({"model": "all-MiniLM-L6-v2", "input": "opted-in sentence"});
    assert_eq!(cache(&embed(&h, &key_a, opted.clone(), &[]).await), "miss");
    assert_eq!(cache(&embed(&h, &key_b, opted, &[]).await), "hit");
    // A free-tier tenant may not opt in.
    let f = h.tenant("F", "free").await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{f}"),
        Some(json!({"cache_scope": "shared"})),
    )
    .await
    .error(400);
}

#[tokio::test]
async fn a_new_model_version_invalidates_and_l2_outlives_the_process_cache() {
    let (h, _, key) = setup().await;
    let body = json!({"model": "all-MiniLM-L6-v2", "input": "versioned"});
    assert_eq!(cache(&embed(&h, &key, body.clone(), &[]).await), "miss");
    assert_eq!(cache(&embed(&h, &key, body.clone(), &[]).await), "hit");
    // A second app on the same storage has an empty L1: the hit comes from the
    // table, once the first app's background write is done.
    h.app.cache.flush().await;
    let fresh =
        tenantai::app::App::new(h.app.storage.clone(), tenantai::app::Config::default()).unwrap();
    let router = tenantai::http::host(tenantai::http::api::router(fresh));
    let h2 = Harness {
        router,
        ..h.clone()
    };
    assert_eq!(cache(&embed(&h2, &key, body.clone(), &[]).await), "hit");
    // Version 2 goes live: its first answer is computed, and says so.
    h.model(json!({"model": "all-MiniLM-L6-v2", "version": "2", "endpoint": worker::url(), "status": "staged"})).await;
    h.admin(
        Method::POST,
        "/models/all-MiniLM-L6-v2/versions/2/promote",
        None,
    )
    .await
    .ok();
    h.app.registry.invalidate();
    let r = embed(&h, &key, body, &[]).await;
    assert_eq!(cache(&r), "miss");
    assert_eq!(r.headers["x-tenantai-model-version"], "all-MiniLM-L6-v2@2");
}

#[tokio::test]
async fn inputs_over_the_token_limit_are_refused_unless_truncated() {
    let (h, _, key) = setup().await;
    let long = "word ".repeat(400);
    let r = embed(
        &h,
        &key,
        json!({"model": "all-MiniLM-L6-v2", "input": long}),
        &[],
    )
    .await;
    let msg = r.error(400);
    assert!(msg.contains("256"), "the error names the limit: {msg}");
    let r = embed(
        &h,
        &key,
        json!({"model": "all-MiniLM-L6-v2", "input": long, "truncate": true}),
        &[],
    )
    .await;
    assert_eq!(r.ok()["usage"]["prompt_tokens"], 256);
}
