//! The Files and Batch APIs end to end on the embedded adapters and a real
//! embeddings worker: uploads, validation, chunks run by the jobs handler
//! (redelivered, dead-lettered, expired, cancelled), finalized output and error
//! files, billing at the batch price exactly once, the money gates, and tenant
//! isolation.

use std::time::Duration;

use axum::body::Body;
use axum::http::Method;
use serde_json::{json, Value};
use tenantai::app::Config;
use tenantai::batch::jobs::{self, Handled, WorkerConfig};
use tenantai::store::{Message, Receive};

use crate::harness::{Harness, Reply};
use crate::worker;

const MODEL: &str = "all-MiniLM-L6-v2";
/// $1 per 1k tokens: a line's cost is its tokens x 1000 micros (x 500 in a batch).
const PRICE: u64 = 1_000_000;

async fn setup_with(config: Config) -> (Harness, String, String) {
    let h = Harness::with_config(crate::harness::private_egress(config)).await;
    on(h).await
}

async fn on(h: Harness) -> (Harness, String, String) {
    h.model(
        json!({"model": MODEL, "endpoint": worker::url(), "price_per_1k_tokens_micros": PRICE}),
    )
    .await;
    let tenant = h.tenant("acme", "pro").await;
    let (key, _) = h.key(&tenant, json!({})).await;
    (h, tenant, key)
}

async fn setup() -> (Harness, String, String) {
    setup_with(Config::default()).await
}

fn line(id: &str, body: Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings", "body": body}).to_string()
}

fn embed_line(id: &str, input: &str) -> String {
    line(id, json!({"model": MODEL, "input": input}))
}

/// A multipart/form-data body: `purpose` and the file.
fn form(purpose: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "tenantai-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(h: &Harness, key: &str, purpose: &str, file: &str) -> Reply {
    let (ct, body) = form(purpose, file.as_bytes());
    h.raw(
        Method::POST,
        "/v1/files",
        Some(key),
        Body::from(body),
        &[("content-type", &ct)],
    )
    .await
}

async fn create(h: &Harness, key: &str, file_id: &str, headers: &[(&str, &str)]) -> Reply {
    let body = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h",
                      "metadata": {"job": "nightly"}});
    h.raw(
        Method::POST,
        "/v1/batches",
        Some(key),
        Body::from(body.to_string()),
        headers,
    )
    .await
}

/// Two lines a chunk, so a batch of a few lines has several chunks.
fn small_chunks() -> WorkerConfig {
    WorkerConfig {
        chunk_lines: 2,
        line_concurrency: 4,
        ..WorkerConfig::default()
    }
}

/// The jobs messages waiting now.
async fn take_jobs(h: &Harness) -> Vec<Message> {
    let (queue, _) = jobs::queues(&h.app.storage).unwrap();
    let now = Receive {
        max: 10,
        wait: Duration::ZERO,
        visibility: Duration::from_secs(300),
    };
    queue.receive(&now).await.unwrap()
}

/// Runs every job until the queue is empty, as a worker would.
async fn run_jobs(h: &Harness) -> usize {
    let (queue, _) = jobs::queues(&h.app.storage).unwrap();
    let mut n = 0;
    loop {
        let got = take_jobs(h).await;
        if got.is_empty() {
            return n;
        }
        for m in got {
            assert_eq!(
                jobs::handle(&h.app, &small_chunks(), &m.body, false)
                    .await
                    .unwrap(),
                Handled::Done
            );
            queue.delete(&m.receipt).await.unwrap();
            n += 1;
        }
    }
}

async fn batch(h: &Harness, key: &str, id: &str) -> Value {
    h.call(Method::GET, &format!("/v1/batches/{id}"), Some(key), None)
        .await
        .ok()
        .clone()
}

