//! Every function invoked through cargo-lambda (`cargo lambda watch` +
//! `cargo lambda invoke --data-file events/...`) on the AWS adapters against
//! the emulator, with a real `gpu-worker serve` behind the api.
//!
//! `scripts/test.sh` runs this binary in a second phase, after `cargo test` has
//! released the build lock (cargo-lambda builds the functions itself), with
//! `TENANTAI_LAMBDA_E2E=1`. Under plain `cargo test` it says so and returns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenantai::app::{App, Config};
use tenantai::gateway::models::ModelVersion;
use tenantai::store::{aws, Resources, Storage};

#[path = "../common/expected_events.rs"]
mod expected_events;
#[path = "../common/tables.rs"]
mod tables;
#[path = "../common/webhook.rs"]
mod webhook;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gpu-worker serve` on a free loopback port.
fn start_worker() -> (Killed, String) {
    let port = free_port();
    let bin = root().join("target/debug/gpu-worker");
    let model = std::env::var("TENANTAI_MODEL_DIR")
        .unwrap_or_else(|_| root().join("models/all-MiniLM-L6-v2").display().to_string());
    let chat = root()
        .join("models/SmolLM2-135M-Instruct")
        .display()
        .to_string();
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--model",
            &model,
            "--chat-model",
            &chat,
            "--chat-model-id",
            "SmolLM2-135M-Instruct",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (build it first)", bin.display()));
    wait_for_port(port, &mut child, "gpu-worker");
    (Killed(child), format!("http://127.0.0.1:{port}"))
}

/// The sample event `event` with the seeded values in place of its placeholders.
fn event_text(event: &str, vars: &HashMap<&str, String>) -> String {
    let mut text = std::fs::read_to_string(root().join("events").join(event)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    text
}

fn invoke(port: u16, function: &str, event: &str, vars: &HashMap<&str, String>) -> Value {
    invoke_text(port, function, event, &event_text(event, vars))
}

/// `cargo lambda invoke FUNCTION --data-file` with `text` as the event.
fn run_invoke(port: u16, function: &str, text: &str) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    Command::new("cargo")
        .args([
            "lambda",
            "invoke",
            function,
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
            "--data-file",
        ])
        .arg(file.path())
        .current_dir(root())
        .output()
        .unwrap()
}

/// What `cargo lambda invoke` prints (both streams), whether or not the function failed.
fn invoke_output(port: u16, function: &str, event: &str, vars: &HashMap<&str, String>) -> String {
    let out = run_invoke(port, function, &event_text(event, vars));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn invoke_text(port: u16, function: &str, event: &str, text: &str) -> Value {
    let out = run_invoke(port, function, text);
    assert!(
        out.status.success(),
        "invoke {function} {event}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{event}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Receives until `want` messages arrived or 30 s passed (left invisible for 5 minutes).
async fn receive(queue: &dyn tenantai::store::Queue, want: usize) -> Vec<tenantai::store::Message> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        let batch = queue
            .receive(&tenantai::store::Receive {
                max: 10,
                wait: Duration::from_secs(1),
                visibility: Duration::from_secs(300),
            })
            .await
            .unwrap();
        got.extend(batch);
    }
    got
}

/// A streamed invocation's answer: the status and headers of its metadata
/// prelude, and the body as it streamed.
struct Streamed {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Streamed {
    fn json(&self) -> (u16, Value) {
        (
            self.status,
            serde_json::from_slice(&self.body).unwrap_or(Value::Null),
        )
    }
}

/// Invokes the api through `cargo lambda watch`'s invoke endpoint, the one
/// `cargo lambda invoke` calls: the runtime emulator turns the streamed
/// response's prelude into the status and headers.
async fn invoke_api(port: u16, event: &str, vars: &HashMap<&str, String>) -> Streamed {
    let resp = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/2015-03-31/functions/api/invocations"
        ))
        .body(event_text(event, vars))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["lambda-runtime-function-response-mode"],
        "streaming",
        "{event}"
    );
    Streamed {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.unwrap(),
    }
}

async fn batch_through_the_api(
    port: u16,
    app: &std::sync::Arc<tenantai::app::App>,
    vars: &mut HashMap<&str, String>,
) {
    let (status, file) = invoke_api(port, "api/files-upload.json", vars).await.json();
    assert_eq!(status, 200, "{file}");
    vars.insert("FILE_ID", file["id"].as_str().unwrap().to_string());
    let (status, batch) = invoke_api(port, "api/batches-create.json", vars)
        .await
        .json();
    assert_eq!(
        (status, batch["status"].as_str()),
        (200, Some("validating")),
        "{batch}"
    );
    let (jobs, _) = tenantai::batch::jobs::queues(&app.storage).unwrap();
    let cfg = tenantai::batch::jobs::WorkerConfig::default();
    for _ in 0..2 {
        // The validation, then its one chunk.
        let got = receive(jobs.as_ref(), 1).await;
        assert_eq!(got.len(), 1);
        let handled = tenantai::batch::jobs::handle(app, &cfg, &got[0].body, false)
            .await
            .unwrap();
        assert_eq!(handled, tenantai::batch::jobs::Handled::Done);
        jobs.delete(&got[0].receipt).await.unwrap();
    }
    let (status, list) = invoke_api(port, "api/batches-list.json", vars).await.json();
    assert_eq!(status, 200, "{list}");
    let done = &list["data"][0];
    assert_eq!(
        (done["id"].as_str(), done["status"].as_str()),
        (batch["id"].as_str(), Some("completed")),
        "{list}"
    );
    assert_eq!(done["request_counts"]["completed"], 1);
    let (status, _) = invoke_api(port, "api/batches-unknown.json", vars)
        .await
        .json();
    assert_eq!(status, 404);
}

/// A streamed chat answer: server-sent events, chunk by chunk, with the usage
/// chunk asked for, then `[DONE]`.
async fn chat_stream_through_the_runtime(port: u16, vars: &HashMap<&str, String>) {
    let got = invoke_api(port, "api/chat-stream.json", vars).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    assert_eq!(got.headers["content-type"], "text/event-stream");
    let text = std::str::from_utf8(&got.body).unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty(), "{text}");
    let usage = &chunks.last().unwrap()["usage"];
    assert!(
        (1..=6).contains(&usage["completion_tokens"].as_u64().unwrap()),
        "{text}"
    );
    assert!(chunks.len() >= 3, "streamed as one chunk per token: {text}");
}

fn status_and_body(resp: &Value) -> (u64, Value) {
    let body = resp["body"]
        .as_str()
        .map(|b| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (resp["statusCode"].as_u64().unwrap_or(0), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn functions_through_cargo_lambda() {
    if std::env::var_os("TENANTAI_LAMBDA_E2E").is_none() {
        eprintln!("SKIPPED here: scripts/test.sh runs this test in its cargo-lambda phase (TENANTAI_LAMBDA_E2E=1)");
        return;
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL").expect("the emulator's AWS_ENDPOINT_URL");
    let (_worker, worker_url) = start_worker();

    // Seed the emulated deployment the functions will use.
    let prefix = format!("lt{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let sdk = aws::sdk_config().await;
    let storage = Storage::aws(&sdk, &Resources::named(&prefix), true)
        .await
        .unwrap();
    // Secrets sealed under a KMS key on the emulator, as the functions will open
    // them; the test's webhook receiver is on loopback.
    let kms_key_id = aws_sdk_kms::Client::new(&sdk)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string();
    let mut config = Config::default();
    config.egress.allow_private = true;
    config.secrets = tenantai::tenancy::secrets::Secrets::kms(&sdk, kms_key_id.clone());
    let app = App::new(storage, config).unwrap();
    let admin = app.admins.create("lambda-test").await.unwrap();
    let tenant = app
        .tenants
        .create("Acme", "pro", &app.config.tiers)
        .await
        .unwrap();
    let key = app
        .keys
        .create(&tenant.id, &Default::default())
        .await
        .unwrap();
    let revoked = app
        .keys
        .create(&tenant.id, &Default::default())
        .await
        .unwrap();
    app.keys
        .revoke(&tenant.id, &revoked.key.key_id)
        .await
        .unwrap();
    app.registry
        .register(ModelVersion::live_worker(
            "all-MiniLM-L6-v2",
            "1",
            &worker_url,
            20,
        ))
        .await
        .unwrap();
    let mut chat_model = ModelVersion::live_worker("SmolLM2-135M-Instruct", "1", &worker_url, 150);
    chat_model.kind = tenantai::gateway::models::ModelKind::Chat;
    chat_model.price_per_1k_completion_tokens_micros = 600;
    app.registry.register(chat_model).await.unwrap();
    // Cost alerts: a small budget, a webhook that checks signatures, an SNS topic.
    let hook = webhook::Webhook::start(0).await;
    let patch = tenantai::tenancy::tenants::TenantPatch {
        monthly_budget_micros: Some(100),
        alert_webhook_url: Some(hook.url.clone()),
        ..Default::default()
    };
    let alerted = app
        .tenants
        .update(&tenant.id, &patch, &app.config.tiers)
        .await
        .unwrap();
    hook.expect_secret(alerted.new_secret.as_deref().unwrap());
    let topic = aws_sdk_sns::Client::new(&sdk)
        .create_topic()
        .name(format!("{prefix}-alerts"))
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let mut vars = HashMap::from([
        ("TENANT_ID", tenant.id.clone()),
        ("KEY_ID", key.key.key_id.clone()),
        ("API_KEY", key.secret.clone()),
        ("REVOKED_KEY", revoked.secret.clone()),
        ("ADMIN_TOKEN", admin),
        ("WORKER_URL", worker_url.clone()),
    ]);

    let port = free_port();
    let env = format!(
        "AWS_ENDPOINT_URL={endpoint},AWS_REGION=us-east-1,AWS_ACCESS_KEY_ID=test,AWS_SECRET_ACCESS_KEY=test,TENANTAI_RESOURCE_PREFIX={prefix},TENANTAI_ALERTS_TOPIC_ARN={topic},TENANTAI_KMS_KEY_ID={kms_key_id},TENANTAI_EGRESS_ALLOW_PRIVATE=1,RUST_LOG=warn"
    );
    let mut watch = Command::new("cargo")
        .args([
            "lambda",
            "watch",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
            "--ignore-changes",
            "--env-var",
            &env,
        ])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cargo lambda (installed by scripts/test.sh)");
    wait_for_port(port, &mut watch, "cargo lambda watch");
    let _watch = Killed(watch);

    // The authorizer: one case per event.
    let ok = invoke(port, "authorizer", "authorizer/valid-key.json", &vars);
    assert_eq!(ok["isAuthorized"], true, "{ok}");
    assert_eq!(ok["context"]["tenant_id"], tenant.id.as_str());
    assert_eq!(
        ok["context"]["scopes"],
        "embeddings chat models usage batches"
    );
    for event in expected_events::AUTHORIZER_REFUSED {
        assert_eq!(
            invoke(port, "authorizer", event, &vars)["isAuthorized"],
            false,
            "{event}"
        );
    }

    // The REST API's REQUEST authorizer.
    let rest = invoke(port, "authorizer", "authorizer/rest-valid-key.json", &vars);
    assert_eq!(rest["principalId"], tenant.id.as_str(), "{rest}");
    assert_eq!(rest["policyDocument"]["Statement"][0]["Effect"], "Allow");
    assert_eq!(rest["context"]["key_id"], key.key.key_id.as_str());
    for event in expected_events::REST_AUTHORIZER_REFUSED {
        let out = invoke_output(port, "authorizer", event, &vars);
        assert!(
            out.contains("Unauthorized") && !out.contains("principalId"),
            "{event}: {out}"
        );
    }

    // The api (a streaming function): real embeddings and chat from the worker,
    // through the REST authorizer's context.
    let (status, body) = invoke_api(port, "api/embeddings.json", &vars).await.json();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let (status, body) = invoke_api(port, "api/embeddings-base64.json", &vars)
        .await
        .json();
    assert_eq!(status, 200, "{body}");
    assert!(body["data"][0]["embedding"].is_string());
    let (status, body) = invoke_api(port, "api/chat-completions.json", &vars)
        .await
        .json();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "SmolLM2-135M-Instruct");
    assert!(!body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert!((1..=6).contains(&body["usage"]["completion_tokens"].as_u64().unwrap()));
    chat_stream_through_the_runtime(port, &vars).await;
    for (event, want) in expected_events::API {
        let (status, body) = invoke_api(port, event, &vars).await.json();
        assert_eq!(status, want, "{event}: {body}");
    }
    // `cargo lambda invoke` prints a streamed answer's body (the prelude it keeps).
    let printed = invoke_text(
        port,
        "api",
        "api/models.json",
        &event_text("api/models.json", &vars),
    );
    assert_eq!(printed["object"], "list", "{printed}");

    // The api's usage events reach the usage queue once its invocations end
    // (flushed by its extension while the environment is still running).
    let (usage_queue, dlq) = app.storage.usage_queues().unwrap();
    let emitted = receive(usage_queue.as_ref(), 4).await;
    assert_eq!(
        emitted.len(),
        4,
        "one usage event per embeddings or chat call, streamed or not"
    );
    for m in &emitted {
        let e = tenantai::billing::metering::parse_event(&m.body).unwrap();
        assert_eq!(e.tenant_id, tenant.id);
        assert_eq!(e.key_id, key.key.key_id);
    }
    // ... and the metering function folds them, as the SQS trigger would hand them over.
    let records: Vec<Value> = emitted
        .iter()
        .map(|m| {
            serde_json::json!({"messageId": m.id, "receiptHandle": m.receipt, "body": m.body,
            "eventSource": "aws:sqs", "awsRegion": "us-east-1"})
        })
        .collect();
    let live = serde_json::json!({ "Records": records }).to_string();
    let resp = invoke_text(port, "metering", "live usage batch", &live);
    assert_eq!(resp["batchItemFailures"], serde_json::json!([]), "{resp}");
    let meter = tenantai::billing::metering::Meter::new(app.storage.table.clone());
    let today = time::OffsetDateTime::now_utc().date();
    let folded: u64 = meter
        .aggregates(&tenant.id, today.previous_day().unwrap(), today)
        .await
        .unwrap()
        .iter()
        .map(|a| a.counters["requests"])
        .sum();
    assert_eq!(folded, 4);

    // A batch: uploaded and created through the api function, run by a worker
    // on the same deployment (here, the jobs handler in this process), read back
    // through the api function.
    batch_through_the_api(port, &app, &mut vars).await;

    // The sample batches: folded once however often delivered; the malformed
    // record is dead-lettered without failing its neighbour.
    for _ in 0..2 {
        let resp = invoke(port, "metering", "metering/sqs-batch.json", &vars);
        assert_eq!(resp["batchItemFailures"], serde_json::json!([]), "{resp}");
    }
    let resp = invoke(port, "metering", "metering/sqs-malformed.json", &vars);
    assert_eq!(resp["batchItemFailures"], serde_json::json!([]), "{resp}");
    let sample_day = tenantai::billing::metering::parse_day("2026-11-24").unwrap();
    let sample = meter
        .aggregates(&tenant.id, sample_day, sample_day)
        .await
        .unwrap();
    assert_eq!(
        sample.iter().map(|a| a.counters["requests"]).sum::<u64>(),
        3
    );
    let dead = receive(dlq.as_ref(), 1).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body.contains("evt_sample_0004"));

    // The schedule: 70+ of a 100 budget in 2026-11 crosses 50 %, once.
    let summary = invoke(port, "cost-alerts", "cost-alerts/schedule.json", &vars);
    assert_eq!(summary["failed"], 0, "{summary}");
    let ids = hook.alert_ids();
    assert!(
        ids.contains(&format!("{}:2026-11:50:crossed", tenant.id)),
        "{ids:?}"
    );
    assert_eq!(summary["sent"].as_u64().unwrap(), ids.len() as u64);
    let again = invoke(port, "cost-alerts", "cost-alerts/schedule.json", &vars);
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(again["already_sent"].as_u64().unwrap(), ids.len() as u64);
    assert!(hook.rejected().is_empty());

    // The admin API, route by route.
    for (event, want) in expected_events::ADMIN {
        let (status, body) = status_and_body(&invoke(port, "admin", event, &vars));
        assert_eq!(status, u64::from(want), "{event}: {body}");
    }
    // The key revoked through the admin function no longer passes the api's
    // authorizer (a fresh process: nothing cached).
    let (status, _) = status_and_body(&invoke(port, "admin", "admin/get-tenant.json", &vars));
    assert_eq!(status, 200);
    let check = app.auth.authenticate(&key.secret).await;
    assert!(
        check.is_err(),
        "the key revoked through the admin function still authenticates"
    );

    // The backup function: the whole table to S3, restorable item by item.
    let before = tables::snapshot(app.storage.table.as_ref()).await;
    let backup = invoke(port, "backup", "backup/schedule.json", &vars);
    assert_eq!(backup["total_items"], before.len() as u64, "{backup}");
    assert_eq!(backup["deleted_backups"], serde_json::json!([]), "{backup}");
    let blobs = app.storage.blobs().unwrap().clone();
    let manifest = tenantai::ops::backup::manifest(blobs.as_ref(), None)
        .await
        .unwrap();
    assert_eq!(backup["backup_id"], manifest.backup_id.as_str());
    let mut elsewhere = Resources::named(&prefix);
    elsewhere.table = format!("{prefix}-restored");
    let restored = Storage::aws(&sdk, &elsewhere, true).await.unwrap();
    let opts = tenantai::ops::restore::RestoreOptions::default();
    let r = tenantai::ops::restore::restore(&restored.table, &blobs, &opts, &tenantai::ops::Quiet)
        .await
        .unwrap();
    assert_eq!(r.backup_id, manifest.backup_id);
    assert_eq!(tables::snapshot(restored.table.as_ref()).await, before);

    // GDPR erasure through the admin function: the tenant is gone but for its receipt.
    for (event, want) in expected_events::ADMIN_ERASE {
        let (status, body) = status_and_body(&invoke(port, "admin", event, &vars));
        assert_eq!(status, u64::from(want), "{event}: {body}");
    }
    let refs = tenantai::ops::kinds::Refs {
        tenant_id: tenant.id.clone(),
        key_ids: vec![key.key.key_id.clone(), revoked.key.key_id.clone()],
        key_hashes: vec![
            tenantai::tenancy::keys::hash_secret(&key.secret),
            tenantai::tenancy::keys::hash_secret(&revoked.secret),
        ],
    };
    let naming: Vec<_> = tables::snapshot(app.storage.table.as_ref())
        .await
        .into_values()
        .filter(|i| refs.named_in(i))
        .collect();
    assert_eq!(
        naming.len(),
        1,
        "only the receipt names the tenant: {naming:#?}"
    );
    assert_eq!(naming[0].key.pk, "AUDIT#_platform");
    let objects: Vec<_> = tables::objects(blobs.as_ref())
        .await
        .into_iter()
        .filter(|k| !k.starts_with("backups/") && refs.named_in_text(k))
        .filter(|k| *k != format!("erasures/{}.json", tenant.id))
        .collect();
    assert!(objects.is_empty(), "{objects:?}");
}
