//! Operations over a whole deployment, off the request path: logical backups
//! of the table to Blobs with retention, verified and resumable restores, and
//! per-tenant GDPR export and erasure.

pub mod backup;
pub mod erase;
pub mod export;
pub mod kinds;
pub mod restore;
pub mod stream;
mod tar;

use crate::error::ApiError;
use crate::store::StoreError;

/// What an operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No complete backup (with a manifest) under that id, or none at all.
    #[error("{0}")]
    NoBackup(String),
    /// A part of a backup is missing, its checksum or size does not match the
    /// manifest, or its content is unreadable.
    #[error("backup part {part} is {reason}")]
    BadPart { part: String, reason: String },
    /// The manifest is unreadable or of an unknown format.
    #[error("backup manifest {key} is unusable: {reason}")]
    BadManifest { key: String, reason: String },
    /// The target table holds items and `--force` was not given.
    #[error("{0}")]
    NotEmpty(String),
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::Store(e) => e.into(),
            OpsError::Api(e) => e,
            OpsError::NotEmpty(m) => ApiError::Conflict(m),
            OpsError::Invalid(m) => ApiError::invalid(m),
            OpsError::NoBackup(m) => ApiError::not_found(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

pub type OpsResult<T> = Result<T, OpsError>;

/// Where a long operation reports how far it got (the CLI draws a progress bar).
pub trait Progress: Send + Sync {
    /// A new phase with this many units of work (0 when unknown).
    fn phase(&self, _name: &str, _total: u64) {}
    /// `n` more units done.
    fn advance(&self, _n: u64) {}
}

/// Reports nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (UTC).
pub fn iso8601(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_times() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso8601(1_795_543_200), "2026-11-24T18:00:00Z");
    }
}
