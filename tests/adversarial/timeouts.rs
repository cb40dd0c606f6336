//! Time limits over real sockets: a body that trickles, never ends, or stops
//! short of its Content-Length is cut off with a 408 in the OpenAI shape and its
//! connection closed; every host answers `GET /health`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Harness;
use crate::net::serve;

/// The deadline these servers give bodies.
const DEADLINE: Duration = Duration::from_millis(400);
/// How long a test waits for an answer before it fails (never reached when it passes).
const PATIENCE: Duration = Duration::from_secs(20);

async fn server(h: &Harness) -> std::net::SocketAddr {
    serve(tenantai::http::host_with(
        tenantai::http::api::router(h.app.clone())
            .merge(tenantai::http::admin::router(h.app.clone())),
        &tenantai::app::Config {
            body_timeout: DEADLINE,
            ..tenantai::app::Config::default()
        },
    ))
    .await
}

/// Sends `head`, then `first`, then keeps trickling `drip` every 100 ms (when
/// given) until the server answers; returns the whole answer once the server
/// has closed the connection.
async fn send(
    addr: std::net::SocketAddr,
    head: String,
    first: &[u8],
    drip: Option<&'static [u8]>,
) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.write_all(first).await.unwrap();
    let trickle = tokio::spawn(async move {
        if let Some(d) = drip {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if wr.write_all(d).await.is_err() {
                    return;
                }
            }
        } else {
            // Hold the connection open, sending nothing more.
            tokio::time::sleep(PATIENCE).await;
            drop(wr);
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(
        read.is_ok(),
        "the server neither answered nor closed: {:?}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

fn assert_408(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(v["error"]["message"].is_string() && v["error"].get("param").is_some());
}

/// (what is tried, the request head, the body's first bytes, what keeps trickling)
type Case<'a> = (&'a str, String, &'a [u8], Option<&'static [u8]>);

fn head(method: &str, path: &str, token: &str, framing: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{framing}\r\n"
    )
}

#[tokio::test]
async fn slow_and_endless_bodies_are_cut_off_with_a_408() {
    let h = Harness::new().await;
    h.model(json!({"model": "all-MiniLM-L6-v2"})).await;
    let t = h.tenant("Slow", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let addr = server(&h).await;
    let admin = h.admin.clone();
    let cases: Vec<Case> = vec![
        // A chunked body that never ends, a byte at a time.
        (
            "embeddings, endless chunks",
            head(
                "POST",
                "/v1/embeddings",
                &key,
                "transfer-encoding: chunked\r\n",
            ),
            b"1\r\n{\r\n",
            Some(b"1\r\n \r\n"),
        ),
        // A chunked body that stops mid-way.
        (
            "embeddings, stalled chunks",
            head(
                "POST",
                "/v1/embeddings",
                &key,
                "transfer-encoding: chunked\r\n",
            ),
            b"5\r\n{\"mod\r\n",
            None,
        ),
        // A promised length never delivered.
        (
            "embeddings, short length",
            head("POST", "/v1/embeddings", &key, "content-length: 1000\r\n"),
            b"{\"model\":",
            None,
        ),
        // Trickled within a promised length.
        (
            "embeddings, trickled length",
            head("POST", "/v1/embeddings", &key, "content-length: 100000\r\n"),
            b"{",
            Some(b" "),
        ),
        (
            "admin, endless chunks",
            head(
                "PATCH",
                &format!("/admin/v1/tenants/{t}"),
                &admin,
                "transfer-encoding: chunked\r\n",
            ),
            b"1\r\n{\r\n",
            Some(b"1\r\n \r\n"),
        ),
        (
            "admin, short length",
            head(
                "POST",
                "/admin/v1/tenants",
                &admin,
                "content-length: 500\r\n",
            ),
            b"{\"name\":",
            None,
        ),
        (
            "admin keys, short length",
            head(
                "POST",
                &format!("/admin/v1/tenants/{t}/keys"),
                &admin,
                "content-length: 500\r\n",
            ),
            b"{",
            None,
        ),
        // An upload whose file trickles: a 408, not the store's failure.
        (
            "upload, trickled file",
            format!(
                "POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: multipart/form-data; boundary=b\r\ncontent-length: 100000\r\n\r\n"
            ),
            b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n{",
            Some(b" "),
        ),
    ];
    for (name, head, first, drip) in cases {
        let answer = send(addr, head, first, drip).await;
        assert_408(&answer);
        eprintln!("{name}: 408, connection closed");
    }
    // Nothing half-read was applied, and the server still serves.
    let tenants = h
        .admin(axum::http::Method::GET, "/tenants?limit=100", None)
        .await;
    assert_eq!(tenants.ok()["data"].as_array().unwrap().len(), 1);
    let files = h
        .call(axum::http::Method::GET, "/v1/files", Some(&key), None)
        .await;
    assert_eq!(
        files.ok()["data"],
        json!([]),
        "a broken-off upload left a file"
    );
    let prompt = send(
        addr,
        head(
            "GET",
            "/v1/models",
            &key,
            "content-length: 0\r\nconnection: close\r\n",
        ),
        b"",
        None,
    )
    .await;
    assert!(prompt.starts_with("HTTP/1.1 200"), "{prompt}");
}

#[tokio::test]
async fn every_host_answers_health_without_credentials() {
    let h = Harness::new().await;
    let hosts = [
        tenantai::http::host(tenantai::http::api::router(h.app.clone())),
        tenantai::http::host(tenantai::http::admin::router(h.app.clone())),
        h.router.clone(),
    ];
    for host in hosts {
        let addr = serve(host).await;
        let answer = send(
            addr,
            "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into(),
            b"",
            None,
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#"{"status":"ok"}"#), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("x-request-id"));
    }
}
