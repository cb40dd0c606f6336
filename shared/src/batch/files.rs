//! Files: a record per file under `FILE#<tenant>` and its bytes in Blobs at
//! `files/<tenant>/<id>`, streamed in and out (never whole in memory). Uploads
//! of `purpose=batch` learn each line's bound on the way in (for the batch's
//! estimate) and stop at the tier's size and line limits.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::lines::{FileStats, LineError, Scanner};
use super::{new_id, plausible_id, BatchLimits};
use crate::error::{ApiError, ApiResult};
use crate::records::{from_item, to_attrs};
use crate::store::table::cursor_after;
use crate::store::{BlobReader, Blobs, Cond, Item, Key, Query, StoreError, Table};

/// How long batch files live by default (OpenAI's 30 days).
pub const DEFAULT_TTL_SECS: i64 = 30 * 24 * 3600;
/// The range `expires_after[seconds]` may take.
pub const TTL_RANGE: std::ops::RangeInclusive<i64> = 3600..=2_592_000;
/// Longest file name kept.
pub const MAX_FILENAME: usize = 255;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub tenant_id: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    /// `batch` (uploads) or `batch_output` (a batch's output and error files).
    pub purpose: String,
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<FileStats>,
}

impl FileRecord {
    /// The file object as OpenAI's SDK parses it.
    pub fn object(&self) -> FileObject {
        FileObject {
            id: self.id.clone(),
            object: "file",
            bytes: self.bytes,
            created_at: self.created_at,
            filename: self.filename.clone(),
            purpose: self.purpose.clone(),
            status: "processed",
            expires_at: self.expires_at,
            status_details: None,
        }
    }
}

/// A file as the API shows it (OpenAI's file object).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    #[schema(example = "file")]
    pub object: &'static str,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    /// `batch` (uploads) or `batch_output` (a batch's output and error files).
    pub purpose: String,
    /// Always `processed`: an upload is checked while it streams in.
    #[schema(example = "processed")]
    pub status: &'static str,
    #[schema(required = true)]
    pub expires_at: Option<i64>,
    /// Always null (OpenAI's deprecated field).
    #[schema(required = true)]
    pub status_details: Option<String>,
}

pub fn pk(tenant_id: &str) -> String {
    format!("FILE#{tenant_id}")
}

fn key(tenant_id: &str, id: &str) -> Key {
    Key::new(pk(tenant_id), format!("F#{id}"))
}

/// Where a file's bytes live.
pub fn object_key(tenant_id: &str, id: &str) -> String {
    format!("files/{tenant_id}/{id}")
}

/// What an upload says of its file.
#[derive(Clone, Debug)]
pub struct Upload {
    pub filename: String,
    pub purpose: String,
    /// `expires_after[seconds]`, from the file's creation.
    pub expires_after: Option<i64>,
}

/// Why an upload was cut off while it streamed.
#[derive(Clone, Debug)]
enum Refusal {
    TooLarge(u64),
    TooManyLines(u64),
    Line(LineError),
    /// The client's body broke off or could not be read.
    Unreadable(String),
}

/// An upload's running count, shared with the stream that feeds the store.
struct Intake {
    limits: BatchLimits,
    bytes: u64,
    scanner: Scanner,
    stats: FileStats,
    refused: Option<Refusal>,
}

