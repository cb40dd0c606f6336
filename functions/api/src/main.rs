//! The tenant-facing API as a Lambda function behind API Gateway (HTTP API):
//! the same axum Router as `tenantai dev`, with the authorizer's context trusted.

use lambda_http::Error;
use tenantai::lambda::{app_from_env, init_logging, with_tenant_context};

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
