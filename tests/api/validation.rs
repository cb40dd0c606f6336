//! The validation gate with real workers: a version whose model weights were
//! degraded (a copy of all-MiniLM-L6-v2 with noise in its safetensors) is
//! refused by validate, promote and a canary weight, and the refusals are in the
//! audit log; a second worker serving the unmodified model passes and is promoted.

use std::path::Path;

use axum::http::Method;
use serde_json::{json, Value};

use crate::harness::Harness;
use crate::worker;

const MODEL: &str = "all-MiniLM-L6-v2";

/// Uniform noise added to every F32 weight, as a share of its tensor's RMS.
const NOISE: f32 = 0.15;

/// Copies `from` into `to`, directories included.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the shipped model in `to` whose F32 tensors carry uniform noise of
/// `level` times each tensor's RMS (a fixed generator), with its manifest's
/// digest of the weights rewritten so the worker loads it.
fn degraded_model(to: &Path, level: f32) {
    copy_dir(&worker::model_dir(), to);
    let path = to.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        // splitmix64, mapped to [-1, 1)
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let mut noised = 0;
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" || t["dtype"] != "F32" {
            continue;
        }
        let begin = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize;
        let end = 8 + n + t["data_offsets"][1].as_u64().unwrap() as usize;
        let data = &mut bytes[begin..end];
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let rms = (values.iter().map(|x| x * x).sum::<f32>() / values.len() as f32).sqrt();
        for (chunk, x) in data.chunks_exact_mut(4).zip(values) {
            chunk.copy_from_slice(&(x + level * rms * uniform()).to_le_bytes());
        }
        noised += 1;
    }
    assert!(noised > 90, "the weights were found ({noised} tensors)");
    std::fs::write(&path, &bytes).unwrap();
    let manifest = to.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["model.safetensors"] = json!(gpu_worker::artifacts::sha256_file(&path).unwrap());
    std::fs::write(&manifest, m.to_string()).unwrap();
}

/// A worker of its own for the model in `dir` (loading blocks: off the runtime).
async fn serve(dir: std::path::PathBuf) -> String {
    tokio::task::spawn_blocking(move || worker::serve_embeddings(dir))
        .await
        .unwrap()
}

fn version_path(version: &str, action: &str) -> String {
    format!("/models/{MODEL}/versions/{version}{action}")
}

