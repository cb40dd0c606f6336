//! `tenantai backup` and `tenantai restore`: straight on a deployment's
//! storage (the embedded data directory, or the AWS deployment of the
//! environment), so a restore works when the table is gone.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tenantai::ops::backup::{self, BackupConfig, Retention};
use tenantai::ops::restore::{self, RestoreOptions};
use tenantai::ops::Progress;
use tenantai::store::{aws, Resources, Storage};

use crate::output::print;

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// The embedded deployment's data directory (as `tenantai dev --data-dir`).
    #[arg(long, env = "TENANTAI_DATA_DIR", default_value = "./.tenantai")]
    data_dir: PathBuf,
    /// The AWS deployment of the environment instead (AWS_* variables,
    /// TENANTAI_RESOURCE_PREFIX, TENANTAI_TABLE, TENANTAI_BUCKET).
    #[arg(long)]
    aws: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl StoreArgs {
    /// The deployment's storage; `create` makes absent resources (a restore's target).
    async fn open(&self, create: bool) -> anyhow::Result<Storage> {
        if self.aws {
            let sdk = aws::sdk_config().await;
            return Storage::aws(
                &sdk,
                &tenantai::lambda::resources_from_env().map_err(anyhow::Error::msg)?,
                create,
            )
            .await
            .context("AWS storage");
        }
        if !create && !self.data_dir.join("tenantai.db").exists() {
            anyhow::bail!(
                "no deployment in {} (no tenantai.db)",
                self.data_dir.display()
            );
        }
        Storage::embedded(&self.data_dir, &Resources::named("tenantai"))
            .await
            .with_context(|| format!("embedded storage in {}", self.data_dir.display()))
    }
}

#[derive(Args)]
pub struct BackupArgs {
    /// List the backups instead of making one.
    #[arg(long)]
    list: bool,
    /// Parallel scan segments, one writer each.
    #[arg(long, env = "TENANTAI_BACKUP_SEGMENTS", default_value_t = 4)]
    segments: u32,
    /// Items per part file.
    #[arg(long, default_value_t = 250_000)]
    part_items: u64,
    /// Keep the newest backup of each of this many most recent days.
    #[arg(long, env = "TENANTAI_BACKUP_KEEP_DAILY", default_value_t = 7)]
    keep_daily: usize,
    /// Keep the newest backup of each of this many most recent months.
    #[arg(long, env = "TENANTAI_BACKUP_KEEP_MONTHLY", default_value_t = 12)]
    keep_monthly: usize,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup id (`tenantai backup --list`), or "latest".
    #[arg(default_value = "latest")]
    backup: String,
    /// Restore into a table that holds items (backed-up items are written over
    /// them; others stay).
    #[arg(long)]
    force: bool,
    /// Parts restored at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[command(flatten)]
    store: StoreArgs,
}

/// A progress bar on stderr for a phase of known length, a counter otherwise.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        let style = if total > 0 {
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
            )
        } else {
            indicatif::ProgressStyle::with_template("{spinner} {msg} {pos} items ({per_sec})")
        };
        if let Ok(style) = style {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(name.to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

pub async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let storage = a.store.open(false).await?;
    let blobs = storage.blobs()?.clone();
    if a.list {
        return list(blobs.as_ref(), a.store.json).await;
    }
    let config = BackupConfig {
        segments: a.segments,
        part_items: a.part_items,
        retention: Retention {
            daily: a.keep_daily,
            monthly: a.keep_monthly,
        },
    };
    let bar = Bar(indicatif::ProgressBar::new_spinner());
    let summary = backup::run(&storage, &config, &bar).await?;
    bar.0.finish_and_clear();
    let m = &summary.manifest;
    if a.store.json {
        print(&serde_json::to_value(&summary)?, &[], true);
        return Ok(());
    }
    let bytes: u64 = m.parts.iter().map(|p| p.bytes).sum();
    println!(
        "backup {}: {} items in {} parts, {bytes} bytes, {}s",
        m.backup_id,
        m.total_items,
        m.parts.len(),
        m.finished_at - m.started_at
    );
    println!("manifest: {}", backup::Manifest::key(&m.backup_id));
    if !summary.deleted_backups.is_empty() {
        println!("retention deleted: {}", summary.deleted_backups.join(", "));
    }
    Ok(())
}

async fn list(blobs: &dyn tenantai::store::Blobs, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for (id, (complete, _)) in backup::list(blobs).await?.into_iter().rev() {
        let row = match backup::manifest(blobs, Some(&id)).await {
            Ok(m) if complete => json!({
                "backup_id": id, "complete": true, "finished": m.finished, "items": m.total_items,
                "parts": m.parts.len(), "bytes": m.parts.iter().map(|p| p.bytes).sum::<u64>(),
            }),
            _ => json!({"backup_id": id, "complete": false}),
        };
        rows.push(row);
    }
    let cols = [
        "backup_id",
        "complete",
        "finished",
        "items",
        "parts",
        "bytes",
    ];
    print(&json!({ "data": rows }), &cols, json);
    Ok(())
}

pub async fn restore(a: RestoreArgs) -> anyhow::Result<()> {
    let storage = a.store.open(true).await?;
    let blobs = storage.blobs()?.clone();
    let opts = RestoreOptions {
        backup_id: Some(a.backup.clone()),
        force: a.force,
        concurrency: a.concurrency,
    };
    let bar = Bar(indicatif::ProgressBar::new(0));
    let table = Arc::clone(&storage.table);
    let result = restore::restore(&table, &blobs, &opts, &bar).await;
    bar.0.finish_and_clear();
    let summary = result?;
    if a.store.json {
        print(&serde_json::to_value(&summary)?, &[], true);
    } else {
        println!(
            "restored backup {}: {} items written from {} parts ({} finished by an earlier run), {} expired items skipped",
            summary.backup_id,
            summary.items_written,
            summary.parts,
            summary.parts_resumed,
            summary.items_expired
        );
        if !summary.erasures_reapplied.is_empty() {
            println!(
                "erased again (erased after this backup was taken): {}",
                summary.erasures_reapplied.join(", ")
            );
        }
    }
    Ok(())
}
