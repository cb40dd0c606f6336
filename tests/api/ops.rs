//! Operations through the public API on the embedded store: a populated
//! deployment backed up, wiped and restored gives the same table and the same
//! answers (corrupt parts refused, an interrupted restore resumed); GDPR export
//! archives; erasure; the audit trail's filters, JSONL export and hash chain.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tenantai::app::{App, Config};
use tenantai::billing::alerts::{CostAlerts, Notifier, Retry};
use tenantai::ops::backup::{self, BackupConfig, Retention};
use tenantai::ops::kinds::Refs;
use tenantai::ops::restore::{restore, RestoreOptions};
use tenantai::ops::{Progress, Quiet};
use tenantai::store::{Cond, Item, Key};
use tower::ServiceExt;

use crate::harness::Harness;
use crate::tables::{objects, snapshot, wipe};
use crate::worker;

struct World {
    h: Harness,
    tenant: String,
    key: String,
    other: String,
    other_key: String,
}

/// Two tenants with keys (one revoked), usage from real embeddings calls
/// (misses and a cache hit), budgets crossed and alerts sent, a webhook.
async fn populated() -> World {
    let h = Harness::new().await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    let mut ids = Vec::new();
    for name in ["Acme", "Globex"] {
        let t = h.tenant(name, "pro").await;
        let (key, _) = h.key(&t, json!({"name": "live"})).await;
        let (_, old) = h.key(&t, json!({})).await;
        h.admin(Method::DELETE, &format!("/tenants/{t}/keys/{old}"), None)
            .await
            .ok();
        h.admin(
            Method::PATCH,
            &format!("/tenants/{t}"),
            Some(json!({"monthly_budget_micros": 1})),
        )
        .await
        .ok();
        for input in [
            json!("hello world"),
            json!("hello world"),
            json!(["a b", "c d"]),
        ] {
            h.embed(&key, input).await.ok();
        }
        ids.push((t, key));
    }
    h.settle_usage().await;
    h.app.cache.flush().await;
    let alerts = CostAlerts::new(
        h.app.storage.table.clone(),
        h.app.config.tiers.clone(),
        Notifier::new(Retry::default(), h.app.config.webhook_rules()).unwrap(),
    );
    let run = alerts.run(time::OffsetDateTime::now_utc()).await.unwrap();
    assert!(run.sent >= 2, "{run:?}");
    for (t, _) in &ids {
        h.admin(
            Method::PATCH,
            &format!("/tenants/{t}"),
            Some(json!({"alert_webhook_url": "https://hooks.example.com/x"})),
        )
        .await
        .ok();
    }
    let (other, other_key) = ids.pop().unwrap();
    let (tenant, key) = ids.pop().unwrap();
    World {
        h,
        tenant,
        key,
        other,
        other_key,
    }
}

/// Another process on the same storage: nothing cached from before.
fn fresh(h: &Harness) -> Harness {
    let app = App::new(h.app.storage.clone(), Config::default()).unwrap();
    let router = tenantai::http::host(
        tenantai::http::api::router(app.clone()).merge(tenantai::http::admin::router(app.clone())),
    );
    Harness {
        app,
        router,
        admin: h.admin.clone(),
        _dir: h._dir.clone(),
    }
}

async fn usage_of(h: &Harness, key: &str) -> Value {
    h.call(Method::GET, "/v1/usage", Some(key), None)
        .await
        .ok()
        .clone()
}

/// Stops a restore (drops it, as a crash would) once it has written `after` items.
struct Interrupt {
    restoring: AtomicBool,
    written: AtomicU64,
    after: u64,
    hit: tokio::sync::Notify,
}