impl Intake {
    fn take(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.limits.max_file_bytes {
            return Err(Refusal::TooLarge(self.limits.max_file_bytes));
        }
        let (stats, max) = (&mut self.stats, self.limits.max_lines);
        let mut learn = |l: super::lines::RawLine<'_>| -> Result<(), LineError> {
            stats.learn(&l);
            Ok(())
        };
        if let Err(e) = self.scanner.feed(chunk, &mut learn) {
            return Err(Refusal::Line(e));
        }
        if stats.lines > max {
            return Err(Refusal::TooManyLines(max));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Refusal> {
        let stats = &mut self.stats;
        self.scanner
            .finish(|l| -> Result<(), LineError> {
                stats.learn(&l);
                Ok(())
            })
            .map_err(Refusal::Line)?;
        if stats.lines > self.limits.max_lines {
            return Err(Refusal::TooManyLines(self.limits.max_lines));
        }
        Ok(())
    }
}

fn refusal_error(r: Refusal) -> ApiError {
    match r {
        Refusal::TooLarge(max) => ApiError::InvalidRequest {
            message: format!("File is too large. A batch input file holds at most {max} bytes."),
            param: Some("file"),
            code: Some("file_too_large"),
        },
        Refusal::TooManyLines(max) => ApiError::InvalidRequest {
            message: format!(
                "The file holds more than {max} requests, the most one batch may run."
            ),
            param: Some("file"),
            code: Some("too_many_requests_in_file"),
        },
        Refusal::Line(e) => ApiError::InvalidRequest {
            message: e.message,
            param: Some("file"),
            code: Some("line_too_long"),
        },
        Refusal::Unreadable(why) => {
            ApiError::invalid(format!("the upload could not be read: {why}"))
        }
    }
}

#[derive(Clone)]
pub struct Files {
    table: Arc<dyn Table>,
    blobs: Arc<dyn Blobs>,
}

impl Files {
    pub fn new(table: Arc<dyn Table>, blobs: Arc<dyn Blobs>) -> Files {
        Files { table, blobs }
    }

    /// Stores an uploaded file as its chunks arrive; refused (and nothing kept)
    /// past the limits.
    pub async fn upload<S>(
        &self,
        tenant_id: &str,
        upload: Upload,
        limits: &BatchLimits,
        chunks: S,
    ) -> ApiResult<FileRecord>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        check_upload(&upload)?;
        let id = new_id("file-");
        let object = object_key(tenant_id, &id);
        let intake = Arc::new(Mutex::new(Intake {
            limits: limits.clone(),
            bytes: 0,
            scanner: Scanner::starting_at(0, 1),
            stats: FileStats::default(),
            refused: None,
        }));
        let stored = self
            .blobs
            .put_stream(&object, counted(chunks, intake.clone()))
            .await;
        let (outcome, bytes, stats) = {
            let mut intake = intake.lock().unwrap_or_else(PoisonError::into_inner);
            let outcome: ApiResult<()> = match (stored, intake.refused.take()) {
                (_, Some(r)) => Err(refusal_error(r)),
                (Ok(_), None) => intake.finish().map_err(refusal_error),
                (Err(e), None) => Err(e.into()),
            };
            (outcome, intake.bytes, intake.stats.clone())
        };
        if let Err(e) = outcome {
            if let Err(d) = self.blobs.delete(&object).await {
                tracing::warn!(object = %object, error = %d, "a refused upload's object is left");
            }
            return Err(e);
        }
        let now = crate::store::now_secs();
        let record = FileRecord {
            id,
            tenant_id: tenant_id.to_string(),
            bytes,
            created_at: now,
            filename: upload.filename,
            purpose: upload.purpose,
            expires_at: Some(now + upload.expires_after.unwrap_or(DEFAULT_TTL_SECS)),
            stats: Some(stats),
        };
        self.save(&record).await?;
        Ok(record)
    }

    /// Stores a batch's result file from `reader` (the same id and content on a
    /// second finalizer: both writes are whole overwrites).
    pub async fn put_result(
        &self,
        mut record: FileRecord,
        reader: BlobReader,
    ) -> ApiResult<FileRecord> {
        record.bytes = self
            .blobs
            .put_stream(&object_key(&record.tenant_id, &record.id), reader)
            .await?;
        self.save(&record).await?;
        Ok(record)
    }

    /// Sets the file to expire `secs` after its creation.
    pub async fn set_expiry(&self, mut record: FileRecord, secs: i64) -> ApiResult<FileRecord> {
        if !TTL_RANGE.contains(&secs) {
            return Err(ApiError::invalid_param(
                "expires_after[seconds]",
                "expires_after[seconds] must be between 3600 and 2592000.",
            ));
        }
        record.expires_at = Some(record.created_at + secs);
        self.save(&record).await?;
        Ok(record)
    }

    async fn save(&self, record: &FileRecord) -> ApiResult<()> {
        let mut item = Item::new(key(&record.tenant_id, &record.id), to_attrs(record)?);
        item.expires_at = record.expires_at;
        self.table.put(&item, &Cond::Always).await?;
        Ok(())
    }

