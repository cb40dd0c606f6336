#![allow(clippy::expect_used)] // a benchmark that cannot set up has nothing to report
//! The rate limiter's own time under concurrent streams, on the embedded table
//! (one SQLite writer, as in `tenantai dev`).
//!
//! `STREAMS` clients each loop: admit (tenant and key scopes, a chat request's
//! estimate), hold the request for a stream's length, settle to the real count.
//! The clock runs `BENCH_SPEED` (default 10) times faster than real time, so a
//! short run crosses several rate-limit windows (each starts with new leases). Printed: the
//! admission time's percentiles, table writes per request, and the same
//! percentiles of the peer: one atomic add on the same table per request under
//! the same concurrency (what every request would pay without leases).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantai::gateway::ratelimit::{Limits, RateLimiter, Scope};
use tenantai::store::counting::CountingTable;
use tenantai::store::{Key, Resources, Storage, Table, Update};

const STREAMS: u64 = 32;
/// A stream's length in real time (the backend's share of a request).
const HOLD: Duration = Duration::from_millis(40);
const ESTIMATE: u64 = 300;
const ACTUAL: u64 = 180;

fn speed() -> f64 {
    std::env::var("BENCH_SPEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0)
}

fn run_time() -> Duration {
    if std::env::args().any(|a| a == "--bench") {
        Duration::from_secs(15)
    } else {
        Duration::from_millis(300)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut ms: Vec<f64>) -> (f64, f64, f64, usize) {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    (
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(0.0),
        n,
    )
}

/// Runs `STREAMS` clients of `op` for the run time; each op's own time in ms.
async fn clients<F, Fut>(op: F) -> Vec<f64>
where
    F: Fn(u64, i64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let base = tenantai::store::now_millis();
    let mut tasks = Vec::new();
    for client in 0..STREAMS {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut i = 0u64;
            while start.elapsed() < run_time() {
                let now = base + (start.elapsed().as_secs_f64() * speed() * 1000.0) as i64;
                let t = Instant::now();
                op(client * 1_000_003 + i, now).await;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(HOLD).await;
                i += 1;
            }
            times
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::embedded(dir.path(), &Resources::named("bench"))
        .await
        .expect("embedded storage");
    let table = CountingTable::new(storage.table.clone());
    let limiter = RateLimiter::new(table.clone());
    let limits = Limits {
        requests_per_minute: 100_000,
        tokens_per_minute: 100_000_000,
    };
    let scopes = Arc::new([
        Scope::tenant("bench", limits),
        Scope::key("bench", "key1", limits),
    ]);
    let l = limiter.clone();
    let own = clients(move |spread, now| {
        let (l, scopes) = (l.clone(), scopes.clone());
        async move {
            let admission = l
                .admit(&scopes[..], ESTIMATE, now, spread)
                .await
                .expect("admitted");
            tokio::spawn(async move { l.settle(&admission, ACTUAL).await });
        }
    })
    .await;
    let writes = table.writes();
    let (p50, p99, max, n) = summary(own);

    let t = table.clone();
    let peer = clients(move |i, _| {
        let t = t.clone();
        async move {
            let key = Key::new("RL#peer", format!("c{}", i % 2));
            t.update(&Update::new(key).add("n", 1)).await.expect("add");
        }
    })
    .await;
    let (q50, q99, qmax, _) = summary(peer);

    println!(
        "rate limiter, {STREAMS} streams, embedded table, clock x{}: {n} admissions, \
         {:.3} table writes each",
        speed(),
        writes as f64 / n.max(1) as f64
    );
    println!("| | p50 | p99 | max |");
    println!("|---|---|---|---|");
    println!("| admit (two scopes, leased) | {p50:.3} ms | {p99:.3} ms | {max:.3} ms |");
    println!("| peer: one atomic add per request | {q50:.3} ms | {q99:.3} ms | {qmax:.3} ms |");
    println!(
        "| ratio (peer / admit), p99 | | {:.1}x | |",
        q99 / p99.max(1e-9)
    );
}
