//! Malformed bodies (held): whatever bytes or JSON a client sends to a route
//! that reads a body, the answer is a success or a 4xx in the OpenAI shape,
//! never a 5xx.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Method;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::harness::{Harness, Reply};
use crate::net::runtime;
use crate::worker;

struct Target {
    h: Harness,
    key: String,
    tenant: String,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        runtime().block_on(async {
            let h = Harness::new().await;
            h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
                .await;
            let tenant = h.tenant("Fuzzed", "pro").await;
            let (key, _) = h.key(&tenant, json!({})).await;
            Target { h, key, tenant }
        })
    })
}

/// Every route that reads a body, with the token it takes.
fn routes(t: &Target) -> Vec<(Method, String, String)> {
    let id = &t.tenant;
    let admin = t.h.admin.clone();
    vec![
        (Method::POST, "/v1/embeddings".into(), t.key.clone()),
        (Method::POST, "/v1/chat/completions".into(), t.key.clone()),
        (Method::POST, "/v1/batches".into(), t.key.clone()),
        (Method::POST, "/v1/files".into(), t.key.clone()),
        (Method::POST, "/admin/v1/tenants".into(), admin.clone()),
        (
            Method::PATCH,
            format!("/admin/v1/tenants/{id}"),
            admin.clone(),
        ),
        (
            Method::POST,
            format!("/admin/v1/tenants/{id}/keys"),
            admin.clone(),
        ),
        (
            Method::POST,
            format!("/admin/v1/tenants/{id}/alert-webhook/rotate-secret"),
            admin.clone(),
        ),
        (
            Method::PUT,
            format!("/admin/v1/tenants/{id}/model-overrides/x"),
            admin.clone(),
        ),
        (Method::POST, "/admin/v1/models".into(), admin.clone()),
        (
            Method::PATCH,
            "/admin/v1/models/all-MiniLM-L6-v2/versions/1".into(),
            admin,
        ),
    ]
}

fn judge(r: &Reply, what: &str) -> Result<(), TestCaseError> {
    let status = r.status.as_u16();
    prop_assert!(status < 500, "{} for {}: {}", status, what, r.body);
    if !r.status.is_success() {
        r.error(status);
    }
    Ok(())
}

/// JSON of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Plausible bodies: the routes' own field names with values of any shape.
fn near_miss() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "model",
        "input",
        "encoding_format",
        "dimensions",
        "truncate",
        "user",
        "name",
        "tier",
        "status",
        "cache_scope",
        "monthly_budget_micros",
        "rate_limits",
        "hard_cap",
        "alert_thresholds",
        "alert_webhook_url",
        "scopes",
        "expires_at",
        "target",
        "version",
        "backend",
        "endpoint",
        "price_per_1k_tokens_micros",
        "canary_weight",
        "overlap_secs",
        "input_file_id",
        "completion_window",
        "metadata",
        "output_expires_after",
    ]);
    prop::collection::btree_map(field, any_json(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_bytes_never_cause_a_5xx(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let t = target();
        for (method, uri, token) in routes(t) {
            let r = runtime().block_on(t.h.raw(method.clone(), &uri, Some(&token), Body::from(body.clone()), &[]));
            judge(&r, &format!("{method} {uri}"))?;
        }
    }

    #[test]
    fn json_of_any_shape_never_causes_a_5xx(body in prop_oneof![any_json(), near_miss()]) {
        let t = target();
        for (method, uri, token) in routes(t) {
            let r = runtime().block_on(t.h.call(method.clone(), &uri, Some(&token), Some(body.clone())));
            judge(&r, &format!("{method} {uri} {body}"))?;
        }
    }

    #[test]
    fn any_embeddings_input_is_served_or_refused_cleanly(input in any_json(), truncate: bool) {
        let t = target();
        let body = json!({"model": "all-MiniLM-L6-v2", "input": input, "truncate": truncate});
        let r = runtime().block_on(t.h.call(Method::POST, "/v1/embeddings", Some(&t.key), Some(body.clone())));
        judge(&r, &body.to_string())?;
    }
}

/// One line of a batch input: a good request, a near miss, JSON of any shape,
/// or bytes.
fn any_line() -> impl Strategy<Value = String> {
    let id = prop::sample::select(vec!["a", "b", "c", "", "a"]);
    prop_oneof![
        4 => ("\\PC{0,20}", id.clone()).prop_map(|(text, id)| json!({"custom_id": id, "method": "POST",
            "url": "/v1/embeddings", "body": {"model": "all-MiniLM-L6-v2", "input": text}}).to_string()),
        2 => (any_json(), id).prop_map(|(body, id)| json!({"custom_id": id, "method": "POST",
            "url": "/v1/embeddings", "body": body}).to_string()),
        1 => any_json().prop_map(|v| v.to_string()),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| String::from_utf8_lossy(&b).replace('\n', " ")),
    ]
}

/// A multipart upload of `file` with purpose `batch`.
fn upload_form(file: &[u8]) -> (String, Vec<u8>) {
    let b = "fuzz-boundary-7d1";
    let mut body = format!("--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n").into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any JSONL file: the upload, the batch and its jobs never fail with a 5xx
    /// or a panic, and the batch ends failed (validation) or with every line
    /// accounted for.
    #[test]
    fn any_batch_file_ends_cleanly(lines in prop::collection::vec(any_line(), 1..8)) {
        let t = target();
        let (ct, body) = upload_form(lines.join("\n").as_bytes());
        let up = runtime().block_on(t.h.raw(Method::POST, "/v1/files", Some(&t.key), Body::from(body), &[("content-type", &ct)]));
        judge(&up, "upload")?;
        let Some(file_id) = up.body["id"].as_str() else { return Ok(()) };
        let create = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"});
        let b = runtime().block_on(t.h.call(Method::POST, "/v1/batches", Some(&t.key), Some(create)));
        judge(&b, "create")?;
        let Some(id) = b.body["id"].as_str() else { return Ok(()) };
        runtime().block_on(async {
            let (queue, _) = tenantai::batch::jobs::queues(&t.h.app.storage).unwrap();
            let cfg = tenantai::batch::jobs::WorkerConfig { chunk_lines: 3, ..Default::default() };
            let now = tenantai::store::Receive { max: 10, wait: std::time::Duration::ZERO, visibility: std::time::Duration::from_secs(60) };
            loop {
                let got = queue.receive(&now).await.unwrap();
                if got.is_empty() { break; }
                for m in got {
                    let handled = tenantai::batch::jobs::handle(&t.h.app, &cfg, &m.body, false).await;
                    assert!(handled.is_ok(), "{handled:?}");
                    queue.delete(&m.receipt).await.unwrap();
                }
            }
        });
        let got = runtime().block_on(t.h.call(Method::GET, &format!("/v1/batches/{id}"), Some(&t.key), None));
        judge(&got, "retrieve")?;
        let status = got.body["status"].as_str().unwrap_or_default().to_string();
        prop_assert!(status == "failed" || status == "completed", "{}", got.body);
        if status == "completed" {
            let n = &got.body["request_counts"];
            prop_assert_eq!(n["completed"].as_u64().unwrap() + n["failed"].as_u64().unwrap(), n["total"].as_u64().unwrap());
        }
    }
}