impl Progress for Interrupt {
    fn phase(&self, name: &str, _total: u64) {
        self.restoring.store(name == "restoring", Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        if self.restoring.load(Ordering::SeqCst)
            && self.written.fetch_add(n, Ordering::SeqCst) + n >= self.after
        {
            self.hit.notify_one();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_wipe_restore_gives_the_same_answers() {
    let w = populated().await;
    let h = &w.h;
    let table = h.app.storage.table.clone();
    let blobs = h.app.storage.blobs().unwrap().clone();
    let usage = usage_of(h, &w.key).await;
    assert_eq!(usage["totals"]["requests"], 3);
    let admin_usage = h.admin(Method::GET, "/usage", None).await.ok().clone();
    let before = snapshot(table.as_ref()).await;
    let config = BackupConfig {
        segments: 2,
        part_items: 10,
        retention: Retention {
            daily: 7,
            monthly: 12,
        },
    };
    let m = backup::run(&h.app.storage, &config, &Quiet)
        .await
        .unwrap()
        .manifest;
    assert_eq!(m.total_items as usize, before.len());

    // Wiped: the keys no longer work.
    wipe(table.as_ref()).await;
    h.embed(&w.key, json!("hello world")).await.error(401);

    // Restored: item by item the same table, and the same answers from a new process.
    let r = restore(&table, &blobs, &RestoreOptions::default(), &Quiet)
        .await
        .unwrap();
    assert_eq!(r.items_written as usize, before.len());
    assert_eq!(snapshot(table.as_ref()).await, before);
    let after = fresh(h);
    assert_eq!(usage_of(&after, &w.key).await, usage);
    assert_eq!(
        after.admin(Method::GET, "/usage", None).await.ok(),
        &admin_usage
    );
    after.embed(&w.key, json!("hello world")).await.ok();
    after.embed(&w.other_key, json!("x")).await.ok();
    after.app.cache.flush().await;

    // A corrupted part is refused by name before anything is written.
    wipe(table.as_ref()).await;
    let part = &m.parts[0];
    let good = blobs.get(&part.key).await.unwrap();
    let mut bad = good.to_vec();
    let last = bad.len() - 5;
    bad[last] ^= 0xff;
    blobs.put(&part.key, bad.into()).await.unwrap();
    let err = restore(&table, &blobs, &RestoreOptions::default(), &Quiet)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&part.key) && err.contains("corrupt"), "{err}");
    assert!(snapshot(table.as_ref()).await.is_empty());
    blobs.put(&part.key, good).await.unwrap();

    // A restore that dies part-way, run again, ends with the same table.
    let progress = Interrupt {
        restoring: AtomicBool::new(false),
        written: AtomicU64::new(0),
        after: 25,
        hit: tokio::sync::Notify::new(),
    };
    let one_at_a_time = RestoreOptions {
        concurrency: 1,
        ..Default::default()
    };
    tokio::select! {
        r = restore(&table, &blobs, &one_at_a_time, &progress) => panic!("not interrupted: {r:?}"),
        _ = progress.hit.notified() => {}
    }
    assert!(snapshot(table.as_ref()).await.len() < before.len());
    let r = restore(&table, &blobs, &one_at_a_time, &Quiet)
        .await
        .unwrap();
    assert!(r.parts_resumed >= 1, "{r:?}");
    assert_eq!(snapshot(table.as_ref()).await, before);
    assert_eq!(usage_of(&fresh(h), &w.key).await, usage);
}

/// A response's status and raw body.
async fn raw(h: &Harness, method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::empty())
        .unwrap();
    let resp = h.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, bytes.to_vec())
}

