//! Test environments: fresh, uniquely named resources on either adapter.

use std::sync::Arc;

use tenantai::store::{aws, Blobs, DeadLetter, Queue, QueueSpec, Resources, Storage, Table};
use tenantai::tenancy::secrets::Secrets;

/// A new symmetric KMS key on the emulator; returns its id.
pub async fn kms_key(sdk: &aws_config::SdkConfig) -> String {
    aws_sdk_kms::Client::new(sdk)
        .create_key()
        .description("tenantai test key")
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .key_id()
        .to_string()
}

pub struct Env {
    pub storage: Storage,
    pub res: Resources,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    /// A new vault for secrets at rest: a KMS key made on the emulator, or a
    /// key file in the embedded environment's directory.
    pub async fn secrets(&self) -> Secrets {
        match &self._dir {
            Some(dir) => {
                let name = format!("secrets-{}.key", uuid::Uuid::new_v4().simple());
                Secrets::local(&dir.path().join(name)).unwrap()
            }
            None => {
                let sdk = aws::sdk_config().await;
                Secrets::kms(&sdk, kms_key(&sdk).await)
            }
        }
    }

    /// Whether this environment runs on the AWS adapters (the emulator).
    pub fn is_aws(&self) -> bool {
        self._dir.is_none()
    }
    pub fn table(&self) -> &Arc<dyn Table> {
        &self.storage.table
    }
    pub fn blobs(&self) -> &Arc<dyn Blobs> {
        self.storage
            .blobs()
            .expect("both adapters have an object store")
    }
    /// The plain queue (no dead-letter queue).
    pub fn queue(&self) -> Arc<dyn Queue> {
        self.storage.queue(&self.res.queues[0].name).unwrap()
    }
    /// The queue that dead-letters after 2 receives, and its dead-letter queue.
    pub fn queue_with_dlq(&self) -> (Arc<dyn Queue>, Arc<dyn Queue>) {
        let spec = &self.res.queues[1];
        let dl = spec.dead_letter.as_ref().unwrap();
        (
            self.storage.queue(&spec.name).unwrap(),
            self.storage.queue(&dl.queue).unwrap(),
        )
    }
}

/// Resources with names no other test uses.
fn unique_resources() -> Resources {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Resources {
        table: format!("t-{id}"),
        bucket: format!("b-{id}"),
        queues: vec![
            QueueSpec {
                name: format!("q-{id}"),
                dead_letter: None,
            },
            QueueSpec {
                name: format!("r-{id}"),
                dead_letter: Some(DeadLetter {
                    queue: format!("r-{id}-dlq"),
                    max_receives: 2,
                }),
            },
        ],
    }
}

pub async fn embedded() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let res = unique_resources();
    let storage = Storage::embedded(dir.path(), &res).await.unwrap();
    Env {
        storage,
        res,
        _dir: Some(dir),
    }
}

/// Whether this run promised an emulator (CI, or the test script).
fn emulator_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("TENANTAI_TEST_AWS").is_some()
}

/// The AWS adapters on the emulator at `AWS_ENDPOINT_URL`. Without one, the
/// case is skipped (loudly) on a developer machine and fails under CI.
pub async fn aws() -> Option<Env> {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        assert!(
            !emulator_required(),
            "the AWS contract needs the emulator: AWS_ENDPOINT_URL is not set (run ./scripts/test.sh)"
        );
        eprintln!("SKIPPED: AWS contract case needs AWS_ENDPOINT_URL (run ./scripts/test.sh)");
        return None;
    };
    assert!(
        endpoint.starts_with("http://127.") || endpoint.starts_with("http://localhost"),
        "refusing to run storage tests against a non-loopback endpoint: {endpoint}"
    );
    let config = aws::sdk_config().await;
    let res = unique_resources();
    let storage = Storage::aws(&config, &res, true)
        .await
        .unwrap_or_else(|e| panic!("the emulator at {endpoint} is not usable: {e}"));
    Some(Env {
        storage,
        res,
        _dir: None,
    })
}
