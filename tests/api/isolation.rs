//! Tenant isolation: a key of tenant A never reaches anything of tenant B's.

use axum::http::Method;
use serde_json::json;

use crate::harness::Harness;

#[tokio::test]
async fn a_tenant_sees_only_its_own_models() {
    let h = Harness::new().await;
    let a = h.tenant("A", "pro").await;
    let b = h.tenant("B", "pro").await;
    let free = h.tenant("F", "free").await;
    let (key_a, _) = h.key(&a, json!({})).await;
    let (key_b, _) = h.key(&b, json!({})).await;
    let (key_free, _) = h.key(&free, json!({})).await;
    h.model(json!({"model": "base"})).await;
    h.model(json!({"model": "b-private", "owner_tenant": b}))
        .await;
    h.model(json!({"model": "pro-base", "tier": "pro", "serves": "base"}))
        .await;

    let ids = |r: &crate::harness::Reply| -> Vec<String> {
        r.ok()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&h.call(Method::GET, "/v1/models", Some(&key_a), None).await),
        ["base", "pro-base"]
    );
    assert_eq!(
        ids(&h.call(Method::GET, "/v1/models", Some(&key_b), None).await),
        ["b-private", "base", "pro-base"]
    );
    assert_eq!(
        ids(&h
            .call(Method::GET, "/v1/models", Some(&key_free), None)
            .await),
        ["base"]
    );

    let r = h
        .call(Method::GET, "/v1/models/b-private", Some(&key_a), None)
        .await;
    r.error(404);
    assert_eq!(r.body["error"]["code"], "model_not_found");
    h.call(Method::GET, "/v1/models/b-private", Some(&key_b), None)
        .await
        .ok();
    let e = h
        .call(
            Method::POST,
            "/v1/embeddings",
            Some(&key_a),
            Some(json!({"model": "b-private", "input": "x"})),
        )
        .await;
    e.error(404);
    assert_eq!(e.body["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn admin_paths_do_not_cross_tenants() {
    let h = Harness::new().await;
    let a = h.tenant("A", "pro").await;
    let b = h.tenant("B", "pro").await;
    let (key_b, key_b_id) = h.key(&b, json!({})).await;
    // B's key id under A's path is not found, and B's key keeps working.
    h.admin(
        Method::DELETE,
        &format!("/tenants/{a}/keys/{key_b_id}"),
        None,
    )
    .await
    .error(404);
    h.call(Method::GET, "/v1/models", Some(&key_b), None)
        .await
        .ok();
    let keys_a = h
        .admin(Method::GET, &format!("/tenants/{a}/keys"), None)
        .await;
    assert!(keys_a.ok()["data"].as_array().unwrap().is_empty());
    // Each tenant's audit trail holds only its own records.
    let audit_a = h
        .admin(Method::GET, &format!("/audit?tenant_id={a}"), None)
        .await;
    let text = audit_a.ok().to_string();
    assert!(!text.contains(&b), "A's audit log mentions B: {text}");
    assert!(text.contains(&a));
    // An override can only point at a model the tenant may use.
    h.model(json!({"model": "b-private", "owner_tenant": b}))
        .await;
    h.admin(
        Method::PUT,
        &format!("/tenants/{a}/model-overrides/base"),
        Some(json!({"target": "b-private"})),
    )
    .await
    .error(400);
}
