//! Abuse limits per request, in-process: each route's largest body (413, from a
//! declared length before anything is read and from a body of unknown length
//! as it streams), JSON nested too deep (400), strings too long (400 naming the
//! field) and request heads too large (431), all in the OpenAI error shape and
//! changing nothing.

use axum::body::Body;
use axum::http::Method;
use serde_json::{json, Value};
use tenantai::limits::{ADMIN_BODY_BYTES, MAX_JSON_DEPTH, SMALL_BODY_BYTES};

use crate::harness::Harness;

const API_BODY: usize = 6 * 1024 * 1024;

/// A JSON string body of exactly `n` bytes.
fn body_of(n: usize) -> Vec<u8> {
    let mut b = b"{\"pad\":\"".to_vec();
    b.resize(n - 2, b'a');
    b.extend_from_slice(b"\"}");
    b
}

#[tokio::test]
async fn each_route_refuses_a_body_over_its_limit_with_a_413() {
    let h = Harness::new().await;
    let t = h.tenant("Big", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let admin = h.admin.clone();
    let routes = [
        (Method::POST, "/v1/embeddings".to_string(), &key, API_BODY),
        (Method::POST, "/v1/chat/completions".into(), &key, API_BODY),
        (Method::POST, "/v1/batches".into(), &key, SMALL_BODY_BYTES),
        (Method::GET, "/v1/models".into(), &key, SMALL_BODY_BYTES),
        (
            Method::POST,
            "/admin/v1/tenants".into(),
            &admin,
            ADMIN_BODY_BYTES,
        ),
        (
            Method::PATCH,
            format!("/admin/v1/tenants/{t}"),
            &admin,
            ADMIN_BODY_BYTES,
        ),
        (
            Method::POST,
            format!("/admin/v1/tenants/{t}/keys"),
            &admin,
            SMALL_BODY_BYTES,
        ),
    ];
    for (method, uri, token, limit) in routes {
        // Declared: refused before the body is read.
        let declared = (limit + 1).to_string();
        let r = h
            .raw(
                method.clone(),
                &uri,
                Some(token),
                Body::from(body_of(limit + 1)),
                &[
                    ("content-type", "application/json"),
                    ("content-length", &declared),
                ],
            )
            .await;
        let message = r.error(413);
        assert!(
            message.contains(&limit.to_string()),
            "{method} {uri}: {message}"
        );
        assert_eq!(r.body["error"]["code"], "request_too_large");
        // Undeclared (a stream): refused as it passes the limit.
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body_of(
            limit + 1,
        )))]);
        let r = h
            .raw(
                method.clone(),
                &uri,
                Some(token),
                Body::from_stream(stream),
                &[("content-type", "application/json")],
            )
            .await;
        if method != Method::GET {
            r.error(413);
        }
    }
    // A body at the limit is read (and judged on its content).
    let r = h
        .raw(
            Method::POST,
            "/admin/v1/tenants",
            Some(&admin),
            Body::from(body_of(ADMIN_BODY_BYTES)),
            &[("content-type", "application/json")],
        )
        .await;
    r.error(400);
    let tenants = h.admin(Method::GET, "/tenants?limit=100", None).await;
    assert_eq!(tenants.ok()["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_upload_declared_over_every_tier_limit_is_refused_unread() {
    let h = Harness::new().await;
    let t = h.tenant("Uploader", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let declared = (200u64 * 1024 * 1024 + 64 * 1024 + 1).to_string();
    let r = h
        .raw(
            Method::POST,
            "/v1/files",
            Some(&key),
            Body::from("--x\r\n"),
            &[
                ("content-type", "multipart/form-data; boundary=x"),
                ("content-length", &declared),
            ],
        )
        .await;
    r.error(413);
}

fn nested(depth: usize, inner: &str) -> String {
    format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn json_nested_too_deep_is_a_400_at_any_depth() {
    let h = Harness::new().await;
    let t = h.tenant("Deep", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let admin = h.admin.clone();
    for depth in [MAX_JSON_DEPTH + 1, 129, 20_000] {
        let input = nested(depth, "1");
        let bodies = [
            (
                "/v1/embeddings",
                &key,
                format!("{{\"model\":\"m\",\"input\":{input}}}"),
            ),
            (
                "/v1/chat/completions",
                &key,
                format!(
                    "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":{input}}}]}}"
                ),
            ),
            ("/v1/batches", &key, format!("{{\"metadata\":{input}}}")),
            ("/admin/v1/tenants", &admin, format!("{{\"name\":{input}}}")),
            ("/admin/v1/models", &admin, format!("{{\"model\":{input}}}")),
        ];
        for (uri, token, body) in bodies {
            let r = h
                .raw(
                    Method::POST,
                    uri,
                    Some(token),
                    Body::from(body),
                    &[("content-type", "application/json")],
                )
                .await;
            let message = r.error(400);
            assert_eq!(r.body["error"]["code"], "json_too_deep", "{uri}: {message}");
        }
    }
    // Just within the limit, the body is judged on its content instead.
    let ok_depth = nested(MAX_JSON_DEPTH - 2, "\"x\"");
    let r = h
        .call(
            Method::POST,
            "/v1/embeddings",
            Some(&key),
            Some(
                serde_json::from_str::<Value>(&format!("{{\"model\":\"m\",\"input\":{ok_depth}}}"))
                    .unwrap(),
            ),
        )
        .await;
    r.error(400);
    assert_ne!(r.body["error"]["code"], "json_too_deep");
}

