//! One deployment's storage: the table, the bucket and the queues, on either adapter.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_config::SdkConfig;

use super::aws::{self, DynamoTable, S3Blobs, SqsQueue};
use super::embedded::{Db, DirBlobs};
use super::{Blobs, Queue, Resources, StoreError, StoreResult, Table};

/// Handles on every port of one deployment, built once per process.
#[derive(Clone)]
pub struct Storage {
    pub table: Arc<dyn Table>,
    /// Absent where a process was built without an object store (see
    /// [`Storage::aws_without_blobs`]).
    blobs: Option<Arc<dyn Blobs>>,
    queues: HashMap<String, Arc<dyn Queue>>,
    resources: Resources,
}

/// The usage queue's name ends with this (see [`Resources::named`]).
const USAGE_SUFFIX: &str = "-usage";

impl Storage {
    /// Embedded storage under `dir`: `dir/tenantai.db` (table and queues) and
    /// `dir/blobs/`. Creates whatever is missing.
    pub async fn embedded(dir: &Path, res: &Resources) -> StoreResult<Storage> {
        let db = Db::open(dir.join("tenantai.db"))?;
        db.provision_queues(&res.queues).await?;
        let mut queues: HashMap<String, Arc<dyn Queue>> = HashMap::new();
        for name in queue_names(res) {
            queues.insert(name.clone(), Arc::new(db.queue(&name).await?));
        }
        Ok(Storage {
            table: Arc::new(db.table()),
            blobs: Some(Arc::new(DirBlobs::open(dir.join("blobs"))?)),
            queues,
            resources: res.clone(),
        })
    }

    /// AWS storage; with `provision`, creates absent resources first (and checks
    /// every queue exists). Without it nothing is called until first use.
    pub async fn aws(config: &SdkConfig, res: &Resources, provision: bool) -> StoreResult<Storage> {
        let mut storage = Self::aws_without_blobs(config, res, provision).await?;
        storage.blobs = Some(Arc::new(S3Blobs::new(aws::s3_client(config), &res.bucket)));
        Ok(storage)
    }

    /// AWS storage without the object store: the table and the queues. For the
    /// Lambda functions that keep no objects, which then carry no S3 client (about
    /// a megabyte of code each). [`Storage::blobs`] answers an error.
    pub async fn aws_without_blobs(
        config: &SdkConfig,
        res: &Resources,
        provision: bool,
    ) -> StoreResult<Storage> {
        if provision {
            aws::provision(config, res).await?;
        }
        let sqs = aws_sdk_sqs::Client::new(config);
        let mut queues: HashMap<String, Arc<dyn Queue>> = HashMap::new();
        for name in queue_names(res) {
            let queue = if provision {
                SqsQueue::open(sqs.clone(), &name).await?
            } else {
                SqsQueue::new(sqs.clone(), &name)
            };
            queues.insert(name.clone(), Arc::new(queue));
        }
        Ok(Storage {
            table: Arc::new(DynamoTable::new(
                aws_sdk_dynamodb::Client::new(config),
                &res.table,
            )),
            blobs: None,
            queues,
            resources: res.clone(),
        })
    }

    /// The same storage with the deployment's bucket as its object store.
    pub fn with_blobs(mut self, config: &SdkConfig) -> Storage {
        self.blobs = Some(Arc::new(S3Blobs::new(
            aws::s3_client(config),
            &self.resources.bucket,
        )));
        self
    }

    /// The same storage with each tenant's table items reached with credentials of
    /// `role_arn` assumed for that tenant (session tag `TenantId`), and platform items
    /// with this process's own (see [`aws::tenant_scoped`]).
    pub fn with_tenant_credentials(mut self, config: &SdkConfig, role_arn: &str) -> Storage {
        let sessions = aws::TenantSessions::new(config, role_arn, &self.resources.table);
        self.table = Arc::new(aws::TenantScopedTable::new(self.table, sessions));
        self
    }

    /// The names of the deployment's resources.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The object store.
    pub fn blobs(&self) -> StoreResult<&Arc<dyn Blobs>> {
        self.blobs.as_ref().ok_or_else(|| {
            StoreError::Backend("this process has no object store configured".into())
        })
    }

    /// The usage queue and its dead-letter queue.
    pub fn usage_queues(&self) -> StoreResult<(Arc<dyn Queue>, Arc<dyn Queue>)> {
        self.queue_pair(USAGE_SUFFIX)
    }

    /// The queue whose name ends with `suffix`, and its dead-letter queue.
    pub fn queue_pair(&self, suffix: &str) -> StoreResult<(Arc<dyn Queue>, Arc<dyn Queue>)> {
        let spec = self
            .resources
            .queues
            .iter()
            .find(|q| q.name.ends_with(suffix))
            .ok_or_else(|| {
                StoreError::NotFound(format!("no '*{suffix}' queue in this deployment"))
            })?;
        let dlq = spec.dead_letter.as_ref().ok_or_else(|| {
            StoreError::NotFound(format!("queue '{}' has no dead-letter queue", spec.name))
        })?;
        Ok((self.queue(&spec.name)?, self.queue(&dlq.queue)?))
    }

    /// A queue (or dead-letter queue) of the deployment, by name.
    pub fn queue(&self, name: &str) -> StoreResult<Arc<dyn Queue>> {
        self.queues.get(name).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("queue '{name}' is not part of this deployment"))
        })
    }
}

fn queue_names(res: &Resources) -> impl Iterator<Item = String> + '_ {
    res.queues.iter().flat_map(|q| {
        std::iter::once(q.name.clone()).chain(q.dead_letter.as_ref().map(|d| d.queue.clone()))
    })
}
