//! Backups, restores and GDPR erasure on either adapter: only the ports are
//! used, so the same cases hold on the embedded store and on the emulator.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tenantai::billing::alerts::{CostAlerts, Notifier, Retry};
use tenantai::billing::metering::{Meter, UsageEvent};
use tenantai::gateway::cache::Cache;
use tenantai::gateway::embeddings::Embeddings;
use tenantai::gateway::models::{ModelVersion, Registry};
use tenantai::gateway::ratelimit::{Limits, RateLimiter, Scope};
use tenantai::ops::backup::{self, BackupConfig, Retention};
use tenantai::ops::erase::{Eraser, Outcome, JOBS_PK};
use tenantai::ops::kinds::{Refs, ERASED_USAGE_PK};
use tenantai::ops::restore::{restore, RestoreOptions};
use tenantai::ops::{OpsError, Progress, Quiet};
use tenantai::store::{now_millis, now_secs, Item, Key};
use tenantai::tenancy::audit::Audit;
use tenantai::tenancy::keys::Keys;
use tenantai::tenancy::tenants::{TenantPatch, Tenants, Tiers};

use crate::env::Env;

pub async fn snapshot(env: &Env) -> BTreeMap<Key, Item> {
    crate::tables::snapshot(env.table().as_ref()).await
}

pub async fn wipe(env: &Env) {
    crate::tables::wipe(env.table().as_ref()).await
}

async fn objects(env: &Env) -> Vec<String> {
    crate::tables::objects(env.blobs().as_ref()).await
}

fn event(tenant: &str, key: &str, i: usize, cost: u64) -> UsageEvent {
    UsageEvent {
        event_id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: tenant.into(),
        key_id: key.into(),
        model: ["all-MiniLM-L6-v2", "tuned"][i % 2].into(),
        model_version: "1".into(),
        inputs: 2,
        tokens: 40 + i as u64,
        completion_tokens: 0,
        requests: 1,
        cache_hit: i % 3 == 0,
        cache_hits: 0,
        latency_ms: 2.0,
        overhead_ms: 0.25,
        compute_ms: 3,
        cost_micros: cost,
        at_ms: now_millis() - (i as i64 % 3) * 86_400_000,
        batch: false,
    }
}

