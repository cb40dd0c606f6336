//! The cost-alerts function, run by an EventBridge schedule: for every tenant,
//! month-to-date spend and a forecast against its budget; each threshold crossed
//! or forecast to be crossed raises one alert per month, to the SNS topic
//! `TENANTAI_ALERTS_TOPIC_ARN` and to the tenant's signed webhook.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use tenantai::lambda::{alerts_from_env, init_logging};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let alerts = alerts_from_env().await?;
    let alerts = &alerts;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move {
            // The schedule's time is the run's "now", so a retried run judges the same moment.
            let now = event
                .payload
                .time
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.timestamp()).ok())
                .unwrap_or_else(time::OffsetDateTime::now_utc);
            let summary = alerts.run(now).await?;
            tracing::info!(?summary, "cost alerts run");
            Ok::<_, Error>(serde_json::to_value(summary)?)
        },
    ))
    .await
}
