//! Finalizing: once every chunk is counted, whoever sees it assembles the
//! output and error files from the chunks' result objects, streamed in chunk
//! order (a multipart upload on S3), and only then ends the batch. File ids
//! and contents depend only on the batch and its chunks, so a second finalizer
//! (a race, or a crash part-way) writes the same files.

use std::io;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::batches::{self, BatchRecord, Counts, Status};
use super::chunk::result_object;
use super::files::{FileRecord, DEFAULT_TTL_SECS};
use super::result_file_id;
use crate::app::App;
use crate::error::ApiResult;
use crate::store::{now_secs, BlobReader, Blobs};

/// Finalizes the batch if all its chunks are counted and it has not ended.
pub async fn if_done(app: &Arc<App>, tenant_id: &str, batch_id: &str) -> ApiResult<()> {
    let table = app.storage.table.clone();
    let (b, n) = batches::get(table.as_ref(), tenant_id, batch_id).await?;
    if b.status.is_final() || b.chunks == 0 || n.chunks_done < b.chunks {
        return Ok(());
    }
    let b = batches::update(table.as_ref(), tenant_id, batch_id, |b| {
        Ok(match b.status {
            Status::InProgress => {
                b.enter(Status::Finalizing, now_secs());
                true
            }
            _ => false,
        })
    })
    .await?;
    if b.status.is_final() {
        return Ok(());
    }
    let output = (n.completed > 0).then(|| result_file_id(&b.id, "output"));
    let errors = (n.failed + n.expired + n.cancelled > 0).then(|| result_file_id(&b.id, "error"));
    if let Some(id) = &output {
        assemble(app, &b, id, "out", "output").await?;
    }
    if let Some(id) = &errors {
        assemble(app, &b, id, "err", "error").await?;
    }
    let ended = batches::update(table.as_ref(), tenant_id, batch_id, |b| {
        let end = match b.status {
            Status::Finalizing if n.expired > 0 => Status::Expired,
            Status::Finalizing => Status::Completed,
            Status::Cancelling => Status::Cancelled,
            _ => return Ok(false),
        };
        b.output_file_id = output.clone();
        b.error_file_id = errors.clone();
        b.enter(end, now_secs());
        Ok(true)
    })
    .await?;
    log_end(&ended, &n);
    Ok(())
}

fn log_end(b: &BatchRecord, n: &Counts) {
    tracing::info!(
        batch_id = %b.id, tenant_id = %b.tenant_id, status = b.status.as_str(), completed = n.completed,
        failed = n.failed, expired = n.expired, cancelled = n.cancelled, cost_micros = n.cost_micros,
        "batch ended"
    );
}

/// Writes one result file from the chunks' `which` objects.
async fn assemble(
    app: &Arc<App>,
    b: &BatchRecord,
    id: &str,
    which: &str,
    name: &str,
) -> ApiResult<()> {
    let blobs = app.storage.blobs()?.clone();
    let keys = (0..b.chunks)
        .map(|i| result_object(&b.tenant_id, &b.id, i, which))
        .collect();
    let now = now_secs();
    let record = FileRecord {
        id: id.to_string(),
        tenant_id: b.tenant_id.clone(),
        bytes: 0,
        created_at: now,
        filename: format!("{}_{name}.jsonl", b.id),
        purpose: "batch_output".into(),
        expires_at: Some(now + b.output_expires_after.unwrap_or(DEFAULT_TTL_SECS)),
        stats: None,
    };
    app.files()?.put_result(record, concat(blobs, keys)).await?;
    Ok(())
}

/// The objects under `keys`, one after the other, as one stream.
fn concat(blobs: Arc<dyn Blobs>, keys: Vec<String>) -> BlobReader {
    let bytes = futures::stream::iter(keys)
        .then(move |key| {
            let blobs = blobs.clone();
            async move {
                blobs
                    .get_stream(&key, None)
                    .await
                    .map(tokio_util::io::ReaderStream::new)
                    .map_err(|e| io::Error::other(format!("{key}: {e}")))
            }
        })
        .try_flatten();
    Box::pin(tokio_util::io::StreamReader::new(bytes))
}
