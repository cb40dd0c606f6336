//! `gpu-worker serve` as a real process: the OpenAI route, the SageMaker contract
//! and runtime path (through the AWS SDK), health, metrics, and 4xx answers in the
//! OpenAI error shape for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

mod common;

use aws_sdk_sagemakerruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sagemakerruntime::primitives::Blob;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{cosine, reference, spawn_worker};
use serde_json::{json, Value};

fn check_against_reference(data: &[Value], decode: impl Fn(&Value) -> Vec<f32>) {
    let reference = reference();
    let items: Vec<_> = reference
        .items
        .iter()
        .filter(|i| !i.text.is_empty())
        .collect();
    assert_eq!(data.len(), items.len());
    for (d, item) in data.iter().zip(items) {
        let c = cosine(&decode(&d["embedding"]), &item.embedding);
        assert!(c >= 0.9999, "{:?}: cosine {c}", item.text);
    }
}

fn texts() -> Vec<String> {
    // The API refuses empty strings; the library test covers the empty reference item.
    reference()
        .items
        .iter()
        .filter(|i| !i.text.is_empty())
        .map(|i| i.text.clone())
        .collect()
}

#[tokio::test]
async fn openai_route_answers_reference_vectors_as_float_and_base64() {
    let worker = spawn_worker(&[]).await;
    let http = common::http();
    let url = format!("{}/v1/embeddings", worker.url);
    let texts = texts();
    let expected_tokens: usize = reference()
        .items
        .iter()
        .filter(|i| !i.text.is_empty())
        .map(|i| i.tokens_with_special)
        .sum();

    let resp = http
        .post(&url)
        .json(&json!({"model": "all-MiniLM-L6-v2", "input": texts}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "all-MiniLM-L6-v2");
    assert_eq!(body["usage"]["prompt_tokens"], expected_tokens);
    assert_eq!(body["usage"]["total_tokens"], expected_tokens);
    let data = body["data"].as_array().unwrap();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert_eq!(d["object"], "embedding");
    }
    check_against_reference(data, |v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    });

    let resp = http
        .post(&url)
        .json(&json!({"model": "m", "input": texts, "encoding_format": "base64"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    check_against_reference(body["data"].as_array().unwrap(), |v| {
        STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    });

    // A single string and a token array.
    let one: Value = http
        .post(&url)
        .json(&json!({"input": texts[0]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["usage"]["prompt_tokens"], 12);
    let tokens: Value = http
        .post(&url)
        .json(&json!({"input": [[2023, 2003], [7592]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tokens["usage"]["prompt_tokens"], 4 + 3);
}

#[tokio::test]
async fn sagemaker_runtime_sdk_invokes_the_worker_end_to_end() {
    let worker = spawn_worker(&[]).await;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_sagemakerruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .endpoint_url(&worker.url)
        .http_client(http)
        .build();
    let client = aws_sdk_sagemakerruntime::Client::from_conf(config);
    let texts = texts();

    let out = client
        .invoke_endpoint()
        .endpoint_name("minilm-endpoint")
        .content_type("application/json")
        .accept("application/json")
        .body(Blob::new(
            serde_json::to_vec(&json!({"input": texts})).unwrap(),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(out.content_type(), Some("application/json"));
    let body: Value = serde_json::from_slice(out.body().unwrap().as_ref()).unwrap();
    check_against_reference(body["data"].as_array().unwrap(), |v| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    });

    // The Hugging Face shape answers a bare array of vectors.
    let out = client
        .invoke_endpoint()
        .endpoint_name("minilm-endpoint")
        .content_type("application/json")
        .body(Blob::new(
            serde_json::to_vec(&json!({"inputs": texts})).unwrap(),
        ))
        .send()
        .await
        .unwrap();
    let vectors: Vec<Vec<f32>> = serde_json::from_slice(out.body().unwrap().as_ref()).unwrap();
    let wrapped: Vec<Value> = vectors.iter().map(|v| json!({"embedding": v})).collect();
    check_against_reference(&wrapped, |v| serde_json::from_value(v.clone()).unwrap());

    // A client error reaches the SDK as an error, not a panic or a 5xx.
    let err = client
        .invoke_endpoint()
        .endpoint_name("minilm-endpoint")
        .content_type("application/json")
        .body(Blob::new(b"{not json".to_vec()))
        .send()
        .await
        .unwrap_err();
    let raw = err.raw_response().expect("an HTTP answer");
    assert_eq!(raw.status().as_u16(), 400);

    // All three went through the runtime API's path.
    let metrics = reqwest::get(format!("{}/metrics", worker.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tenantai_worker_requests_total{route=\"/endpoints/{name}/invocations\",status=\"200\"} 2"), "{metrics}");
    assert!(metrics.contains("tenantai_worker_requests_total{route=\"/endpoints/{name}/invocations\",status=\"400\"} 1"), "{metrics}");
}

#[tokio::test]
async fn container_contract_health_and_metrics() {
    let worker = spawn_worker(&["--max-batch-size", "32"]).await;
    let http = common::http();
    assert_eq!(
        http.get(format!("{}/ping", worker.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = http
        .post(format!("{}/invocations", worker.url))
        .json(&json!({"inputs": "The quick brown fox jumps over the lazy dog."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let vectors: Vec<Vec<f32>> = resp.json().await.unwrap();
    assert!(cosine(&vectors[0], &reference().items[0].embedding) >= 0.9999);

    let health: Value = http
        .get(format!("{}/health", worker.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["device"], "cpu");
    assert_eq!(health["dimension"], 384);
    assert_eq!(health["max_seq_length"], 256);
    assert_eq!(health["max_batch_size"], 32);

    // One refused request, so the error counter has something to show.
    let bad = http
        .post(format!("{}/v1/embeddings", worker.url))
        .json(&json!({"input": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let resp = http
        .get(format!("{}/metrics", worker.url))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for needle in [
        "# TYPE tenantai_worker_batch_size histogram",
        "tenantai_worker_queue_wait_seconds_count",
        "tenantai_worker_forward_seconds_sum",
        "# TYPE tenantai_worker_tokens_per_second gauge",
        "tenantai_worker_requests_total{route=\"/invocations\",status=\"200\"} 1",
        "tenantai_worker_errors_total{kind=\"invalid_request\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // Warm-up plus the invocation: at least two inputs, twelve-plus tokens each.
    let tokens: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tenantai_worker_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens >= 12 + 4, "{tokens}");
}

#[tokio::test]
async fn bad_input_gets_4xx_in_the_openai_error_shape() {
    let worker = spawn_worker(&["--max-inputs", "3", "--max-body-bytes", "10000"]).await;
    let http = common::http();
    let url = format!("{}/v1/embeddings", worker.url);
    let long = "word ".repeat(300);
    let cases: Vec<(Vec<u8>, u16, Option<&str>, &str)> = vec![
        (b"{not json".to_vec(), 400, None, "not valid JSON"),
        (b"[1,2]".to_vec(), 400, None, "JSON object"),
        (br#"{"model":"m"}"#.to_vec(), 400, Some("input"), "required"),
        (
            br#"{"input":42}"#.to_vec(),
            400,
            Some("input"),
            "must be a string",
        ),
        (
            br#"{"input":""}"#.to_vec(),
            400,
            Some("input"),
            "empty string",
        ),
        (
            br#"{"input":["a",""]}"#.to_vec(),
            400,
            Some("input"),
            "input[1]",
        ),
        (
            br#"{"input":["a",{"x":1}]}"#.to_vec(),
            400,
            Some("input"),
            "input[1]",
        ),
        (
            br#"{"input":["a","b","c","d"]}"#.to_vec(),
            400,
            Some("input"),
            "at most 3",
        ),
        (
            br#"{"input":[1,-1]}"#.to_vec(),
            400,
            Some("input"),
            "not a token id",
        ),
        (
            br#"{"input":[99999999]}"#.to_vec(),
            400,
            Some("input"),
            "vocabulary",
        ),
        (
            br#"{"input":"x","encoding_format":"int8"}"#.to_vec(),
            400,
            Some("encoding_format"),
            "base64",
        ),
        (
            br#"{"input":"x","dimensions":64}"#.to_vec(),
            400,
            Some("dimensions"),
            "384",
        ),
        (
            serde_json::to_vec(&json!({"input": long})).unwrap(),
            400,
            Some("input"),
            "limit of 256 tokens",
        ),
        (vec![b' '; 20_000], 413, None, "10000 bytes"),
    ];
    for (body, status, param, needle) in cases {
        let resp = http
            .post(&url)
            .body(body.clone())
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        let got = resp.status().as_u16();
        let err: Value = resp.json().await.unwrap();
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        assert_eq!(got, status, "{shown}: {err}");
        let e = &err["error"];
        assert_eq!(e["type"], "invalid_request_error", "{shown}");
        assert_eq!(e["param"].as_str(), param, "{shown}: {err}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{shown}: {err}"
        );
        assert!(e.get("code").is_some());
    }
    // A long input with truncation is fine.
    let ok = http
        .post(&url)
        .json(&json!({"input": long, "truncate": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 256);
    // Unknown routes and methods answer in the same shape.
    let nf = http
        .get(format!("{}/nope", worker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(nf.status(), 404);
    let v: Value = nf.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("/nope"));
    let na = http.get(&url).send().await.unwrap();
    assert_eq!(na.status(), 405);
    // The same checks guard the SageMaker paths.
    let sm = http
        .post(format!("{}/invocations", worker.url))
        .body(r#"{"inputs":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(sm.status(), 400);
    // And the worker is still healthy.
    assert_eq!(
        http.get(format!("{}/ping", worker.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
