//! The API Gateway HTTP API Lambda authorizer (simple response format): an API
//! key or JWT in, `isAuthorized` and {tenant_id, key_id, tier, scopes} out.
//! Answers are cached in memory (positive and negative) for
//! `TENANTAI_AUTH_CACHE_SECS` (default 30): a revoked key stops working within that time.

use std::time::Duration;

use lambda_http::aws_lambda_events::apigw::ApiGatewayV2CustomAuthorizerV2Request;
use lambda_http::lambda_runtime::{self, service_fn, LambdaEvent};
use lambda_http::Error;
use tenantai::lambda::{app_from_env, authorize, init_logging};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let ttl = std::env::var("TENANTAI_AUTH_CACHE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let app = app_from_env().await?;
    let auth = app.auth.clone().with_cache(Duration::from_secs(ttl));
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayV2CustomAuthorizerV2Request>| {
            let auth = auth.clone();
            async move { Ok::<_, Error>(authorize(&auth, &event.payload).await) }
        },
    ))
    .await
}
