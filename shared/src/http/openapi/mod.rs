//! The API's OpenAPI 3.1 documents, generated from the handlers' own types
//! (`utoipa`): the tenant API ([`tenant`], served at `GET /openapi.json`) and the
//! admin API ([`admin`], at `GET /admin/v1/openapi.json`). Both are served
//! without credentials (they describe the API and hold no data); copies are
//! committed as `docs/openapi.json` and `docs/openapi-admin.json`, and a test
//! fails when a copy is stale (`TENANTAI_BLESS=1` rewrites them).

pub mod admin;
pub mod chat;
pub mod tenant;

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::ToSchema;

/// Raw bytes of an answer (a file's content, an export archive).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(#[allow(dead_code)] Vec<u8>);

/// The tenant API's document, as pretty-printed JSON (keys in a stable order).
pub fn tenant_document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| pretty(tenant::document()))
}

/// The admin API's document, as pretty-printed JSON.
pub fn admin_document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| pretty(admin::document()))
}

fn pretty(doc: OpenApi) -> String {
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

fn json(text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

/// The tenant API's description: this document.
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "get_openapi", tag = "meta",
    security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)),
)]
pub async fn tenant_json() -> Response {
    json(tenant_document())
}

/// The admin API's description: this document.
#[utoipa::path(
    get, path = "/admin/v1/openapi.json", operation_id = "get_admin_openapi", tag = "meta",
    security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)),
)]
pub async fn admin_json() -> Response {
    json(admin_document())
}

/// An optional request body (`Option<T>`) is one that may be left out, not a
/// JSON `null` (which the handlers refuse): its schema is `T`'s alone.
fn absent_not_null(op: &mut Operation) {
    let Some(body) = op.request_body.as_mut() else {
        return;
    };
    for content in body.content.values_mut() {
        if let Some(RefOr::T(Schema::OneOf(one))) = &content.schema {
            let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
            if let [a, b] = one.items.as_slice() {
                let kept = if is_null(a) { b } else { a };
                if is_null(a) != is_null(b) {
                    content.schema = Some(kept.clone());
                }
            }
        }
    }
}

/// Every operation that takes credentials gets `security` (unless it declares
/// its own, as the documents themselves do: none) and a 401; every operation
/// a `default` response (any other error, in the OpenAI error shape).
fn secure_all(doc: &mut OpenApi, requirement: &[utoipa::openapi::security::SecurityRequirement]) {
    let error = || {
        ResponseBuilder::new().content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let ops: [&mut Option<Operation>; 5] = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            absent_not_null(op);
            if op.security.is_none() {
                op.security = Some(requirement.to_vec());
                op.responses.responses.insert(
                    "401".into(),
                    error()
                        .description("Missing, unknown, expired or revoked credentials")
                        .build()
                        .into(),
                );
            }
            op.responses.responses.insert(
                "default".into(),
                error()
                    .description("Any other error (403, 408, 413, 429, 500, 503, ...), in the OpenAI error shape")
                    .build()
                    .into(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