async fn content(h: &Harness, key: &str, file_id: &str) -> Vec<Value> {
    let r = h
        .call(
            Method::GET,
            &format!("/v1/files/{file_id}/content"),
            Some(key),
            None,
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let text = match &r.body {
        Value::Object(o) if o.contains_key("raw") => o["raw"].as_str().unwrap().to_string(),
        other => format!("{other}\n"), // a single JSON line parses as JSON
    };
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cosine(a: &Value, b: &Value) -> f64 {
    let (a, b): (Vec<f64>, Vec<f64>) = (
        a.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect(),
        b.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect(),
    );
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt()
        * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

#[tokio::test]
async fn an_embeddings_batch_runs_to_its_output_and_error_files() {
    let (h, _, key) = setup().await;
    runs_to_its_files(&h, &key).await;
}

/// The same on DynamoDB, SQS and S3 (the emulator): result files assembled by
/// multipart upload, chunks read by ranged gets, claims in transactions.
#[tokio::test]
async fn an_embeddings_batch_runs_on_the_aws_adapters() {
    let Some(h) = Harness::on_aws(crate::harness::private_egress(Config::default())).await else {
        return;
    };
    let (h, _, key) = on(h).await;
    runs_to_its_files(&h, &key).await;
}

async fn runs_to_its_files(h: &Harness, key: &str) {
    let (h, key) = (h.clone(), key.to_string());
    let inputs = ["the first line", "a second one", "and a third"];
    let mut file: Vec<String> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| embed_line(&format!("req-{i}"), t))
        .collect();
    file.push(line("bad", json!({"model": MODEL})));
    let f = upload(&h, &key, "batch", &(file.join("\n") + "\n")).await;
    let f = f.ok();
    assert_eq!(
        (
            f["object"].as_str(),
            f["purpose"].as_str(),
            f["status"].as_str()
        ),
        (Some("file"), Some("batch"), Some("processed"))
    );
    let file_id = f["id"].as_str().unwrap();

    let created = create(&h, &key, file_id, &[]).await;
    let b = created.ok();
    assert_eq!(b["status"], "validating");
    assert_eq!(b["metadata"]["job"], "nightly");
    assert_eq!(
        b["expires_at"].as_i64().unwrap() - b["created_at"].as_i64().unwrap(),
        86_400
    );
    let id = b["id"].as_str().unwrap().to_string();

    assert_eq!(
        run_jobs(&h).await,
        3,
        "one validation, then two chunks of two lines"
    );
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": 4, "completed": 3, "failed": 1})
    );
    for t in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(b[t].is_i64(), "{t}: {b}");
    }

    let out = content(&h, &key, b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len(), 3);
    for (i, text) in inputs.iter().enumerate() {
        let got = out
            .iter()
            .find(|l| l["custom_id"] == format!("req-{i}"))
            .unwrap();
        assert_eq!(got["response"]["status_code"], 200);
        assert!(got["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(got["error"].is_null());
        let sync = h.embed(&key, *text).await;
        let c = cosine(
            &got["response"]["body"]["data"][0]["embedding"],
            &sync.ok()["data"][0]["embedding"],
        );
        assert!(
            c > 0.99999,
            "the batch's vector is the sync API's (cosine {c})"
        );
    }
    let errors = content(&h, &key, b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "bad");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(
        errors[0]["response"]["body"]["error"]["type"],
        "invalid_request_error"
    );

    // Both result files are listed as batch_output, beside the input.
    let listed = h
        .call(
            Method::GET,
            "/v1/files?purpose=batch_output",
            Some(&key),
            None,
        )
        .await;
    let ids: Vec<&str> = listed.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&b["output_file_id"].as_str().unwrap())
            && ids.contains(&b["error_file_id"].as_str().unwrap())
    );
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn each_line_is_billed_once_at_the_batch_price_even_when_redelivered() {
    let (h, tenant, key) = setup().await;
    let file: Vec<String> = (0..3)
        .map(|i| embed_line(&format!("r{i}"), &format!("text number {i}")))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let id = create(&h, &key, f.ok()["id"].as_str().unwrap(), &[])
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = small_chunks();
    let validate = take_jobs(&h).await;
    jobs::handle(&h.app, &cfg, &validate[0].body, false)
        .await
        .unwrap();
    // Every chunk is delivered twice (the first delivery "lost" its delete),
    // and the validation message too, which sends the chunks again.
    let chunks = take_jobs(&h).await;
    assert_eq!(chunks.len(), 2);
    jobs::handle(&h.app, &cfg, &validate[0].body, false)
        .await
        .unwrap();
    for m in chunks.iter().chain(chunks.iter()) {
        assert_eq!(
            jobs::handle(&h.app, &cfg, &m.body, false).await.unwrap(),
            Handled::Done
        );
    }
    assert_eq!(
        run_jobs(&h).await,
        2,
        "the resent chunks are seen, and skipped"
    );
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "completed");
    assert_eq!(b["request_counts"]["completed"], 3);
    let out = content(&h, &key, b["output_file_id"].as_str().unwrap()).await;
    assert_eq!(out.len(), 3, "one line per custom_id");

    let events = h.usage_events().await;
    let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "the same three event ids, however often sent");
    for e in &events {
        assert_eq!(
            e.cost_micros,
            e.tokens * PRICE / 1000 / 2,
            "half the sync price: {e:?}"
        );
    }
    // Folded: three requests, and the batch's usage agrees.
    for e in &events {
        h.app.meter.fold(e).await.unwrap();
    }
    let usage = h
        .admin(Method::GET, &format!("/tenants/{tenant}/usage"), None)
        .await;
    let totals = &usage.ok()["totals"];
    assert_eq!(totals["requests"], 3, "{totals}");
    assert_eq!(
        totals["batch_requests"], 3,
        "batch lines are counted apart too: {totals}"
    );
    let cost: u64 = events.iter().take(3).map(|e| e.cost_micros).sum();
    assert_eq!(totals["batch_cost_micros"], cost);
    assert!(events.iter().all(|e| e.batch));
    let tokens: u64 = events.iter().take(3).map(|e| e.tokens).sum::<u64>();
    assert_eq!(b["usage"]["input_tokens"], tokens);
}