/// Two tenants with everything a tenant can have, through the domain services.
/// Returns the tenant ids.
pub async fn populate(env: &Env) -> (String, String) {
    let table = env.table().clone();
    let tiers = Tiers::default();
    // The webhook below is on loopback: private egress is opened, as for local testing.
    let key_dir = tempfile::tempdir().unwrap();
    let rules = tenantai::billing::webhooks::WebhookRules {
        egress: tenantai::gateway::egress::EgressPolicy {
            allow_private: true,
            ..Default::default()
        },
        secrets: tenantai::tenancy::secrets::Secrets::local(&key_dir.path().join("secrets.key"))
            .unwrap(),
    };
    let tenants = Tenants::new(table.clone()).with_webhooks(rules.clone());
    let keys = Keys::new(table.clone());
    let audit = Audit::new(table.clone());
    let meter = Meter::new(table.clone());
    let cache = Cache::new(table.clone(), 1 << 20, Duration::from_secs(3600));
    let limiter = RateLimiter::new(table.clone());
    let registry = Registry::new(table.clone(), Duration::from_millis(1));
    let mut ids = Vec::new();
    for name in ["Acme", "Globex"] {
        let t = tenants.create(name, "pro", &tiers).await.unwrap();
        audit
            .record(
                "ops-test",
                "tenant.create",
                Some(&t.id),
                &t.id,
                Value::Null,
                json!(t),
            )
            .await
            .unwrap();
        let patch = TenantPatch {
            monthly_budget_micros: Some(1_000),
            ..Default::default()
        };
        tenants.update(&t.id, &patch, &tiers).await.unwrap();
        let live = keys.create(&t.id, &Default::default()).await.unwrap();
        let old = keys.create(&t.id, &Default::default()).await.unwrap();
        keys.revoke(&t.id, &old.key.key_id).await.unwrap();
        audit
            .record(
                "ops-test",
                "key.revoke",
                Some(&t.id),
                &old.key.key_id,
                Value::Null,
                Value::Null,
            )
            .await
            .unwrap();
        for i in 0..12 {
            meter
                .fold(&event(&t.id, &live.key.key_id, i, 100))
                .await
                .unwrap();
        }
        let e = Arc::new(Embeddings {
            vectors: vec![vec![0.25; 8]],
            prompt_tokens: 3,
        });
        cache
            .put(&Cache::key(&t.id, "all-MiniLM-L6-v2", "1", "h1"), e)
            .await;
        cache.flush().await;
        let limits = Limits {
            requests_per_minute: 100,
            tokens_per_minute: 10_000,
        };
        let scopes = [
            Scope::tenant(&t.id, limits),
            Scope::key(&t.id, &live.key.key_id, limits),
        ];
        limiter.admit(&scopes, 10, now_millis(), 0).await.unwrap();
        let mut own =
            ModelVersion::live_worker(&format!("{name}-tuned"), "1", "http://127.0.0.1:9", 30);
        own.owner_tenant = Some(t.id.clone());
        registry.register(own).await.unwrap();
        env.blobs()
            .put(
                &format!("files/{}/file-1.jsonl", t.id),
                bytes::Bytes::from_static(b"{\"custom_id\":\"1\"}\n"),
            )
            .await
            .unwrap();
        ids.push(t.id);
    }
    // Over a 1000 budget: alerts are claimed and sent (no webhook yet: to the log).
    let alerts = CostAlerts::new(
        table.clone(),
        tiers.clone(),
        Notifier::new(Retry::default(), rules.clone()).unwrap(),
    );
    let run = alerts.run(time::OffsetDateTime::now_utc()).await.unwrap();
    assert!(run.sent >= 2, "{run:?}");
    // A webhook with its signing secret (which exports redact).
    for id in &ids {
        let patch = TenantPatch {
            alert_webhook_url: Some("http://127.0.0.1:9/hook".into()),
            ..Default::default()
        };
        tenants.update(id, &patch, &tiers).await.unwrap();
    }
    // Filler, so that backups have several parts per segment.
    for i in 0..300 {
        let item = Item::new(
            Key::new(format!("FILL#{}", i % 37), format!("{i:05}")),
            json!({"i": i, "text": "x".repeat(i % 90)})
                .as_object()
                .unwrap()
                .clone(),
        );
        env.table()
            .put(&item, &tenantai::store::Cond::Always)
            .await
            .unwrap();
    }
    (ids.remove(0), ids.remove(0))
}

fn small_parts() -> BackupConfig {
    BackupConfig {
        segments: 3,
        part_items: 40,
        retention: Retention {
            daily: 7,
            monthly: 12,
        },
    }
}

pub async fn backup_and_restore_round_trip(env: &Env) {
    populate(env).await;
    // An item that expires between the backup and the restore is not restored.
    let mut brief = Item::new(Key::new("BRIEF", "1"), Default::default());
    brief.expires_at = Some(now_secs() + 2);
    env.table()
        .put(&brief, &tenantai::store::Cond::Always)
        .await
        .unwrap();
    let before = snapshot(env).await;
    let summary = backup::run(&env.storage, &small_parts(), &Quiet)
        .await
        .unwrap();
    let m = &summary.manifest;
    assert_eq!(m.total_items as usize, before.len());
    assert!(
        m.parts.len() > 3,
        "several parts per segment: {}",
        m.parts.len()
    );
    assert!(m
        .parts
        .iter()
        .all(|p| p.items <= 40 && p.sha256.len() == 64));
    assert!(m
        .blob_prefixes
        .iter()
        .any(|p| p.prefix == "files/" && p.objects == 2));
    let manifest = backup::manifest(env.blobs().as_ref(), None).await.unwrap();
    assert_eq!(&manifest, m, "the latest complete backup is this one");

    wipe(env).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = restore(env.table(), env.blobs(), &RestoreOptions::default(), &Quiet)
        .await
        .unwrap();
    assert_eq!(r.items_expired, 1);
    assert_eq!(r.items_written as usize, before.len() - 1);
    let mut want = before.clone();
    want.remove(&brief.key);
    assert_eq!(snapshot(env).await, want, "the table is back, item by item");

    // A table in use is refused without --force, and written over with it.
    let opts = RestoreOptions {
        backup_id: Some(m.backup_id.clone()),
        ..Default::default()
    };
    let refused = restore(env.table(), env.blobs(), &opts, &Quiet).await;
    assert!(matches!(refused, Err(OpsError::NotEmpty(_))), "{refused:?}");
    let forced = RestoreOptions {
        force: true,
        ..opts
    };
    restore(env.table(), env.blobs(), &forced, &Quiet)
        .await
        .unwrap();
    assert_eq!(snapshot(env).await, want);
}

