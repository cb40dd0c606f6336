//! Storage ports and their adapters (see DESIGN.md, "Ports and adapters").

pub mod aws;
pub mod blobs;
pub mod counting;
pub mod embedded;
mod error;
pub mod queue;
mod storage;
pub mod table;

pub use blobs::{BlobMeta, BlobReader, Blobs};
pub use error::{StoreError, StoreResult};
pub use queue::{Message, Outgoing, Queue, Receive};
pub use storage::Storage;
pub use table::{Attrs, Cond, Item, Key, Page, Query, Scan, Table, TxOp, Update, Write};

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// An opaque page token holding a string (the last key of a page).
pub fn encode_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

/// The string a token from [`encode_token`] holds; `None` when it is not one.
pub fn decode_token(token: &str) -> Option<String> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// The resources one deployment uses: a single table, a bucket and named queues.
#[derive(Clone, Debug)]
pub struct Resources {
    pub table: String,
    pub bucket: String,
    pub queues: Vec<QueueSpec>,
}

/// A queue and, optionally, where its messages go after too many receives.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub name: String,
    pub dead_letter: Option<DeadLetter>,
}

#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Name of the dead-letter queue (created by provisioning).
    pub queue: String,
    /// A message received more than this many times moves to the dead-letter queue.
    pub max_receives: u32,
}

impl Resources {
    /// The resources of a deployment, named from a prefix (`tenantai` by default).
    pub fn named(prefix: &str) -> Self {
        let with_dlq = |name: &str| QueueSpec {
            name: format!("{prefix}-{name}"),
            dead_letter: Some(DeadLetter {
                queue: format!("{prefix}-{name}-dlq"),
                max_receives: 5,
            }),
        };
        Resources {
            table: prefix.to_string(),
            bucket: format!("{prefix}-data"),
            queues: vec![with_dlq("usage"), with_dlq("jobs")],
        }
    }
}

/// Seconds since the Unix epoch, the unit of item expiry.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
