//! `gpu-worker serve` with the chat model, as a real process: OpenAI's chat
//! completions whole and streamed (the same greedy text both ways), bad input as
//! 4xx in the OpenAI shape without disturbing a stream running beside it, the
//! SageMaker runtime SDK with a chat body, and the chat metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sagemakerruntime::config::Credentials;
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use common::spawn_worker;
use serde_json::{json, Value};

async fn worker() -> common::Worker {
    let dir = common::chat_model_dir();
    spawn_worker(&["--chat-model", dir.to_str().unwrap()]).await
}

fn request(stream: bool) -> Value {
    json!({
        "model": "SmolLM2-135M-Instruct",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": stream,
    })
}

/// The `data:` payloads of a server-sent events body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
        })
        .map(|d| d.trim().to_string())
        .collect()
}

#[tokio::test]
async fn chat_completions_whole_and_streamed_agree() {
    let w = worker().await;
    let http = common::http();
    let url = format!("{}/v1/chat/completions", w.url);
    let whole: Value = http
        .post(&url)
        .json(&request(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["object"], "chat.completion");
    assert!(whole["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.trim().is_empty(), "{whole}");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let u = &whole["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let mut streamed = request(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = http.post(&url).json(&streamed).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&resp.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text, "streamed and whole greedy answers differ");
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, choice["finish_reason"]);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], whole["usage"]);
}

#[tokio::test]
async fn bad_chat_requests_get_4xx_and_leave_running_streams_alone() {
    let w = worker().await;
    common::http();
    // No pooled connections: a refused oversized body closes its connection,
    // which the next request must not pick up.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("{}/v1/chat/completions", w.url);
    // A stream runs while bad requests arrive.
    let mut long = request(true);
    long["max_tokens"] = json!(64);
    let running = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(&url)
                .json(&long)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Vec<u8>, u16, Option<&str>)> = vec![
        (b"{not json".to_vec(), 400, None),
        (vec![0xff, 0xfe, 0x00], 400, None),
        (
            json!({"model": "m", "messages": []})
                .to_string()
                .into_bytes(),
            400,
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": user, "max_tokens": 100000000000u64})
                .to_string()
                .into_bytes(),
            400,
            Some("messages"),
        ),
        (
            json!({"model": "m", "messages": user, "temperature": -1})
                .to_string()
                .into_bytes(),
            400,
            Some("temperature"),
        ),
        (
            json!({"model": "m", "messages": user, "n": 3})
                .to_string()
                .into_bytes(),
            400,
            Some("n"),
        ),
        (
            json!({"model": 1, "messages": user})
                .to_string()
                .into_bytes(),
            400,
            Some("model"),
        ),
        (vec![b'x'; 3_000_000], 413, None),
    ];
    for (body, status, param) in cases {
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        let err: Value = resp.json().await.unwrap();
        assert!(
            err["error"]["message"].is_string() && err["error"]["type"].is_string(),
            "{err}"
        );
        assert_eq!(err["error"]["param"].as_str(), param, "{err}");
    }
    let over = http
        .post(&url)
        .json(&json!({"model": "m", "messages": user, "max_tokens": 9000}))
        .send()
        .await
        .unwrap();
    let err: Value = over.json().await.unwrap();
    assert_eq!(err["error"]["code"], "context_length_exceeded");
    assert!(err["error"]["message"].as_str().unwrap().contains("8192"));
    let body = running.await.unwrap();
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert!(!body.contains("\"error\""), "{body}");
}

#[tokio::test]
async fn sagemaker_runtime_sdk_serves_a_chat_body() {
    let w = worker().await;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_sagemakerruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(&w.url)
        .http_client(http)
        .build();
    let client = aws_sdk_sagemakerruntime::Client::from_conf(config);
    let out = client
        .invoke_endpoint()
        .endpoint_name("smollm2")
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(serde_json::to_vec(&request(true)).unwrap()))
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(out.body().unwrap().as_ref()).unwrap();
    // The invocation contract answers whole, even when the body asks to stream.
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty(),
        "{body}"
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let metrics = reqwest::get(format!("{}/metrics", w.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tenantai_chat_queue_depth",
        "tenantai_chat_running_sequences",
        "tenantai_chat_decode_tokens_per_second",
        "tenantai_chat_prefill_tokens_per_second",
        "tenantai_chat_time_to_first_token_seconds_count 1",
        "tenantai_chat_inter_token_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let health: Value = reqwest::get(format!("{}/health", w.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["chat"]["context"], 8192);
}
