//! The tenant API's document: everything under `/v1` (OpenAI-compatible), with
//! a bearer API key (`tk_...`) or, where configured, a tenant JWT.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::http::{api, batches, chat, console, files, usage};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tenantai API",
        description = "The OpenAI-compatible API a tenant calls with its API key: embeddings, chat \
            completions, models, files and batches, and its own usage. Every error answers \
            `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        api::embeddings,
        chat::chat_completions,
        api::list_models,
        api::get_model,
        usage::own_usage,
        console::views::own_chart,
        files::upload,
        files::list,
        files::get,
        files::delete,
        files::content,
        batches::create,
        batches::list,
        batches::get,
        batches::cancel,
        super::tenant_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags(
        (name = "embeddings", description = "Vectors of texts or token ids"),
        (name = "chat", description = "Chat completions, whole or streamed"),
        (name = "models", description = "The models the tenant may call (key scope `models`)"),
        (name = "usage", description = "The tenant's metered usage and budget (key scope `usage`)"),
        (name = "files", description = "Batch input and output files (key scope `batches`)"),
        (name = "batches", description = "Batch jobs over uploaded files (key scope `batches`)"),
        (name = "meta", description = "This description"),
    ),
)]
struct TenantApi;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tk_...")
                    .description(Some(
                        "A tenant API key: `Authorization: Bearer tk_...`. Each operation \
                         needs the key scope its tag names.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "tenant_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "Where the deployment trusts an identity provider (`TENANTAI_JWKS_URL`): \
                         a JWT naming the tenant, as `Authorization: Bearer <jwt>`.",
                    ))
                    .build(),
            ),
        );
        let either = [
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::new("tenant_jwt", Vec::<String>::new()),
        ];
        super::secure_all(doc, &either);
    }
}

/// The tenant API's document.
pub fn document() -> utoipa::openapi::OpenApi {
    TenantApi::openapi()
}
