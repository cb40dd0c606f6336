#![allow(clippy::expect_used)] // a benchmark that cannot set up has nothing to report
//! Storage throughput: operations per second of each port operation on the
//! embedded adapters and on the AWS adapters (against `AWS_ENDPOINT_URL`, the
//! emulator started by `scripts/bench-storage.sh`), side by side, with the ratio.
//!
//! The metering rows fold batches of ten usage events (an SQS batch) through
//! the metering code and report events per second.
//!
//! Every run is bounded in operation count and in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tenantai::billing::metering::{Meter, Record, UsageEvent};
use tenantai::store::{
    aws, Cond, Item, Key, Outgoing, Queue, QueueSpec, Receive, Resources, Storage, Table, Update,
};

/// `cargo bench` passes `--bench`; under `cargo test --all-targets` the benchmark
/// only smoke-tests itself with a handful of operations.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn max_ops() -> usize {
    if full_run() {
        2000
    } else {
        16
    }
}

const MAX_TIME: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 8;

struct Row {
    op: &'static str,
    ops_per_sec: f64,
}

/// Runs `op(i)` from `CONCURRENCY` tasks until `max_ops()` ops or `MAX_TIME`; ops/s.
async fn measure<F, Fut>(op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (op, counter) = (op.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            loop {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= max_ops() || start.elapsed() > MAX_TIME {
                    return done;
                }
                op(i).await;
                done += 1;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn resources() -> Resources {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Resources {
        table: format!("bench-{id}"),
        bucket: format!("bench-{id}"),
        queues: vec![QueueSpec {
            name: format!("bench-{id}"),
            dead_letter: None,
        }],
    }
}

async fn run(storage: Storage, res: &Resources) -> Vec<Row> {
    let table: Arc<dyn Table> = storage.table.clone();
    let queue: Arc<dyn Queue> = storage.queue(&res.queues[0].name).expect("bench queue");
    let mut rows = Vec::new();

    let t = table.clone();
    let put = measure(move |i| {
        let t = t.clone();
        async move {
            let item = Item::new(
                Key::new("bench", format!("item#{i:06}")),
                json!({"n": i, "name": "tenant"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
            t.put(&item, &Cond::Absent).await.expect("put");
        }
    })
    .await;
    rows.push(Row {
        op: "conditional put",
        ops_per_sec: put,
    });

    let t = table.clone();
    let get = measure(move |i| {
        let t = t.clone();
        async move {
            t.get(&Key::new("bench", format!("item#{:06}", i % 500)))
                .await
                .expect("get");
        }
    })
    .await;
    rows.push(Row {
        op: "get",
        ops_per_sec: get,
    });

    let t = table.clone();
    let add = measure(move |_| {
        let t = t.clone();
        async move {
            t.update(&Update::new(Key::new("bench", "counter")).add("n", 1))
                .await
                .expect("add");
        }
    })
    .await;
    rows.push(Row {
        op: "atomic add (one hot counter)",
        ops_per_sec: add,
    });

    let q = queue.clone();
    let send = measure(move |i| {
        let q = q.clone();
        async move {
            q.send(&Outgoing::new(format!("message {i}")))
                .await
                .expect("send");
        }
    })
    .await;
    rows.push(Row {
        op: "queue send",
        ops_per_sec: send,
    });

    // Receive + delete, one message at a time, until the queue is drained.
    let q = queue.clone();
    let recv = measure(move |_| {
        let q = q.clone();
        async move {
            let opts = Receive {
                max: 1,
                wait: Duration::ZERO,
                visibility: Duration::from_secs(60),
            };
            for m in q.receive(&opts).await.expect("receive") {
                q.delete(&m.receipt).await.expect("delete");
            }
        }
    })
    .await;
    rows.push(Row {
        op: "queue receive + delete",
        ops_per_sec: recv,
    });

    rows
}

/// Metering: SQS-sized batches of 10 usage events folded exactly once, as the
/// metering function does; then the same batches redelivered. On a table of
/// its own: the emulator copies the whole table for every transaction, so a
/// table filled by the other rows would slow it further.
async fn run_metering(storage: Storage, res: &Resources) -> Vec<Row> {
    let table: Arc<dyn Table> = storage.table.clone();
    let queue: Arc<dyn Queue> = storage.queue(&res.queues[0].name).expect("bench queue");
    let mut rows = Vec::new();
    let meter = Meter::new(table.clone());
    let (m, q) = (meter.clone(), queue.clone());
    let fold = measure(move |i| {
        let (m, q) = (m.clone(), q.clone());
        async move {
            let outcome = m.process(q.as_ref(), &usage_batch(i)).await;
            assert_eq!(outcome.added, FOLD_BATCH, "fold: {outcome:?}");
        }
    })
    .await;
    rows.push(Row {
        op: "usage events folded (events/s)",
        ops_per_sec: fold * FOLD_BATCH as f64,
    });
    let (m, q) = (meter.clone(), queue.clone());
    let redelivered = measure(move |i| {
        let (m, q) = (m.clone(), q.clone());
        async move {
            // Batches folded above (the smallest indices always are).
            let outcome = m.process(q.as_ref(), &usage_batch(i % 4)).await;
            assert_eq!(outcome.duplicates, FOLD_BATCH, "redelivery: {outcome:?}");
        }
    })
    .await;
    rows.push(Row {
        op: "usage events redelivered (events/s)",
        ops_per_sec: redelivered * FOLD_BATCH as f64,
    });
    rows
}

const FOLD_BATCH: usize = 10;

/// Batch `i` of usage events: 3 tenants, 2 models, 2 days.
fn usage_batch(i: usize) -> Vec<Record> {
    (0..FOLD_BATCH)
        .map(|j| {
            let n = i * FOLD_BATCH + j;
            let event = UsageEvent {
                event_id: format!("bench-{n:08}"),
                tenant_id: format!("ten_{}", n % 3),
                key_id: "key_bench".into(),
                model: ["all-MiniLM-L6-v2", "tuned"][n % 2].into(),
                model_version: "1".into(),
                inputs: 4,
                tokens: 120,
                completion_tokens: 0,
                requests: 1,
                cache_hit: n % 5 == 0,
                cache_hits: 0,
                latency_ms: 3.0,
                overhead_ms: 0.2,
                compute_ms: 2,
                cost_micros: 3,
                at_ms: 1_795_478_400_000 + (n % 2) as i64 * 86_400_000,
                batch: false,
            };
            Record {
                id: format!("m{n}"),
                body: serde_json::to_string(&event).expect("event"),
            }
        })
        .collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let res = resources();
        let dir = tempfile::tempdir().expect("temp dir");
        let embedded = Storage::embedded(dir.path(), &res).await.expect("embedded storage");
        let mut emb = run(embedded, &res).await;
        let fold_res = resources();
        let fold_dir = tempfile::tempdir().expect("temp dir");
        let embedded = Storage::embedded(fold_dir.path(), &fold_res).await.expect("embedded storage");
        emb.extend(run_metering(embedded, &fold_res).await);

        let aws_rows = match std::env::var("AWS_ENDPOINT_URL") {
            Ok(endpoint) => {
                let config = aws::sdk_config().await;
                let storage = Storage::aws(&config, &res, true).await.expect("emulated AWS storage");
                println!("AWS adapters against {endpoint}");
                let mut rows = run(storage, &res).await;
                let storage = Storage::aws(&config, &fold_res, true).await.expect("emulated AWS storage");
                rows.extend(run_metering(storage, &fold_res).await);
                Some(rows)
            }
            Err(_) => {
                println!("AWS_ENDPOINT_URL not set: only the embedded adapters are measured (use scripts/bench-storage.sh)");
                None
            }
        };

        println!("\n{CONCURRENCY} concurrent tasks, up to {} ops or {}s per row\n", max_ops(), MAX_TIME.as_secs());
        println!("{:<38} {:>14} {:>16} {:>10}", "operation", "embedded op/s", "emulated-AWS op/s", "ratio");
        for (i, row) in emb.iter().enumerate() {
            match aws_rows.as_ref().and_then(|r| r.get(i)) {
                Some(a) => println!(
                    "{:<38} {:>14.0} {:>16.0} {:>9.1}x",
                    row.op,
                    row.ops_per_sec,
                    a.ops_per_sec,
                    row.ops_per_sec / a.ops_per_sec
                ),
                None => println!("{:<38} {:>14.0} {:>16} {:>10}", row.op, row.ops_per_sec, "-", "-"),
            }
        }
    });
}
