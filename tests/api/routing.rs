//! Routing: tenant override -> tier model -> base, and sticky canaries.

use axum::http::Method;
use serde_json::json;

use crate::harness::Harness;

#[tokio::test]
async fn the_hierarchy_picks_override_then_tier_then_base() {
    let h = Harness::new().await;
    let free = h.tenant("F", "free").await;
    let pro = h.tenant("P", "pro").await;
    let special = h.tenant("S", "pro").await;
    h.model(json!({"model": "base"})).await;
    h.model(json!({"model": "base-pro", "tier": "pro", "serves": "base"}))
        .await;
    h.model(json!({"model": "special-tuned", "owner_tenant": special}))
        .await;
    h.admin(
        Method::PUT,
        &format!("/tenants/{special}/model-overrides/base"),
        Some(json!({"target": "special-tuned"})),
    )
    .await
    .ok();

    let route = |id: String| {
        let app = h.app.clone();
        async move {
            let tenant = app.tenants.get(&id).await.unwrap();
            app.registry
                .route(&tenant, "base", "req-1")
                .await
                .unwrap()
                .version
                .model
        }
    };
    assert_eq!(route(free).await, "base");
    assert_eq!(route(pro).await, "base-pro");
    assert_eq!(route(special.clone()).await, "special-tuned");
    // Removing the override falls back to the tier's model.
    h.admin(
        Method::DELETE,
        &format!("/tenants/{special}/model-overrides/base"),
        None,
    )
    .await
    .ok();
    h.app.registry.invalidate();
    assert_eq!(route(special).await, "base-pro");
}

#[tokio::test]
async fn canary_share_follows_its_weight_and_sticks_per_request_id() {
    let h = Harness::new().await;
    let t = h.tenant("T", "pro").await;
    // A weighted canary passes the validation gate: both on the real worker.
    let worker = crate::worker::url();
    h.model(json!({"model": "embed", "version": "1", "endpoint": worker}))
        .await;
    h.model(json!({"model": "embed", "version": "2", "status": "canary", "canary_weight": 25, "endpoint": worker}))
        .await;
    let tenant = h.app.tenants.get(&t).await.unwrap();
    let mut canary = 0;
    for i in 0..2000 {
        let id = format!("req-{i}");
        let first = h
            .app
            .registry
            .route(&tenant, "embed", &id)
            .await
            .unwrap()
            .version
            .version;
        let again = h
            .app
            .registry
            .route(&tenant, "embed", &id)
            .await
            .unwrap()
            .version
            .version;
        assert_eq!(first, again, "the pick must be sticky per request id");
        if first == "2" {
            canary += 1;
        }
    }
    assert!(
        (400..600).contains(&canary),
        "25% of 2000 requests expected, got {canary}"
    );
    // Staged versions never serve.
    h.model(json!({"model": "embed", "version": "3", "status": "staged"}))
        .await;
    h.app.registry.invalidate();
    for i in 0..200 {
        let v = h
            .app
            .registry
            .route(&tenant, "embed", &format!("r{i}"))
            .await
            .unwrap()
            .version
            .version;
        assert_ne!(v, "3");
    }
}