#[tokio::test]
async fn strings_over_their_limit_are_a_400_naming_the_field() {
    let h = Harness::new().await;
    let t = h.tenant("Long", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let long = |n: usize| "x".repeat(n);
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": user(long(1024 * 1024 + 1).into())}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": user(json!([{"type": "text", "text": long(1024 * 1024 + 1)}]))}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": long(257), "content": "hi"}]}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": [{"role": "user", "name": long(257), "content": "hi"}]}),
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "m", "messages": user("hi".into()), "user": long(257)}),
            "user",
        ),
        (
            "/v1/chat/completions",
            json!({"model": long(257), "messages": user("hi".into())}),
            "model",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": long(64 * 1024 + 1)}),
            "input",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": ["a", long(64 * 1024 + 1)]}),
            "input",
        ),
        (
            "/v1/embeddings",
            json!({"model": "m", "input": "a", "user": long(257)}),
            "user",
        ),
        (
            "/v1/batches",
            json!({"input_file_id": "file-x", "endpoint": "/v1/embeddings", "completion_window": "24h",
                   "metadata": {"k": long(513)}}),
            "metadata",
        ),
    ];
    for (uri, body, param) in cases {
        let r = h.call(Method::POST, uri, Some(&key), Some(body)).await;
        let message = r.error(400);
        assert_eq!(r.body["error"]["param"], param, "{uri}: {message}");
    }
}

#[tokio::test]
async fn request_heads_over_their_limit_are_a_431() {
    let h = Harness::new().await;
    let t = h.tenant("Heads", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let limits = tenantai::limits::Limits::default();
    let names: Vec<String> = (0..limits.max_headers)
        .map(|i| format!("x-pad-{i}"))
        .collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let r = h
        .raw(Method::GET, "/v1/models", Some(&key), Body::empty(), &many)
        .await;
    r.error(431);
    assert_eq!(r.body["error"]["code"], "request_header_fields_too_large");
    let big = "v".repeat(limits.max_header_bytes);
    let r = h
        .raw(
            Method::GET,
            "/health",
            None,
            Body::empty(),
            &[("x-big", &big)],
        )
        .await;
    r.error(431);
    // Within the limits the same request is served.
    let r = h
        .raw(
            Method::GET,
            "/v1/models",
            Some(&key),
            Body::empty(),
            &many[..10],
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
}

#[tokio::test]
async fn what_axum_refuses_itself_is_in_the_openai_shape() {
    let h = Harness::new().await;
    let t = h.tenant("Shapes", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    // An unreadable query string, and a method the route does not take.
    let r = h
        .call(Method::GET, "/v1/files?limit=abc", Some(&key), None)
        .await;
    r.error(400);
    let r = h
        .call(Method::GET, "/v1/batches?limit=-1", Some(&key), None)
        .await;
    r.error(400);
    let r = h.call(Method::DELETE, "/v1/models", Some(&key), None).await;
    r.error(405);
    assert!(r.headers.contains_key("allow"), "{:?}", r.headers);
}
