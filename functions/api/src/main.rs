//! The tenant-facing API as a Lambda function behind API Gateway (HTTP API):
//! the same axum Router as `tenantai dev`, with the authorizer's context trusted.

use lambda_http::request::RequestContext;
use lambda_http::{Error, Request, RequestExt};
use tenantai::lambda::{app_from_env, context_from_authorizer, init_logging};

/// Copies the authorizer's tenant context from the API Gateway event into the request.
fn with_tenant_context(mut req: Request) -> Request {
    let ctx = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(c)) => c
            .authorizer
            .as_ref()
            .and_then(|a| context_from_authorizer(&a.fields)),
        _ => None,
    };
    if let Some(ctx) = ctx {
        req.extensions_mut().insert(ctx);
    }
    req
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let app = app_from_env().await?;
    let router = tenantai::http::host(tenantai::http::api::router(app));
    let service = tower::ServiceBuilder::new()
        .map_request(with_tenant_context)
        .service(router);
    lambda_http::run(service).await
}
