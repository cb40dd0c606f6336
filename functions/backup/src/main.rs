//! The backup function, run by an EventBridge schedule: a logical backup of the
//! whole table to the bucket (gzipped JSONL parts from parallel scan segments,
//! then a manifest with counts and SHA-256s), then retention: the newest backup
//! of each of the last `TENANTAI_BACKUP_KEEP_DAILY` days and
//! `TENANTAI_BACKUP_KEEP_MONTHLY` months stays, the rest is deleted.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;
use tenantai::lambda::{backup_from_env, init_logging, scheduled_backup};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let (storage, config) = backup_from_env().await?;
    let (storage, config) = (&storage, &config);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent<Value>>| async move {
            Ok::<_, Error>(scheduled_backup(storage, config, event.payload).await?)
        },
    ))
    .await
}
