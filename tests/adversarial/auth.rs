//! Authentication tricks (held): malformed, forged, borrowed, revoked and
//! out-of-scope credentials are refused with 401 or 403 in the OpenAI shape,
//! on the api and on the admin API alike.

use axum::body::Body;
use axum::http::Method;
use proptest::prelude::*;
use serde_json::json;

use crate::harness::Harness;

#[tokio::test]
async fn credentials_that_are_not_quite_right_are_refused() {
    let h = Harness::new().await;
    let t = h.tenant("Guarded", "pro").await;
    let (key, key_id) = h.key(&t, json!({})).await;
    let (models_only, _) = h.key(&t, json!({"scopes": ["models"]})).await;
    let (revoked, revoked_id) = h.key(&t, json!({})).await;
    h.admin(
        Method::DELETE,
        &format!("/tenants/{t}/keys/{revoked_id}"),
        None,
    )
    .await
    .ok();
    let suspended = h.tenant("Suspended", "pro").await;
    let (suspended_key, _) = h.key(&suspended, json!({})).await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{suspended}"),
        Some(json!({"status": "suspended"})),
    )
    .await
    .ok();
    let admin = h.admin.clone();
    let long = format!("Bearer {}", "a".repeat(9000));
    let headers: Vec<(String, u16)> = vec![
        (String::new(), 401),
        ("Bearer".into(), 401),
        ("Bearer ".into(), 401),
        ("Basic Zm9vOmJhcg==".into(), 401),
        (key.clone(), 401),
        (format!("Token {key}"), 401),
        (format!("Bearer {}", &key[..key.len() - 1]), 401),
        (format!("Bearer {key}x"), 401),
        (format!("Bearer {}", key.to_uppercase()), 401),
        (format!("Bearer {}", key.replacen("tk_", "TK_", 1)), 401),
        (format!("Bearer tk_{}", "0".repeat(43)), 401),
        (format!("Bearer {revoked}"), 401),
        (format!("Bearer {admin}"), 401),
        (format!("Bearer {key_id}"), 401),
        (
            "Bearer eyJhbGciOiJub25lIn0.eyJ0ZW5hbnRfaWQiOiJ4In0.".into(),
            401,
        ),
        ("Bearer a.b.c".into(), 401),
        (long, 401),
        (format!("Bearer {suspended_key}"), 403),
        (format!("Bearer {models_only}"), 403),
    ];
    for (header, status) in &headers {
        let mut extra = vec![];
        if !header.is_empty() {
            extra.push(("authorization", header.as_str()));
        }
        let r = h
            .raw(
                Method::POST,
                "/v1/embeddings",
                None,
                Body::from(r#"{"model":"m","input":"x"}"#),
                &extra,
            )
            .await;
        r.error(*status);
    }
    // Extra spaces and a lowercase scheme are the same credential.
    for header in [format!("bearer {key}"), format!("Bearer   {key}  ")] {
        let r = h
            .raw(
                Method::GET,
                "/v1/models",
                None,
                Body::empty(),
                &[("authorization", &header)],
            )
            .await;
        r.ok();
    }
    // The admin API takes only admin tokens.
    for token in [
        key.as_str(),
        revoked.as_str(),
        "tadm_short",
        &format!("tadm_{}", "A".repeat(43)),
    ] {
        h.call(Method::GET, "/admin/v1/tenants", Some(token), None)
            .await
            .error(401);
    }
    h.call(Method::GET, "/admin/v1/tenants", None, None)
        .await
        .error(401);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn no_random_credential_gets_in(token in "[ -~]{0,80}") {
        static H: std::sync::OnceLock<Harness> = std::sync::OnceLock::new();
        let rt = crate::net::runtime();
        let h = H.get_or_init(|| rt.block_on(Harness::new()));
        let header = format!("Bearer {token}");
        for uri in ["/v1/models", "/admin/v1/tenants"] {
            let r = rt.block_on(h.raw(Method::GET, uri, None, Body::empty(), &[("authorization", header.as_str())]));
            prop_assert_eq!(r.status.as_u16(), 401, "{} {:?}", uri, token);
            r.error(401);
        }
    }
}
