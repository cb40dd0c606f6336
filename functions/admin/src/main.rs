//! The admin API (`/admin/v1`) as a Lambda function. On AWS it sits behind IAM
//! auth as well as its own admin bearer tokens. It carries the S3 client: GDPR
//! exports and erasure keep and delete objects.

use lambda_http::Error;
use tenantai::lambda::{admin_app_from_env, init_logging};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let app = admin_app_from_env().await?;
    lambda_http::run(tenantai::http::host(tenantai::http::admin::router(app))).await
}
