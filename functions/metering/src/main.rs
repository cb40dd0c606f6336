//! The metering function: SQS-triggered by the usage queue. It folds each batch
//! of usage events into the per-tenant aggregates exactly once and answers with
//! partial batch failures (the event source mapping must enable
//! `ReportBatchItemFailures`), so one failing record never redelivers its
//! neighbours; a malformed event is moved to the dead-letter queue.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use tenantai::lambda::{init_logging, metering_from_env, sqs_batch};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let (meter, dlq) = metering_from_env().await?;
    let (meter, dlq) = (&meter, dlq.as_ref());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(sqs_batch(meter, dlq, event.payload).await)
    }))
    .await
}
