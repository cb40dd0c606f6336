//! The one error type of the storage ports.

/// What a storage operation can fail with. Adapters map their native errors
/// onto these variants so domain code never sees an SDK or SQLite error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write's condition did not hold; nothing was changed.
    #[error("conditional check failed")]
    ConditionFailed,
    /// A transaction was cancelled because operation `index` failed its condition;
    /// nothing in the transaction was applied.
    #[error("transaction cancelled: operation {index} failed its condition")]
    TransactionCancelled { index: usize },
    /// The object, message or item does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request itself is malformed (bad key, too many items, out-of-range values).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The backend failed (I/O, network, throttling); the operation may be retried.
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn backend(err: impl std::fmt::Display) -> Self {
        StoreError::Backend(err.to_string())
    }
}

impl From<std::io::Error> for StoreError {
    fn from(err: std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(err.to_string()),
            _ => StoreError::Backend(err.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