#[tokio::test]
async fn invalid_input_fails_the_batch_with_its_lines_and_gives_back_its_hold() {
    let (h, tenant, key) = setup().await;
    let file = [
        embed_line("a", "x"),
        "{not json".into(),
        embed_line("a", "y"),
        line("c", json!({"model": "other", "input": "z"})),
    ];
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let id = create(&h, &key, f.ok()["id"].as_str().unwrap(), &[])
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = || async {
        let item = h
            .app
            .storage
            .table
            .get(&tenantai::batch::batches::queued_key(&tenant))
            .await
            .unwrap();
        item.map_or(0, |i| i.number("tokens"))
    };
    assert!(
        queued().await > 0,
        "the batch holds its tokens in the queue"
    );
    run_jobs(&h).await;
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "failed");
    assert!(b["failed_at"].is_i64());
    let errors: Vec<(String, i64)> = b["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap().to_string(),
                e["line"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            ("invalid_json_line".into(), 2),
            ("duplicate_custom_id".into(), 3),
            ("mismatched_model".into(), 4)
        ]
    );
    assert_eq!(queued().await, 0, "a failed batch holds nothing");
    assert!(b["output_file_id"].is_null() && b["error_file_id"].is_null());
}

#[tokio::test]
async fn cancelling_ends_a_batch_with_its_lines_accounted_and_a_finished_batch_cannot_be() {
    let (h, _, key) = setup().await;
    let file: Vec<String> = (0..4)
        .map(|i| embed_line(&format!("r{i}"), "some text"))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let file_id = f.ok()["id"].as_str().unwrap().to_string();

    // Cancelled before it was split: it ends at once.
    let id = create(&h, &key, &file_id, &[]).await.ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = h
        .call(
            Method::POST,
            &format!("/v1/batches/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.ok()["status"], "cancelled");
    run_jobs(&h).await;
    assert_eq!(batch(&h, &key, &id).await["status"], "cancelled");

    // Cancelled while its chunks wait: they finish as cancelled lines.
    let id = create(&h, &key, &file_id, &[]).await.ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let validate = take_jobs(&h).await;
    jobs::handle(&h.app, &small_chunks(), &validate[0].body, false)
        .await
        .unwrap();
    let r = h
        .call(
            Method::POST,
            &format!("/v1/batches/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(r.ok()["status"], "cancelling");
    assert!(r.body["cancelling_at"].is_i64());
    run_jobs(&h).await;
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "cancelled");
    assert_eq!(
        b["request_counts"],
        json!({"total": 4, "completed": 0, "failed": 4})
    );
    let errors = content(&h, &key, b["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 4);
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "batch_cancelled"));

    let r = h
        .call(
            Method::POST,
            &format!("/v1/batches/{id}/cancel"),
            Some(&key),
            None,
        )
        .await;
    r.error(409);
    assert_eq!(r.header("x-should-retry"), "false");
}

#[tokio::test]
async fn a_dead_lettered_chunk_fails_its_lines_and_the_batch_still_ends() {
    let (h, _, key) = setup().await;
    let file: Vec<String> = (0..3)
        .map(|i| embed_line(&format!("r{i}"), "text"))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let id = create(&h, &key, f.ok()["id"].as_str().unwrap(), &[])
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = small_chunks();
    let validate = take_jobs(&h).await;
    jobs::handle(&h.app, &cfg, &validate[0].body, false)
        .await
        .unwrap();
    let chunks = take_jobs(&h).await;
    assert_eq!(chunks.len(), 2);
    // The first chunk runs; the second reaches the dead-letter queue.
    jobs::handle(&h.app, &cfg, &chunks[0].body, false)
        .await
        .unwrap();
    jobs::handle(&h.app, &cfg, &chunks[1].body, true)
        .await
        .unwrap();
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "completed");
    let (done, failed) = (
        b["request_counts"]["completed"].as_u64().unwrap(),
        b["request_counts"]["failed"].as_u64().unwrap(),
    );
    assert_eq!((done + failed, done.min(failed)), (3, 1));
    let errors = content(&h, &key, b["error_file_id"].as_str().unwrap()).await;
    assert!(errors
        .iter()
        .all(|e| e["error"]["code"] == "batch_line_failed"));
    let out = content(&h, &key, b["output_file_id"].as_str().unwrap()).await;
    let mut ids: Vec<String> = errors
        .iter()
        .chain(out.iter())
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["r0", "r1", "r2"],
        "exactly one line per custom_id across both files"
    );
}

#[tokio::test]
async fn a_batch_past_its_window_expires_keeping_what_finished() {
    let (h, tenant, key) = setup().await;
    let file: Vec<String> = (0..4)
        .map(|i| embed_line(&format!("r{i}"), "text"))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let id = create(&h, &key, f.ok()["id"].as_str().unwrap(), &[])
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = small_chunks();
    let validate = take_jobs(&h).await;
    jobs::handle(&h.app, &cfg, &validate[0].body, false)
        .await
        .unwrap();
    let chunks = take_jobs(&h).await;
    jobs::handle(&h.app, &cfg, &chunks[0].body, false)
        .await
        .unwrap();
    // The window passes before the second chunk runs.
    let table = h.app.storage.table.as_ref();
    tenantai::batch::batches::update(table, &tenant, &id, |b| {
        b.expires_at = 0;
        Ok(true)
    })
    .await
    .unwrap();
    jobs::handle(&h.app, &cfg, &chunks[1].body, false)
        .await
        .unwrap();
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "expired");
    assert!(b["expired_at"].is_i64());
    assert_eq!(
        b["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2})
    );
    assert_eq!(
        content(&h, &key, b["output_file_id"].as_str().unwrap())
            .await
            .len(),
        2,
        "finished lines are kept"
    );
    let errors = content(&h, &key, b["error_file_id"].as_str().unwrap()).await;
    assert!(errors.iter().all(|e| e["error"]["code"] == "batch_expired"));
}

#[tokio::test]
async fn uploads_past_the_tiers_limits_are_refused_and_keep_nothing() {
    let mut config = Config::default();
    for tier in config.tiers.0.values_mut() {
        tier.batch.max_file_bytes = 1000;
        tier.batch.max_lines = 3;
    }
    let (h, _, key) = setup_with(config).await;
    let big = (0..20)
        .map(|i| embed_line(&format!("r{i}"), "0123456789"))
        .collect::<Vec<_>>()
        .join("\n");
    let r = upload(&h, &key, "batch", &big).await;
    assert!(r.error(400).contains("too large"));
    assert_eq!(r.body["error"]["code"], "file_too_large");
    let many = (0..4)
        .map(|i| embed_line(&format!("{i}"), "x"))
        .collect::<Vec<_>>()
        .join("\n");
    let r = upload(&h, &key, "batch", &many).await;
    r.error(400);
    assert_eq!(r.body["error"]["code"], "too_many_requests_in_file");
    let r = upload(&h, &key, "fine-tune", &embed_line("a", "x")).await;
    r.error(400);
    let listed = h.call(Method::GET, "/v1/files", Some(&key), None).await;
    assert_eq!(
        listed.ok()["data"],
        json!([]),
        "a refused upload leaves no file"
    );
    let blobs = h.app.storage.blobs().unwrap();
    assert!(
        blobs
            .list("files/", None, 10)
            .await
            .unwrap()
            .items
            .is_empty(),
        "nor its bytes"
    );
    let r = h
        .raw(Method::POST, "/v1/files", Some(&key), Body::from("{}"), &[])
        .await;
    r.error(415);
}

#[tokio::test]
async fn the_money_gates_refuse_a_batch_past_the_cap_or_the_queue_limit() {
    let mut config = Config::default();
    let free = config.tiers.0.get_mut("free").unwrap();
    free.monthly_budget_micros = 1_000; // $0.001
    let pro = config.tiers.0.get_mut("pro").unwrap();
    pro.batch.max_enqueued_tokens = 100;
    let (h, _, key) = setup_with(config).await;
    let file: Vec<String> = (0..3)
        .map(|i| embed_line(&format!("r{i}"), "a sentence of some length"))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let file_id = f.ok()["id"].as_str().unwrap().to_string();
    let r = create(&h, &key, &file_id, &[]).await;
    assert!(r.error(429).contains("Enqueued token limit"));
    assert_eq!(r.body["error"]["code"], "token_limit_exceeded");
    assert_eq!(r.header("x-should-retry"), "false");

    let poor = h.tenant("poor", "free").await;
    let (poor_key, _) = h.key(&poor, json!({})).await;
    let f = upload(&h, &poor_key, "batch", &file.join("\n")).await;
    let r = create(&h, &poor_key, f.ok()["id"].as_str().unwrap(), &[]).await;
    r.error(429);
    assert_eq!(r.body["error"]["code"], "insufficient_quota");
    let listed = h
        .call(Method::GET, "/v1/batches", Some(&poor_key), None)
        .await;
    assert_eq!(
        listed.ok()["data"],
        json!([]),
        "a refused batch is not created"
    );
}

#[tokio::test]
async fn an_idempotency_key_creates_one_batch() {
    let (h, _, key) = setup().await;
    let f = upload(&h, &key, "batch", &embed_line("a", "x")).await;
    let file_id = f.ok()["id"].as_str().unwrap().to_string();
    let first = create(
        &h,
        &key,
        &file_id,
        &[("idempotency-key", "nightly-2026-12-01")],
    )
    .await;
    let again = create(
        &h,
        &key,
        &file_id,
        &[("idempotency-key", "nightly-2026-12-01")],
    )
    .await;
    assert_eq!(first.ok()["id"], again.ok()["id"]);
    let other = h
        .raw(Method::POST, "/v1/batches", Some(&key),
             Body::from(json!({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}).to_string()),
             &[("idempotency-key", "nightly-2026-12-01")])
        .await;
    other.error(409);
    let listed = h.call(Method::GET, "/v1/batches", Some(&key), None).await;
    assert_eq!(listed.ok()["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn batches_and_files_page_newest_first_and_another_tenants_ids_are_404() {
    let (h, _, key) = setup().await;
    let f = upload(&h, &key, "batch", &embed_line("a", "x")).await;
    let file_id = f.ok()["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            create(&h, &key, &file_id, &[]).await.ok()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = h
            .call(
                Method::GET,
                &format!("/v1/batches?limit=2&after={after}"),
                Some(&key),
                None,
            )
            .await;
        let page = page.ok().clone();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string()),
        );
        assert_eq!(page["first_id"], page["data"][0]["id"]);
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = page["last_id"].as_str().unwrap().to_string();
    }
    assert_eq!(seen, ids);

    let other = h.tenant("globex", "pro").await;
    let (other_key, _) = h.key(&other, json!({})).await;
    for (method, uri) in [
        (Method::GET, format!("/v1/batches/{}", ids[0])),
        (Method::POST, format!("/v1/batches/{}/cancel", ids[0])),
        (Method::GET, format!("/v1/files/{file_id}")),
        (Method::GET, format!("/v1/files/{file_id}/content")),
        (Method::DELETE, format!("/v1/files/{file_id}")),
    ] {
        let r = h.call(method, &uri, Some(&other_key), None).await;
        r.error(404);
    }
    let r = create(&h, &other_key, &file_id, &[]).await;
    r.error(404);
    assert_eq!(
        h.call(Method::GET, "/v1/files", Some(&other_key), None)
            .await
            .ok()["data"],
        json!([])
    );
    // The owner still has everything.
    h.call(
        Method::GET,
        &format!("/v1/files/{file_id}"),
        Some(&key),
        None,
    )
    .await
    .ok();
    let gone = h
        .call(
            Method::DELETE,
            &format!("/v1/files/{file_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(gone.ok()["deleted"], true);
    h.call(
        Method::GET,
        &format!("/v1/files/{file_id}"),
        Some(&key),
        None,
    )
    .await
    .error(404);
}

#[tokio::test]
async fn the_worker_loop_drains_the_queue_and_stops_when_told() {
    let (h, _, key) = setup().await;
    let file: Vec<String> = (0..5)
        .map(|i| embed_line(&format!("r{i}"), &format!("line {i}")))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let id = create(&h, &key, f.ok()["id"].as_str().unwrap(), &[])
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let cfg = WorkerConfig {
        wait: Duration::from_millis(200),
        visibility: Duration::from_secs(3),
        ..small_chunks()
    };
    let worker = tokio::spawn(jobs::run(h.app.clone(), cfg, stopping));
    let mut status = String::new();
    for _ in 0..600 {
        status = batch(&h, &key, &id).await["status"]
            .as_str()
            .unwrap()
            .to_string();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "completed");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_deleted_input_file_fails_its_lines_and_a_vanished_batch_drops_its_jobs() {
    let (h, tenant, key) = setup().await;
    let file: Vec<String> = (0..3)
        .map(|i| embed_line(&format!("r{i}"), "text"))
        .collect();
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let file_id = f.ok()["id"].as_str().unwrap().to_string();
    let id = create(&h, &key, &file_id, &[]).await.ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = small_chunks();
    let validate = take_jobs(&h).await;
    jobs::handle(&h.app, &cfg, &validate[0].body, false)
        .await
        .unwrap();
    let chunks = take_jobs(&h).await;
    let gone = h
        .call(
            Method::DELETE,
            &format!("/v1/files/{file_id}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(gone.ok()["deleted"], true);
    for m in &chunks {
        assert_eq!(
            jobs::handle(&h.app, &cfg, &m.body, false).await.unwrap(),
            Handled::Done
        );
    }
    let b = batch(&h, &key, &id).await;
    assert_eq!(b["status"], "completed");
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 3})
    );

    // A job whose batch no longer exists (its tenant was erased) is dropped,
    // not retried forever.
    let table = h.app.storage.table.as_ref();
    table
        .delete(
            &tenantai::batch::batches::record_key(&tenant, &id),
            &tenantai::store::Cond::Always,
        )
        .await
        .unwrap();
    assert_eq!(
        jobs::handle(&h.app, &cfg, &validate[0].body, true)
            .await
            .unwrap(),
        Handled::Done
    );
    assert_eq!(
        jobs::handle(&h.app, &cfg, &chunks[0].body, false)
            .await
            .unwrap(),
        Handled::Done
    );
}

#[tokio::test]
async fn finalizing_again_after_a_crash_writes_the_same_files() {
    let (h, tenant, key) = setup().await;
    let mut file: Vec<String> = (0..3)
        .map(|i| embed_line(&format!("r{i}"), &format!("text {i}")))
        .collect();
    file.push(line("bad", json!({"model": MODEL})));
    let f = upload(&h, &key, "batch", &file.join("\n")).await;
    let id = create(&h, &key, f.ok()["id"].as_str().unwrap(), &[])
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    run_jobs(&h).await;
    let first = batch(&h, &key, &id).await;
    let (out, err) = (
        first["output_file_id"].as_str().unwrap(),
        first["error_file_id"].as_str().unwrap(),
    );
    let (out_text, err_text) = (content(&h, &key, out).await, content(&h, &key, err).await);
    // A finalizer that died after writing the files, before ending the batch.
    let table = h.app.storage.table.as_ref();
    tenantai::batch::batches::update(table, &tenant, &id, |b| {
        b.status = tenantai::batch::batches::Status::Finalizing;
        b.output_file_id = None;
        b.error_file_id = None;
        Ok(true)
    })
    .await
    .unwrap();
    assert_eq!(batch(&h, &key, &id).await["status"], "finalizing");
    // Two finalizers now (the redelivered last chunk, and a racing one).
    let (a, b) = tokio::join!(
        tenantai::batch::finalize::if_done(&h.app, &tenant, &id),
        tenantai::batch::finalize::if_done(&h.app, &tenant, &id)
    );
    a.unwrap();
    b.unwrap();
    let again = batch(&h, &key, &id).await;
    assert_eq!(again["status"], "completed");
    assert_eq!(
        (
            again["output_file_id"].as_str(),
            again["error_file_id"].as_str()
        ),
        (Some(out), Some(err))
    );
    assert_eq!(content(&h, &key, out).await, out_text);
    assert_eq!(content(&h, &key, err).await, err_text);
    let outputs = h
        .call(
            Method::GET,
            "/v1/files?purpose=batch_output",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        outputs.ok()["data"].as_array().unwrap().len(),
        2,
        "no duplicate files"
    );
}
