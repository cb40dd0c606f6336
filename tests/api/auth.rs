//! API keys at the front door: valid, forged, revoked, expired, scoped, suspended.

use std::time::Duration;

use axum::http::Method;
use serde_json::json;
use tenantai::store::now_secs;

use crate::harness::Harness;

#[tokio::test]
async fn keys_open_the_api_and_nothing_else_does() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .ok();
    h.call(Method::GET, "/v1/models", None, None)
        .await
        .error(401);
    // Same shape, other secret: forged.
    let forged = format!("tk_{}", "A".repeat(43));
    let msg = h
        .call(Method::GET, "/v1/models", Some(&forged), None)
        .await
        .error(401);
    assert!(msg.contains("Incorrect API key"), "{msg}");
    h.call(Method::GET, "/v1/models", Some("tk_short"), None)
        .await
        .error(401);
    h.call(Method::GET, "/v1/models", Some(&h.admin.clone()), None)
        .await
        .error(401);
    let reply = h
        .raw(
            Method::GET,
            "/v1/models",
            None,
            axum::body::Body::empty(),
            &[("authorization", "Basic Zm9vOmJhcg==")],
        )
        .await;
    assert_eq!(reply.body["error"]["code"], "invalid_api_key");
    // A sane client request id is echoed; anything else is replaced by a fresh one.
    let mine = h
        .raw(
            Method::GET,
            "/v1/models",
            Some(&key),
            axum::body::Body::empty(),
            &[("x-request-id", "client-42")],
        )
        .await;
    assert_eq!(mine.headers["x-request-id"], "client-42");
    let junk = h
        .raw(
            Method::GET,
            "/v1/models",
            Some(&key),
            axum::body::Body::empty(),
            &[("x-request-id", "a b\tc")],
        )
        .await;
    assert!(junk.headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
}

#[tokio::test]
async fn revocation_takes_effect_at_once() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let (key, key_id) = h.key(&t, json!({})).await;
    let (other, _) = h.key(&t, json!({})).await;
    h.call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .ok();
    let revoked = h
        .admin(Method::DELETE, &format!("/tenants/{t}/keys/{key_id}"), None)
        .await;
    assert!(revoked.ok()["revoked_at"].as_i64().is_some());
    let msg = h
        .call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .error(401);
    assert!(msg.contains("revoked"), "{msg}");
    h.call(Method::GET, "/v1/models", Some(&other), None)
        .await
        .ok();
    let audit = h
        .admin(Method::GET, &format!("/audit?tenant_id={t}"), None)
        .await;
    assert_eq!(audit.ok()["data"][0]["action"], "key.revoke");
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let expires = now_secs() + 2;
    let (key, _) = h.key(&t, json!({"expires_at": expires})).await;
    h.call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .ok();
    while now_secs() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let msg = h
        .call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .error(401);
    assert!(msg.contains("expired"), "{msg}");
}

#[tokio::test]
async fn scopes_and_suspension_are_enforced() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let (embed_only, _) = h.key(&t, json!({"scopes": ["embeddings"]})).await;
    h.call(Method::GET, "/v1/models", Some(&embed_only), None)
        .await
        .error(403);
    let (key, _) = h.key(&t, json!({})).await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"status": "suspended"})),
    )
    .await
    .ok();
    let msg = h
        .call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .error(403);
    assert!(msg.contains("suspended"), "{msg}");
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"status": "active"})),
    )
    .await
    .ok();
    h.call(Method::GET, "/v1/models", Some(&key), None)
        .await
        .ok();
}

#[tokio::test]
async fn the_authorizer_caches_but_the_local_host_does_not() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let (key, key_id) = h.key(&t, json!({})).await;
    let cached = h.app.auth.clone().with_cache(Duration::from_secs(60));
    let ctx = cached.authenticate(&key).await.unwrap();
    assert_eq!(
        (ctx.tenant_id.as_str(), ctx.tier.as_str()),
        (t.as_str(), "pro")
    );
    assert_eq!(ctx.key_id, key_id);
    h.admin(Method::DELETE, &format!("/tenants/{t}/keys/{key_id}"), None)
        .await
        .ok();
    // Within its cache lifetime the authorizer still answers from memory...
    assert!(cached.authenticate(&key).await.is_ok());
    // ...while an uncached authenticator (the local host) refuses at once.
    assert!(h.app.auth.authenticate(&key).await.is_err());
    // Negative answers are cached too.
    let forged = format!("tk_{}", "B".repeat(43));
    assert!(cached.authenticate(&forged).await.is_err());
}
