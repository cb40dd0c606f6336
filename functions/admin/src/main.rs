//! The admin API (`/admin/v1`) as a Lambda function. On AWS it sits behind IAM
//! auth as well as its own admin tokens (then sent in `x-tenantai-admin-token`,
//! since SigV4 takes `Authorization`; the caller's IAM ARN goes into the audit log).
//! It carries the S3 client: GDPR exports and erasure keep and delete objects.

use lambda_http::Error;
use tenantai::lambda::{admin_app_from_env, init_logging, with_tenant_context};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let app = admin_app_from_env().await?;
    let router = tenantai::http::host_with(tenantai::http::admin::router(app.clone()), &app.config);
    // A REST API request's path arrives with its stage in front: take it off.
    let service = tower::ServiceBuilder::new()
        .map_request(with_tenant_context)
        .service(router);
    lambda_http::run(service).await
}
