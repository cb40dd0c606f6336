//! The `Blobs` port: objects by key with S3 semantics, large objects streamed.

use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Page, StoreError, StoreResult};

/// A stream of an object's bytes (or of the bytes to store).
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// Longest key (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Most keys one listing page may return (S3's limit).
pub const MAX_LIST_PAGE: usize = 1000;

#[derive(Clone, Debug, PartialEq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified: Option<i64>,
}

#[async_trait]
pub trait Blobs: Send + Sync {
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()>;
    /// Stores what the reader yields without holding it all in memory; returns its size.
    async fn put_stream(&self, key: &str, reader: BlobReader) -> StoreResult<u64>;
    /// Streams the object, or the byte range `[start, end)` of it.
    async fn get_stream(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<BlobReader>;
    async fn head(&self, key: &str) -> StoreResult<Option<BlobMeta>>;
    /// One page of the objects whose key starts with `prefix`, in key order.
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<BlobMeta>>;
    /// Deletes the object; deleting an absent object succeeds.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// The whole object in memory ([`StoreError::NotFound`] if absent).
    async fn get(&self, key: &str) -> StoreResult<Bytes> {
        read_all(self.get_stream(key, None).await?).await
    }

    /// The bytes `[start, end)` of the object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> StoreResult<Bytes> {
        read_all(self.get_stream(key, Some(range)).await?).await
    }
}

async fn read_all(mut reader: BlobReader) -> StoreResult<Bytes> {
    let mut buf = Vec::new();
    reader.read_to_end(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// Keys are `/`-separated segments; none may be empty, `.` or `..`, and no
/// backslash, NUL or control character may appear, so no key can name a path
/// outside the store on any backend.
pub fn check_key(key: &str) -> StoreResult<()> {
    let bad = |why: &str| {
        Err(StoreError::Invalid(format!(
            "invalid blob key {key:?}: {why}"
        )))
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return bad("a key holds 1 to 1024 bytes");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control characters and backslashes are not allowed");
    }
    for segment in key.split('/') {
        match segment {
            "" => return bad("empty path segment (leading, trailing or double '/')"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            s if s.len() > 255 => return bad("a path segment exceeds 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn check_range(range: &Range<u64>) -> StoreResult<()> {
    if range.start >= range.end {
        return Err(StoreError::Invalid(format!(
            "empty byte range {}..{}",
            range.start, range.end
        )));
    }
    Ok(())
}

pub(crate) fn check_list(prefix: &str, limit: usize) -> StoreResult<()> {
    if limit == 0 || limit > MAX_LIST_PAGE {
        return Err(StoreError::Invalid(format!(
            "page size must be between 1 and {MAX_LIST_PAGE}"
        )));
    }
    if prefix.contains("..") || prefix.starts_with('/') || prefix.contains('\\') {
        return Err(StoreError::Invalid(format!("invalid prefix {prefix:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a\\b",
            "a\0b",
        ] {
            assert!(
                matches!(check_key(bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
        for good in ["a", "files/tenant-1/file-01.jsonl", "a..b", ".hidden/x"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }
}
