//! The `Blobs` port on S3. Objects above 16 MiB go up by multipart upload, one
//! part in memory at a time; downloads stream the response body.

use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::sdk_err;
use crate::store::blobs::{check_key, check_list, check_range};
use crate::store::{BlobMeta, BlobReader, Blobs, Page, StoreError, StoreResult};

/// Size of one multipart part, and the largest object sent in a single PUT.
pub const PART_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

impl S3Blobs {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        S3Blobs {
            client,
            bucket: bucket.into(),
        }
    }

    async fn put_once(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(())
    }

    /// Uploads `first`, `second` and the rest of `reader` as parts of one object.
    async fn put_multipart(
        &self,
        key: &str,
        first: Vec<u8>,
        second: Vec<u8>,
        reader: &mut BlobReader,
    ) -> StoreResult<u64> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(sdk_err)?;
        let upload_id = upload
            .upload_id
            .ok_or_else(|| StoreError::Backend("multipart upload has no id".into()))?;
        let result = self
            .upload_parts(key, &upload_id, first, second, reader)
            .await;
        if result.is_err() {
            // Leave no orphaned parts behind (billed storage on S3).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Vec<u8>,
        second: Vec<u8>,
        reader: &mut BlobReader,
    ) -> StoreResult<u64> {
        let mut parts = Vec::new();
        let mut total = 0u64;
        let mut pending = std::collections::VecDeque::from([first, second]);
        loop {
            let chunk = match pending.pop_front() {
                Some(c) => c,
                None => read_chunk(reader).await?,
            };
            if chunk.is_empty() {
                break;
            }
            let number = parts.len() as i32 + 1;
            total += chunk.len() as u64;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(sdk_err)?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag)
                    .set_checksum_crc32(out.checksum_crc32)
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(total)
    }
}

/// Reads up to one part's worth of bytes (fewer only at the end of the stream).
async fn read_chunk(reader: &mut BlobReader) -> StoreResult<Vec<u8>> {
    let mut buf = Vec::with_capacity(PART_BYTES);
    reader.take(PART_BYTES as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

fn not_found(key: &str) -> StoreError {
    StoreError::NotFound(format!("no blob under key {key:?}"))
}

#[async_trait]
impl Blobs for S3Blobs {
    async fn put(&self, key: &str, data: Bytes) -> StoreResult<()> {
        check_key(key)?;
        if data.len() <= PART_BYTES {
            return self.put_once(key, data).await;
        }
        let reader: BlobReader = Box::pin(std::io::Cursor::new(data));
        self.put_stream(key, reader).await.map(|_| ())
    }

    async fn put_stream(&self, key: &str, mut reader: BlobReader) -> StoreResult<u64> {
        check_key(key)?;
        let first = read_chunk(&mut reader).await?;
        if first.len() < PART_BYTES {
            let size = first.len() as u64;
            self.put_once(key, Bytes::from(first)).await?;
            return Ok(size);
        }
        let second = read_chunk(&mut reader).await?;
        if second.is_empty() {
            self.put_once(key, Bytes::from(first)).await?;
            return Ok(PART_BYTES as u64);
        }
        self.put_multipart(key, first, second, &mut reader).await
    }

    async fn get_stream(&self, key: &str, range: Option<Range<u64>>) -> StoreResult<BlobReader> {
        check_key(key)?;
        if let Some(r) = &range {
            check_range(r)?;
        }
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(
                range
                    .as_ref()
                    .map(|r| format!("bytes={}-{}", r.start, r.end - 1)),
            )
            .send()
            .await;
        match res {
            Ok(out) => Ok(Box::pin(out.body.into_async_read())),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_no_such_key()) => {
                Err(not_found(key))
            }
            Err(e) if e.code() == Some("InvalidRange") => Err(StoreError::Invalid(format!(
                "range {:?} is outside blob {key:?}",
                range.unwrap_or_default()
            ))),
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn head(&self, key: &str) -> StoreResult<Option<BlobMeta>> {
        check_key(key)?;
        let res = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Some(BlobMeta {
                key: key.to_string(),
                size: out.content_length.unwrap_or(0).max(0) as u64,
                modified: out.last_modified.map(|t| t.secs()),
            })),
            Err(e) if e.as_service_error().is_some_and(|x| x.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_err(e)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Page<BlobMeta>> {
        check_list(prefix, limit)?;
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(limit as i32)
            .set_continuation_token(cursor.map(str::to_string))
            .send()
            .await
            .map_err(sdk_err)?;
        let items = out
            .contents
            .unwrap_or_default()
            .into_iter()
            .map(|o| BlobMeta {
                key: o.key.unwrap_or_default(),
                size: o.size.unwrap_or(0).max(0) as u64,
                modified: o.last_modified.map(|t| t.secs()),
            })
            .collect();
        let next = out
            .next_continuation_token
            .filter(|_| out.is_truncated.unwrap_or(false));
        Ok(Page { items, next })
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(sdk_err)?;
        Ok(())
    }
}