/// The entries of a .tar.gz archive: name -> content.
fn unpack(archive: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        out.insert(name, content);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_holds_everything_about_the_tenant_and_no_secrets() {
    let w = populated().await;
    let h = &w.h;
    h.app
        .storage
        .blobs()
        .unwrap()
        .put(
            &format!("files/{}/input.jsonl", w.tenant),
            bytes::Bytes::from_static(b"{\"custom_id\":\"a\"}\n"),
        )
        .await
        .unwrap();
    let refs = Refs::load(h.app.storage.table.as_ref(), &w.tenant)
        .await
        .unwrap();
    let made = h
        .admin(Method::POST, &format!("/tenants/{}/export", w.tenant), None)
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let download = made.body["download"].as_str().unwrap().to_string();
    let (status, archive) = raw(h, Method::GET, &download).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(archive.len() as u64, made.body["bytes"].as_u64().unwrap());
    let files = unpack(&archive);
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert_eq!(index["tenant_id"], w.tenant.as_str());
    let count = |kind: &str| {
        index["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in the index"))["items"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("tenant"), 1);
    assert_eq!(count("api_keys"), 2);
    assert_eq!(count("key_use"), 1, "the live key was used");
    assert!(count("usage") >= 2, "a day aggregate and a month total");
    assert!(count("alerts") >= 1);
    assert!(count("audit") >= 5);
    assert!(count("cache") >= 2);
    assert!(count("rate_limits") >= 1);
    for kind in index["kinds"].as_array().unwrap() {
        let lines = files[kind["file"].as_str().unwrap()]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        assert_eq!(lines, kind["items"].as_u64().unwrap(), "{}", kind["name"]);
    }
    let files_kind = index["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "files")
        .unwrap();
    let object = &files_kind["objects"][0];
    assert_eq!(object["key"], format!("files/{}/input.jsonl", w.tenant));
    assert_eq!(
        files[object["file"].as_str().unwrap()],
        b"{\"custom_id\":\"a\"}\n"
    );
    // Everything in it: no key secret or hash, no signing secret, no other tenant.
    let text = String::from_utf8_lossy(&flate2_all(&archive)).to_string();
    assert!(!text.contains(&w.key));
    for hash in &refs.key_hashes {
        assert!(!text.contains(hash.as_str()), "a key hash is in the export");
    }
    assert!(
        !text.contains("whsec_"),
        "a webhook secret is in the export"
    );
    assert!(!text.contains(&w.other));
    assert!(text.contains("[redacted]"));
    // Unknown exports, or another tenant's path, are 404.
    let id = made.body["id"].as_str().unwrap();
    let (s, _) = raw(
        h,
        Method::GET,
        &format!("/admin/v1/tenants/{}/exports/{id}", w.other),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = raw(
        h,
        Method::GET,
        &format!("/admin/v1/tenants/{}/exports/exp_nope", w.tenant),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.admin(Method::POST, "/tenants/ten_nope/export", None)
        .await
        .error(404);
    // The export is in the tenant's audit trail.
    let audit = h
        .admin(
            Method::GET,
            &format!("/audit?tenant_id={}&action=tenant.export", w.tenant),
            None,
        )
        .await;
    assert_eq!(audit.ok()["data"][0]["target"], id);
}

fn flate2_all(archive: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(archive)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_through_the_api_leaves_only_a_receipt() {
    let w = populated().await;
    let h = &w.h;
    let (table, blobs) = (
        h.app.storage.table.clone(),
        h.app.storage.blobs().unwrap().clone(),
    );
    h.admin(Method::POST, &format!("/tenants/{}/export", w.tenant), None)
        .await
        .ok();
    let refs = Refs::load(table.as_ref(), &w.tenant).await.unwrap();
    let other_usage = usage_of(h, &w.other_key).await;

    let path = format!("/tenants/{}", w.tenant);
    h.admin(Method::DELETE, &path, None).await.error(400);
    h.admin(Method::DELETE, &format!("{path}?erase=yes"), None)
        .await
        .error(400);
    let done = h
        .admin(Method::DELETE, &format!("{path}?erase=true"), None)
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["status"], "completed");
    let receipt = done.body["receipt"].clone();
    assert_eq!(receipt["action"], "tenant.erase");
    assert_eq!(receipt["actor"], "test-admin");
    let counts = &receipt["after"]["counts"];
    assert!(counts["usage"].as_u64().unwrap() >= 2, "{counts}");
    assert_eq!(counts["api_keys"], 2, "{counts}");
    assert_eq!(counts["key_lookups"], 2, "{counts}");
    assert_eq!(counts["tenant"], 1, "{counts}");
    assert_eq!(counts["exports"], 1, "{counts}");
    assert!(
        counts["usage_event_claims"].as_u64().unwrap() >= 1,
        "{counts}"
    );

    // Gone from the API: the tenant, its keys.
    h.admin(Method::GET, &path, None).await.error(404);
    h.embed(&w.key, json!("hello world")).await.error(401);
    let status = h.admin(Method::GET, &format!("{path}/erasure"), None).await;
    assert_eq!(status.ok()["receipt"]["id"], receipt["id"]);
    let again = h
        .admin(Method::DELETE, &format!("{path}?erase=true"), None)
        .await;
    assert_eq!(again.ok()["receipt"]["id"], receipt["id"]);

    // Gone from storage: only the receipt names the tenant or its keys.
    let naming: Vec<_> = snapshot(table.as_ref())
        .await
        .into_values()
        .filter(|i| refs.named_in(i))
        .collect();
    assert_eq!(naming.len(), 1, "{naming:#?}");
    assert_eq!(naming[0].key.pk, "AUDIT#_platform");
    let left: Vec<_> = objects(blobs.as_ref())
        .await
        .into_iter()
        .filter(|k| refs.named_in_text(k))
        .collect();
    let kept_receipt = format!("erasures/{}.json", w.tenant);
    assert_eq!(left, [kept_receipt], "only the receipt's copy");
    let receipts = h
        .admin(Method::GET, "/audit?action=tenant.erase", None)
        .await;
    assert_eq!(receipts.ok()["data"][0]["id"], receipt["id"]);
    assert_eq!(
        h.admin(Method::GET, "/audit/verify", None).await.ok()["ok"],
        true
    );

    // The other tenant is as it was.
    assert_eq!(usage_of(h, &w.other_key).await, other_usage);
    h.embed(&w.other_key, json!("still here")).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_trail_filters_exports_and_verifies_its_chain() {
    let h = Harness::new().await;
    let t = h.tenant("Audited", "free").await;
    let (_, k1) = h.key(&t, json!({})).await;
    h.key(&t, json!({})).await;
    h.admin(Method::DELETE, &format!("/tenants/{t}/keys/{k1}"), None)
        .await
        .ok();
    // Concurrent changes still chain one after another.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (h, t) = (h.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            h.key(&t, json!({"name": format!("k{i}")})).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let q = |extra: &str| format!("/audit?tenant_id={t}&limit=100{extra}");
    let all = h.admin(Method::GET, &q(""), None).await.ok().clone();
    let entries = all["data"].as_array().unwrap();
    assert_eq!(entries.len(), 16);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=16).rev().collect::<Vec<_>>(),
        "newest first, no gaps"
    );

    let keys_only = h.admin(Method::GET, &q("&action=key."), None).await;
    let actions = keys_only.ok()["data"].as_array().unwrap();
    assert_eq!(actions.len(), 15);
    assert!(actions
        .iter()
        .all(|e| e["action"].as_str().unwrap().starts_with("key.")));
    let revoke = h.admin(Method::GET, &q("&action=key.revoke"), None).await;
    assert_eq!(revoke.ok()["data"].as_array().unwrap().len(), 1);
    let by_actor = h.admin(Method::GET, &q("&actor=test-admin"), None).await;
    assert_eq!(by_actor.ok()["data"].as_array().unwrap().len(), 16);
    let nobody = h.admin(Method::GET, &q("&actor=someone-else"), None).await;
    assert!(nobody.ok()["data"].as_array().unwrap().is_empty());
    let now = tenantai::store::now_secs();
    let future = h
        .admin(Method::GET, &q(&format!("&from={}", now + 3600)), None)
        .await;
    assert!(future.ok()["data"].as_array().unwrap().is_empty());
    let past = h.admin(Method::GET, &q("&to=2020-01-01"), None).await;
    assert!(past.ok()["data"].as_array().unwrap().is_empty());
    let today = h
        .admin(
            Method::GET,
            &q(&format!("&from={}&to={}", now - 3600, now + 5)),
            None,
        )
        .await;
    assert_eq!(today.ok()["data"].as_array().unwrap().len(), 16);
    h.admin(Method::GET, &q("&from=yesterday"), None)
        .await
        .error(400);
    h.admin(Method::GET, &q("&limit=5"), None).await.error(400);
    h.admin(Method::GET, &q("&from=2026-02-01&to=2026-01-01"), None)
        .await
        .error(400);
    // Filtered pages hold what matches, with a cursor to the rest.
    let page = h
        .admin(
            Method::GET,
            &format!("/audit?tenant_id={t}&action=key.create&limit=5"),
            None,
        )
        .await;
    assert_eq!(page.ok()["data"].as_array().unwrap().len(), 5);
    let next = page.body["next"].as_str().unwrap();
    let rest = h
        .admin(
            Method::GET,
            &format!("/audit?tenant_id={t}&action=key.create&limit=100&after={next}"),
            None,
        )
        .await;
    assert_eq!(rest.ok()["data"].as_array().unwrap().len(), 9);

    // The export: oldest first, one JSON object per line, the chain intact.
    let (status, body) = raw(
        &h,
        Method::GET,
        &format!("/admin/v1/audit/export?tenant_id={t}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<tenantai::tenancy::audit::AuditRecord> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 16);
    assert!(tenantai::tenancy::audit::verify("export", lines.clone(), None).ok);
    let (_, only_keys) = raw(
        &h,
        Method::GET,
        &format!("/admin/v1/audit/export?tenant_id={t}&action=key."),
    )
    .await;
    assert_eq!(String::from_utf8(only_keys).unwrap().lines().count(), 15);
    let verdict = h
        .admin(Method::GET, &format!("/audit/verify?tenant_id={t}"), None)
        .await;
    assert_eq!(verdict.ok()["ok"], true);
    assert_eq!(verdict.body["entries"], 16);
    assert_eq!(verdict.body["head_hash"], lines[15].hash.as_str());

    // Tampering with an entry in the table is caught, and named.
    let table = h.app.storage.table.clone();
    let key = Key::new(format!("AUDIT#{t}"), format!("E#{:020}", 7));
    let mut item = table.get(&key).await.unwrap().unwrap();
    item.attrs.insert("actor".into(), json!("someone-else"));
    table.put(&item, &Cond::Always).await.unwrap();
    let verdict = h
        .admin(Method::GET, &format!("/audit/verify?tenant_id={t}"), None)
        .await;
    assert_eq!(verdict.ok()["ok"], false);
    assert_eq!(verdict.body["first_broken"]["seq"], 7);
    assert_eq!(verdict.body["first_broken"]["id"], lines[6].id.as_str());
    // ... and so is a removed one.
    table
        .put(
            &Item::new(
                key.clone(),
                serde_json::to_value(&lines[6])
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            &Cond::Always,
        )
        .await
        .unwrap();
    assert_eq!(
        h.admin(Method::GET, &format!("/audit/verify?tenant_id={t}"), None)
            .await
            .ok()["ok"],
        true
    );
    table
        .delete(
            &Key::new(format!("AUDIT#{t}"), format!("E#{:020}", 16)),
            &Cond::Always,
        )
        .await
        .unwrap();
    let verdict = h
        .admin(Method::GET, &format!("/audit/verify?tenant_id={t}"), None)
        .await;
    assert_eq!(verdict.ok()["ok"], false);
    assert_eq!(verdict.body["first_broken"]["seq"], 16);
    // An entry is never overwritten: the next record chains after the head.
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"name": "after"})),
    )
    .await
    .ok();
    let newest = h
        .admin(Method::GET, &format!("/audit?tenant_id={t}&limit=1"), None)
        .await;
    assert_eq!(newest.ok()["data"][0]["seq"], 17);
}
