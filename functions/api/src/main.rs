//! The tenant-facing API as a Lambda function behind API Gateway (HTTP API):
//! the same axum Router as `tenantai dev`, with the authorizer's context trusted.
//!
//! Usage events leave through an internal extension that flushes them after
//! each response; where the extension cannot register, each response waits for
//! its flush instead, so no event is left in a frozen environment.

use lambda_http::Error;
use tenantai::lambda::{app_from_env, init_logging, register_usage_flush, with_tenant_context};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let app = app_from_env().await?;
    let sink = app.usage.clone();
    let flusher = match register_usage_flush(sink.clone()).await {
        Ok(run) => Some(run),
        Err(e) => {
            tracing::warn!(error = %e, "usage flush extension not registered; flushing inline after each response");
            None
        }
    };
    let inline = flusher.is_none();
    let router = tenantai::http::host(tenantai::http::api::router(app));
    let service = tower::ServiceBuilder::new()
        .map_request(with_tenant_context)
        .and_then(move |resp| {
            let sink = sink.clone();
            async move {
                if inline {
                    sink.flush().await;
                } else {
                    sink.request_done();
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
        .service(router);
    match flusher {
        Some(extension) => {
            tokio::try_join!(lambda_http::run(service), extension)?;
            Ok(())
        }
        None => lambda_http::run(service).await,
    }
}
