//! `/v1/chat/completions` through the front door, on a real chat worker
//! (SmolLM2-135M-Instruct): whole and streamed answers, token-priced billing in
//! /v1/usage, the cache for deterministic requests, kinds, scopes, and an
//! `openai` upstream.

use axum::http::Method;
use serde_json::{json, Value};
use tenantai::app::Config;

use crate::harness::{Harness, Reply};
use crate::worker;

const MODEL: &str = "SmolLM2-135M-Instruct";
const PRICES: (u64, u64) = (150, 600);

/// `config` for a test sharing one CPU chat worker with many streams: private
/// egress (the worker is on loopback) and a long wait for the backend.
fn patient(mut config: Config) -> Config {
    config.backend_timeout = std::time::Duration::from_secs(600);
    crate::harness::private_egress(config)
}

/// A tenant, a key, the chat model on the shared chat worker and the
/// embedding model on the embeddings worker.
async fn setup() -> (Harness, String, String) {
    let h = Harness::with_config(patient(Config::default())).await;
    h.model(
        json!({"model": MODEL, "kind": "chat", "endpoint": worker::chat_url(),
                   "price_per_1k_tokens_micros": PRICES.0,
                   "price_per_1k_completion_tokens_micros": PRICES.1, "context_length": 8192}),
    )
    .await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    let tenant = h.tenant("acme", "pro").await;
    let (key, _) = h.key(&tenant, json!({})).await;
    (h, tenant, key)
}

fn ask(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
                          "max_tokens": 12, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn chat(h: &Harness, key: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
    h.raw(
        Method::POST,
        "/v1/chat/completions",
        Some(key),
        axum::body::Body::from(body.to_string()),
        headers,
    )
    .await
}

/// The events of a streamed answer, `[DONE]` last.
fn events(r: &Reply) -> Vec<String> {
    assert_eq!(r.header("content-type"), "text/event-stream", "{}", r.body);
    let raw = r.body["raw"].as_str().expect("an event stream, not JSON");
    raw.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data events").to_string())
        .collect()
}

fn streamed_text(events: &[String]) -> (String, Option<Value>, Option<String>) {
    streamed_text_of(events, MODEL)
}

fn streamed_text_of(events: &[String], model: &str) -> (String, Option<Value>, Option<String>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (mut text, mut usage, mut finish) = (String::new(), None, None);
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], model);
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        if !chunk["usage"].is_null() && chunk.get("usage").is_some() {
            usage = Some(chunk["usage"].clone());
        }
    }
    (text, usage, finish)
}

