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
use tenantai::models::ModelVersion;
use tenantai::store::{aws, Resources, Storage};

#[path = "../common/expected_events.rs"]
mod expected_events;

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
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--model",
            &model,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (build it first)", bin.display()));
    wait_for_port(port, &mut child, "gpu-worker");
    (Killed(child), format!("http://127.0.0.1:{port}"))
}

fn invoke(port: u16, function: &str, event: &str, vars: &HashMap<&str, String>) -> Value {
    let mut text = std::fs::read_to_string(root().join("events").join(event)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let out = Command::new("cargo")
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
        .unwrap();
    assert!(
        out.status.success(),
        "invoke {function} {event}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{event}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn status_and_body(resp: &Value) -> (u64, Value) {
    let body = resp["body"]
        .as_str()
        .map(|b| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (resp["statusCode"].as_u64().unwrap_or(0), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    let app = App::new(storage, Config::default()).unwrap();
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
    let vars = HashMap::from([
        ("TENANT_ID", tenant.id.clone()),
        ("KEY_ID", key.key.key_id.clone()),
        ("API_KEY", key.secret.clone()),
        ("REVOKED_KEY", revoked.secret.clone()),
        ("ADMIN_TOKEN", admin),
        ("WORKER_URL", worker_url.clone()),
    ]);

    let port = free_port();
    let env = format!(
        "AWS_ENDPOINT_URL={endpoint},AWS_REGION=us-east-1,AWS_ACCESS_KEY_ID=test,AWS_SECRET_ACCESS_KEY=test,TENANTAI_RESOURCE_PREFIX={prefix},RUST_LOG=warn"
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
    assert_eq!(ok["context"]["scopes"], "embeddings models usage batches");
    for event in expected_events::AUTHORIZER_REFUSED {
        assert_eq!(
            invoke(port, "authorizer", event, &vars)["isAuthorized"],
            false,
            "{event}"
        );
    }

    // The api: real embeddings from the worker, through the authorizer's context.
    let (status, body) = status_and_body(&invoke(port, "api", "api/embeddings.json", &vars));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let (status, body) = status_and_body(&invoke(port, "api", "api/embeddings-base64.json", &vars));
    assert_eq!(status, 200, "{body}");
    assert!(body["data"][0]["embedding"].is_string());
    for (event, want) in expected_events::API {
        let (status, body) = status_and_body(&invoke(port, "api", event, &vars));
        assert_eq!(status, u64::from(want), "{event}: {body}");
    }

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
}
