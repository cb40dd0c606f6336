//! The admin API's document: `/admin/v1` (tenants, keys, models, usage, the
//! audit trail, GDPR export and erasure, the console's reads), with an admin
//! token.

use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::http::admin::ADMIN_TOKEN_HEADER;
use crate::http::{admin, console, ops, registry, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tenantai admin API",
        description = "The operator's API: tenants, their keys, model overrides and usage; the \
            model registry; the audit trail; GDPR export and erasure; the console's reads. \
            Every change writes an audit entry. Every error answers \
            `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        admin::create_tenant,
        admin::list_tenants,
        admin::get_tenant,
        admin::update_tenant,
        ops::erase_tenant,
        admin::rotate_webhook_secret,
        admin::create_key,
        admin::list_keys,
        admin::revoke_key,
        admin::set_override,
        admin::clear_override,
        usage::tenant_usage,
        usage::all_usage,
        registry::register_model,
        registry::list_models,
        registry::get_version,
        registry::update_version,
        registry::promote,
        registry::rollback,
        ops::list_audit,
        ops::export_audit,
        ops::verify_audit,
        ops::export_tenant,
        ops::download_export,
        ops::erasure_status,
        console::views::tenant_chart,
        console::views::tenant_batches,
        console::views::tenant_alerts,
        super::admin_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "tenants", description = "Tenants, their settings and model overrides"),
        (name = "keys", description = "A tenant's API keys"),
        (name = "usage", description = "Metered usage and spend"),
        (name = "models", description = "The model registry: versions, canaries, promotion"),
        (name = "audit", description = "The hash-chained audit trail"),
        (name = "gdpr", description = "A tenant's data export and erasure"),
        (name = "console", description = "What the console shows of a tenant"),
        (name = "meta", description = "This description"),
    ),
)]
struct AdminApi;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An admin token (`tenantai dev` prints one; `TENANTAI_ADMIN_TOKEN`): \
                         `Authorization: Bearer <token>`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                ADMIN_TOKEN_HEADER,
                "The admin token in its own header, where `Authorization` carries an AWS \
                 signature (the admin API behind API Gateway's IAM auth).",
            ))),
        );
        let either = [
            SecurityRequirement::new("admin_token", Vec::<String>::new()),
            SecurityRequirement::new("admin_token_header", Vec::<String>::new()),
        ];
        super::secure_all(doc, &either);
    }
}

/// The admin API's document.
pub fn document() -> utoipa::openapi::OpenApi {
    AdminApi::openapi()
}
