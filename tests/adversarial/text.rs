//! Text that reaches a terminal or a page: every human-readable field refuses
//! control, bidirectional and invisible characters and overlong values (400
//! naming the field, nothing stored), and the escaping the CLI and the console
//! use leaves none of them in what is shown.

use axum::http::Method;
use proptest::prelude::*;
use serde_json::{json, Value};
use tenantai::tenancy::text::{escape_html, escape_terminal, forbidden};

use crate::harness::Harness;

/// Values no label may hold.
fn hostile() -> Vec<String> {
    [
        "nul\0byte",
        "\u{1b}[31mred\u{1b}[0m",
        "\u{1b}]0;title\u{7}",
        "evil\u{202e}gnp.exe",
        "isolate\u{2067}x\u{2069}",
        "mark\u{200f}",
        "zero\u{200b}width",
        "bom\u{feff}",
        "line\nbreak",
        "carriage\rreturn",
        "tab\tstop",
        "del\u{7f}",
        "c1\u{9b}31m",
        "sep\u{2028}arator",
        "tag\u{e0041}s",
        "non\u{fffe}char",
        "",
        "   ",
    ]
    .into_iter()
    .map(String::from)
    .chain(["x".repeat(201)])
    .collect()
}

/// Where labels are set: (method, path, the body setting `value`, the field).
async fn label_fields(
    h: &Harness,
) -> Vec<(Method, String, Box<dyn Fn(&str) -> Value>, &'static str)> {
    let t = h.tenant("Labels", "pro").await;
    vec![
        (
            Method::POST,
            "/admin/v1/tenants".to_string(),
            Box::new(|v: &str| json!({"name": v})),
            "name",
        ),
        (
            Method::PATCH,
            format!("/admin/v1/tenants/{t}"),
            Box::new(|v: &str| json!({"name": v})),
            "name",
        ),
        (
            Method::POST,
            format!("/admin/v1/tenants/{t}/keys"),
            Box::new(|v: &str| json!({"name": v})),
            "name",
        ),
        (
            Method::POST,
            "/admin/v1/models".to_string(),
            Box::new(|v: &str| {
                json!({"model": "m", "version": "1", "backend": "worker", "endpoint": v,
                       "price_per_1k_tokens_micros": 1, "status": "live"})
            }),
            "endpoint",
        ),
        (
            Method::POST,
            "/admin/v1/models".to_string(),
            Box::new(|v: &str| {
                json!({"model": "m", "version": "2", "backend": "worker", "endpoint": "http://w",
                       "artifact_uri": v, "price_per_1k_tokens_micros": 1, "status": "live"})
            }),
            "artifact_uri",
        ),
    ]
}

async fn stored_text(h: &Harness) -> String {
    let tenants = h.admin(Method::GET, "/tenants?limit=100", None).await;
    let models = h.admin(Method::GET, "/models", None).await;
    format!("{}{}", tenants.ok(), models.ok())
}

#[tokio::test]
async fn labels_with_control_bidi_or_invisible_characters_are_refused() {
    let h = Harness::new().await;
    let fields = label_fields(&h).await;
    let before = stored_text(&h).await;
    for (method, path, body, field) in &fields {
        for value in hostile() {
            if *field != "name" && value.chars().count() > 200 {
                continue; // URLs may be longer than names
            }
            let r = h
                .call(
                    method.clone(),
                    path,
                    Some(&h.admin.clone()),
                    Some(body(&value)),
                )
                .await;
            r.error(400);
            assert_eq!(r.body["error"]["param"], *field, "{path} {value:?}");
        }
    }
    assert_eq!(
        before,
        stored_text(&h).await,
        "a refused label changed something"
    );
    // Honest names in any script are kept as given (trimmed).
    for name in [
        "Acme GmbH",
        "東京 株式会社",
        "Ünïcödé 🚀",
        "O'Brien & Sons <b>",
    ] {
        let r = h
            .admin(
                Method::POST,
                "/tenants",
                Some(json!({"name": format!("  {name} ")})),
            )
            .await;
        assert_eq!(r.ok()["name"], name);
    }
}

#[test]
fn what_the_terminal_and_the_page_show_is_inert() {
    for value in hostile() {
        let shown = escape_terminal(&value);
        assert!(
            !shown.chars().any(|c| forbidden(c).is_some()),
            "{value:?} -> {shown:?}"
        );
        let page = escape_html(&value);
        assert!(!page.contains('<') && !page.chars().any(|c| forbidden(c).is_some()));
    }
    assert_eq!(
        escape_html("<script>\"'&"),
        "&lt;script&gt;&quot;&#39;&amp;"
    );
}

/// A string holding a forbidden character between other characters.
fn with_forbidden() -> impl Strategy<Value = String> {
    let bad = prop_oneof![
        (0u32..0x20).prop_map(|u| char::from_u32(u).unwrap()),
        (0x7fu32..0xa0).prop_map(|u| char::from_u32(u).unwrap()),
        prop::sample::select(vec![
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{200c}',
            '\u{200d}', '\u{2060}', '\u{feff}', '\u{2028}', '\u{2029}'
        ]),
    ];
    // Inside the text: at its ends, whitespace among them is trimmed away.
    ("[a-zA-Z0-9]{1,20}", bad, "[a-zA-Z0-9]{1,20}").prop_map(|(a, c, b)| format!("{a}{c}{b}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_label_with_a_forbidden_character_is_refused(s in with_forbidden()) {
        prop_assert!(tenantai::tenancy::text::check_label("name", &s, 200).is_err(), "{:?}", s);
        prop_assert!(!escape_terminal(&s).chars().any(|c| forbidden(c).is_some()));
    }

    #[test]
    fn what_a_label_keeps_never_holds_a_forbidden_character(s in any::<String>()) {
        if let Ok(kept) = tenantai::tenancy::text::check_label("name", &s, 200) {
            prop_assert!(!kept.chars().any(|c| forbidden(c).is_some()), "{:?}", kept);
        }
    }

    #[test]
    fn printable_labels_round_trip(s in "[^\\p{C}\\p{Zl}\\p{Zp}]{1,60}") {
        let trimmed = s.trim();
        prop_assume!(!trimmed.is_empty());
        prop_assume!(!trimmed.chars().any(|c| forbidden(c).is_some()));
        prop_assert_eq!(tenantai::tenancy::text::check_label("name", &s, 200).unwrap(), trimmed);
    }

    #[test]
    fn escaping_never_leaves_a_forbidden_character(s in any::<String>()) {
        prop_assert!(!escape_terminal(&s).chars().any(|c| forbidden(c).is_some()));
        prop_assert!(!escape_html(&s).chars().any(|c| forbidden(c).is_some() || c == '<' || c == '>'));
    }
}