fn cost(prompt: u64, completion: u64) -> u64 {
    (prompt * PRICES.0).div_ceil(1000) + (completion * PRICES.1).div_ceil(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_and_streamed_answers_are_billed_by_prompt_and_completion_tokens() {
    let (h, _, key) = setup().await;
    let whole = chat(&h, &key, ask("Name a colour.", json!({})), &[]).await;
    let body = whole.ok().clone();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    let text = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    let (p, c) = (
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        body["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 5 && (1..=12).contains(&c), "{body}");
    assert_eq!(
        whole.header("x-tenantai-cost-micros"),
        cost(p, c).to_string()
    );
    assert_eq!(whole.header("x-tenantai-cache"), "miss");
    assert_eq!(
        whole.header("x-tenantai-model-version"),
        format!("{MODEL}@1")
    );

    // The same request streamed, past the cache: the same greedy answer, chunk by chunk.
    let streamed = chat(
        &h,
        &key,
        ask(
            "Name a colour.",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
        &[("cache-control", "no-cache, no-store")],
    )
    .await;
    let (s_text, usage, finish) = streamed_text(&events(&streamed));
    assert_eq!(s_text, text);
    let usage = usage.expect("usage was asked for");
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(p), Some(c))
    );
    assert!(finish.is_some());
    // Without include_usage, no usage chunk reaches the client.
    let plain = chat(
        &h,
        &key,
        ask("Say hi.", json!({"stream": true, "temperature": 0.7})),
        &[],
    )
    .await;
    let plain_events = events(&plain);
    let (_, none, _) = streamed_text(&plain_events);
    assert!(none.is_none(), "{plain_events:?}");

    h.settle_usage().await;
    let usage = h
        .call(Method::GET, "/v1/usage?group_by=model", Some(&key), None)
        .await;
    let bucket = usage.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["model"] == MODEL)
        .unwrap()
        .clone();
    assert_eq!(bucket["requests"], 3);
    let (up, uc) = (
        bucket["prompt_tokens"].as_u64().unwrap(),
        bucket["completion_tokens"].as_u64().unwrap(),
    );
    assert!(up >= 2 * p && uc >= 2 * c, "{bucket}");
    assert_eq!(bucket["tokens"].as_u64().unwrap(), up + uc);
    assert!(bucket["cost_micros"].as_u64().unwrap() >= 2 * cost(p, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streams_usage_event_carries_the_gateways_share_of_its_first_token() {
    let (h, _, key) = setup().await;
    let whole = chat(&h, &key, ask("Say hi.", json!({"max_tokens": 2})), &[]).await;
    let header: f64 = whole.header("x-tenantai-overhead-ms").parse().unwrap();
    let got = h.usage_events().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        (got[0].overhead_ms - header).abs() < 0.01,
        "{got:?} {header}"
    );

    let body = ask("Name a colour.", json!({"stream": true, "max_tokens": 4}));
    let streamed = chat(&h, &key, body, &[("cache-control", "no-store")]).await;
    assert!(events(&streamed).len() > 1);
    let got = h.usage_events().await;
    assert_eq!(got.len(), 1, "{got:?}");
    // The gateway's part of the time to first token is measured, and the
    // backend's generation is not counted in it.
    let e = &got[0];
    assert!(e.overhead_ms > 0.0 && e.overhead_ms < e.latency_ms, "{e:?}");
    assert!(e.completion_tokens > 0, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deterministic_answers_are_cached_and_replayed_as_chunks() {
    let (h, _, key) = setup().await;
    let request = ask("Count to three.", json!({"seed": 7, "temperature": 0.9}));
    let first = chat(&h, &key, request.clone(), &[]).await;
    assert_eq!(first.header("x-tenantai-cache"), "miss");
    let text = first.ok()["choices"][0]["message"]["content"].clone();
    let again = chat(&h, &key, request.clone(), &[]).await;
    assert_eq!(again.header("x-tenantai-cache"), "hit");
    assert_eq!(again.ok()["choices"][0]["message"]["content"], text);
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let replay = chat(&h, &key, streamed, &[]).await;
    assert_eq!(replay.header("x-tenantai-cache"), "hit");
    let (s_text, _, finish) = streamed_text(&events(&replay));
    assert_eq!(Value::String(s_text), text);
    assert!(finish.is_some());
    // A streamed miss is stored at its end, for whole and streamed requests alike.
    let mut fresh = ask("Name a fruit.", json!({"stream": true}));
    let live = chat(&h, &key, fresh.clone(), &[]).await;
    assert_eq!(live.header("x-tenantai-cache"), "miss");
    let (live_text, _, _) = streamed_text(&events(&live));
    // The entry goes in off the response path.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    h.app.chat_cache.flush().await;
    fresh.as_object_mut().unwrap().remove("stream");
    let stored = chat(&h, &key, fresh, &[]).await;
    assert_eq!(stored.header("x-tenantai-cache"), "hit");
    assert_eq!(
        stored.ok()["choices"][0]["message"]["content"],
        live_text.as_str()
    );
    // Sampled requests are never cached; another tenant never sees this one's entries.
    let sampled = ask("Count to three.", json!({"temperature": 0.9}));
    let a = chat(&h, &key, sampled.clone(), &[]).await;
    assert_eq!(a.header("x-tenantai-cache"), "miss");
    assert_eq!(
        chat(&h, &key, sampled, &[])
            .await
            .header("x-tenantai-cache"),
        "miss"
    );
    let other = h.tenant("other", "pro").await;
    let (other_key, _) = h.key(&other, json!({})).await;
    assert_eq!(
        chat(&h, &other_key, request, &[])
            .await
            .header("x-tenantai-cache"),
        "miss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kinds_scopes_and_bad_requests_are_4xx() {
    let (h, tenant, key) = setup().await;
    let msg = chat(
        &h,
        &key,
        json!({"model": "all-MiniLM-L6-v2", "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await
    .error(400);
    assert!(msg.contains("embedding model"), "{msg}");
    let r = h
        .call(
            Method::POST,
            "/v1/embeddings",
            Some(&key),
            Some(json!({"model": MODEL, "input": "x"})),
        )
        .await;
    assert!(r.error(400).contains("chat model"));
    let (embed_only, _) = h.key(&tenant, json!({"scopes": ["embeddings"]})).await;
    chat(&h, &embed_only, ask("hi", json!({})), &[])
        .await
        .error(403);
    chat(&h, &key, ask("hi", json!({"model": "no-such-model"})), &[])
        .await
        .error(404);
    chat(&h, &key, ask("hi", json!({"max_tokens": 0})), &[])
        .await
        .error(400);
    chat(&h, &key, ask("hi", json!({"n": 3})), &[])
        .await
        .error(400);
    // The worker judges what it does not support: its 400 reaches the client.
    chat(&h, &key, ask("hi", json!({"logprobs": true})), &[])
        .await
        .error(400);
    let raw = h
        .raw(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            axum::body::Body::from("{\"model\":"),
            &[],
        )
        .await;
    raw.error(400);
    let models = h.call(Method::GET, "/v1/models", Some(&key), None).await;
    let ids: Vec<&str> = models.ok()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&MODEL) && ids.contains(&"all-MiniLM-L6-v2"),
        "{ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_openai_upstream_serves_through_the_same_key() {
    let (h, _, key) = setup().await;
    std::env::set_var("TENANTAI_TEST_UPSTREAM_KEY", "sk-test-upstream-123");
    // The worker speaks OpenAI's API under /v1: an upstream like any other.
    h.model(json!({"model": "upstream-chat", "kind": "chat", "backend": "openai",
                   "endpoint": format!("{}/v1", worker::chat_url()), "upstream_model": MODEL,
                   "api_key_secret": "TENANTAI_TEST_UPSTREAM_KEY",
                   "price_per_1k_tokens_micros": 1000, "price_per_1k_completion_tokens_micros": 2000}))
        .await;
    let r = chat(
        &h,
        &key,
        ask("Name a colour.", json!({"model": "upstream-chat"})),
        &[],
    )
    .await;
    let body = r.ok().clone();
    assert_eq!(body["model"], "upstream-chat");
    let (p, c) = (
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        body["usage"]["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(
        r.header("x-tenantai-cost-micros"),
        (p + (c * 2000).div_ceil(1000)).to_string()
    );
    let streamed = chat(
        &h,
        &key,
        ask(
            "Name a colour.",
            json!({"model": "upstream-chat", "stream": true}),
        ),
        &[("cache-control", "no-cache")],
    )
    .await;
    let (text, _, _) = streamed_text_of(&events(&streamed), "upstream-chat");
    assert_eq!(
        text,
        body["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // A secret that is not set: a 502 naming the model, never a key.
    h.model(json!({"model": "keyless", "kind": "chat", "backend": "openai",
                   "endpoint": format!("{}/v1", worker::chat_url()), "api_key_secret": "TENANTAI_TEST_UNSET_KEY"}))
        .await;
    let msg = chat(&h, &key, ask("hi", json!({"model": "keyless"})), &[])
        .await
        .error(502);
    assert!(msg.contains("keyless") && !msg.contains("sk-"), "{msg}");
    // Upstream URLs pass the egress policy: a metadata address is refused at registration's use.
    h.model(json!({"model": "metadata", "kind": "chat", "backend": "openai", "endpoint": "http://169.254.169.254/v1"}))
        .await;
    chat(&h, &key, ask("hi", json!({"model": "metadata"})), &[])
        .await
        .error(502);
    // An embedding model cannot have an upstream backend.
    h.admin(Method::POST, "/models", Some(json!({"model": "x", "version": "1", "backend": "openai",
        "endpoint": "https://api.example.com/v1", "price_per_1k_tokens_micros": 1, "status": "live"})))
        .await
        .error(400);
}

/// A streamed request (greedy, `max_tokens` 2) from one of many clients.
async fn stream_once(h: &Harness, key: &str, who: usize) -> Reply {
    let body = ask(
        &format!("Client {who}: say a word."),
        json!({"stream": true, "max_tokens": 2}),
    );
    chat(h, key, body, &[("cache-control", "no-cache, no-store")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_32_streaming_clients_the_cap_and_the_token_window_hold() {
    const CAP: u64 = 600_000;
    let h = Harness::with_config(patient(crate::metering::capped_config(CAP))).await;
    // $1 per 1k tokens each way: one request reserves about 0.1 $, costs about 0.04 $.
    h.model(json!({"model": MODEL, "kind": "chat", "endpoint": worker::chat_url(),
                   "price_per_1k_tokens_micros": 1_000_000, "price_per_1k_completion_tokens_micros": 1_000_000}))
        .await;
    let capped = h.tenant("Capped", "capped").await;
    let (key, _) = h.key(&capped, json!({})).await;
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (h, key) = (h.clone(), key.clone());
            tokio::spawn(async move { stream_once(&h, &key, c).await })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for c in clients {
        let r = c.await.unwrap();
        if r.status.is_success() {
            streamed_text(&events(&r));
            served += 1;
        } else {
            r.error(429);
            assert_eq!(r.body["error"]["code"], "insufficient_quota");
            refused += 1;
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    h.settle_usage().await;
    let month = &tenantai::billing::metering::month_of(tenantai::store::now_millis());
    let mut committed = 0;
    for _ in 0..100 {
        committed = h.app.budget.committed(&capped, month).await.unwrap();
        let billed = h
            .call(Method::GET, "/v1/usage", Some(&key), None)
            .await
            .ok()["totals"]["cost_micros"]
            .clone();
        if billed.as_u64() == Some(committed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(committed <= CAP, "committed {committed} past the cap {CAP}");
    let billed = h
        .call(Method::GET, "/v1/usage", Some(&key), None)
        .await
        .ok()["totals"]
        .clone();
    assert_eq!(
        billed["cost_micros"].as_u64(),
        Some(committed),
        "settled spend is what usage bills"
    );
    assert_eq!(billed["requests"].as_u64(), Some(served));

    // A tokens-per-minute window of 200 admits each stream's prompt estimate
    // plus its cap (2): never more streams than fit.
    let windowed = h.tenant("Windowed", "pro").await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{windowed}"),
        Some(json!({"rate_limits": {"requests_per_minute": 1000, "tokens_per_minute": 200}})),
    )
    .await
    .ok();
    let (wkey, _) = h.key(&windowed, json!({})).await;
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (h, key) = (h.clone(), wkey.clone());
            tokio::spawn(async move { stream_once(&h, &key, c).await })
        })
        .collect();
    let (mut admitted, mut limited) = (0u64, 0);
    for c in clients {
        let r = c.await.unwrap();
        if r.status.is_success() {
            admitted += 1;
        } else {
            r.error(429);
            assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
            limited += 1;
        }
    }
    let smallest_estimate =
        2 + (r#"[{"role":"user","content":"Client 0: say a word."}]"#.len() as u64 + 16) / 4;
    assert!(
        admitted >= 1 && limited >= 1,
        "admitted {admitted}, limited {limited}"
    );
    assert!(
        admitted * smallest_estimate <= 200,
        "{admitted} streams of {smallest_estimate} tokens in a 200-token window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_mid_stream_is_billed_for_what_was_generated() {
    use tower::ServiceExt;
    let (h, _, key) = setup().await;
    let body = ask(
        "Write a long story about the sea.",
        json!({"stream": true, "max_tokens": 400}),
    );
    let req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success());
    let mut body = resp.into_body();
    let mut seen = 0;
    while seen < 3 {
        let frame = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            seen += 1;
        }
    }
    drop(body);
    h.settle_usage().await;
    let mut billed = Value::Null;
    for _ in 0..100 {
        h.settle_usage().await;
        billed = h
            .call(Method::GET, "/v1/usage", Some(&key), None)
            .await
            .ok()["totals"]
            .clone();
        if billed["requests"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(billed["requests"], 1, "{billed}");
    let completion = billed["completion_tokens"].as_u64().unwrap();
    assert!(
        (2..400).contains(&completion),
        "billed {completion} completion tokens for a stream left after 3 chunks"
    );
    assert!(billed["cost_micros"].as_u64().unwrap() > 0);
}
