//! The tenant API's Lambda authorizer: an API key or JWT in, the tenant context
//! {tenant_id, key_id, tier, scopes} out. It answers both formats API Gateway
//! sends: a REST API REQUEST authorizer (an event with `methodArn`; an IAM policy
//! allowing the stage, or `Unauthorized` for a 401) and an HTTP API authorizer
//! (simple responses, `isAuthorized`).
//! Answers are cached in memory (positive and negative) for
//! `TENANTAI_AUTH_CACHE_SECS` (default 30): a revoked key stops working within that time.

use std::time::Duration;

use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayV2CustomAuthorizerV2Request,
};
use lambda_http::lambda_runtime::{self, service_fn, LambdaEvent};
use lambda_http::Error;
use serde_json::Value;
use tenantai::lambda::{app_from_env, authorize, authorize_rest, init_logging};
use tenantai::tenancy::auth::Authenticator;

async fn handle(auth: &Authenticator, event: Value) -> Result<Value, Error> {
    if event.get("methodArn").is_some() {
        let event: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_value(event)?;
        return Ok(authorize_rest(auth, &event).await?);
    }
    let event: ApiGatewayV2CustomAuthorizerV2Request = serde_json::from_value(event)?;
    Ok(serde_json::to_value(authorize(auth, &event).await)?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let ttl = std::env::var("TENANTAI_AUTH_CACHE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let app = app_from_env().await?;
    let auth = app.auth.clone().with_cache(Duration::from_secs(ttl));
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let auth = auth.clone();
        async move { handle(&auth, event.payload).await }
    }))
    .await
}
