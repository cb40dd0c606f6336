//! Secrets: a webhook signing secret is shown once (set, rotate) and never on a
//! read, a list or in the audit log; a rotation keeps the old secret signing
//! beside the new one until its overlap ends; on disk the secret is sealed and
//! the data directory and its files are owner-only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::http::{Method, StatusCode};
use serde_json::json;
use tenantai::billing::alerts::{
    verify, CostAlerts, Notifier, Retry, REPLAY_WINDOW_SECS, SIGNATURE_HEADER,
};
use tenantai::store::{Resources, Storage};
use tenantai::tenancy::secrets::Secrets;

use crate::egress::spend_event;
use crate::harness::Harness;
use crate::net::recorder;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_signing_secret_is_shown_once_and_never_read_back() {
    let h = Harness::new().await;
    let t = h.tenant("Secretive", "pro").await;
    let set = h
        .admin(
            Method::PATCH,
            &format!("/tenants/{t}"),
            Some(json!({"alert_webhook_url": "https://hooks.example.com/a"})),
        )
        .await;
    let first = set.ok()["alert_webhook"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("whsec_"));
    let rotated = h
        .admin(
            Method::POST,
            &format!("/tenants/{t}/alert-webhook/rotate-secret"),
            Some(json!({"overlap_secs": 3600})),
        )
        .await;
    let second = rotated.ok()["alert_webhook"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);
    assert!(rotated.body["alert_webhook"]["previous_secret_retires_at"].is_i64());
    // Other changes answer without it.
    let renamed = h
        .admin(
            Method::PATCH,
            &format!("/tenants/{t}"),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert!(renamed.ok()["alert_webhook"].get("secret").is_none());
    let reads = [
        h.admin(Method::GET, &format!("/tenants/{t}"), None).await,
        h.admin(Method::GET, "/tenants?limit=100", None).await,
        h.admin(
            Method::GET,
            &format!("/audit?tenant_id={t}&limit=100"),
            None,
        )
        .await,
        renamed,
    ];
    for r in &reads {
        let text = r.ok().to_string();
        for needle in [
            first.as_str(),
            second.as_str(),
            "whsec_",
            "tsec1",
            "\"secrets\"",
        ] {
            assert!(!text.contains(needle), "{needle} in {text}");
        }
    }
    assert_eq!(
        reads[0].body["alert_webhook"]["url"],
        "https://hooks.example.com/a"
    );
    // A tenant without a webhook has nothing to rotate.
    let bare = h.tenant("Bare", "pro").await;
    h.admin(
        Method::POST,
        &format!("/tenants/{bare}/alert-webhook/rotate-secret"),
        None,
    )
    .await
    .error(400);
    h.admin(
        Method::POST,
        "/tenants/ten_ghost/alert-webhook/rotate-secret",
        None,
    )
    .await
    .error(404);
}

#[tokio::test]
async fn a_rotation_signs_with_both_secrets_until_the_overlap_ends() {
    let h = Harness::with_private_egress().await;
    let notifier = || Notifier::new(Retry::default(), h.app.config.webhook_rules()).unwrap();
    for (overlap, old_still_signs) in [(3600, true), (0, false)] {
        let (url, got) = recorder(StatusCode::NO_CONTENT, None).await;
        let t = h.tenant("Rotating", "pro").await;
        let set = h
            .admin(
                Method::PATCH,
                &format!("/tenants/{t}"),
                Some(json!({"monthly_budget_micros": 100, "alert_webhook_url": url})),
            )
            .await;
        let old = set.ok()["alert_webhook"]["secret"]
            .as_str()
            .unwrap()
            .to_string();
        let rotated = h
            .admin(
                Method::POST,
                &format!("/tenants/{t}/alert-webhook/rotate-secret"),
                Some(json!({ "overlap_secs": overlap })),
            )
            .await;
        let new = rotated.ok()["alert_webhook"]["secret"]
            .as_str()
            .unwrap()
            .to_string();
        // 90 of 100 spent: the tenant's alerts are due.
        h.app.meter.fold(&spend_event(&t, 90)).await.unwrap();
        let alerts = CostAlerts::new(
            h.app.storage.table.clone(),
            h.app.config.tiers.clone(),
            notifier(),
        );
        let summary = alerts.run(time::OffsetDateTime::now_utc()).await.unwrap();
        assert!(summary.sent >= 1, "{summary:?}");
        let now = tenantai::store::now_secs();
        let mine: Vec<_> = got
            .all()
            .into_iter()
            .filter(|(_, body)| String::from_utf8_lossy(body).contains(&t))
            .collect();
        assert!(!mine.is_empty());
        for (headers, body) in mine {
            let header = headers[SIGNATURE_HEADER].to_str().unwrap().to_string();
            assert_eq!(
                verify(&new, &header, &body, now, REPLAY_WINDOW_SECS),
                Ok(())
            );
            assert_eq!(
                verify(&old, &header, &body, now, REPLAY_WINDOW_SECS).is_ok(),
                old_still_signs,
                "overlap {overlap}: {header}"
            );
            assert_eq!(
                header.matches("v1=").count(),
                if old_still_signs { 2 } else { 1 }
            );
        }
    }
}

#[tokio::test]
async fn on_disk_secrets_are_sealed_and_files_are_owner_only() {
    let h = Harness::new().await;
    let t = h.tenant("OnDisk", "pro").await;
    let set = h
        .admin(
            Method::PATCH,
            &format!("/tenants/{t}"),
            Some(json!({"alert_webhook_url": "https://hooks.example.com/disk"})),
        )
        .await;
    let secret = set.ok()["alert_webhook"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = h._dir.path();
    assert_eq!(mode(dir), 0o700);
    for name in [
        "tenantai.db",
        "tenantai.db-wal",
        "tenantai.db-shm",
        "secrets.key",
    ] {
        let path = dir.join(name);
        assert!(path.exists(), "{name}");
        assert_eq!(mode(&path), 0o600, "{name}");
        if name != "secrets.key" {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&secret),
                "the secret is in {name} in plain text"
            );
        }
    }
    for sub in ["blobs", "blobs/objects", "blobs/tmp"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}");
    }
    // A blob written through the port is owner-only too.
    let blobs = h.app.storage.blobs().unwrap();
    blobs
        .put("a/b.txt", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(mode(&dir.join("blobs/objects/a/b.txt")), 0o600);
}

#[tokio::test]
async fn a_lax_data_directory_is_tightened_and_a_readable_key_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(data.join("tenantai.db"), b"").unwrap();
    std::fs::set_permissions(
        data.join("tenantai.db"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let _storage = Storage::embedded(&data, &Resources::named("lax"))
        .await
        .unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tenantai.db")), 0o600);

    let key = data.join("secrets.key");
    Secrets::local(&key).unwrap();
    assert_eq!(mode(&key), 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Secrets::local(&key).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn a_sealed_secret_does_not_open_for_another_tenant_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::local(&dir.path().join("k")).unwrap();
    let sealed = secrets
        .seal("whsec_x", "tenant:a:alert_webhook")
        .await
        .unwrap();
    assert!(secrets
        .open(&sealed, "tenant:b:alert_webhook")
        .await
        .is_err());
    let other = Secrets::local(&dir.path().join("k2")).unwrap();
    assert!(other.open(&sealed, "tenant:a:alert_webhook").await.is_err());
    // Any flipped character breaks it (authenticated encryption).
    for i in (6..sealed.len()).step_by(7) {
        let mut bytes = sealed.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        if tampered != sealed {
            assert!(secrets
                .open(&tampered, "tenant:a:alert_webhook")
                .await
                .is_err());
        }
    }
}
