//! Client input the API parses beyond JSON bodies, property-tested through the
//! routes: chat bodies, multipart uploads (broken boundaries, truncated parts,
//! huge part headers), usage query strings, and page cursors (any `after` is
//! a 200 or a clean 400, and never shows another tenant's items).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Method;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::harness::{Harness, Reply};
use crate::net::runtime;

struct Tenant {
    id: String,
    key: String,
    files: BTreeSet<String>,
    keys: BTreeSet<String>,
}

struct Target {
    h: Harness,
    a: Tenant,
    b: Tenant,
    /// The key uploads are fuzzed with: a third tenant's, so A's files stay as listed.
    uploader: String,
}

const FORM: &str = "fuzz-7d1";

fn form(file: &str) -> Vec<u8> {
    format!("--{FORM}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{FORM}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{file}\r\n--{FORM}--\r\n").into_bytes()
}

async fn tenant(h: &Harness, name: &str) -> Tenant {
    let id = h.tenant(name, "pro").await;
    let (key, key_id) = h.key(&id, json!({})).await;
    let (_, second) = h.key(&id, json!({})).await;
    let mut files = BTreeSet::new();
    for _ in 0..3 {
        let line = json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
                          "body": {"model": "m", "input": "x"}});
        let r = upload(h, &key, form(&line.to_string()), FORM).await;
        files.insert(r.ok()["id"].as_str().unwrap().to_string());
    }
    Tenant {
        id,
        key,
        files,
        keys: [key_id, second].into(),
    }
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        runtime().block_on(async {
            let h = Harness::new().await;
            let a = tenant(&h, "A").await;
            let b = tenant(&h, "B").await;
            let c = h.tenant("Uploader", "pro").await;
            let (uploader, _) = h.key(&c, json!({})).await;
            Target { h, a, b, uploader }
        })
    })
}

async fn upload(h: &Harness, key: &str, body: Vec<u8>, boundary: &str) -> Reply {
    let ct = format!("multipart/form-data; boundary={boundary}");
    h.raw(
        Method::POST,
        "/v1/files",
        Some(key),
        Body::from(body),
        &[("content-type", &ct)],
    )
    .await
}

fn judge(r: &Reply, what: &str) -> Result<(), TestCaseError> {
    let status = r.status.as_u16();
    prop_assert!(status < 500, "{} for {}: {}", status, what, r.body);
    if !r.status.is_success() {
        r.error(status);
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Chat bodies: the route's own fields with values of any shape.
fn any_chat() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    let any = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let message = (
        prop::sample::select(vec!["user", "system", "assistant", "tool", ""]),
        any.clone(),
    )
        .prop_map(|(role, content)| json!({"role": role, "content": content}));
    let field = prop::sample::select(vec![
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "temperature",
        "seed",
        "stream",
        "stream_options",
        "user",
        "stop",
        "tools",
    ]);
    (
        prop::collection::btree_map(field, any, 0..5),
        prop::option::of(prop::collection::vec(message, 0..3)),
    )
        .prop_map(|(m, messages)| {
            let mut o: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            if let Some(ms) = messages {
                o.insert("messages".into(), Value::from(ms));
                o.entry("model").or_insert("m".into());
            }
            Value::Object(o)
        })
}

/// An upload form broken one way or another.
fn any_form() -> impl Strategy<Value = (Vec<u8>, String)> {
    let good = form("{\"custom_id\":\"a\"}");
    let len = good.len();
    prop_oneof![
        // Truncated anywhere.
        (0..len).prop_map(move |n| (
            form("{\"custom_id\":\"a\"}")[..n].to_vec(),
            FORM.to_string()
        )),
        // Declared under another boundary, or an odd one.
        "[ -~]{0,80}".prop_map(|b| (form("x"), b)),
        // A huge or broken part header.
        (1usize..70_000, "[ -~]{0,20}").prop_map(|(n, name)| {
            let mut body =
                format!("--{FORM}\r\nContent-Disposition: form-data; name=\"{name}\"\r\nX-Pad: ")
                    .into_bytes();
            body.resize(body.len() + n, b'a');
            body.extend_from_slice(format!("\r\n\r\nbatch\r\n--{FORM}--\r\n").as_bytes());
            (body, FORM.to_string())
        }),
        // Bytes changed anywhere.
        prop::collection::vec((0..len, any::<u8>()), 1..6).prop_map(move |changes| {
            let mut body = form("{\"custom_id\":\"a\"}");
            for (at, b) in changes {
                body[at] = b;
            }
            (body, FORM.to_string())
        }),
    ]
}

/// A usage query string: the route's parameters, plausible or not, and junk.
fn any_usage_query() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["from", "to", "group_by", "limit", "after", "x", ""]);
    let value = prop_oneof![
        "\\PC{0,16}",
        (any::<i32>(), 0u32..20, 0u32..40).prop_map(|(y, m, d)| format!("{y}-{m:02}-{d:02}")),
        (-10000i32..10000, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        prop::sample::select(vec![
            "day",
            "model",
            "tenant",
            "day,model,tenant",
            ",,",
            "0",
            "1001"
        ])
        .prop_map(str::to_string),
        any::<u64>().prop_map(|n| n.to_string()),
        "\\PC{0,16}".prop_map(|s| URL_SAFE_NO_PAD.encode(s)),
    ];
    prop_oneof![
        4 => prop::collection::vec((key, value), 0..5).prop_map(|kv| {
            kv.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect::<Vec<_>>().join("&")
        }),
        // Raw, including broken percent escapes.
        1 => "[a-z=&%0-9A-F+]{0,40}",
    ]
}

