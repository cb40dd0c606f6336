//! No malformed request yields a 5xx: every one gets a 4xx in the OpenAI shape.

use axum::body::Body;
use axum::http::Method;
use serde_json::json;

use crate::harness::Harness;

#[tokio::test]
async fn bad_embedding_requests_get_4xx() {
    let h = Harness::new().await;
    let t = h.tenant("A", "free").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.model(json!({"model": "base"})).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[1,2]".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        br#"{"model":"base"}"#.to_vec(),
        br#"{"input":"x"}"#.to_vec(),
        br#"{"model":"base","input":""}"#.to_vec(),
        br#"{"model":"base","input":[]}"#.to_vec(),
        br#"{"model":"base","input":[""]}"#.to_vec(),
        br#"{"model":"base","input":{"a":1}}"#.to_vec(),
        br#"{"model":"base","input":[1.5]}"#.to_vec(),
        br#"{"model":"base","input":[-1]}"#.to_vec(),
        br#"{"model":"base","input":"x","encoding_format":"int8"}"#.to_vec(),
        br#"{"model":"base","input":"x","dimensions":128}"#.to_vec(),
        br#"{"model":["base"],"input":"x"}"#.to_vec(),
        br#"{"model":"nope","input":"x"}"#.to_vec(),
        format!(
            r#"{{"model":"base","input":{}}}"#,
            serde_json::to_string(&vec!["a"; 65]).unwrap()
        )
        .into_bytes(),
        format!(r#"{{"model":"base","input":"{}"}}"#, "a".repeat(70_000)).into_bytes(),
    ];
    for body in bodies {
        let r = h
            .raw(
                Method::POST,
                "/v1/embeddings",
                Some(&key),
                Body::from(body.clone()),
                &[],
            )
            .await;
        assert!(
            r.status.is_client_error(),
            "{} for {:?}",
            r.status,
            String::from_utf8_lossy(&body)
        );
        r.error(r.status.as_u16());
    }
    // Oversized bodies are cut off with a 413.
    let huge = vec![b' '; 7 * 1024 * 1024];
    h.raw(
        Method::POST,
        "/v1/embeddings",
        Some(&key),
        Body::from(huge),
        &[],
    )
    .await
    .error(413);
    h.call(Method::GET, "/v1/nothing", Some(&key), None)
        .await
        .error(404);
    h.call(Method::GET, "/v1/embeddings", Some(&key), None)
        .await;
}

#[tokio::test]
async fn bad_admin_requests_get_4xx() {
    let h = Harness::new().await;
    let t = h.tenant("A", "free").await;
    let cases: Vec<(Method, String, Body)> = vec![
        (Method::POST, "/admin/v1/tenants".into(), Body::from("{")),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            Body::from(r#"{"name":""}"#),
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            Body::from(r#"{"name":"x","tier":"gold"}"#),
        ),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            Body::from(r#"{"name":5}"#),
        ),
        (
            Method::PATCH,
            format!("/admin/v1/tenants/{t}"),
            Body::from(r#"{"status":"deleted"}"#),
        ),
        (
            Method::PATCH,
            format!("/admin/v1/tenants/{t}"),
            Body::from(r#"{"cache_scope":"shared"}"#),
        ),
        (
            Method::POST,
            format!("/admin/v1/tenants/{t}/keys"),
            Body::from(r#"{"scopes":"embeddings"}"#),
        ),
        (
            Method::POST,
            "/admin/v1/models".into(),
            Body::from(r#"{"model":"m"}"#),
        ),
        (
            Method::POST,
            "/admin/v1/models".into(),
            Body::from(
                r#"{"model":"m/../x","version":"1","backend":"worker","endpoint":"http://x","price_per_1k_tokens_micros":1,"status":"live"}"#,
            ),
        ),
        (
            Method::POST,
            "/admin/v1/models".into(),
            Body::from(
                r#"{"model":"m","version":"1","backend":"gpu","endpoint":"http://x","price_per_1k_tokens_micros":1,"status":"live"}"#,
            ),
        ),
        (
            Method::POST,
            "/admin/v1/models".into(),
            Body::from(
                r#"{"model":"m","version":"1","backend":"worker","endpoint":"http://x","price_per_1k_tokens_micros":-1,"status":"live"}"#,
            ),
        ),
        (
            Method::POST,
            "/admin/v1/models".into(),
            Body::from(
                r#"{"model":"m","version":"1","backend":"worker","endpoint":"http://x","price_per_1k_tokens_micros":1,"status":"live","owner_tenant":"ten_ghost"}"#,
            ),
        ),
        (
            Method::PUT,
            format!("/admin/v1/tenants/{t}/model-overrides/base"),
            Body::from(r#"{"target":"ghost"}"#),
        ),
        (
            Method::GET,
            "/admin/v1/audit?limit=abc".into(),
            Body::empty(),
        ),
    ];
    for (method, uri, body) in cases {
        let r = h
            .raw(method.clone(), &uri, Some(&h.admin.clone()), body, &[])
            .await;
        assert!(
            r.status.is_client_error(),
            "{method} {uri}: {} {}",
            r.status,
            r.body
        );
    }
}
