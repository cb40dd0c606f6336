//! The handlers called directly with the sample events in `events/`: the api
//! and admin routers as `lambda_http` hands them requests, and the authorizer.

use std::collections::HashMap;

use axum::body::Body;
use serde_json::{json, Value};
use tenantai::lambda::{authorize, with_tenant_context};
use tower::ServiceExt;

use crate::harness::Harness;

#[path = "../common/expected_events.rs"]
mod expected_events;

const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../events");

/// An event file with its placeholders filled in.
pub fn load_event(name: &str, vars: &HashMap<&str, String>) -> String {
    let mut text = std::fs::read_to_string(format!("{EVENTS}/{name}")).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    assert!(!text.contains("${"), "{name} has an unfilled placeholder");
    text
}

struct Seeded {
    h: Harness,
    vars: HashMap<&'static str, String>,
}

async fn seed() -> Seeded {
    // The schedule's alerts go to a receiver on loopback.
    let h = Harness::with_private_egress().await;
    let t = h.tenant("Acme", "pro").await;
    let (key, key_id) = h.key(&t, json!({})).await;
    let (revoked, revoked_id) = h.key(&t, json!({})).await;
    h.admin(
        axum::http::Method::DELETE,
        &format!("/tenants/{t}/keys/{revoked_id}"),
        None,
    )
    .await
    .ok();
    h.model(json!({"model": "all-MiniLM-L6-v2"})).await;
    let vars = HashMap::from([
        ("TENANT_ID", t),
        ("KEY_ID", key_id),
        ("API_KEY", key),
        ("REVOKED_KEY", revoked),
        ("ADMIN_TOKEN", h.admin.clone()),
        ("WORKER_URL", "http://127.0.0.1:9".to_string()),
    ]);
    Seeded { h, vars }
}

/// Runs an HTTP API event through the hosted router the way the function does.
async fn handle(s: &Seeded, name: &str) -> (u16, Value) {
    let req = lambda_http::request::from_str(&load_event(name, &s.vars)).unwrap();
    let (parts, body) = req.into_parts();
    let req = with_tenant_context(axum::http::Request::from_parts(
        parts,
        Body::from(body.to_vec()),
    ));
    let resp = s.h.router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn api_events() {
    let s = seed().await;
    let (status, body) = handle(&s, "api/models.json").await;
    assert_eq!(
        (status, body["data"][0]["id"].as_str()),
        (200, Some("all-MiniLM-L6-v2"))
    );
    for (name, want) in expected_events::API {
        let (got, body) = handle(&s, name).await;
        assert_eq!(got, want, "{name}: {body}");
    }
    // The REST API's unauthenticated liveness probe, stage and all.
    let (status, body) = handle(&s, "api/rest-health.json").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn batch_events() {
    let mut s = seed().await;
    let (status, file) = handle(&s, "api/files-upload.json").await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(
        (file["purpose"].as_str(), file["filename"].as_str()),
        (Some("batch"), Some("events.jsonl"))
    );
    s.vars
        .insert("FILE_ID", file["id"].as_str().unwrap().to_string());
    let (status, batch) = handle(&s, "api/batches-create.json").await;
    assert_eq!(
        (status, batch["status"].as_str()),
        (200, Some("validating")),
        "{batch}"
    );
    assert_eq!(batch["request_counts"]["total"], 1);
    let (again, same) = handle(&s, "api/batches-create.json").await;
    assert_eq!(
        (again, &same["id"]),
        (200, &batch["id"]),
        "the idempotency key holds"
    );
    let (status, list) = handle(&s, "api/batches-list.json").await;
    assert_eq!(
        (status, list["data"][0]["id"].as_str()),
        (200, batch["id"].as_str())
    );
    let (status, body) = handle(&s, "api/batches-unknown.json").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("batch_not_found"))
    );
}

#[tokio::test]
async fn admin_events() {
    let s = seed().await;
    for (name, status) in expected_events::ADMIN {
        let (got, body) = handle(&s, name).await;
        assert_eq!(got, status, "{name}: {body}");
    }
    let (_, audit) = handle(&s, "admin/audit.json").await;
    let actions: Vec<_> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect();
    assert!(
        actions.contains(&"key.revoke".to_string())
            && actions.contains(&"tenant.update".to_string()),
        "{actions:?}"
    );
    // The REST API request through IAM auth: the token came in x-tenantai-admin-token
    // (Authorization held a signature), and the entry names the IAM caller.
    let by_iam: Vec<_> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["caller_arn"] == "arn:aws:iam::123456789012:user/ops-alice")
        .collect();
    assert_eq!(by_iam.len(), 1, "{audit}");
    assert_eq!(by_iam[0]["action"], "tenant.update");
    assert_eq!(by_iam[0]["after"]["monthly_budget_micros"], 3_000_000);
    assert!(audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "tenant.create")
        .all(|r| r.get("caller_arn").is_none()));
    let (_, verdict) = handle(&s, "admin/audit-verify.json").await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    for (name, status) in expected_events::ADMIN_ERASE {
        let (got, body) = handle(&s, name).await;
        assert_eq!(got, status, "{name}: {body}");
    }
    let (_, receipt) = handle(&s, "admin/erasure-status.json").await;
    assert_eq!(receipt["receipt"]["target"], s.vars["TENANT_ID"].as_str());
}

