//! Rate limits on the shared counters of either adapter: under 32 concurrent
//! clients the requests admitted in a window never exceed the limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tenantai::error::ApiError;
use tenantai::gateway::ratelimit::{Limits, RateLimiter, Scope};

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
