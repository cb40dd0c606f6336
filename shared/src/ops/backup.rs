//! Logical backups of the whole table to Blobs: gzipped JSONL parts written
//! from parallel scan segments (streamed, bounded memory), then a manifest,
//! written last, so a backup without one is visibly incomplete. Retention
//! keeps the newest backup of each of the last N days and M months.
//!
//! Layout: `backups/<id>/part-<segment>-<n>.jsonl.gz` and
//! `backups/<id>/manifest.json`; ids sort by time (`20261124T180000Z-1a2b3c`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::stream::GzipUpload;
use super::{iso8601, OpsError, OpsResult, Progress};
use crate::store::table::{EXPIRES_ATTR, VERSION_ATTR};
use crate::store::{now_secs, Attrs, Blobs, Item, Key, Scan, Storage, Table};

pub const FORMAT: &str = "tenantai-table-backup";
pub const FORMAT_VERSION: u32 = 1;
/// Where backups live in the bucket.
pub const PREFIX: &str = "backups/";
pub const MANIFEST: &str = "manifest.json";
/// The partition of restore checkpoints (never backed up).
pub const RESTORE_PK: &str = "_RESTORE";

/// One item as a line of a part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemLine {
    pub pk: String,
    pub sk: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub attrs: Attrs,
}

impl From<Item> for ItemLine {
    fn from(i: Item) -> Self {
        ItemLine {
            pk: i.key.pk,
            sk: i.key.sk,
            version: i.version,
            expires_at: i.expires_at,
            attrs: i.attrs,
        }
    }
}

impl From<ItemLine> for Item {
    fn from(l: ItemLine) -> Self {
        Item {
            key: Key::new(l.pk, l.sk),
            version: l.version,
            expires_at: l.expires_at,
            attrs: l.attrs,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeySchema {
    pub partition_key: String,
    pub sort_key: String,
    pub version_attribute: String,
    pub expiry_attribute: String,
}

impl KeySchema {
    pub fn current() -> Self {
        KeySchema {
            partition_key: "pk".into(),
            sort_key: "sk".into(),
            version_attribute: VERSION_ATTR.into(),
            expiry_attribute: EXPIRES_ATTR.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    pub key: String,
    pub segment: u32,
    pub items: u64,
    /// Stored (compressed) bytes.
    pub bytes: u64,
    /// Bytes of JSONL before compression.
    pub raw_bytes: u64,
    pub sha256: String,
}

/// Objects that existed under one top-level prefix of the bucket (covered by
/// the bucket's own versioning, not by this backup).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixInfo {
    pub prefix: String,
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub backup_id: String,
    pub table: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub started: String,
    pub finished: String,
    pub segments: u32,
    pub key_schema: KeySchema,
    pub parts: Vec<PartInfo>,
    pub total_items: u64,
    pub blob_prefixes: Vec<PrefixInfo>,
}

impl Manifest {
    pub fn key(backup_id: &str) -> String {
        format!("{PREFIX}{backup_id}/{MANIFEST}")
    }
}

/// How many backups retention keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retention {
    /// The newest backup of each of this many most recent days (at least 1).
    pub daily: usize,
    /// The newest backup of each of this many most recent months.
    pub monthly: usize,
}

#[derive(Clone, Debug)]
pub struct BackupConfig {
    /// Parallel scan segments (one writer each).
    pub segments: u32,
    /// Items per part before a segment starts its next part.
    pub part_items: u64,
    pub retention: Retention,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            segments: 4,
            part_items: 250_000,
            retention: Retention {
                daily: 7,
                monthly: 12,
            },
        }
    }
}

impl BackupConfig {
    /// Defaults, with retention from `TENANTAI_BACKUP_KEEP_DAILY` (7) and
    /// `TENANTAI_BACKUP_KEEP_MONTHLY` (12) and segments from
    /// `TENANTAI_BACKUP_SEGMENTS` (4).
    pub fn from_env() -> Result<Self, String> {
        let mut c = BackupConfig::default();
        let num = |name: &str, default: u64| -> Result<u64, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| format!("{name} must be a whole number")),
                Err(_) => Ok(default),
            }
        };
        c.retention.daily = num("TENANTAI_BACKUP_KEEP_DAILY", 7)? as usize;
        c.retention.monthly = num("TENANTAI_BACKUP_KEEP_MONTHLY", 12)? as usize;
        c.segments = u32::try_from(num("TENANTAI_BACKUP_SEGMENTS", 4)?).unwrap_or(0);
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }

    pub fn check(&self) -> OpsResult<()> {
        if self.retention.daily == 0 {
            return Err(OpsError::Invalid(
                "retention must keep at least one daily backup".into(),
            ));
        }
        if self.segments == 0 || self.segments > 64 {
            return Err(OpsError::Invalid("segments must be 1 to 64".into()));
        }
        if self.part_items == 0 {
            return Err(OpsError::Invalid("part_items must be at least 1".into()));
        }
        Ok(())
    }
}

