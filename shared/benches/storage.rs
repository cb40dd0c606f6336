#![allow(clippy::expect_used)] // a benchmark that cannot set up has nothing to report
//! Storage throughput: operations per second of each port operation on the
//! embedded adapters and on the AWS adapters (against `AWS_ENDPOINT_URL`, the
//! emulator started by `scripts/bench-storage.sh`), side by side, with the ratio.
//!
//! Every run is bounded in operation count and in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
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

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let res = resources();
        let dir = tempfile::tempdir().expect("temp dir");
        let embedded = Storage::embedded(dir.path(), &res).await.expect("embedded storage");
        let emb = run(embedded, &res).await;

        let aws_rows = match std::env::var("AWS_ENDPOINT_URL") {
            Ok(endpoint) => {
                let config = aws::sdk_config().await;
                let storage = Storage::aws(&config, &res, true).await.expect("emulated AWS storage");
                println!("AWS adapters against {endpoint}");
                Some(run(storage, &res).await)
            }
            Err(_) => {
                println!("AWS_ENDPOINT_URL not set: only the embedded adapters are measured (use scripts/bench-storage.sh)");
                None
            }
        };

        println!("\n{CONCURRENCY} concurrent tasks, up to {} ops or {}s per row\n", max_ops(), MAX_TIME.as_secs());
        println!("{:<30} {:>14} {:>16} {:>10}", "operation", "embedded op/s", "emulated-AWS op/s", "ratio");
        for (i, row) in emb.iter().enumerate() {
            match aws_rows.as_ref().and_then(|r| r.get(i)) {
                Some(a) => println!(
                    "{:<30} {:>14.0} {:>16.0} {:>9.1}x",
                    row.op,
                    row.ops_per_sec,
                    a.ops_per_sec,
                    row.ops_per_sec / a.ops_per_sec
                ),
                None => println!("{:<30} {:>14.0} {:>16} {:>10}", row.op, row.ops_per_sec, "-", "-"),
            }
        }
    });
}