/// An `after` value: junk, another tenant's ids, or a forged store cursor.
fn any_after(t: &'static Target) -> impl Strategy<Value = String> {
    let theirs: Vec<String> = t.b.files.iter().chain(t.b.keys.iter()).cloned().collect();
    let ours: Vec<String> = t.a.files.iter().chain(t.a.keys.iter()).cloned().collect();
    let b = t.b.id.clone();
    prop_oneof![
        "\\PC{0,40}",
        prop::sample::select(theirs.clone()),
        prop::sample::select(ours),
        (prop::sample::select(theirs), "\\PC{0,8}").prop_map(move |(id, sk)| {
            let forged = json!({"pk": format!("TENANT#{b}"), "sk": format!("KEY#{id}{sk}")});
            URL_SAFE_NO_PAD.encode(forged.to_string())
        }),
    ]
}

/// The ids a listing returned, which must all be `allowed`.
fn only(r: &Reply, allowed: &BTreeSet<String>, what: &str) -> Result<(), TestCaseError> {
    judge(r, what)?;
    if r.status.is_success() {
        for item in r.body["data"].as_array().unwrap() {
            let id = item["id"]
                .as_str()
                .or(item["key_id"].as_str())
                .unwrap_or_default();
            prop_assert!(allowed.contains(id), "{} listed {}", what, item);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_chat_body_is_served_or_refused_cleanly(body in any_chat()) {
        let t = target();
        let r = runtime().block_on(t.h.call(Method::POST, "/v1/chat/completions", Some(&t.a.key), Some(body.clone())));
        judge(&r, &body.to_string())?;
    }

    #[test]
    fn any_upload_form_is_stored_or_refused_cleanly((body, boundary) in any_form()) {
        let t = target();
        let r = runtime().block_on(upload(&t.h, &t.uploader, body, &boundary));
        judge(&r, &format!("boundary {boundary:?}"))?;
    }

    #[test]
    fn any_usage_query_is_a_report_or_a_clean_400(q in any_usage_query()) {
        let t = target();
        let admin = t.h.admin.clone();
        let a = &t.a.id;
        for (uri, token) in [
            (format!("/v1/usage?{q}"), &t.a.key),
            (format!("/admin/v1/usage?{q}"), &admin),
            (format!("/admin/v1/tenants/{a}/usage?{q}"), &admin),
        ] {
            let r = runtime().block_on(t.h.call(Method::GET, &uri, Some(token), None));
            judge(&r, &uri)?;
        }
    }

    #[test]
    fn any_cursor_lists_only_the_callers_items(
        after in any_after(target()),
        limit in prop_oneof![4 => (1usize..4).prop_map(|n| n.to_string()), 1 => "\\PC{0,6}"],
    ) {
        let limit = enc(&limit);
        let t = target();
        let a = &t.a;
        let files = format!("/v1/files?limit={limit}&after={}", enc(&after));
        let r = runtime().block_on(t.h.call(Method::GET, &files, Some(&a.key), None));
        only(&r, &a.files, &files)?;
        let batches = format!("/v1/batches?limit={limit}&after={}", enc(&after));
        let r = runtime().block_on(t.h.call(Method::GET, &batches, Some(&a.key), None));
        only(&r, &BTreeSet::new(), &batches)?;
        let keys = format!("/admin/v1/tenants/{}/keys?limit={limit}&after={}", a.id, enc(&after));
        let r = runtime().block_on(t.h.admin(Method::GET, &keys["/admin/v1".len()..], None));
        only(&r, &a.keys, &keys)?;
    }
}