/// What one run did: the new backup and the old ones retention removed.
#[derive(Clone, Debug, Serialize)]
pub struct BackupSummary {
    pub manifest: Manifest,
    pub deleted_backups: Vec<String>,
}

/// A new backup id for a time: `YYYYMMDDTHHMMSSZ-` + 6 random hex digits.
fn new_id(now: i64) -> String {
    let iso = iso8601(now).replace(['-', ':'], "");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{iso}-{}", &rand[..6])
}

/// Backs up the table, then applies retention.
pub async fn run(
    storage: &Storage,
    config: &BackupConfig,
    progress: &dyn Progress,
) -> OpsResult<BackupSummary> {
    config.check()?;
    let blobs = storage.blobs()?.clone();
    let started_at = now_secs();
    let id = new_id(started_at);
    progress.phase("backing up", 0);
    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..config.segments {
        let (table, blobs, id) = (storage.table.clone(), blobs.clone(), id.clone());
        let (total, part_items) = (config.segments, config.part_items);
        tasks.spawn(
            async move { backup_segment(table, blobs, &id, segment, total, part_items).await },
        );
    }
    let mut parts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let segment_parts =
            done.map_err(|e| OpsError::Invalid(format!("backup task failed: {e}")))??;
        progress.advance(segment_parts.iter().map(|p| p.items).sum());
        parts.extend(segment_parts);
    }
    parts.sort_by(|a, b| a.key.cmp(&b.key));
    let blob_prefixes = blob_prefixes(blobs.as_ref()).await?;
    let finished_at = now_secs();
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        backup_id: id.clone(),
        table: storage.resources().table.clone(),
        started_at,
        finished_at,
        started: iso8601(started_at),
        finished: iso8601(finished_at),
        segments: config.segments,
        key_schema: KeySchema::current(),
        total_items: parts.iter().map(|p| p.items).sum(),
        parts,
        blob_prefixes,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| OpsError::Invalid(format!("manifest does not serialise: {e}")))?;
    blobs.put(&Manifest::key(&id), json.into()).await?;
    let deleted_backups = apply_retention(blobs.as_ref(), config.retention, finished_at).await?;
    Ok(BackupSummary {
        manifest,
        deleted_backups,
    })
}

