#![allow(clippy::expect_used)] // a benchmark that cannot set up has nothing to report
//! Backups and restores: items backed up and restored per second on the
//! embedded adapters and on the AWS adapters (against `AWS_ENDPOINT_URL`, the
//! emulator started by `scripts/bench-ops.sh`), and the stored bytes per item.
//! Each is set beside its floor measured in the same run on the same store: a
//! plain parallel scan of the table (what a backup must read) and plain batch
//! writes of the same items (what a restore must write).
//!
//! Items are a mix shaped like a deployment's: usage aggregates, keys, audit
//! entries and cached embeddings (base64 vectors, the bulk of the bytes).
//! `cargo bench` passes `--bench`; under `cargo test --all-targets` the
//! benchmark only smoke-tests itself on a few hundred items.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tenantai::ops::backup::{self, BackupConfig, Retention};
use tenantai::ops::restore::{restore, RestoreOptions};
use tenantai::ops::Quiet;
use tenantai::store::{aws, Item, Key, QueueSpec, Resources, Scan, Storage, Table, Write};

fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Items per adapter: `BENCH_OPS_ITEMS` (20000 embedded, a quarter of it on the
/// emulator, which is much slower), a few hundred in smoke mode.
fn items(emulated: bool) -> usize {
    if !full_run() {
        return 300;
    }
    let n = std::env::var("BENCH_OPS_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    if emulated {
        n / 4
    } else {
        n
    }
}

const SEGMENTS: u32 = 4;
const WRITERS: usize = 8;

fn resources() -> Resources {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Resources {
        table: format!("bench-ops-{id}"),
        bucket: format!("bench-ops-{id}"),
        queues: vec![QueueSpec {
            name: format!("bench-ops-{id}"),
            dead_letter: None,
        }],
    }
}

fn item(i: usize) -> Item {
    let tenant = format!("ten_{:032x}", i % 50);
    let (key, attrs) = match i % 4 {
        0 => (
            Key::new(
                format!("USAGE#{tenant}"),
                format!("D#2026-11-{:02}#M#all-MiniLM-L6-v2#{i}", 1 + i % 28),
            ),
            json!({"day": "2026-11-24", "model": "all-MiniLM-L6-v2", "requests": i, "inputs": 3 * i,
                   "tokens": 40 * i, "cache_hits": i / 3, "cost_micros": 7 * i, "compute_ms": 2 * i}),
        ),
        1 => (
            Key::new(format!("TENANT#{tenant}"), format!("KEY#key_{i:032x}")),
            json!({"key_id": format!("key_{i:032x}"), "tenant_id": tenant, "prefix": "tk_AbC123",
                   "scopes": ["embeddings", "models", "usage", "batches"], "created_at": 1_795_478_400,
                   "hash": format!("{:064x}", i)}),
        ),
        2 => (
            Key::new(format!("AUDIT#{tenant}"), format!("E#{i:020}")),
            json!({"id": format!("aud_{i:032x}"), "at": 1_795_478_400 + i, "actor": "ops-admin",
                   "action": "tenant.update", "tenant_id": tenant, "target": tenant,
                   "before": {"tier": "free"}, "after": {"tier": "pro"}, "seq": i,
                   "prev_hash": format!("{:064x}", i), "hash": format!("{:064x}", i + 1)}),
        ),
        _ => {
            // 384 floats, as the default model answers, base64 as the cache stores them.
            let floats: Vec<u8> = (0..384)
                .flat_map(|j| ((i * 31 + j) as f32 / 997.0).to_le_bytes())
                .collect();
            use base64::Engine;
            (
                Key::new(
                    format!("CACHE#{tenant}"),
                    format!("all-MiniLM-L6-v2|1|{i:064x}"),
                ),
                json!({"tokens": 12, "dims": 384, "vectors": base64::engine::general_purpose::STANDARD.encode(floats)}),
            )
        }
    };
    Item::new(key, attrs.as_object().cloned().unwrap_or_default())
}

/// Writes items `0..n` in batches of 25 from `WRITERS` tasks; items per second.
async fn batch_write(table: &Arc<dyn Table>, n: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let mine: Vec<usize> = (0..n).filter(|i| i % WRITERS == w).collect();
            for chunk in mine.chunks(25) {
                let writes: Vec<Write> = chunk.iter().map(|i| Write::Put(item(*i))).collect();
                table.write_batch(&writes).await.expect("batch write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Reads the whole table through `SEGMENTS` parallel segments; items per second.
async fn scan_all(table: &Arc<dyn Table>) -> (usize, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for segment in 0..SEGMENTS {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            let mut cursor = None;
            loop {
                let page = table
                    .scan(&Scan::segment(segment, SEGMENTS).limit(1000).after(cursor))
                    .await
                    .expect("scan");
                n += page.items.len();
                cursor = page.next;
                if cursor.is_none() {
                    return n;
                }
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("scanner");
    }
    (total, total as f64 / start.elapsed().as_secs_f64())
}

async fn wipe(table: &Arc<dyn Table>, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(25) {
        let deletes: Vec<Write> = chunk.iter().map(|i| Write::Delete(item(*i).key)).collect();
        table.write_batch(&deletes).await.expect("delete");
    }
}

struct Figures {
    items: usize,
    backup: f64,
    scan: f64,
    restore: f64,
    write: f64,
    gz_bytes: f64,
    raw_bytes: f64,
}

async fn run(storage: Storage, n: usize) -> Figures {
    let table = storage.table.clone();
    let blobs = storage.blobs().expect("bucket").clone();
    let write = batch_write(&table, n).await;
    let (count, scan) = scan_all(&table).await;
    assert_eq!(count, n);
    let config = BackupConfig {
        segments: SEGMENTS,
        part_items: 250_000,
        retention: Retention {
            daily: 7,
            monthly: 12,
        },
    };
    let start = Instant::now();
    let m = backup::run(&storage, &config, &Quiet)
        .await
        .expect("backup")
        .manifest;
    let backup_rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(m.total_items as usize, n);
    wipe(&table, n).await;
    let start = Instant::now();
    let opts = RestoreOptions {
        concurrency: SEGMENTS as usize,
        ..Default::default()
    };
    let r = restore(&table, &blobs, &opts, &Quiet)
        .await
        .expect("restore");
    let restore_rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(r.items_written as usize, n);
    Figures {
        items: n,
        backup: backup_rate,
        scan,
        restore: restore_rate,
        write,
        gz_bytes: m.parts.iter().map(|p| p.bytes).sum::<u64>() as f64 / n as f64,
        raw_bytes: m.parts.iter().map(|p| p.raw_bytes).sum::<u64>() as f64 / n as f64,
    }
}

fn print(name: &str, f: &Figures) {
    println!(
        "{name:<14} {:>7} {:>12.0} {:>12.0} {:>6.2} {:>12.0} {:>12.0} {:>6.2} {:>9.0} {:>9.0}",
        f.items,
        f.backup,
        f.scan,
        f.backup / f.scan,
        f.restore,
        f.write,
        f.restore / f.write,
        f.gz_bytes,
        f.raw_bytes
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let res = resources();
        let embedded = Storage::embedded(dir.path(), &res).await.expect("embedded storage");
        let emb = run(embedded, items(false)).await;
        let emulated = match std::env::var("AWS_ENDPOINT_URL") {
            Ok(endpoint) => {
                println!("AWS adapters against {endpoint}");
                let config = aws::sdk_config().await;
                let res = resources();
                let storage = Storage::aws(&config, &res, true).await.expect("emulated AWS storage");
                Some(run(storage, items(true)).await)
            }
            Err(_) => {
                println!("AWS_ENDPOINT_URL not set: only the embedded adapters are measured (use scripts/bench-ops.sh)");
                None
            }
        };
        println!(
            "\n{SEGMENTS} segments (backup) / parts at once (restore); floors: a {SEGMENTS}-segment scan, batch writes from {WRITERS} tasks\n"
        );
        println!(
            "{:<14} {:>7} {:>12} {:>12} {:>6} {:>12} {:>12} {:>6} {:>9} {:>9}",
            "adapter", "items", "backup it/s", "scan it/s", "ratio", "restore it/s", "write it/s", "ratio", "B/item gz", "B/item raw"
        );
        print("embedded", &emb);
        if let Some(a) = &emulated {
            print("emulated AWS", a);
        }
    });
}
