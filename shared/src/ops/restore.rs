//! Restores a backup into the table: every part's checksum is verified before
//! anything is written, items go in batches of 25 (expired ones skipped), and
//! a restore interrupted part-way resumes where it stopped: checkpoint items
//! under `_RESTORE` name the backup and the parts already written, and since
//! every write is an idempotent put, rerunning a half-written part ends with
//! the same table. The checkpoints are removed at the end.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::backup::{self, ItemLine, Manifest, PartInfo, RESTORE_PK};
use super::stream::{sha256_of, GzipLines};
use super::{OpsError, OpsResult, Progress};
use crate::store::table::MAX_BATCH_WRITES;
use crate::store::{
    now_secs, Attrs, Blobs, Cond, Item, Key, Query, Scan, StoreError, Table, Write,
};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// The backup id; the newest complete backup when `None` (or "latest").
    pub backup_id: Option<String>,
    /// Restore into a table that already holds items (they are written over
    /// where the backup has the same key; others stay).
    pub force: bool,
    /// Parts restored at once.
    pub concurrency: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RestoreSummary {
    pub backup_id: String,
    pub parts: usize,
    /// Parts a previous, interrupted run had finished.
    pub parts_resumed: usize,
    pub items_written: u64,
    pub items_expired: u64,
    /// Tenants erased after the backup was taken, erased again.
    pub erasures_reapplied: Vec<String>,
}

const RUN_SK: &str = "RUN";

fn done_key(part: &str) -> Key {
    Key::new(RESTORE_PK, format!("DONE#{part}"))
}

