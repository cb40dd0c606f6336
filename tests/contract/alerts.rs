//! Cost alerts fire once per tenant, threshold, kind and month on either
//! adapter, however many runs race, and reach the tenant's webhook signed.

use std::collections::BTreeSet;
use std::time::Duration;

use tenantai::billing::alerts::{due, month_of, CostAlerts, Notifier, Retry};
use tenantai::billing::metering::{Meter, UsageEvent};
use tenantai::billing::webhooks::WebhookRules;
use tenantai::gateway::egress::EgressPolicy;
use tenantai::tenancy::tenants::{TenantPatch, Tenants, Tiers};

use crate::env::Env;
use crate::webhook::Webhook;

fn spend_event(tenant: &str, id: &str, cost: u64, at_ms: i64) -> UsageEvent {
    UsageEvent {
        event_id: id.into(),
        tenant_id: tenant.into(),
        key_id: "key_1".into(),
        model: "all-MiniLM-L6-v2".into(),
        model_version: "1".into(),
        inputs: 1,
        tokens: 10,
        completion_tokens: 0,
        requests: 1,
        cache_hit: false,
        cache_hits: 0,
        latency_ms: 1.0,
        overhead_ms: 0.25,
        compute_ms: 1,
        cost_micros: cost,
        at_ms,
        batch: false,
    }
}

pub async fn alerts_fire_once_under_concurrent_runs(env: &Env) {
    let tiers = Tiers::default();
    // The receiver is on loopback; secrets are sealed by the environment's vault.
    let rules = WebhookRules {
        egress: EgressPolicy {
            allow_private: true,
            ..EgressPolicy::default()
        },
        secrets: env.secrets().await,
    };
    let tenants = Tenants::new(env.table().clone()).with_webhooks(rules.clone());
    let hook = Webhook::start(1).await;
    let tenant = tenants.create("Alerted", "pro", &tiers).await.unwrap();
    let patch = TenantPatch {
        monthly_budget_micros: Some(1_000),
        alert_webhook_url: Some(hook.url.clone()),
        ..Default::default()
    };
    let update = tenants.update(&tenant.id, &patch, &tiers).await.unwrap();
    hook.expect_secret(update.new_secret.as_deref().unwrap());
    let tenant = update.after;
    let quiet = tenants.create("Quiet", "pro", &tiers).await.unwrap();

    // 850 of 1000 spent: the 50 % and 80 % lines are crossed.
    let now = time::OffsetDateTime::now_utc();
    let at_ms = (now.unix_timestamp() * 1000).max(1);
    let meter = Meter::new(env.table().clone());
    for (i, cost) in [500, 350].into_iter().enumerate() {
        meter
            .fold(&spend_event(
                &tenant.id,
                &format!("{}-{i}", tenant.id),
                cost,
                at_ms,
            ))
            .await
            .unwrap();
    }
    meter
        .fold(&spend_event(
            &quiet.id,
            &format!("{}-0", quiet.id),
            1,
            at_ms,
        ))
        .await
        .unwrap();

    let retry = Retry {
        attempts: 4,
        first_delay: Duration::from_millis(20),
    };
    let mut notifier = Notifier::new(retry, rules).unwrap();
    if env.is_aws() {
        // On the emulator the alerts are published to an SNS topic as well.
        let sdk = tenantai::store::aws::sdk_config().await;
        let sns = aws_sdk_sns::Client::new(&sdk);
        let topic = sns
            .create_topic()
            .name(format!("alerts-{}", uuid::Uuid::new_v4().simple()))
            .send()
            .await
            .unwrap();
        notifier = notifier.with_sns(sns, topic.topic_arn().unwrap().to_string());
    }
    let alerts = CostAlerts::new(env.table().clone(), tiers.clone(), notifier);
    let runs = (0..4).map(|_| {
        let alerts = alerts.clone();
        tokio::spawn(async move { alerts.run(now).await.unwrap() })
    });
    let mut sent = 0;
    for r in futures::future::join_all(runs).await {
        let summary = r.unwrap();
        assert_eq!(summary.failed, 0, "{summary:?}");
        sent += summary.sent;
    }

    let budget = tenant.budget(tiers.get("pro").unwrap());
    let expected: BTreeSet<String> = due(&tenant.id, &budget, 850, now)
        .into_iter()
        .map(|a| a.alert_id)
        .collect();
    let crossed: BTreeSet<String> = [50, 80]
        .iter()
        .map(|p| format!("{}:{}:{p}:crossed", tenant.id, month_of(now)))
        .collect();
    assert!(crossed.is_subset(&expected), "{expected:?}");
    let accepted = hook.accepted();
    let ids = hook.alert_ids();
    assert_eq!(
        ids.len(),
        expected.len(),
        "each alert delivered once: {ids:?}"
    );
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(sent, expected.len());
    assert!(hook.rejected().is_empty(), "{:?}", hook.rejected());
    // The first attempt was refused with a 503 and retried.
    assert_eq!(hook.attempts(), expected.len() + 1);
    for a in &accepted {
        assert_eq!(a["spend_micros"], 850);
        assert_eq!(a["budget_micros"], 1000);
        assert!(a["forecast_method"].as_str().unwrap().contains("run rate"));
    }

    // A rerun finds every alert already sent.
    let again = alerts.run(now).await.unwrap();
    assert_eq!((again.sent, again.already_sent), (0, expected.len()));
    assert_eq!(hook.accepted().len(), expected.len());
}