/// The model.validate entries of the audit log for `version`: (outcome, purpose).
async fn validations(h: &Harness, version: &str) -> Vec<(String, String)> {
    let audit = h
        .admin(Method::GET, "/audit?action=model.validate&limit=100", None)
        .await;
    let mut out: Vec<(String, String)> = audit.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == format!("{MODEL}@{version}"))
        .map(|r| {
            (
                r["after"]["outcome"].as_str().unwrap().to_string(),
                r["after"]["purpose"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Audit actions recorded against `MODEL@version`.
async fn actions(h: &Harness, version: &str) -> Vec<String> {
    let audit = h.admin(Method::GET, "/audit?limit=100", None).await;
    audit.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"] == format!("{MODEL}@{version}"))
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect()
}

fn assert_refusal_carries_figures(r: &crate::harness::Reply) {
    let message = r.error(409);
    assert_eq!(r.body["error"]["code"], "validation_failed", "{}", r.body);
    assert_eq!(r.header("x-should-retry"), "false");
    let v = &r.body["error"]["validation"];
    assert_eq!(v["outcome"], "refused", "{v}");
    assert!(v["figures"]["cosine_min"].as_f64().unwrap() < 0.99, "{v}");
    assert!(message.contains("cosine min"), "{message}");
}

#[tokio::test]
async fn a_degraded_version_is_refused_and_a_faithful_one_passes_and_is_promoted() {
    let h = Harness::new().await;
    let t = h.tenant("Acme", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    h.model(json!({"model": MODEL, "endpoint": worker::url()}))
        .await;

    // Version 2 declares int8 (the loosest threshold, 0.99) and runs degraded weights.
    let dir = tempfile::tempdir().unwrap();
    degraded_model(dir.path(), NOISE);
    let degraded = serve(dir.path().to_path_buf()).await;
    h.model(json!({"model": MODEL, "version": "2", "endpoint": degraded,
                   "status": "staged", "precision": "int8"}))
        .await;

    let r = h
        .admin(Method::POST, &version_path("2", "/validate"), None)
        .await;
    let v = r.ok().clone();
    eprintln!("degraded: {}", v["figures"]);
    assert_eq!(
        (&v["outcome"], &v["against"], &v["precision"]),
        (
            &json!("refused"),
            &json!(format!("{MODEL}@1")),
            &json!("int8")
        ),
        "{v}"
    );
    assert_eq!(v["thresholds"]["min_cosine"], 0.99);
    let f = &v["figures"];
    assert_eq!(
        (&f["items"], &f["queries"], &f["corpus"], &f["k"]),
        (&json!(264), &json!(64), &json!(200), &json!(10))
    );
    assert!(f["cosine_min"].as_f64().unwrap() < 0.99, "{f}");
    assert!(f["overlap_mean"].as_f64().unwrap() < 0.95, "{f}");
    assert!(f["overlap_min"].as_f64().unwrap() <= f["overlap_mean"].as_f64().unwrap());
    let stored = h.admin(Method::GET, &version_path("2", ""), None).await;
    assert_eq!(stored.ok()["validation"]["outcome"], "refused");

    // Promotion and a canary weight above zero are refused with the figures.
    let r = h
        .admin(Method::POST, &version_path("2", "/promote"), None)
        .await;
    assert_refusal_carries_figures(&r);
    assert_eq!(r.body["error"]["validation"]["purpose"], "promote");
    let r = h
        .admin(
            Method::PATCH,
            &version_path("2", ""),
            Some(json!({"status": "canary", "canary_weight": 10})),
        )
        .await;
    assert_refusal_carries_figures(&r);
    assert_eq!(r.body["error"]["validation"]["purpose"], "canary");
    // Nothing changed: version 2 is staged at weight 0, version 1 serves.
    let stored = h.admin(Method::GET, &version_path("2", ""), None).await;
    assert_eq!(
        (&stored.ok()["status"], &stored.ok()["canary_weight"]),
        (&json!("staged"), &json!(0))
    );
    h.app.registry.invalidate();
    let served = h.embed(&key, "which version answers?").await;
    assert_eq!(
        served.header("x-tenantai-model-version"),
        format!("{MODEL}@1")
    );
    // Each refusal is in the audit log, and no change of version 2 is.
    assert_eq!(
        validations(&h, "2").await,
        [
            ("refused".to_string(), "canary".to_string()),
            ("refused".into(), "promote".into()),
            ("refused".into(), "validate".into()),
        ]
    );
    let done = actions(&h, "2").await;
    assert!(
        !done
            .iter()
            .any(|a| a == "model.promote" || a == "model.update"),
        "{done:?}"
    );

    // Version 3: a second worker with the unmodified model passes and goes live.
    let faithful = serve(worker::model_dir()).await;
    assert_ne!(faithful, worker::url());
    h.model(json!({"model": MODEL, "version": "3", "endpoint": faithful,
                   "status": "staged", "precision": "f32"}))
        .await;
    let r = h
        .admin(Method::POST, &version_path("3", "/validate"), None)
        .await;
    let v = r.ok().clone();
    eprintln!("faithful: {}", v["figures"]);
    assert_eq!(v["outcome"], "passed", "{v}");
    assert_eq!(v["thresholds"]["min_cosine"], 0.999);
    assert!(v["figures"]["cosine_min"].as_f64().unwrap() >= 0.999, "{v}");
    assert!(
        v["figures"]["overlap_mean"].as_f64().unwrap() >= 0.95,
        "{v}"
    );
    let canary = h
        .admin(
            Method::PATCH,
            &version_path("3", ""),
            Some(json!({"status": "canary", "canary_weight": 10})),
        )
        .await;
    assert_eq!(canary.ok()["canary_weight"], 10);
    assert_eq!(canary.ok()["validation"]["purpose"], "canary");
    let promoted = h
        .admin(Method::POST, &version_path("3", "/promote"), None)
        .await;
    let live: Vec<_> = promoted.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["status"] == "live")
        .map(|v| v["version"].clone())
        .collect();
    assert_eq!(live, [json!("3")]);
    h.app.registry.invalidate();
    let served = h.embed(&key, "which version answers now?").await;
    assert_eq!(
        served.header("x-tenantai-model-version"),
        format!("{MODEL}@3")
    );
    assert_eq!(
        validations(&h, "3").await,
        [
            ("passed".to_string(), "canary".to_string()),
            ("passed".into(), "promote".into()),
            ("passed".into(), "validate".into()),
        ]
    );
    assert!(actions(&h, "3").await.iter().any(|a| a == "model.promote"));

    // A live version's endpoint moved to the degraded worker is refused too.
    let r = h
        .admin(
            Method::PATCH,
            &version_path("3", ""),
            Some(json!({"endpoint": degraded})),
        )
        .await;
    let message = r.error(409);
    assert_eq!(
        r.body["error"]["validation"]["purpose"], "endpoint",
        "{message}"
    );
    let stored = h.admin(Method::GET, &version_path("3", ""), None).await;
    assert_eq!(stored.ok()["endpoint"], json!(faithful));
}

#[tokio::test]
async fn nothing_to_compare_is_skipped_and_bad_input_changes_nothing() {
    let h = Harness::new().await;
    let a = h.tenant("A", "pro").await;
    let b = h.tenant("B", "pro").await;
    let (a_key, _) = h.key(&a, json!({})).await;
    h.model(json!({"model": "embed", "version": "1"})).await;

    // Unknown models and versions: 404, nothing audited.
    for path in [
        "/models/nothing/versions/1/validate",
        "/models/embed/versions/9/validate",
    ] {
        h.admin(Method::POST, path, None).await.error(404);
    }
    // B's private model: A's key reaches neither the admin API nor the model.
    h.model(json!({"model": "private", "version": "1", "owner_tenant": b}))
        .await;
    h.model(json!({"model": "private", "version": "2", "owner_tenant": b, "status": "staged"}))
        .await;
    let r = h
        .call(
            Method::POST,
            "/admin/v1/models/private/versions/2/validate",
            Some(&a_key),
            None,
        )
        .await;
    r.error(401);
    h.call(Method::GET, "/v1/models/private", Some(&a_key), None)
        .await
        .error(404);
    // Registering live versions validated them (skipped: nothing to compare),
    // each in its owner's chain; nothing else was.
    let platform = "/audit?action=model.validate".to_string();
    let owner = format!("{platform}&tenant_id={b}");
    for (query, want) in [(platform, "embed@1"), (owner, "private@1")] {
        let audit = h.admin(Method::GET, &query, None).await;
        let targets: Vec<_> = audit.ok()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["target"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(targets, [want]);
    }
    let v2 = h
        .admin(Method::GET, "/models/private/versions/2", None)
        .await;
    assert!(v2.ok().get("validation").is_none(), "{}", v2.body);

    // No live version to compare against: skipped, and promotion goes ahead.
    h.model(json!({"model": "fresh", "version": "1", "status": "staged"}))
        .await;
    let r = h
        .admin(Method::POST, "/models/fresh/versions/1/validate", None)
        .await;
    assert_eq!(r.ok()["outcome"], "skipped");
    assert!(r.ok()["reason"]
        .as_str()
        .unwrap()
        .contains("no live version"));
    h.admin(Method::POST, "/models/fresh/versions/1/promote", None)
        .await
        .ok();

    // A chat model: the gate compares embeddings only; skipped, promoted.
    h.model(json!({"model": "talk", "version": "1", "kind": "chat"}))
        .await;
    h.model(json!({"model": "talk", "version": "2", "kind": "chat", "status": "staged"}))
        .await;
    let r = h
        .admin(Method::POST, "/models/talk/versions/2/validate", None)
        .await;
    assert_eq!(r.ok()["outcome"], "skipped");
    assert!(r.ok()["reason"].as_str().unwrap().contains("chat"));
    h.admin(Method::POST, "/models/talk/versions/2/promote", None)
        .await
        .ok();

    // Backends that cannot answer: refused, with the reason, and nothing moves.
    h.model(json!({"model": "embed", "version": "2", "status": "staged"}))
        .await;
    let r = h
        .admin(Method::POST, "/models/embed/versions/2/validate", None)
        .await;
    assert_eq!(r.ok()["outcome"], "refused");
    assert!(r.ok()["reason"]
        .as_str()
        .unwrap()
        .contains("backend failed"));
    assert!(r.ok().get("figures").is_none());
    let refused = h
        .admin(Method::POST, "/models/embed/versions/2/promote", None)
        .await;
    refused.error(409);
    assert_eq!(refused.body["error"]["code"], "validation_failed");
    // Registering a second live version, or a weighted canary, passes the gate too.
    let r = h
        .admin(
            Method::POST,
            "/models",
            Some(
                json!({"model": "embed", "version": "3", "backend": "worker",
                        "endpoint": "http://127.0.0.1:9", "price_per_1k_tokens_micros": 1,
                        "status": "canary", "canary_weight": 5}),
            ),
        )
        .await;
    r.error(409);
    h.admin(Method::GET, "/models/embed/versions/3", None)
        .await
        .error(404);
    let v1 = h.admin(Method::GET, "/models/embed/versions/1", None).await;
    assert_eq!(v1.ok()["status"], "live");
    // A client cannot claim a validation: what it sends is dropped.
    let claimed = h
        .admin(
            Method::POST,
            "/models",
            Some(
                json!({"model": "embed", "version": "4", "backend": "worker",
                        "endpoint": "http://127.0.0.1:9", "price_per_1k_tokens_micros": 1,
                        "status": "staged", "validation": r.body["error"]["validation"]}),
            ),
        )
        .await;
    assert!(claimed.ok().get("validation").is_none(), "{}", claimed.body);
}
