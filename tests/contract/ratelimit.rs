//! Rate limits on the shared counters of either adapter: under 32 concurrent
//! clients the requests admitted in a window never exceed the limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tenantai::error::ApiError;
use tenantai::gateway::ratelimit::{Limits, RateLimiter, Scope};
use tenantai::store::counting::CountingTable;
use tenantai::store::Key;

use crate::env::Env;

/// One instant for a whole test, so it never straddles two windows (taken when
/// the test starts: counters expire two windows after theirs, so an instant
/// shared by the whole suite would outlive them when the suite runs long).
fn now_ms() -> i64 {
    tenantai::store::now_millis()
}

async fn hammer(
    limiter: RateLimiter,
    scopes: Vec<Scope>,
    attempts_each: u64,
    now: i64,
) -> (u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..32u64 {
        let (limiter, scopes, admitted, refused) = (
            limiter.clone(),
            scopes.clone(),
            admitted.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..attempts_each {
                match limiter.admit(&scopes, 10, now, client * 7919 + i).await {
                    Ok(_) => admitted.fetch_add(1, Ordering::Relaxed),
                    Err(ApiError::RateLimited { retry_after_ms, .. }) => {
                        assert!(retry_after_ms > 0 && retry_after_ms <= 60_000);
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => panic!("unexpected: {e}"),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

fn scope(id: &str, rpm: u64, tpm: u64) -> Scope {
    Scope {
        id: id.into(),
        limits: Limits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        },
    }
}

pub async fn admitted_requests_never_exceed_the_limit(env: &Env) {
    let now = now_ms();
    let limiter = RateLimiter::new(env.table().clone());
    // One shard.
    let (admitted, refused) = hammer(
        limiter.clone(),
        vec![scope("tenant:a", 100, 1_000_000)],
        5,
        now,
    )
    .await;
    assert_eq!((admitted, refused), (100, 60));
    // A hot tenant sharded over three counters: still exactly the limit.
    let (admitted, refused) = hammer(
        limiter.clone(),
        vec![scope("tenant:hot", 1200, 10_000_000)],
        45,
        now,
    )
    .await;
    assert_eq!((admitted, refused), (1200, 240));
    // Two scopes: the key's tighter limit binds, and the tenant is charged only
    // for what the key admitted.
    let scopes = vec![
        scope("tenant:b", 400, 1_000_000),
        scope("key:b1", 40, 1_000_000),
    ];
    let (admitted, _) = hammer(limiter.clone(), scopes, 3, now).await;
    assert_eq!(admitted, 40);
    // The tenant gave back the tickets of the requests its key refused: exactly
    // 400 - 40 more requests fit in its window.
    let mut more = 0;
    while limiter
        .admit(&[scope("tenant:b", 400, 1_000_000)], 10, now, 0)
        .await
        .is_ok()
    {
        more += 1;
        assert!(more <= 360, "the tenant admitted more than its limit");
    }
    assert_eq!(more, 360);
}

/// Hosts lease tickets in blocks: several limiters (hosts) on one table never
/// admit more than the limit together, and a quiet scope's counter holds only
/// what it used.
pub async fn hosts_leasing_tickets_never_exceed_the_limit(env: &Env) {
    let now = now_ms();
    let hosts = (0..4).map(|_| {
        let host = RateLimiter::new(env.table().clone());
        tokio::spawn(hammer(
            host,
            vec![scope("tenant:shared", 300, 10_000_000)],
            20,
            now,
        ))
    });
    let mut admitted = 0;
    for host in hosts.collect::<Vec<_>>() {
        admitted += host.await.unwrap().0;
    }
    // 4 hosts x 32 clients x 20 attempts: far more than the limit.
    assert!(admitted <= 300, "admitted {admitted} of a limit of 300");
    // Leftover leases are the only shortfall, and a claim takes at most 1/16 of
    // what is left, so most of the window is used.
    assert!(admitted >= 200, "admitted only {admitted} of 300");
    // A quiet scope claims one ticket at a time: its tokens and requests are exact.
    let quiet = RateLimiter::new(env.table().clone());
    for _ in 0..3 {
        quiet
            .admit(&[scope("tenant:quiet", 300, 10_000_000)], 7, now, 0)
            .await
            .unwrap();
    }
    let window = now.div_euclid(60_000);
    let item = env
        .table()
        .get(&tenantai::store::Key::new(
            "RL#tenant:quiet",
            format!("{window}#r0"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(item.number("n") >= 3 && item.number("n") <= 7, "{item:?}");
}

pub async fn token_limits_refuse_and_settle(env: &Env) {
    let now = now_ms();
    let limiter = RateLimiter::new(env.table().clone());
    let s = vec![scope("tenant:t", 1000, 100)];
    let first = limiter.admit(&s, 60, now, 0).await.unwrap();
    assert_eq!(first.standing.remaining_tokens, 40);
    match limiter.admit(&s, 60, now, 0).await {
        Err(ApiError::RateLimited { message, .. }) => {
            assert!(message.contains("tokens"), "{message}")
        }
        other => panic!("expected a token refusal, got {other:?}"),
    }
    // The real count was 20: settling frees 40 tokens for the next request.
    limiter.settle(&first, 20).await;
    let second = limiter.admit(&s, 60, now, 0).await.unwrap();
    assert_eq!(second.standing.remaining_tokens, 20);
    // A new window starts from zero.
    assert!(limiter.admit(&s, 90, now + 60_000, 0).await.is_ok());
}

/// A window's start, one second in: every test instant below stays inside the
/// window of the real clock's minute (so its counters outlive the test).
fn window_start_ms() -> i64 {
    now_ms().div_euclid(60_000) * 60_000
}

/// 32 requests on an empty lease at once: one claim is in flight per counter
/// and the others wait for it, so the table sees a handful of writes, not one
/// or more per request.
pub async fn a_burst_on_an_empty_lease_costs_a_few_claims(env: &Env) {
    let table = CountingTable::new(env.table().clone());
    let limiter = RateLimiter::new(table.clone());
    let now = window_start_ms() + 1_000;
    let (admitted, refused) = hammer(
        limiter,
        vec![scope("tenant:burst", 400, 10_000_000)],
        1,
        now,
    )
    .await;
    assert_eq!((admitted, refused), (32, 0));
    let writes = table.writes();
    assert!(
        (2..=16).contains(&writes),
        "32 admissions on an empty lease took {writes} table writes"
    );
}

/// Near a window's end a busy lease claims for the next window (that those
/// claims serve the next window's first requests from memory is a unit test
/// of the limiter), and each window still admits exactly its limit on one host.
pub async fn busy_leases_claim_ahead_for_the_next_window(env: &Env) {
    let limiter = RateLimiter::new(env.table().clone());
    let end = window_start_ms() + 60_000;
    let busy = vec![scope("tenant:ahead", 400, 10_000_000)];
    for _ in 0..64 {
        limiter.admit(&busy, 10, end - 2_000, 0).await.unwrap();
    }
    // The claims ahead run in the background: wait (bounded) until both landed.
    let next = (end / 60_000).to_string();
    let keys = [
        Key::new("RL#tenant:ahead", format!("{next}#r0")),
        Key::new("RL#tenant:ahead", format!("{next}#t")),
    ];
    let landed = async {
        loop {
            let (r, t) = (
                env.table().get(&keys[0]).await,
                env.table().get(&keys[1]).await,
            );
            if let (Ok(Some(_)), Ok(Some(_))) = (r, t) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), landed)
        .await
        .expect("the claims ahead never reached the table");
    // Exactly the limit in the ending window and in the next one.
    let tight = vec![scope("tenant:edge", 100, 10_000_000)];
    let limiter = RateLimiter::new(env.table().clone());
    let first = hammer(limiter.clone(), tight.clone(), 5, end - 1_000).await;
    let second = hammer(limiter, tight, 5, end + 1_000).await;
    assert_eq!((first, second), ((100, 60), (100, 60)));
}
