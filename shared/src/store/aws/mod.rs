//! AWS adapters: DynamoDB (one table), SQS (queues with redrive to DLQs) and S3.
//!
//! Configured by the standard AWS environment: `AWS_ENDPOINT_URL` (or the
//! per-service variants), `AWS_REGION`, and the default credentials chain.

mod blobs;
mod queue;
mod table;
pub mod tenant_scoped;

pub use blobs::S3Blobs;
pub use queue::SqsQueue;
pub use table::DynamoTable;
pub use tenant_scoped::{TenantScopedTable, TenantSessions};

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

use super::{Resources, StoreError, StoreResult};

/// The SDK configuration from the environment, with one rustls (ring) HTTPS client
/// shared by every service client. Build it once per process.
pub async fn sdk_config() -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await
}

/// An S3 client; path-style addressing when a custom endpoint is configured
/// (emulators and S3-compatible stores do not resolve bucket subdomains).
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(config.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A failed SDK call as a backend error: the service's code and message when it
/// answered, the whole error chain otherwise (connection refused, timeouts).
pub(crate) fn sdk_err<E, R>(err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(e) => StoreError::Backend(format!(
            "{}: {}",
            e.code().unwrap_or("ServiceError"),
            e.message().unwrap_or("no message")
        )),
        None => StoreError::Backend(DisplayErrorContext(&err).to_string()),
    }
}

/// A request the SDK refused to build (a missing required field).
pub(crate) fn build_err(err: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Invalid(err.to_string())
}

/// Creates the table (with TTL on `_expires_at`), the queues with redrive
/// policies to their dead-letter queues, and the bucket, each only when absent.
pub async fn provision(config: &SdkConfig, res: &Resources) -> StoreResult<()> {
    provision_table(&aws_sdk_dynamodb::Client::new(config), &res.table).await?;
    provision_queues(&aws_sdk_sqs::Client::new(config), res).await?;
    provision_bucket(
        &s3_client(config),
        &res.bucket,
        config.region().map(|r| r.as_ref()),
    )
    .await
}

async fn provision_table(client: &aws_sdk_dynamodb::Client, table: &str) -> StoreResult<()> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_err)
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build_err)
    };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) => {}
        Err(e) => return Err(sdk_err(e)),
    }
    // Wait until the table is usable (immediate on emulators, seconds on AWS).
    for _ in 0..120 {
        let desc = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(sdk_err)?;
        let status = desc.table().and_then(|t| t.table_status());
        if status == Some(&aws_sdk_dynamodb::types::TableStatus::Active) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let ttl = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(sdk_err)?;
    let enabled = ttl
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status())
        .is_some_and(|s| s.as_str() == "ENABLED" || s.as_str() == "ENABLING");
    if !enabled {
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(crate::store::table::EXPIRES_ATTR)
            .enabled(true)
            .build()
            .map_err(build_err)?;
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(spec)
            .send()
            .await
            .map_err(sdk_err)?;
    }
    Ok(())
}

async fn provision_queues(client: &aws_sdk_sqs::Client, res: &Resources) -> StoreResult<()> {
    for spec in &res.queues {
        let mut create = client.create_queue().queue_name(&spec.name);
        if let Some(dl) = &spec.dead_letter {
            let dlq = client
                .create_queue()
                .queue_name(&dl.queue)
                .send()
                .await
                .map_err(sdk_err)?;
            let attrs = client
                .get_queue_attributes()
                .queue_url(dlq.queue_url().unwrap_or_default())
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(sdk_err)?;
            let arn = attrs
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                .ok_or_else(|| StoreError::Backend(format!("queue {} has no ARN", dl.queue)))?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": dl.max_receives.to_string(),
            });
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        create.send().await.map_err(sdk_err)?;
    }
    Ok(())
}

async fn provision_bucket(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    region: Option<&str>,
) -> StoreResult<()> {
    let mut create = client.create_bucket().bucket(bucket);
    if let Some(region) = region.filter(|r| *r != "us-east-1") {
        let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
            .build();
        create = create.create_bucket_configuration(location);
    }
    match create.send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
        {
            Ok(())
        }
        Err(e) => Err(sdk_err(e)),
    }
}
