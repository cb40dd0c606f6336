//! The admin API (`/admin/v1`) as a Lambda function. On AWS it sits behind IAM
//! auth as well as its own admin bearer tokens.

use lambda_http::Error;
use tenantai::lambda::{app_from_env, init_logging};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let app = app_from_env().await?;
    lambda_http::run(tenantai::http::host(tenantai::http::admin::router(app))).await
}
