//! The hard cap against the real worker: for every input kind, a tenant with a
//! tiny capped budget, hammered concurrently, is never served more than its
//! cap, and no request is billed more than the gate reserved for it.

use axum::http::Method;
use serde_json::{json, Value};
use tenantai::gateway::embeddings::EmbeddingRequest;

use crate::harness::Harness;
use crate::worker;

/// 100 micro-dollars a token.
const PRICE: u64 = 100_000;
const CONCURRENT: usize = 24;
/// The cap holds this many of a kind's largest reservations (and a half).
const RESERVATIONS_IN_CAP: u64 = 5;

/// One input kind: the `input` of request `i` (each different, so none is a cache hit).
struct Kind {
    name: &'static str,
    input: fn(usize) -> Value,
    truncate: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "string",
        input: |i| json!(format!("hello world {i}")),
        truncate: false,
    },
    Kind {
        name: "strings",
        input: |i| json!([format!("a {i}"), "b c d"]),
        truncate: false,
    },
    Kind {
        // The worker adds [CLS] and [SEP] to token ids: 2 ids are billed 4 tokens.
        name: "token ids",
        input: |i| json!([7592 + i, 2088]),
        truncate: false,
    },
    Kind {
        name: "batches of token ids",
        input: |i| json!([[7592 + i], [2088, 2003]]),
        truncate: false,
    },
    Kind {
        // Past the model's limit, truncated to it.
        name: "token ids, truncated",
        input: |i| {
            json!((0..400)
                .map(|j| 1000 + (i * 7 + j) % 20_000)
                .collect::<Vec<_>>())
        },
        truncate: true,
    },
    Kind {
        name: "text, truncated",
        input: |i| json!(format!("{i} ").repeat(400)),
        truncate: true,
    },
];

fn request(kind: &Kind, i: usize) -> Value {
    json!({"model": "all-MiniLM-L6-v2", "input": (kind.input)(i), "truncate": kind.truncate})
}

fn reserved_tokens(body: &Value) -> u64 {
    EmbeddingRequest::parse(body.to_string().as_bytes(), 2048)
        .unwrap()
        .max_tokens()
}

async fn capped_tenant(h: &Harness, cap: u64) -> String {
    let t = h.tenant("Capped", "pro").await;
    h.admin(
        Method::PATCH,
        &format!("/tenants/{t}"),
        Some(json!({"monthly_budget_micros": cap, "hard_cap": true})),
    )
    .await
    .ok();
    let (key, _) = h.key(&t, json!({})).await;
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_input_kind_is_served_past_the_hard_cap() {
    for kind in KINDS {
        let h = Harness::new().await;
        h.model(
            json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url(),
                       "price_per_1k_tokens_micros": PRICE}),
        )
        .await;
        let most = (0..CONCURRENT)
            .map(|i| reserved_tokens(&request(kind, i)))
            .max()
            .unwrap();
        let one = tenantai::billing::amounts::cost_micros(most, PRICE).unwrap();
        let cap = one * RESERVATIONS_IN_CAP + one / 2;
        let key = capped_tenant(&h, cap).await;
        let calls = (0..CONCURRENT).map(|i| {
            let (h, key) = (h.clone(), key.clone());
            let body = request(kind, i);
            tokio::spawn(async move {
                let reserved = reserved_tokens(&body);
                let r = h
                    .call(Method::POST, "/v1/embeddings", Some(&key), Some(body))
                    .await;
                (r, reserved)
            })
        });
        let (mut served, mut refused, mut billed) = (0, 0, 0u64);
        for call in futures::future::join_all(calls).await {
            let (r, reserved) = call.unwrap();
            if r.status.is_success() {
                served += 1;
                let tokens = r.body["usage"]["prompt_tokens"].as_u64().unwrap();
                assert!(
                    tokens <= reserved,
                    "{}: billed {tokens} tokens, reserved {reserved}",
                    kind.name
                );
                billed += r.header("x-tenantai-cost-micros").parse::<u64>().unwrap();
            } else {
                assert_eq!(r.status, 429, "{}: {}", kind.name, r.body);
                assert_eq!(r.body["error"]["code"], "insufficient_quota");
                refused += 1;
            }
        }
        assert!(served > 0 && refused > 0, "{}: {served} served", kind.name);
        assert!(
            billed <= cap,
            "{}: served {billed} micros past a {cap} cap",
            kind.name
        );
        h.settle_usage().await;
        let usage = h.call(Method::GET, "/v1/usage", Some(&key), None).await;
        let metered = usage.ok()["totals"]["cost_micros"].as_u64().unwrap();
        assert_eq!(metered, billed, "{}", kind.name);
        assert!(metered <= cap, "{}: metered {metered}", kind.name);
    }
}

#[tokio::test]
async fn the_reservation_rule_matches_what_the_worker_bills() {
    // Token ids: exactly ids + 2 (the worker's [CLS] and [SEP]); text: at most
    // bytes + 2; both at most the model's sequence limit.
    let h = Harness::new().await;
    h.model(json!({"model": "all-MiniLM-L6-v2", "endpoint": worker::url()}))
        .await;
    let t = h.tenant("Counted", "pro").await;
    let (key, _) = h.key(&t, json!({})).await;
    for (input, truncate) in [
        (json!([7592]), false),
        (json!([7592, 2088, 2003]), false),
        (json!([[7592], [2088, 2003], [1, 2, 3, 4]]), false),
        (json!("hello"), false),
        (json!(["é", "東京", "a.b,c!d?"]), false),
        (json!("ﬀ ﬁ ﬂ İ ǅ"), false),
        (json!((0..300).collect::<Vec<u32>>()), true),
        (json!("word ".repeat(600)), true),
    ] {
        let body = json!({"model": "all-MiniLM-L6-v2", "input": input, "truncate": truncate});
        let reserved = reserved_tokens(&body);
        let r = h
            .call(Method::POST, "/v1/embeddings", Some(&key), Some(body))
            .await;
        let tokens = r.ok()["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(tokens <= reserved, "{input}: {tokens} > {reserved}");
        if input
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_number))
            && !truncate
        {
            assert_eq!(tokens, reserved, "token ids count exactly: {input}");
        }
    }
}
