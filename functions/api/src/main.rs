//! The tenant-facing API as a Lambda function behind API Gateway (a REST API whose
//! integrations stream): the same axum Router as `tenantai dev`, with the
//! authorizer's context trusted, run under lambda_http's streaming runner so that
//! a chat stream's events reach the client as they are generated.
//!
//! Usage events leave through an internal extension that flushes them after each
//! request's body has ended (a stream bills on its last event, or when the client
//! cut it off); where the extension cannot register, each body waits for its flush
//! before it ends instead, so no event is left in a frozen environment.

use lambda_http::Error;
use tenantai::lambda::streaming::EndOfRequest;
use tenantai::lambda::{api_app_from_env, init_logging, register_usage_flush, with_tenant_context};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let app = api_app_from_env().await?;
    let sink = app.usage.clone();
    let flusher = match register_usage_flush(sink.clone()).await {
        Ok(run) => Some(run),
        Err(e) => {
            tracing::warn!(error = %e, "usage flush extension not registered; each response waits for its flush");
            None
        }
    };
    let end = EndOfRequest::new(sink, flusher.is_none());
    let router = tenantai::http::host_with(tenantai::http::api::router(app.clone()), &app.config);
    let service = tower::ServiceBuilder::new()
        .map_request(with_tenant_context)
        .map_response(move |resp| end.wrap(resp))
        .service(router);
    let runtime = lambda_http::run_with_streaming_response(service);
    match flusher {
        Some(extension) => {
            tokio::try_join!(runtime, extension)?;
            Ok(())
        }
        None => runtime.await,
    }
}