pub async fn corrupt_or_missing_parts_are_refused_before_writing(env: &Env) {
    populate(env).await;
    let m = backup::run(&env.storage, &small_parts(), &Quiet)
        .await
        .unwrap()
        .manifest;
    wipe(env).await;
    let part = &m.parts[m.parts.len() / 2];
    let good = env.blobs().get(&part.key).await.unwrap();
    let mut bad = good.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    env.blobs().put(&part.key, bad.into()).await.unwrap();
    let err = restore(env.table(), env.blobs(), &RestoreOptions::default(), &Quiet)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&part.key) && text.contains("corrupt"),
        "{text}"
    );
    assert!(snapshot(env).await.is_empty(), "nothing was written");

    env.blobs().delete(&part.key).await.unwrap();
    let err = restore(env.table(), env.blobs(), &RestoreOptions::default(), &Quiet)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&part.key) && text.contains("missing"),
        "{text}"
    );
    assert!(snapshot(env).await.is_empty(), "nothing was written");

    let unknown = RestoreOptions {
        backup_id: Some("20200101T000000Z-abcdef".into()),
        ..Default::default()
    };
    let err = restore(env.table(), env.blobs(), &unknown, &Quiet)
        .await
        .unwrap_err();
    assert!(matches!(err, OpsError::NoBackup(_)), "{err}");
}

/// Interrupts the restore (drops it, as a crash would) once `after` items are written.
struct Interrupt {
    restoring: std::sync::atomic::AtomicBool,
    written: AtomicU64,
    after: u64,
    hit: tokio::sync::Notify,
}

