//! The listener's limits over real sockets (`tenantai dev`'s `Server`): request
//! heads too large (431: in the OpenAI shape past the configured limit, from
//! hyper with the connection closed past twice that), heads that never finish
//! and idle keep-alive connections (closed), bodies trickled byte by byte
//! (408, their slot freed), requests past the in-flight limit (503 with
//! `Retry-After`, `/health` still 200) and a flood of connections (bounded,
//! `/health` answered, everything back to normal once it stops).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tenantai::app::Config;
use tenantai::http::serve::Server;
use tenantai::limits::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Harness;

/// How long a test waits for something before it fails (never reached when it passes).
const PATIENCE: Duration = Duration::from_secs(20);

struct Listening {
    addr: SocketAddr,
    server: Arc<Server>,
}

async fn listen(h: &Harness, limits: Limits, body_timeout: Duration) -> Listening {
    let config = Config {
        body_timeout,
        limits: limits.clone(),
        ..Config::default()
    };
    let router = tenantai::http::host_with(
        tenantai::http::api::router(h.app.clone())
            .merge(tenantai::http::admin::router(h.app.clone())),
        &config,
    );
    let server = Server::new(router, &limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.clone().run(listener, std::future::pending()));
    Listening { addr, server }
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "never closed: {}",
        String::from_utf8_lossy(&answer)
    );
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str, token: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n{extra}\r\n")
        .into_bytes()
}

/// The answer's JSON body, asserted to be an OpenAI error with `code`.
fn assert_error(answer: &str, status: &str, code: &str) -> Value {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string() && v["error"].get("param").is_some());
    v
}

/// Waits until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never: {what}");
}

#[tokio::test]
async fn oversized_and_unfinished_heads_are_refused_and_closed() {
    let h = Harness::new().await;
    let t = h.tenant("Heads", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let l = listen(&h, limits.clone(), Duration::from_secs(5)).await;
    let fields = |n: usize| {
        (0..n)
            .map(|i| format!("x-pad-{i}: 1\r\n"))
            .collect::<String>()
    };
    // Past the configured limits: a 431 in the OpenAI shape.
    let answer = exchange(
        l.addr,
        &get("/v1/models", &key, &fields(limits.max_headers + 4)),
    )
    .await;
    assert_error(&answer, "431", "request_header_fields_too_large");
    let big = format!("x-big: {}\r\n", "v".repeat(limits.max_header_bytes));
    let answer = exchange(l.addr, &get("/v1/models", &key, &big)).await;
    assert_error(&answer, "431", "request_header_fields_too_large");
    // Past twice the limits hyper refuses the head itself and closes.
    let answer = exchange(
        l.addr,
        &get("/v1/models", &key, &fields(limits.max_headers * 3)),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let huge = format!("x-big: {}\r\n", "v".repeat(limits.max_header_bytes * 3));
    let answer = exchange(l.addr, &get("/v1/models", &key, &huge)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // A head that never finishes is closed at the header timeout.
    let answer = exchange(l.addr, b"GET /health HTTP/1.1\r\nhost: x\r\n").await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // So is a keep-alive connection left idle after its answer.
    let answer = exchange(l.addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    until("every connection closed", || l.server.connections() == 0).await;
    let answer = exchange(l.addr, &get("/v1/models", &key, "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Starts a POST whose body trickles a byte every 100 ms; its answer once the
/// server closes the connection.
fn trickle(addr: SocketAddr, key: &str) -> tokio::task::JoinHandle<String> {
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{"
    );
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(head.as_bytes()).await.unwrap();
        let drip = tokio::spawn(async move {
            for _ in 0..400 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if wr.write_all(b" ").await.is_err() {
                    return;
                }
            }
        });
        let mut answer = Vec::new();
        let read = tokio::time::timeout(PATIENCE, rd.read_to_end(&mut answer)).await;
        drip.abort();
        assert!(read.is_ok(), "a trickled body was never cut off");
        String::from_utf8_lossy(&answer).into_owned()
    })
}

#[tokio::test]
async fn trickled_bodies_are_cut_off_and_free_their_slots() {
    let h = Harness::new().await;
    let t = h.tenant("Trickle", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let limits = Limits {
        max_in_flight: 2,
        retry_after_secs: 3,
        ..Limits::default()
    };
    let l = listen(&h, limits, Duration::from_millis(1500)).await;
    let server = l.server.clone();
    // One trickler holds one slot; other requests proceed.
    let first = trickle(l.addr, &key);
    until("the trickler is in flight", || server.in_flight() == 1).await;
    let answer = exchange(l.addr, &get("/v1/models", &key, "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Two fill the limit: requests are shed, /health still answers.
    let second = trickle(l.addr, &key);
    until("both tricklers are in flight", || server.in_flight() == 2).await;
    let shed = exchange(l.addr, &get("/v1/models", &key, "")).await;
    assert_error(&shed, "503", "service_unavailable");
    assert!(
        shed.to_ascii_lowercase().contains("retry-after: 3"),
        "{shed}"
    );
    let health = exchange(l.addr, &get("/health", &key, "")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Each is cut off with a 408 and its slot and connection freed.
    for trickler in [first, second] {
        assert_error(&trickler.await.unwrap(), "408", "request_timeout");
    }
    until("nothing in flight", || server.in_flight() == 0).await;
    until("no connection open", || server.connections() == 0).await;
    let answer = exchange(l.addr, &get("/v1/models", &key, "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Asks `path` on new connections until one is answered (a connection past
/// every pool is closed unanswered); the answer.
async fn answered(addr: SocketAddr, request: &[u8]) -> String {
    let got = tokio::time::timeout(PATIENCE, async {
        loop {
            let answer = exchange(addr, request).await;
            if !answer.is_empty() {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    got.expect("never answered")
}

#[tokio::test]
async fn a_flood_of_connections_is_bounded_and_recovers() {
    let h = Harness::new().await;
    let t = h.tenant("Flood", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    let limits = Limits {
        max_connections: 8,
        header_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let l = listen(&h, limits, Duration::from_secs(5)).await;
    // Many more connections than the limit, held open without a request.
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(TcpStream::connect(l.addr).await.unwrap());
    }
    let server = l.server.clone();
    until("the pool is full", || server.connections() == 8).await;
    // The process answers /health; a normal request is answered or shed.
    let health = answered(l.addr, &get("/health", &key, "")).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let normal = answered(l.addr, &get("/v1/models", &key, "")).await;
    if !normal.starts_with("HTTP/1.1 200") {
        assert_error(&normal, "503", "service_unavailable");
        assert!(
            normal.to_ascii_lowercase().contains("retry-after"),
            "{normal}"
        );
    }
    assert_eq!(
        server.connections(),
        8,
        "the pool never grows past its limit"
    );
    // Once the flood stops, everything is served again.
    drop(flood);
    until("the pool is empty", || server.connections() == 0).await;
    let answer = exchange(l.addr, &get("/v1/models", &key, "")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(server.in_flight(), 0);
}
