//! The cost-alerts function, run by an EventBridge schedule: for every tenant,
//! month-to-date spend and a forecast against its budget; each threshold crossed
//! or forecast to be crossed raises one alert per month, to the SNS topic
//! `TENANTAI_ALERTS_TOPIC_ARN` and to the tenant's signed webhook.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use tenantai::lambda::{alerts_from_env, init_logging, scheduled_alerts};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let alerts = alerts_from_env().await?;
    let alerts = &alerts;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move {
            let summary = scheduled_alerts(alerts, event.payload).await?;
            Ok::<_, Error>(serde_json::to_value(summary)?)
        },
    ))
    .await
}
