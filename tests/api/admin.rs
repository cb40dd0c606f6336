//! The admin API: tenants, keys, models, overrides, and the audit log.

use axum::http::Method;
use serde_json::json;

use crate::harness::Harness;

#[tokio::test]
async fn admin_calls_need_an_admin_token() {
    let h = Harness::new().await;
    h.call(Method::GET, "/admin/v1/tenants", None, None)
        .await
        .error(401);
    h.call(
        Method::GET,
        "/admin/v1/tenants",
        Some("tadm_forged000000000000000000000000000000000000"),
        None,
    )
    .await
    .error(401);
    // A tenant API key is not an admin token.
    let t = h.tenant("Acme", "pro").await;
    let (secret, _) = h.key(&t, json!({})).await;
    h.call(Method::GET, "/admin/v1/tenants", Some(&secret), None)
        .await
        .error(401);
}

#[tokio::test]
async fn the_admin_token_header_serves_beside_an_aws_signature() {
    let h = Harness::new().await;
    let sigv4 = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261124/us-east-1/execute-api/aws4_request, SignedHeaders=host, Signature=00";
    let get = |headers: Vec<(&'static str, String)>| {
        let h = &h;
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.raw(
                Method::GET,
                "/admin/v1/tenants",
                None,
                axum::body::Body::empty(),
                &pairs,
            )
            .await
        }
    };
    let ok = get(vec![
        ("authorization", sigv4.to_string()),
        ("x-tenantai-admin-token", h.admin.clone()),
    ])
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    // The header alone is enough; a wrong one is refused even beside a good bearer.
    assert_eq!(
        get(vec![("x-tenantai-admin-token", h.admin.clone())])
            .await
            .status,
        200
    );
    get(vec![
        ("authorization", format!("Bearer {}", h.admin)),
        (
            "x-tenantai-admin-token",
            "tadm_forged000000000000000000000000000000000000".into(),
        ),
    ])
    .await
    .error(401);
    get(vec![("authorization", sigv4.to_string())])
        .await
        .error(401);
}