/// Restores a backup of `blobs` into `table`.
pub async fn restore(
    table: &Arc<dyn Table>,
    blobs: &Arc<dyn Blobs>,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> OpsResult<RestoreSummary> {
    let manifest = backup::manifest(blobs.as_ref(), opts.backup_id.as_deref()).await?;
    progress.phase(
        "verifying",
        manifest.parts.iter().map(|p| p.bytes).sum::<u64>(),
    );
    for part in &manifest.parts {
        verify_part(blobs.as_ref(), part).await?;
        progress.advance(part.bytes);
    }
    let done = claim_table(table.as_ref(), &manifest, opts.force).await?;
    let todo: Vec<&PartInfo> = manifest
        .parts
        .iter()
        .filter(|p| !done.contains(&p.key))
        .collect();
    progress.phase("restoring", todo.iter().map(|p| p.items).sum());
    let now = now_secs();
    let results: Vec<OpsResult<(u64, u64)>> = futures::stream::iter(todo.iter().map(|part| {
        let (table, blobs) = (table.clone(), blobs.clone());
        async move { restore_part(&table, &blobs, part, now, progress).await }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .collect()
    .await;
    let (mut written, mut expired) = (0, 0);
    for r in results {
        let (w, e) = r?;
        written += w;
        expired += e;
    }
    // A tenant erased after the backup was taken is erased again.
    progress.phase("re-erasing", 0);
    let erasures_reapplied = super::erase::reapply(table, blobs).await?;
    clear_checkpoints(table.as_ref()).await?;
    Ok(RestoreSummary {
        backup_id: manifest.backup_id,
        parts: manifest.parts.len(),
        parts_resumed: done.len(),
        items_written: written,
        items_expired: expired,
        erasures_reapplied,
    })
}

/// Checks that a part exists with the size and SHA-256 the manifest records.
async fn verify_part(blobs: &dyn Blobs, part: &PartInfo) -> OpsResult<()> {
    let bad = |reason: String| OpsError::BadPart {
        part: part.key.clone(),
        reason,
    };
    let reader = match blobs.get_stream(&part.key, None).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(bad("missing".into())),
        Err(e) => return Err(e.into()),
    };
    let (sha, size) = sha256_of(reader).await?;
    if size != part.bytes {
        return Err(bad(format!(
            "corrupt: {size} bytes where the manifest records {}",
            part.bytes
        )));
    }
    if sha != part.sha256 {
        return Err(bad(format!(
            "corrupt: SHA-256 {sha} where the manifest records {}",
            part.sha256
        )));
    }
    Ok(())
}

/// Refuses a table in use (unless forced) and returns the parts an earlier
/// run of this same restore finished.
async fn claim_table(
    table: &dyn Table,
    manifest: &Manifest,
    force: bool,
) -> OpsResult<std::collections::BTreeSet<String>> {
    let run = table.get(&Key::new(RESTORE_PK, RUN_SK)).await?;
    let resuming = run
        .as_ref()
        .and_then(|r| r.attrs.get("backup_id")?.as_str().map(str::to_string));
    if resuming.as_deref() == Some(manifest.backup_id.as_str()) {
        let mut done = std::collections::BTreeSet::new();
        let mut cursor = None;
        loop {
            let page = table
                .query(
                    &Query::new(RESTORE_PK)
                        .prefix("DONE#")
                        .limit(1000)
                        .after(cursor),
                )
                .await?;
            for item in page.items {
                if let Some(part) = item.key.sk.strip_prefix("DONE#") {
                    done.insert(part.to_string());
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                return Ok(done);
            }
        }
    }
    if !force {
        if let Some(other) = resuming {
            return Err(OpsError::NotEmpty(format!(
                "the table holds an unfinished restore of backup {other}: finish it, or pass --force"
            )));
        }
        if holds_items(table).await? {
            return Err(OpsError::NotEmpty(
                "the table is not empty: restore into an empty table, or pass --force to write over it"
                    .into(),
            ));
        }
    }
    clear_checkpoints(table).await?;
    let mut attrs = Attrs::new();
    attrs.insert("backup_id".into(), manifest.backup_id.clone().into());
    attrs.insert("started_at".into(), now_secs().into());
    table
        .put(
            &Item::new(Key::new(RESTORE_PK, RUN_SK), attrs),
            &Cond::Always,
        )
        .await?;
    Ok(Default::default())
}

/// Whether the table holds any item besides restore checkpoints.
async fn holds_items(table: &dyn Table) -> OpsResult<bool> {
    let mut cursor = None;
    loop {
        let page = table
            .scan(&Scan::segment(0, 1).limit(100).after(cursor))
            .await?;
        if page.items.iter().any(|i| i.key.pk != RESTORE_PK) {
            return Ok(true);
        }
        cursor = page.next;
        if cursor.is_none() {
            return Ok(false);
        }
    }
}

async fn clear_checkpoints(table: &dyn Table) -> OpsResult<()> {
    loop {
        let page = table.query(&Query::new(RESTORE_PK).limit(25)).await?;
        if page.items.is_empty() {
            return Ok(());
        }
        let deletes: Vec<Write> = page
            .items
            .into_iter()
            .map(|i| Write::Delete(i.key))
            .collect();
        table.write_batch(&deletes).await?;
    }
}

/// Writes one part's unexpired items; returns (written, expired).
async fn restore_part(
    table: &Arc<dyn Table>,
    blobs: &Arc<dyn Blobs>,
    part: &PartInfo,
    now: i64,
    progress: &dyn Progress,
) -> OpsResult<(u64, u64)> {
    let bad = |reason: String| OpsError::BadPart {
        part: part.key.clone(),
        reason,
    };
    let mut lines = GzipLines::new(blobs.get_stream(&part.key, None).await?);
    let (mut written, mut expired, mut seen) = (0u64, 0u64, 0u64);
    let mut batch: Vec<Write> = Vec::with_capacity(MAX_BATCH_WRITES);
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| bad(format!("unreadable: {e}")))?;
        let Some(line) = line else { break };
        seen += 1;
        let item: Item = serde_json::from_slice::<ItemLine>(&line)
            .map_err(|e| bad(format!("unreadable at line {seen}: {e}")))?
            .into();
        if item.is_expired(now) {
            expired += 1;
            continue;
        }
        // A batch touches each key once; a key seen twice flushes first.
        if batch.iter().any(|w| w.key() == &item.key) {
            flush(table.as_ref(), &mut batch, &mut written, progress).await?;
        }
        batch.push(Write::Put(item));
        if batch.len() == MAX_BATCH_WRITES {
            flush(table.as_ref(), &mut batch, &mut written, progress).await?;
        }
    }
    flush(table.as_ref(), &mut batch, &mut written, progress).await?;
    progress.advance(expired);
    let (sha, _) = lines.digest();
    if sha != part.sha256 || seen != part.items {
        return Err(bad(format!(
            "changed while being restored ({seen} items, SHA-256 {sha})"
        )));
    }
    table
        .put(&Item::new(done_key(&part.key), Attrs::new()), &Cond::Always)
        .await?;
    Ok((written, expired))
}

async fn flush(
    table: &dyn Table,
    batch: &mut Vec<Write>,
    written: &mut u64,
    progress: &dyn Progress,
) -> OpsResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    table.write_batch(batch).await?;
    *written += batch.len() as u64;
    progress.advance(batch.len() as u64);
    batch.clear();
    Ok(())
}
