//! A tenantai instance in-process, and a client for it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tenantai::app::{App, Config};
use tenantai::store::{Resources, Storage};
use tower::ServiceExt;

/// `config` with outbound calls allowed to private and loopback addresses.
pub fn private_egress(mut config: Config) -> Config {
    config.egress.allow_private = true;
    config
}

#[derive(Clone)]
pub struct Harness {
    pub app: Arc<App>,
    pub router: Router,
    pub admin: String,
    pub _dir: Arc<tempfile::TempDir>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts an error in the OpenAI shape with this status; returns its message.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let e = &self.body["error"];
        assert!(
            e["message"].is_string() && e["type"].is_string(),
            "not the OpenAI error shape: {}",
            self.body
        );
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "not the OpenAI error shape: {}",
            self.body
        );
        e["message"].as_str().unwrap().to_string()
    }

    /// A response header's value; panics (fails the test) when it is missing.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
            .to_string()
    }

    pub fn ok(&self) -> &Value {
        assert!(self.status.is_success(), "{}: {}", self.status, self.body);
        &self.body
    }
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with_config(Config::default()).await
    }

    /// A harness whose webhooks may reach loopback (the tests' receivers).
    pub async fn with_private_egress() -> Harness {
        Self::with_config(private_egress(Config::default())).await
    }

    /// An instance on `config`; secrets are sealed with a key file in its data
    /// directory unless `config` names a vault.
    pub async fn with_config(config: Config) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::embedded(dir.path(), &Resources::named("test"))
            .await
            .unwrap();
        Self::on(storage, config, dir).await
    }

    /// An instance on the AWS adapters, on the emulator at `AWS_ENDPOINT_URL`
    /// (fresh resources of its own); `None`, said loudly, without one (under
    /// `./scripts/test.sh` the emulator is promised and its absence fails).
    #[allow(dead_code)] // the api tests use it; the adversarial suite shares this file
    pub async fn on_aws(config: Config) -> Option<Harness> {
        let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
            assert!(
                std::env::var_os("TENANTAI_TEST_AWS").is_none(),
                "AWS_ENDPOINT_URL is not set but the emulator was promised"
            );
            eprintln!("SKIPPED: needs the AWS emulator (run ./scripts/test.sh)");
            return None;
        };
        assert!(endpoint.starts_with("http://127.") || endpoint.starts_with("http://localhost"));
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let sdk = tenantai::store::aws::sdk_config().await;
        let storage = Storage::aws(&sdk, &Resources::named(&prefix), true)
            .await
            .unwrap();
        Some(Self::on(storage, config, tempfile::tempdir().unwrap()).await)
    }

    async fn on(storage: Storage, mut config: Config, dir: tempfile::TempDir) -> Harness {
        if config.secrets.kind().is_none() {
            config.secrets =
                tenantai::tenancy::secrets::Secrets::local(&dir.path().join("secrets.key"))
                    .unwrap();
        }
        let app = App::new(storage, config).unwrap();
        let admin = app.admins.create("test-admin").await.unwrap();
        let router = tenantai::http::host(
            tenantai::http::api::router(app.clone())
                .merge(tenantai::http::admin::router(app.clone())),
        );
        Harness {
            app,
            router,
            admin,
            _dir: Arc::new(dir),
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}))
        };
        assert!(
            headers.contains_key("x-request-id"),
            "no x-request-id on {uri}"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
        self.raw(method, uri, token, body, &[]).await
    }

    pub async fn admin(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.call(
            method,
            &format!("/admin/v1{uri}"),
            Some(&self.admin.clone()),
            body,
        )
        .await
    }

    /// `POST /v1/embeddings` of `input` to all-MiniLM-L6-v2 with this key.
    pub async fn embed(&self, key: &str, input: impl Into<Value>) -> Reply {
        self.call(
            Method::POST,
            "/v1/embeddings",
            Some(key),
            Some(json!({"model": "all-MiniLM-L6-v2", "input": input.into()})),
        )
        .await
    }

    /// Sends every buffered usage event and folds the usage queue, as the
    /// metering function would.
    pub async fn settle_usage(&self) {
        self.app.usage.flush().await;
        let (queue, dlq) = self.app.storage.usage_queues().unwrap();
        while self
            .app
            .meter
            .drain_once(queue.as_ref(), dlq.as_ref(), std::time::Duration::ZERO)
            .await
            .unwrap()
            > 0
        {}
    }

    /// The usage events emitted so far, as they left for the queue (taken off it,
    /// not folded).
    #[allow(dead_code)] // the api tests use it; the adversarial suite shares this file
    pub async fn usage_events(&self) -> Vec<tenantai::billing::metering::UsageEvent> {
        self.app.usage.flush().await;
        let (queue, _) = self.app.storage.usage_queues().unwrap();
        let now = tenantai::store::Receive {
            wait: std::time::Duration::ZERO,
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let got = queue.receive(&now).await.unwrap();
            if got.is_empty() {
                return out;
            }
            for m in got {
                out.push(tenantai::billing::metering::parse_event(&m.body).unwrap());
            }
        }
    }

    /// A new tenant of this tier; returns its id.
    pub async fn tenant(&self, name: &str, tier: &str) -> String {
        let r = self
            .admin(
                Method::POST,
                "/tenants",
                Some(json!({"name": name, "tier": tier})),
            )
            .await;
        r.ok()["id"].as_str().unwrap().to_string()
    }

    /// A new API key of the tenant; returns (secret, key id).
    pub async fn key(&self, tenant: &str, body: Value) -> (String, String) {
        let r = self
            .admin(Method::POST, &format!("/tenants/{tenant}/keys"), Some(body))
            .await;
        let b = r.ok();
        (
            b["secret"].as_str().unwrap().to_string(),
            b["key_id"].as_str().unwrap().to_string(),
        )
    }

    /// Registers a live model version served by `endpoint`.
    pub async fn model(&self, spec: Value) -> Value {
        let mut body = json!({
            "version": "1", "backend": "worker", "endpoint": "http://127.0.0.1:9",
            "price_per_1k_tokens_micros": 20, "status": "live",
        });
        for (k, v) in spec.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.admin(Method::POST, "/models", Some(body))
            .await
            .ok()
            .clone()
    }
}