#[tokio::test]
async fn tenant_lifecycle_is_audited() {
    let h = Harness::new().await;
    let id = h.tenant("Acme", "free").await;
    let got = h.admin(Method::GET, &format!("/tenants/{id}"), None).await;
    assert_eq!(got.ok()["name"], "Acme");
    assert_eq!(got.body["status"], "active");
    assert_eq!(got.body["cache_scope"], "tenant");

    let patched = h
        .admin(
            Method::PATCH,
            &format!("/tenants/{id}"),
            Some(json!({"tier": "pro", "monthly_budget_micros": 1_000_000})),
        )
        .await;
    assert_eq!(patched.ok()["tier"], "pro");
    assert_eq!(patched.body["monthly_budget_micros"], 1_000_000);
    h.admin(
        Method::PATCH,
        &format!("/tenants/{id}"),
        Some(json!({"tier": "platinum"})),
    )
    .await
    .error(400);
    h.admin(
        Method::PATCH,
        &format!("/tenants/{id}"),
        Some(json!({"colour": "red"})),
    )
    .await
    .error(400);
    h.admin(Method::GET, "/tenants/ten_nope", None)
        .await
        .error(404);

    let audit = h
        .admin(Method::GET, &format!("/audit?tenant_id={id}"), None)
        .await;
    let records = audit.ok()["data"].as_array().unwrap().clone();
    assert_eq!(records.len(), 2, "{records:?}");
    // Newest first: the update, with before and after.
    assert_eq!(records[0]["action"], "tenant.update");
    assert_eq!(records[0]["actor"], "test-admin");
    assert_eq!(records[0]["before"]["tier"], "free");
    assert_eq!(records[0]["after"]["tier"], "pro");
    assert_eq!(records[1]["action"], "tenant.create");
    assert!(records[1]["at"].as_i64().unwrap() > 0);

    // A webhook's signing secret is shown to the admin once, never kept in the log.
    let hooked = h
        .admin(
            Method::PATCH,
            &format!("/tenants/{id}"),
            Some(json!({"alert_webhook_url": "https://hooks.example.com/tenantai"})),
        )
        .await;
    let secret = hooked.ok()["alert_webhook"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(secret.starts_with("whsec_"));
    let audit = h
        .admin(Method::GET, &format!("/audit?tenant_id={id}"), None)
        .await;
    let newest = audit.ok()["data"][0].clone();
    assert!(newest["after"]["alert_webhook"].get("secret").is_none());
    assert_eq!(
        newest["after"]["alert_webhook"]["url"],
        "https://hooks.example.com/tenantai"
    );
    assert!(!audit.body.to_string().contains(&secret));
}

#[tokio::test]
async fn tenants_list_in_pages() {
    let h = Harness::new().await;
    for i in 0..5 {
        h.tenant(&format!("t{i}"), "free").await;
    }
    let first = h.admin(Method::GET, "/tenants?limit=2", None).await;
    assert_eq!(first.ok()["data"].as_array().unwrap().len(), 2);
    assert_eq!(first.body["has_more"], true);
    let mut seen = 2;
    let mut next = first.body["next"].as_str().unwrap().to_string();
    loop {
        let page = h
            .admin(Method::GET, &format!("/tenants?limit=2&after={next}"), None)
            .await;
        seen += page.ok()["data"].as_array().unwrap().len();
        match page.body["next"].as_str() {
            Some(n) => next = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    h.admin(Method::GET, "/tenants?limit=1000", None)
        .await
        .error(400);
    h.admin(Method::GET, "/tenants?after=garbage", None)
        .await
        .error(400);
}

#[tokio::test]
async fn keys_are_shown_once_and_stored_hashed() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let created = h
        .admin(
            Method::POST,
            &format!("/tenants/{t}/keys"),
            Some(json!({"name": "ci", "scopes": ["embeddings"]})),
        )
        .await;
    let secret = created.ok()["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tk_") && secret.len() >= 3 + 43);
    assert_eq!(created.body["prefix"].as_str().unwrap(), &secret[..9]);
    let listed = h
        .admin(Method::GET, &format!("/tenants/{t}/keys"), None)
        .await;
    let text = listed.ok().to_string();
    assert!(
        !text.contains(&secret[3..]),
        "the secret must never be listed"
    );
    assert!(
        !text.contains(&tenantai::tenancy::keys::hash_secret(&secret)),
        "nor its hash"
    );
    assert_eq!(listed.body["data"][0]["scopes"], json!(["embeddings"]));
    // The audit record of the key has no secret either.
    let audit = h
        .admin(Method::GET, &format!("/audit?tenant_id={t}"), None)
        .await;
    assert!(!audit.ok().to_string().contains(&secret[3..]));
    h.admin(
        Method::POST,
        &format!("/tenants/{t}/keys"),
        Some(json!({"scopes": ["root"]})),
    )
    .await
    .error(400);
    h.admin(
        Method::POST,
        &format!("/tenants/{t}/keys"),
        Some(json!({"expires_at": 1})),
    )
    .await
    .error(400);
    h.admin(Method::POST, "/tenants/ten_missing/keys", Some(json!({})))
        .await
        .error(404);
}

#[tokio::test]
async fn model_versions_promote_and_roll_back() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.model(json!({"model": "embed", "version": "1"})).await;
    h.model(json!({"model": "embed", "version": "2", "status": "staged"}))
        .await;
    h.admin(Method::POST, "/models", Some(json!({"model": "embed", "version": "2", "backend": "worker", "endpoint": "http://x", "price_per_1k_tokens_micros": 1, "status": "staged"}))).await.error(409);

    assert_eq!(serving(&h).await, ["1"]);
    h.admin(Method::POST, "/models/embed/versions/2/promote", None)
        .await
        .ok();
    assert_eq!(serving(&h).await, ["2"]);
    let v1 = h.admin(Method::GET, "/models/embed/versions/1", None).await;
    assert_eq!(v1.ok()["status"], "retired");
    h.admin(Method::POST, "/models/embed/rollback", None)
        .await
        .ok();
    assert_eq!(serving(&h).await, ["1"]);
    h.admin(Method::POST, "/models/embed/rollback", None)
        .await
        .error(409);
    h.admin(Method::POST, "/models/nothing/rollback", None)
        .await
        .error(404);
    h.admin(Method::POST, "/models/embed/versions/9/promote", None)
        .await
        .error(404);
    h.admin(
        Method::PATCH,
        "/models/embed/versions/2",
        Some(json!({"status": "canary", "canary_weight": 101})),
    )
    .await
    .error(400);
    h.admin(
        Method::PATCH,
        "/models/embed/versions/2",
        Some(json!({"status": "live"})),
    )
    .await
    .error(400);
    let canary = h
        .admin(
            Method::PATCH,
            "/models/embed/versions/2",
            Some(json!({"status": "canary", "canary_weight": 10})),
        )
        .await;
    assert_eq!(canary.ok()["canary_weight"], 10);
    // Every change is in the platform audit log.
    let audit = h.admin(Method::GET, "/audit?limit=100", None).await;
    let actions: Vec<_> = audit.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    for a in [
        "model.register",
        "model.promote",
        "model.rollback",
        "model.update",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    // The tenant sees the model through the public API.
    let models = h.call(Method::GET, "/v1/models", Some(&key), None).await;
    assert_eq!(models.ok()["data"][0]["id"], "embed");
}

async fn serving(h: &Harness) -> Vec<String> {
    let all = h.admin(Method::GET, "/models", None).await;
    all.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["status"] == "live")
        .map(|v| v["version"].as_str().unwrap().to_string())
        .collect()
}