#[tokio::test]
async fn authorizer_events() {
    let s = seed().await;
    let auth =
        s.h.app
            .auth
            .clone()
            .with_cache(std::time::Duration::from_secs(30));
    let run = |name: &'static str| {
        let text = load_event(name, &s.vars);
        let auth = auth.clone();
        async move {
            let event = serde_json::from_str(&text).unwrap();
            authorize(&auth, &event).await
        }
    };
    let ok = run("authorizer/valid-key.json").await;
    assert!(ok.is_authorized);
    assert_eq!(ok.context["tenant_id"], s.vars["TENANT_ID"].as_str());
    assert_eq!(ok.context["key_id"], s.vars["KEY_ID"].as_str());
    assert_eq!(ok.context["tier"], "pro");
    assert_eq!(ok.context["scopes"], "embeddings chat models usage batches");
    for name in expected_events::AUTHORIZER_REFUSED {
        let resp = run(name).await;
        assert!(!resp.is_authorized, "{name}");
        assert_eq!(resp.context, json!({}), "{name}");
    }
    // The REST API's REQUEST authorizer: a policy allowing the stage, and the context.
    let rest = |name: &'static str| {
        let text = load_event(name, &s.vars);
        let auth = auth.clone();
        async move {
            let event = serde_json::from_str(&text).unwrap();
            tenantai::lambda::authorize_rest(&auth, &event).await
        }
    };
    let ok = rest("authorizer/rest-valid-key.json").await.unwrap();
    assert_eq!(ok["principalId"], s.vars["TENANT_ID"].as_str());
    let statement = &ok["policyDocument"]["Statement"][0];
    assert_eq!(
        (statement["Effect"].as_str(), statement["Action"].as_str()),
        (Some("Allow"), Some("execute-api:Invoke"))
    );
    assert_eq!(
        statement["Resource"],
        "arn:aws:execute-api:us-east-1:123456789012:tenantai/prod/*"
    );
    assert_eq!(ok["context"]["key_id"], s.vars["KEY_ID"].as_str());
    assert_eq!(
        ok["context"]["scopes"],
        "embeddings chat models usage batches"
    );
    for name in expected_events::REST_AUTHORIZER_REFUSED {
        assert_eq!(rest(name).await, Err("Unauthorized"), "{name}");
    }
}

#[tokio::test]
async fn metering_and_cost_alert_events() {
    use tenantai::billing::alerts::{CostAlerts, Notifier, Retry};
    use tenantai::lambda::{scheduled_alerts, sqs_batch};
    use tenantai::store::Receive;

    let s = seed().await;
    let tenant = &s.vars["TENANT_ID"];
    let app = &s.h.app;
    let (_, dlq) = app.storage.usage_queues().unwrap();
    let batch = |name: &'static str| {
        serde_json::from_str::<aws_lambda_events::sqs::SqsEvent>(&load_event(name, &s.vars))
            .unwrap()
    };
    let spend = || app.meter.month_spend(tenant, "2026-11");

    let resp = sqs_batch(&app.meter, dlq.as_ref(), batch("metering/sqs-batch.json")).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(spend().await.unwrap(), 60);
    // Redelivered: nothing is added twice.
    let resp = sqs_batch(&app.meter, dlq.as_ref(), batch("metering/sqs-batch.json")).await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(spend().await.unwrap(), 60);
    // The malformed record goes to the DLQ; its neighbour is folded.
    let resp = sqs_batch(
        &app.meter,
        dlq.as_ref(),
        batch("metering/sqs-malformed.json"),
    )
    .await;
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(spend().await.unwrap(), 70);
    let dead = dlq
        .receive(&Receive {
            max: 10,
            wait: std::time::Duration::ZERO,
            visibility: std::time::Duration::from_secs(30),
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body.contains("evt_sample_0004"));

    // The schedule: 70 of a 100 budget crosses 50 %; the event's time is "now".
    let hook = crate::webhook::Webhook::start(0).await;
    let set =
        s.h.admin(
            axum::http::Method::PATCH,
            &format!("/tenants/{tenant}"),
            Some(json!({"monthly_budget_micros": 100, "alert_webhook_url": hook.url})),
        )
        .await;
    // The signing secret is shown in this answer only.
    hook.expect_secret(set.ok()["alert_webhook"]["secret"].as_str().unwrap());
    let alerts = CostAlerts::new(
        app.storage.table.clone(),
        app.config.tiers.clone(),
        Notifier::new(Retry::default(), app.config.webhook_rules()).unwrap(),
    );
    let schedule = || {
        serde_json::from_str::<aws_lambda_events::eventbridge::EventBridgeEvent<Value>>(
            &load_event("cost-alerts/schedule.json", &s.vars),
        )
        .unwrap()
    };
    let first = scheduled_alerts(&alerts, schedule()).await.unwrap();
    let ids = hook.alert_ids();
    assert!(
        ids.contains(&format!("{tenant}:2026-11:50:crossed")),
        "{ids:?}"
    );
    assert!(!ids.iter().any(|i| i.contains(":100:")), "{ids:?}");
    assert_eq!(first.sent, ids.len());
    let again = scheduled_alerts(&alerts, schedule()).await.unwrap();
    assert_eq!((again.sent, again.already_sent), (0, first.sent));
    assert_eq!(hook.accepted().len(), ids.len());
}
