#![allow(dead_code)] // each test binary uses part of it
//! A webhook receiver on loopback that checks every delivery's signature the
//! way the README tells tenants to, and records the alerts it accepted.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tenantai::billing::alerts::{verify, ALERT_ID_HEADER, REPLAY_WINDOW_SECS, SIGNATURE_HEADER};

#[derive(Default)]
struct Inbox {
    secret: String,
    /// Requests to answer 503 before accepting any (to exercise retries).
    fail_first: usize,
    attempts: usize,
    accepted: Vec<Value>,
    rejected: Vec<String>,
}

#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    inbox: Arc<Mutex<Inbox>>,
}

impl Webhook {
    pub async fn start(fail_first: usize) -> Webhook {
        let inbox = Arc::new(Mutex::new(Inbox {
            fail_first,
            ..Inbox::default()
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Webhook { url, inbox }
    }

    /// The secret deliveries must be signed with (the tenant's webhook secret).
    pub fn expect_secret(&self, secret: &str) {
        self.inbox.lock().unwrap().secret = secret.to_string();
    }

    /// Alerts accepted so far (signature valid).
    pub fn accepted(&self) -> Vec<Value> {
        self.inbox.lock().unwrap().accepted.clone()
    }

    /// The ids of the alerts accepted so far, in arrival order.
    pub fn alert_ids(&self) -> Vec<String> {
        self.accepted()
            .iter()
            .map(|a| a["alert_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Deliveries refused for a bad signature.
    pub fn rejected(&self) -> Vec<String> {
        self.inbox.lock().unwrap().rejected.clone()
    }

    pub fn attempts(&self) -> usize {
        self.inbox.lock().unwrap().attempts
    }
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut inbox = inbox.lock().unwrap();
    inbox.attempts += 1;
    if inbox.fail_first > 0 {
        inbox.fail_first -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if let Err(e) = verify(&inbox.secret, header, &body, now, REPLAY_WINDOW_SECS) {
        inbox.rejected.push(e.to_string());
        return StatusCode::UNAUTHORIZED;
    }
    let alert: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        headers.get(ALERT_ID_HEADER).and_then(|v| v.to_str().ok()),
        alert["alert_id"].as_str(),
        "the alert id header names the body's alert"
    );
    inbox.accepted.push(alert);
    StatusCode::NO_CONTENT
}