impl Progress for Interrupt {
    fn phase(&self, name: &str, _total: u64) {
        self.restoring.store(name == "restoring", Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        if !self.restoring.load(Ordering::SeqCst) {
            return;
        }
        if self.written.fetch_add(n, Ordering::SeqCst) + n >= self.after {
            self.hit.notify_one();
        }
    }
}

pub async fn interrupted_restore_resumes(env: &Env) {
    populate(env).await;
    let m = backup::run(&env.storage, &small_parts(), &Quiet)
        .await
        .unwrap()
        .manifest;
    let before = snapshot(env).await;
    wipe(env).await;
    let progress = Interrupt {
        restoring: Default::default(),
        written: AtomicU64::new(0),
        after: 100,
        hit: tokio::sync::Notify::new(),
    };
    let opts = RestoreOptions {
        concurrency: 1,
        ..Default::default()
    };
    tokio::select! {
        r = restore(env.table(), env.blobs(), &opts, &progress) => panic!("not interrupted: {r:?}"),
        _ = progress.hit.notified() => {}
    }
    let partial = snapshot(env).await;
    assert!(
        partial.len() < before.len() && partial.len() >= 80,
        "{}",
        partial.len()
    );
    // Another backup may not be restored over the unfinished one without --force.
    let other = RestoreOptions {
        backup_id: Some(format!("{}x", m.backup_id)),
        ..Default::default()
    };
    assert!(restore(env.table(), env.blobs(), &other, &Quiet)
        .await
        .is_err());
    // The same restore, run again, picks up where it stopped.
    let r = restore(env.table(), env.blobs(), &opts, &Quiet)
        .await
        .unwrap();
    assert!(r.parts_resumed >= 2, "{r:?}");
    assert!((r.items_written as usize) < before.len());
    assert_eq!(
        snapshot(env).await,
        before,
        "the same table as without the crash"
    );
}

pub async fn retention_keeps_daily_and_monthly(env: &Env) {
    let blobs = env.blobs();
    // Complete backups of earlier days and months, and an old incomplete one.
    for id in [
        "20240105T000000Z-aaaaaa",
        "20240220T000000Z-aaaaaa",
        "20240221T000000Z-aaaaaa",
    ] {
        blobs
            .put(
                &format!("backups/{id}/part-0000-0000.jsonl.gz"),
                bytes::Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        blobs
            .put(
                &format!("backups/{id}/manifest.json"),
                bytes::Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
    }
    blobs
        .put(
            "backups/20240301T000000Z-bbbbbb/part-0000-0000.jsonl.gz",
            bytes::Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    let config = BackupConfig {
        retention: Retention {
            daily: 2,
            monthly: 2,
        },
        ..small_parts()
    };
    let summary = backup::run(&env.storage, &config, &Quiet).await.unwrap();
    let mut deleted = summary.deleted_backups.clone();
    deleted.sort();
    // Kept: this one (today, this month), 20240221 (a second day, and February's
    // newest). Gone: 20240220, 20240105 and the incomplete one.
    assert_eq!(
        deleted,
        [
            "20240105T000000Z-aaaaaa",
            "20240220T000000Z-aaaaaa",
            "20240301T000000Z-bbbbbb"
        ]
    );
    let left: std::collections::BTreeSet<String> = backup::list(blobs.as_ref())
        .await
        .unwrap()
        .into_keys()
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&summary.manifest.backup_id) && left.contains("20240221T000000Z-aaaaaa"));
}

/// What of a tenant is left: items and objects naming it (backups, and the
/// receipts kept beside them, aside).
async fn remains(env: &Env, refs: &Refs) -> (Vec<Item>, Vec<String>) {
    let items = snapshot(env)
        .await
        .into_values()
        .filter(|i| refs.named_in(i))
        .collect();
    let objects = objects(env)
        .await
        .into_iter()
        .filter(|k| !k.starts_with("backups/") && !k.starts_with("erasures/"))
        .filter(|k| refs.named_in_text(k))
        .collect();
    (items, objects)
}

fn usage_totals(items: &BTreeMap<Key, Item>, pk: &str) -> (i64, i64) {
    items
        .values()
        .filter(|i| i.key.pk == pk && i.key.sk.starts_with("D#"))
        .fold((0, 0), |(c, r), i| {
            (c + i.number("cost_micros"), r + i.number("requests"))
        })
}

pub async fn erasure_leaves_nothing_naming_the_tenant(env: &Env) {
    let (a, b) = populate(env).await;
    let old = backup::run(&env.storage, &small_parts(), &Quiet)
        .await
        .unwrap()
        .manifest;
    tenantai::ops::export::export(env.table(), env.blobs(), &a)
        .await
        .unwrap();
    let refs = Refs::load(env.table().as_ref(), &a).await.unwrap();
    assert_eq!(refs.key_ids.len(), 2);
    let b_refs = Refs::load(env.table().as_ref(), &b).await.unwrap();
    let before = snapshot(env).await;
    let a_usage = usage_totals(&before, &format!("USAGE#{a}"));
    let a_claims: Vec<Key> = before
        .values()
        .filter(|i| i.key.pk.starts_with("EVENT#") && i.attrs["tenant_id"] == a.as_str())
        .map(|i| i.key.clone())
        .collect();
    assert_eq!(a_claims.len(), 12);
    let (b_items, b_objects) = remains(env, &b_refs).await;
    let b_items_count = b_items.len();
    let (a_items, _) = remains(env, &refs).await;
    assert!(a_items.len() > 20, "{}", a_items.len());

    // A run that dies part-way (dropped, as a crash would): the job survives it.
    let job_key = Key::new(JOBS_PK, a.clone());
    let eraser = Eraser::new(&env.storage).unwrap();
    let mut wait = Duration::from_millis(1);
    while env.table().get(&job_key).await.unwrap().is_none() {
        let run = eraser.erase(&a, "dpo", Duration::from_secs(60));
        let crashed = tokio::time::timeout(wait, run).await;
        assert!(crashed.is_err(), "no run could be interrupted part-way");
        wait *= 2;
    }
    let set_lease = |until: i64| {
        let (table, job_key) = (env.table().clone(), job_key.clone());
        async move {
            let mut job = table
                .get(&job_key)
                .await
                .unwrap()
                .expect("the job record survived");
            job.attrs.insert("lease_until".into(), json!(until));
            job.version += 1;
            table
                .put(&job, &tenantai::store::Cond::Always)
                .await
                .unwrap();
        }
    };
    // While the crashed run's lease lasts, calls wait; once it runs out (as
    // time would have it), calls with no time to spare each move the job on,
    // from fresh erasers ("other processes"), until it finishes.
    set_lease(now_secs() + 600).await;
    let version = env.table().get(&job_key).await.unwrap().unwrap().version;
    let held = Eraser::new(&env.storage)
        .unwrap()
        .erase(&a, "dpo", Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(held, Outcome::Running(_)));
    let unchanged = env.table().get(&job_key).await.unwrap().unwrap().version;
    assert_eq!(
        unchanged, version,
        "a call during another run's lease changes nothing"
    );
    set_lease(0).await;
    let mut calls = 0;
    let receipt = loop {
        calls += 1;
        assert!(calls < 500, "the erasure does not finish");
        let eraser = Eraser::new(&env.storage).unwrap();
        match eraser.erase(&a, "dpo", Duration::ZERO).await.unwrap() {
            Outcome::Erased(r) => break r,
            Outcome::Running(job) => {
                assert!(job.keys_revoked);
                // The keys were refused from the first call on.
                for hash in &refs.key_hashes {
                    let lookup = env
                        .table()
                        .get(&Key::new(format!("KEY#{hash}"), "KEY"))
                        .await
                        .unwrap();
                    assert!(lookup.is_none_or(|k| k.attrs.contains_key("revoked_at")));
                }
            }
        }
    };
    assert!(calls > 2, "a zero budget takes several calls: {calls}");

    // Nothing names the tenant but the receipt.
    let (items, objects) = remains(env, &refs).await;
    let leftover: Vec<_> = items
        .iter()
        .filter(|i| i.key.pk != "AUDIT#_platform")
        .collect();
    assert!(
        leftover.is_empty(),
        "items still naming the tenant: {leftover:#?}"
    );
    assert!(
        objects.is_empty(),
        "objects still naming the tenant: {objects:?}"
    );
    assert_eq!(items.len(), 1, "only the receipt");
    assert_eq!(receipt.action, "tenant.erase");
    assert_eq!(receipt.target, a);
    assert_eq!(receipt.actor, "dpo");
    // Counts are per page saved: the crashed run's last page may be missing
    // from them, never counted twice.
    let counts = receipt.after["counts"].as_object().unwrap();
    let counted: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
    assert!(
        counted > 0 && counted <= a_items.len() as u64 + 2,
        "{counts:?}"
    );
    // Usage-event claims stay, anonymised (a redelivered event still counts once).
    let after = snapshot(env).await;
    for key in &a_claims {
        assert_eq!(after[key].attrs["tenant_id"], "_erased", "{key:?}");
    }
    // A copy of the receipt is kept in the bucket, for restores of older backups.
    let kept = env
        .blobs()
        .get(&format!("erasures/{a}.json"))
        .await
        .unwrap();
    let kept: tenantai::tenancy::audit::AuditRecord = serde_json::from_slice(&kept).unwrap();
    assert_eq!(kept, receipt);

    // The other tenant is untouched; the platform keeps the spend, anonymised.
    assert_eq!(remains(env, &b_refs).await, (b_items, b_objects));
    let after = snapshot(env).await;
    assert_eq!(usage_totals(&after, ERASED_USAGE_PK), a_usage);
    let audit = Audit::new(env.table().clone());
    assert!(audit.verify(None).await.unwrap().ok);
    assert!(audit.verify(Some(&b)).await.unwrap().ok);
    // Erasing again: the tenant is gone, the receipt answers.
    match Eraser::new(&env.storage)
        .unwrap()
        .erase(&a, "dpo", Duration::from_secs(5))
        .await
        .unwrap()
    {
        Outcome::Erased(r) => assert_eq!(r.id, receipt.id),
        other => panic!("{other:?}"),
    }
    let unknown = Eraser::new(&env.storage)
        .unwrap()
        .erase("ten_unknown", "dpo", Duration::from_secs(5))
        .await;
    assert!(unknown.is_err());

    // A backup from before the erasure, restored, brings the tenant back only
    // for as long as the restore takes: it erases it again.
    wipe(env).await;
    let opts = RestoreOptions {
        backup_id: Some(old.backup_id.clone()),
        ..Default::default()
    };
    let r = restore(env.table(), env.blobs(), &opts, &Quiet)
        .await
        .unwrap();
    assert_eq!(r.erasures_reapplied, std::slice::from_ref(&a));
    let (items, objects) = remains(env, &refs).await;
    assert!(objects.is_empty(), "{objects:?}");
    let names: Vec<_> = items.iter().map(|i| i.key.pk.as_str()).collect();
    assert_eq!(
        names,
        ["AUDIT#_platform"],
        "only the new receipt: {items:#?}"
    );
    assert_eq!(items[0].attrs["actor"], "restore");
    assert_eq!(remains(env, &b_refs).await.0.len(), b_items_count);
}