    /// The tenant's file; another tenant's id, like an unknown one, is a 404.
    pub async fn get(&self, tenant_id: &str, id: &str) -> ApiResult<FileRecord> {
        let missing = || ApiError::NotFound {
            message: format!("No such File object: {id}"),
            code: "file_not_found",
        };
        if !plausible_id(id, "file-") {
            return Err(missing());
        }
        match self.table.get(&key(tenant_id, id)).await? {
            Some(item) => from_item(item),
            None => Err(missing()),
        }
    }

    /// The file's bytes, streamed.
    pub async fn content(&self, tenant_id: &str, id: &str) -> ApiResult<(FileRecord, BlobReader)> {
        let record = self.get(tenant_id, id).await?;
        let reader = self
            .blobs
            .get_stream(&object_key(tenant_id, id), None)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => ApiError::NotFound {
                    message: format!("The content of file {id} is gone."),
                    code: "file_not_found",
                },
                e => e.into(),
            })?;
        Ok((record, reader))
    }

    /// A byte range of the file (a batch chunk's lines).
    pub async fn range(
        &self,
        tenant_id: &str,
        id: &str,
        range: std::ops::Range<u64>,
    ) -> ApiResult<BlobReader> {
        Ok(self
            .blobs
            .get_stream(&object_key(tenant_id, id), Some(range))
            .await?)
    }

    /// Deletes the record, then the bytes.
    pub async fn delete(&self, tenant_id: &str, id: &str) -> ApiResult<()> {
        self.get(tenant_id, id).await?;
        self.table
            .delete(&key(tenant_id, id), &Cond::Always)
            .await?;
        self.blobs.delete(&object_key(tenant_id, id)).await?;
        Ok(())
    }

    /// A page of the tenant's files, oldest first or newest first, after the
    /// file `after` (exclusive), of one purpose or all; and whether more follow.
    pub async fn list(
        &self,
        tenant_id: &str,
        purpose: Option<&str>,
        limit: usize,
        newest_first: bool,
        after: Option<&str>,
    ) -> ApiResult<(Vec<FileRecord>, bool)> {
        let pk = pk(tenant_id);
        let mut cursor = after.map(|a| cursor_after(&pk, &format!("F#{a}")));
        let mut out = Vec::new();
        loop {
            let mut q = Query::new(pk.clone())
                .prefix("F#")
                .limit(1000)
                .after(cursor);
            if newest_first {
                q = q.backward();
            }
            let page = self.table.query(&q).await?;
            for item in page.items {
                let record: FileRecord = from_item(item)?;
                if purpose.is_none_or(|p| p == record.purpose) {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(record);
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok((out, false));
            }
        }
    }
}

fn check_upload(u: &Upload) -> ApiResult<()> {
    if u.purpose != "batch" {
        return Err(ApiError::invalid_param(
            "purpose",
            format!(
                "Unsupported purpose '{}': files here are batch inputs ('batch').",
                u.purpose
            ),
        ));
    }
    if u.filename.is_empty()
        || u.filename.len() > MAX_FILENAME
        || u.filename.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_param(
            "file",
            format!("The file name must hold 1 to {MAX_FILENAME} bytes and no control characters."),
        ));
    }
    if let Some(s) = u.expires_after {
        if !TTL_RANGE.contains(&s) {
            return Err(ApiError::invalid_param(
                "expires_after[seconds]",
                "expires_after[seconds] must be between 3600 and 2592000.",
            ));
        }
    }
    Ok(())
}

/// The chunks as a reader for the store, counted (and cut off) by `intake`.
fn counted<S>(chunks: S, intake: Arc<Mutex<Intake>>) -> BlobReader
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let checked = chunks.map(move |chunk| {
        let mut state = intake.lock().unwrap_or_else(PoisonError::into_inner);
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                state.refused = Some(Refusal::Unreadable(e.to_string()));
                return Err(e);
            }
        };
        if let Err(r) = state.take(&chunk) {
            state.refused = Some(r);
            return Err(io::Error::other("upload refused"));
        }
        Ok(chunk)
    });
    Box::pin(tokio_util::io::StreamReader::new(checked))
}
