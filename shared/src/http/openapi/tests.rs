//! The documents match the routers, and the committed copies match the documents.

use std::path::PathBuf;

use serde_json::Value;

use super::{admin_document, tenant_document};

fn committed(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

/// Compares a committed copy with the generated document; `TENANTAI_BLESS=1`
/// writes the generated one instead.
fn check_copy(name: &str, generated: &str) {
    let path = committed(name);
    if std::env::var("TENANTAI_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/{name} is stale (or missing): the API's types or routes changed. \
         Regenerate the committed copies with\n\n    \
         TENANTAI_BLESS=1 cargo test -p tenantai --lib http::openapi\n\nand commit them."
    );
}

#[test]
fn committed_copies_are_current() {
    check_copy("openapi.json", tenant_document());
    check_copy("openapi-admin.json", admin_document());
}

fn operations(doc: &str) -> Vec<(String, String)> {
    let doc: Value = serde_json::from_str(doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            ops.push((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[test]
fn the_tenant_document_lists_every_v1_route() {
    let ops = operations(tenant_document());
    for (method, path) in [
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{id}"),
        ("GET", "/v1/usage"),
        ("GET", "/v1/usage/chart"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("GET", "/v1/files/{id}"),
        ("DELETE", "/v1/files/{id}"),
        ("GET", "/v1/files/{id}/content"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches"),
        ("GET", "/v1/batches/{id}"),
        ("POST", "/v1/batches/{id}/cancel"),
        ("GET", "/openapi.json"),
    ] {
        assert!(
            ops.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(ops.len(), 16, "{ops:?}");
}

#[test]
fn the_admin_document_lists_every_admin_route() {
    let ops = operations(admin_document());
    let tenant = "/admin/v1/tenants/{id}";
    let version = "/admin/v1/models/{model}/versions/{version}";
    let expected = [
        ("POST", "/admin/v1/tenants".to_string()),
        ("GET", "/admin/v1/tenants".into()),
        ("GET", tenant.into()),
        ("PATCH", tenant.into()),
        ("DELETE", tenant.into()),
        ("POST", format!("{tenant}/alert-webhook/rotate-secret")),
        ("POST", format!("{tenant}/keys")),
        ("GET", format!("{tenant}/keys")),
        ("DELETE", format!("{tenant}/keys/{{key_id}}")),
        ("PUT", format!("{tenant}/model-overrides/{{model}}")),
        ("DELETE", format!("{tenant}/model-overrides/{{model}}")),
        ("GET", format!("{tenant}/usage")),
        ("GET", "/admin/v1/usage".into()),
        ("POST", "/admin/v1/models".into()),
        ("GET", "/admin/v1/models".into()),
        ("GET", version.into()),
        ("PATCH", version.into()),
        ("POST", format!("{version}/promote")),
        ("POST", "/admin/v1/models/{model}/rollback".into()),
        ("GET", "/admin/v1/audit".into()),
        ("GET", "/admin/v1/audit/export".into()),
        ("GET", "/admin/v1/audit/verify".into()),
        ("POST", format!("{tenant}/export")),
        ("GET", format!("{tenant}/exports/{{export_id}}")),
        ("GET", format!("{tenant}/erasure")),
        ("GET", format!("{tenant}/usage/chart")),
        ("GET", format!("{tenant}/batches")),
        ("GET", format!("{tenant}/alerts")),
        ("GET", "/admin/v1/openapi.json".into()),
    ];
    for (method, path) in &expected {
        assert!(
            ops.contains(&(method.to_string(), path.clone())),
            "{method} {path} is not documented"
        );
    }
    assert_eq!(ops.len(), expected.len(), "{ops:?}");
}

#[test]
fn credentials_are_required_everywhere_but_the_documents() {
    for doc in [tenant_document(), admin_document()] {
        let doc: Value = serde_json::from_str(doc).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let open = op["security"] == serde_json::json!([{}]);
                assert_eq!(open, path.ends_with("/openapi.json"), "{method} {path}");
                assert!(op["responses"]["default"].is_object(), "{method} {path}");
                assert_eq!(
                    op["responses"].get("401").is_some(),
                    !open,
                    "{method} {path}"
                );
            }
        }
    }
}