/// Writes one segment's items as parts of at most `part_items` items.
async fn backup_segment(
    table: Arc<dyn Table>,
    blobs: Arc<dyn Blobs>,
    id: &str,
    segment: u32,
    total: u32,
    part_items: u64,
) -> OpsResult<Vec<PartInfo>> {
    let mut parts = Vec::new();
    let mut open: Option<(GzipUpload, String, u64)> = None;
    let mut cursor = None;
    loop {
        let page = table
            .scan(&Scan::segment(segment, total).limit(1000).after(cursor))
            .await?;
        for item in page.items {
            if item.key.pk == RESTORE_PK {
                continue;
            }
            let (upload, _, count) = open.get_or_insert_with(|| {
                let key = format!("{PREFIX}{id}/part-{segment:04}-{:04}.jsonl.gz", parts.len());
                (GzipUpload::start(blobs.clone(), key.clone()), key, 0)
            });
            let mut line = serde_json::to_vec(&ItemLine::from(item))
                .map_err(|e| OpsError::Invalid(format!("item does not serialise: {e}")))?;
            line.push(b'\n');
            upload.write(&line).await?;
            *count += 1;
            if *count >= part_items {
                if let Some(done) = open.take() {
                    parts.push(close_part(done, segment).await?);
                }
            }
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    if let Some(done) = open.take() {
        parts.push(close_part(done, segment).await?);
    }
    Ok(parts)
}

async fn close_part(
    (upload, key, items): (GzipUpload, String, u64),
    segment: u32,
) -> OpsResult<PartInfo> {
    let written = upload.finish().await?;
    Ok(PartInfo {
        key,
        segment,
        items,
        bytes: written.bytes,
        raw_bytes: written.raw_bytes,
        sha256: written.sha256,
    })
}

/// Every object of the bucket outside `backups/`, counted by top-level prefix.
async fn blob_prefixes(blobs: &dyn Blobs) -> OpsResult<Vec<PrefixInfo>> {
    let mut by_prefix: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = blobs.list("", cursor.as_deref(), 1000).await?;
        for meta in page.items {
            if meta.key.starts_with(PREFIX) {
                continue;
            }
            let prefix = match meta.key.split_once('/') {
                Some((first, _)) => format!("{first}/"),
                None => meta.key.clone(),
            };
            let entry = by_prefix.entry(prefix).or_default();
            entry.0 += 1;
            entry.1 += meta.size;
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    Ok(by_prefix
        .into_iter()
        .map(|(prefix, (objects, bytes))| PrefixInfo {
            prefix,
            objects,
            bytes,
        })
        .collect())
}

/// The backups in the bucket: id -> (whether it has a manifest, its object keys).
pub async fn list(blobs: &dyn Blobs) -> OpsResult<BTreeMap<String, (bool, Vec<String>)>> {
    let mut out: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = blobs.list(PREFIX, cursor.as_deref(), 1000).await?;
        for meta in page.items {
            let rest = &meta.key[PREFIX.len()..];
            let Some((id, name)) = rest.split_once('/') else {
                continue;
            };
            let entry = out.entry(id.to_string()).or_default();
            entry.0 |= name == MANIFEST;
            entry.1.push(meta.key.clone());
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    Ok(out)
}

/// The manifest of a backup, or of the newest complete one.
pub async fn manifest(blobs: &dyn Blobs, id: Option<&str>) -> OpsResult<Manifest> {
    let id = match id.filter(|i| *i != "latest") {
        Some(id) => id.to_string(),
        None => list(blobs)
            .await?
            .into_iter()
            .rev()
            .find(|(_, (complete, _))| *complete)
            .map(|(id, _)| id)
            .ok_or_else(|| OpsError::NoBackup("there is no complete backup".into()))?,
    };
    let key = Manifest::key(&id);
    let bytes = match blobs.get(&key).await {
        Ok(b) => b,
        Err(crate::store::StoreError::NotFound(_)) => {
            return Err(OpsError::NoBackup(format!(
                "no complete backup '{id}' (no {key})"
            )))
        }
        Err(crate::store::StoreError::Invalid(_)) => {
            return Err(OpsError::NoBackup(format!("'{id}' is not a backup id")))
        }
        Err(e) => return Err(e.into()),
    };
    let bad = |reason: String| OpsError::BadManifest {
        key: key.clone(),
        reason,
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if m.format != FORMAT || m.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "format {} version {} (this build reads {FORMAT} version {FORMAT_VERSION})",
            m.format, m.format_version
        )));
    }
    if m.key_schema != KeySchema::current() {
        return Err(bad(format!("key schema {:?} differs", m.key_schema)));
    }
    if m.backup_id != id
        || m.parts
            .iter()
            .any(|p| !p.key.starts_with(&format!("{PREFIX}{id}/")))
    {
        return Err(bad("it names parts of another backup".into()));
    }
    Ok(m)
}

/// The backups to keep: the newest of each of the last `daily` days and of the
/// last `monthly` months (ids sort by time; the first 8 characters are the day).
pub fn kept(complete: &[String], keep: Retention) -> BTreeSet<String> {
    let mut newest_first: Vec<&String> = complete.iter().collect();
    newest_first.sort_by(|a, b| b.cmp(a));
    let mut keep_set = BTreeSet::new();
    for (width, count) in [(8, keep.daily), (6, keep.monthly)] {
        let mut periods = BTreeSet::new();
        for id in &newest_first {
            let period = id.get(..width).unwrap_or(id.as_str());
            if periods.len() == count && !periods.contains(period) {
                break;
            }
            if periods.insert(period.to_string()) {
                keep_set.insert((*id).clone());
            }
        }
    }
    keep_set
}

/// Deletes complete backups retention does not keep, and incomplete ones more
/// than a day old (a younger one may still be being written). Returns their ids.
pub async fn apply_retention(
    blobs: &dyn Blobs,
    keep: Retention,
    now: i64,
) -> OpsResult<Vec<String>> {
    let all = list(blobs).await?;
    let complete: Vec<String> = all
        .iter()
        .filter(|(_, (c, _))| *c)
        .map(|(id, _)| id.clone())
        .collect();
    let kept = kept(&complete, keep);
    let day_ago = new_id(now - 24 * 3600);
    let mut deleted = Vec::new();
    for (id, (complete, keys)) in all {
        let stale = if complete {
            !kept.contains(&id)
        } else {
            id < day_ago
        };
        if !stale {
            continue;
        }
        // The manifest first: a half-deleted backup reads as incomplete.
        let manifest = Manifest::key(&id);
        if complete {
            blobs.delete(&manifest).await?;
        }
        for key in keys.iter().filter(|k| **k != manifest) {
            blobs.delete(key).await?;
        }
        deleted.push(id);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn retention_keeps_newest_per_day_and_month() {
        let all = ids(&[
            "20260901T010000Z-a",
            "20261001T010000Z-a",
            "20261031T010000Z-a",
            "20261122T010000Z-a",
            "20261123T010000Z-a",
            "20261124T010000Z-a",
            "20261124T020000Z-a",
        ]);
        let keep = kept(
            &all,
            Retention {
                daily: 2,
                monthly: 3,
            },
        );
        let want: BTreeSet<String> = ids(&[
            "20261124T020000Z-a",
            "20261123T010000Z-a",
            "20261031T010000Z-a",
            "20260901T010000Z-a",
        ])
        .into_iter()
        .collect();
        assert_eq!(keep, want);
        let only_daily = kept(
            &all,
            Retention {
                daily: 1,
                monthly: 0,
            },
        );
        assert_eq!(only_daily.len(), 1);
        assert!(only_daily.contains("20261124T020000Z-a"));
    }

    #[test]
    fn ids_sort_by_time() {
        assert!(new_id(1_795_543_200) < new_id(1_795_543_201));
        assert!(new_id(1_795_543_200).starts_with("20261124T180000Z-"));
    }
}
