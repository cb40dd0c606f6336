//! Cross-tenant reads (held): tenant A's credentials reach nothing of tenant B,
//! over every route and every kind of id: tenant ids, key ids, model ids,
//! cache entries, usage and audit records.

use axum::http::Method;
use serde_json::json;

use crate::harness::Harness;
use crate::worker;

struct World {
    h: Harness,
    a: String,
    b: String,
    key_a: String,
    key_b: String,
    key_b_id: String,
}

async fn world() -> World {
    let h = Harness::new().await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    let a = h.tenant("Alpha", "pro").await;
    let b = h.tenant("Bravo", "pro").await;
    let (key_a, _) = h.key(&a, json!({})).await;
    let (key_b, key_b_id) = h.key(&b, json!({"name": "bravo key"})).await;
    h.model(json!({"model": "bravo-private", "owner_tenant": b, "endpoint": worker::url()}))
        .await;
    // B has usage, a cache entry and audit records.
    h.embed(&key_b, json!("bravo's secret text")).await.ok();
    h.settle_usage().await;
    World {
        h,
        a,
        b,
        key_a,
        key_b,
        key_b_id,
    }
}

#[tokio::test]
async fn a_tenants_key_reaches_nothing_of_another_tenant() {
    let w = world().await;
    let h = &w.h;
    let (a, b, key_a) = (&w.a, &w.b, &w.key_a);
    // (what is tried, the reply, the status it must have)
    let cases = vec![
        ("B's private model by id", h.call(Method::GET, "/v1/models/bravo-private", Some(key_a), None).await, 404),
        ("B's private model for embeddings", h.call(Method::POST, "/v1/embeddings", Some(key_a),
            Some(json!({"model": "bravo-private", "input": "x"}))).await, 404),
        ("B's model id with a path trick", h.call(Method::GET, "/v1/models/..%2Fbravo-private", Some(key_a), None).await, 404),
        ("B's tenant id on an admin route", h.call(Method::GET, &format!("/admin/v1/tenants/{b}"), Some(key_a), None).await, 401),
        ("B's keys on an admin route", h.call(Method::GET, &format!("/admin/v1/tenants/{b}/keys"), Some(key_a), None).await, 401),
        ("B's usage on an admin route", h.call(Method::GET, &format!("/admin/v1/tenants/{b}/usage"), Some(key_a), None).await, 401),
        ("every tenant's usage", h.call(Method::GET, "/admin/v1/usage", Some(key_a), None).await, 401),
        ("the audit log", h.call(Method::GET, &format!("/audit?tenant_id={b}"), Some(key_a), None).await, 404),
        ("the admin audit log", h.call(Method::GET, &format!("/admin/v1/audit?tenant_id={b}"), Some(key_a), None).await, 401),
        ("B's key revoked under A", h.admin(Method::DELETE, &format!("/tenants/{a}/keys/{}", w.key_b_id), None).await, 404),
        ("B's key revoked under a ghost", h.admin(Method::DELETE, &format!("/tenants/ten_ghost/keys/{}", w.key_b_id), None).await, 404),
        ("A overridden onto B's model", h.admin(Method::PUT, &format!("/tenants/{a}/model-overrides/all-MiniLM-L6-v2"),
            Some(json!({"target": "bravo-private"}))).await, 400),
        ("a model registered for a ghost owner", h.admin(Method::POST, "/models",
            Some(json!({"model": "g", "version": "1", "backend": "worker", "endpoint": "http://w",
                        "price_per_1k_tokens_micros": 1, "status": "live", "owner_tenant": "ten_ghost"}))).await, 404),
    ];
    for (what, r, status) in &cases {
        r.error(*status);
        // Nothing of B's beyond what the request itself named.
        let text = r.body.to_string();
        for secret in [
            w.key_b.as_str(),
            "bravo key",
            "bravo's secret text",
            "Bravo",
        ] {
            assert!(!text.contains(secret), "{what}: {text}");
        }
    }
    // A's own views hold nothing of B's.
    for uri in [
        "/v1/models",
        "/v1/usage",
        "/v1/usage?tenant_id=B&group_by=model",
        "/v1/usage?group_by=day,model",
    ] {
        let r = h
            .call(
                Method::GET,
                &uri.replace("=B", &format!("={b}")),
                Some(key_a),
                None,
            )
            .await;
        let text = r.ok().to_string();
        assert!(
            !text.contains("bravo-private") && !text.contains(b.as_str()),
            "{uri}: {text}"
        );
        if uri.starts_with("/v1/usage") {
            assert_eq!(r.body["totals"]["requests"], 0, "{uri}");
        }
    }
    let keys_a = h
        .admin(Method::GET, &format!("/tenants/{a}/keys"), None)
        .await;
    assert!(!keys_a.ok().to_string().contains(&w.key_b_id));
    let audit_a = h
        .admin(Method::GET, &format!("/audit?tenant_id={a}"), None)
        .await;
    assert!(!audit_a.ok().to_string().contains(b.as_str()));
    // The same input is a miss for A: cache entries are B's alone.
    let mine = h.embed(key_a, json!("bravo's secret text")).await;
    mine.ok();
    assert_eq!(mine.header("x-tenantai-cache"), "miss");
    // And B's key still works, untouched.
    h.call(
        Method::GET,
        "/v1/models/bravo-private",
        Some(&w.key_b),
        None,
    )
    .await
    .ok();
}
