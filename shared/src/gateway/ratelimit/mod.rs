//! Rate limits per tenant and per key: requests and tokens per minute.
//!
//! Counters live in the table so every host (every Lambda instance) shares them.
//! A window is one UTC minute. Admission is by ticket: an atomic add returns
//! each request its own number, and a request is admitted when its number is
//! within the limit. Atomic adds never hand out a number twice, so the requests
//! admitted in a window never exceed the limit, however many hosts race (no
//! read-then-write, no retries on contention). A hot scope's request counter is
//! split over shards, one item each, so one item is not a write bottleneck; a
//! request tries the shards from a spot its id picks, and the shards' shares sum
//! to the limit. Tokens are counted on one item per scope: an estimate is taken
//! before the backend is called and settled to the real count after.
//!
//! Leases keep the table off the hot path of a busy scope: a host claims tickets
//! (and tokens) in blocks with one atomic add and hands them out from memory.
//! Claims start at one and double while a scope stays busy, up to a sixteenth of
//! what the window has left (at most [`MAX_CLAIM`]), so a quiet scope still
//! claims exactly what it uses and no host holds much that another could use.
//! What a host leased and did not use when the window ends is never used: the
//! admitted count can only fall short of the limit, never pass it. A refused
//! request's ticket and tokens, and a settled estimate's surplus, go back to the
//! lease rather than the table. Lowering a limit takes full effect at the next
//! window (tickets already leased stay good for the current one). A burst of
//! requests on an empty lease waits for one claim sized for all of them, and a
//! busy lease is refilled in the background before it runs out (see [`lease`]).

use std::sync::{Arc, Mutex};

use lease::Leases;

use crate::billing::amounts::{from_counter, saturating_counter};
use crate::error::{ApiError, ApiResult};
use crate::store::{Key, StoreError, Table, Update};

mod claims;
mod lease;

/// A shard takes at most this many requests per minute before another is added.
const REQUESTS_PER_SHARD: u64 = 500;
const MAX_SHARDS: u64 = 16;
const WINDOW_SECS: i64 = 60;
/// In a window's last this many milliseconds a busy lease also claims for the
/// next window, so that window's first requests find tickets and tokens in memory.
const AHEAD_MS: i64 = 5_000;
/// The most tickets one claim takes into a host's lease.
const MAX_CLAIM: u64 = 256;
/// A claim takes at most this fraction (1/n) of what the window has left.
const CLAIM_SHARE: u64 = 16;
/// The most tokens one claim takes beyond what the request needs.
const MAX_TOKEN_CLAIM: u64 = 1 << 20;

/// Requests and tokens per minute.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl Limits {
    /// Refuses limits above the documented maxima (400 naming the field).
    pub fn validate(&self) -> crate::error::ApiResult<()> {
        use crate::billing::amounts::{check_max, MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE};
        check_max(
            "rate_limits.requests_per_minute",
            self.requests_per_minute,
            MAX_REQUESTS_PER_MINUTE,
        )?;
        check_max(
            "rate_limits.tokens_per_minute",
            self.tokens_per_minute,
            MAX_TOKENS_PER_MINUTE,
        )
    }
}

/// One limited scope of a request: the tenant, or the key. Its counters live under
/// the partition key `RL#<id>`.
#[derive(Clone, Debug)]
pub struct Scope {
    pub id: String,
    pub limits: Limits,
}

impl Scope {
    /// The tenant's scope: counters under `RL#tenant:<tenant>`.
    pub fn tenant(tenant_id: &str, limits: Limits) -> Scope {
        Scope {
            id: format!("tenant:{tenant_id}"),
            limits,
        }
    }

    /// One key's scope, inside its tenant's: counters under
    /// `RL#tenant:<tenant>#key:<key>`, so that every counter's partition key starts
    /// with its tenant's (what tenant-scoped credentials may reach).
    pub fn key(tenant_id: &str, key_id: &str, limits: Limits) -> Scope {
        Scope {
            id: format!("tenant:{tenant_id}#key:{key_id}"),
            limits,
        }
    }
}

/// What one scope had left after admitting a request (for the response headers).
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    /// Milliseconds until the window resets.
    pub reset_ms: u64,
}

/// A request's reservations, to settle once its real token count is known.
#[derive(Clone, Debug)]
pub struct Admission {
    taken: Vec<Taken>,
    /// The tightest standing of all scopes.
    pub standing: Standing,
}

impl Admission {
    /// An admission that took nothing (batch lines: their batch was admitted).
    pub fn none() -> Admission {
        Admission {
            taken: Vec::new(),
            standing: Standing {
                limit_requests: 0,
                remaining_requests: 0,
                limit_tokens: 0,
                remaining_tokens: 0,
                reset_ms: 0,
            },
        }
    }
}

/// What one scope took for a request.
#[derive(Clone, Debug)]
struct Taken {
    window: i64,
    request_key: Key,
    ticket: u64,
    token_key: Key,
    tokens: u64,
}

#[derive(Clone)]
pub struct RateLimiter {
    table: Arc<dyn Table>,
    leases: Arc<Mutex<Leases>>,
}

fn shards(limits: &Limits) -> u64 {
    limits
        .requests_per_minute
        .div_ceil(REQUESTS_PER_SHARD)
        .clamp(1, MAX_SHARDS)
}

/// The counter of shard `i` of the scope's requests in `window`.
fn shard_key(scope: &Scope, window: i64, i: u64) -> Key {
    Key::new(format!("RL#{}", scope.id), format!("{window}#r{i}"))
}

/// The counter of the scope's tokens in `window`.
fn token_key(scope: &Scope, window: i64) -> Key {
    Key::new(format!("RL#{}", scope.id), format!("{window}#t"))
}

/// When a window's counters expire: two windows after theirs.
fn expires(window: i64) -> i64 {
    (window + 2) * WINDOW_SECS
}

/// Shard `i`'s share of `total` over `n` shards (the shares sum to `total`).
fn share(total: u64, n: u64, i: u64) -> u64 {
    total / n + u64::from(i < total % n)
}

impl RateLimiter {
    pub fn new(table: Arc<dyn Table>) -> Self {
        RateLimiter {
            table,
            leases: Arc::new(Mutex::new(Leases::default())),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one request and `tokens` (an estimate) from every scope, or
    /// refuses with a 429 and takes nothing. `now_ms` is the caller's clock.
    pub async fn admit(
        &self,
        scopes: &[Scope],
        tokens: u64,
        now_ms: i64,
        spread: u64,
    ) -> ApiResult<Admission> {
        let window = now_ms.div_euclid(1000 * WINDOW_SECS);
        let reset_ms = from_counter(((window + 1) * 1000 * WINDOW_SECS - now_ms).max(1));
        let mut taken: Vec<Taken> = Vec::new();
        let mut standing: Option<Standing> = None;
        let ahead = now_ms >= (window + 1) * 1000 * WINDOW_SECS - AHEAD_MS;
        for scope in scopes {
            match self.take(scope, window, tokens, spread, ahead).await {
                Ok((t, s)) => {
                    taken.push(t);
                    let s = Standing { reset_ms, ..s };
                    standing = Some(match standing {
                        Some(prev) if prev.remaining_requests <= s.remaining_requests => prev,
                        _ => s,
                    });
                }
                Err(refusal) => {
                    self.release(&taken).await;
                    return Err(match refusal {
                        Refusal::Store(e) => e,
                        Refusal::Requests(limits) | Refusal::Tokens(limits) => {
                            let what = if matches!(refusal, Refusal::Tokens(_)) {
                                "tokens"
                            } else {
                                "requests"
                            };
                            let limit = if what == "tokens" {
                                limits.tokens_per_minute
                            } else {
                                limits.requests_per_minute
                            };
                            ApiError::RateLimited {
                                message: format!("Rate limit reached: {limit} {what} per minute. Retry after the window resets."),
                                retry_after_ms: reset_ms,
                                limits,
                            }
                        }
                    });
                }
            }
        }
        let standing = standing.unwrap_or(Standing {
            limit_requests: 0,
            remaining_requests: 0,
            limit_tokens: 0,
            remaining_tokens: 0,
            reset_ms,
        });
        Ok(Admission { taken, standing })
    }

    /// Takes a request ticket on the scope's shards (from a request-chosen start)
    /// and the token estimate on its token counter; gives back what it took when
    /// refused. `ahead`: the window is ending (busy leases claim for the next).
    async fn take(
        &self,
        scope: &Scope,
        window: i64,
        tokens: u64,
        spread: u64,
        ahead: bool,
    ) -> Result<(Taken, Standing), Refusal> {
        let limits = scope.limits;
        let n = shards(&limits);
        let mut slot = None;
        for step in 0..n {
            let i = (spread + step) % n;
            let share_i = share(limits.requests_per_minute, n, i);
            if share_i == 0 {
                continue;
            }
            let key = shard_key(scope, window, i);
            let next = ahead.then(|| shard_key(scope, window + 1, i));
            if let Some(ticket) = self.ticket(&key, next.as_ref(), window, share_i).await? {
                slot = Some((key, share_i, ticket));
                break;
            }
            // This shard's share is used up; the next shard may have room.
        }
        let Some((request_key, share_i, ticket)) = slot else {
            return Err(Refusal::Requests(limits));
        };
        let next = ahead.then(|| token_key(scope, window + 1));
        let token_key = token_key(scope, window);
        let taken = Taken {
            window,
            request_key,
            ticket,
            token_key,
            tokens,
        };
        let remaining_tokens = match self
            .tokens(
                &taken.token_key,
                next.as_ref(),
                window,
                tokens,
                limits.tokens_per_minute,
            )
            .await
        {
            Ok(Some(remaining)) => remaining,
            refused => {
                // The ticket goes back; no tokens were taken.
                self.release(&[Taken { tokens: 0, ..taken }]).await;
                return Err(refused.err().unwrap_or(Refusal::Tokens(limits)));
            }
        };
        let standing = Standing {
            limit_requests: limits.requests_per_minute,
            remaining_requests: (share_i - ticket) * n,
            limit_tokens: limits.tokens_per_minute,
            remaining_tokens,
            reset_ms: 0,
        };
        Ok((taken, standing))
    }

    async fn add(
        &self,
        key: &Key,
        attr: &str,
        delta: i64,
        expires: i64,
    ) -> Result<i64, StoreError> {
        let new = self
            .table
            .update(
                &Update::new(key.clone())
                    .add(attr, delta)
                    .expires_at(expires),
            )
            .await?;
        Ok(new.get(attr).copied().unwrap_or(0))
    }

    /// Gives back the tickets and tokens of a refused request to this host's
    /// lease: each lets exactly one later request in, so this never admits more
    /// than the limit. Those of a window already over are dropped.
    async fn release(&self, taken: &[Taken]) {
        let mut leases = self.leases();
        for t in taken {
            if t.window != leases.window {
                continue;
            }
            leases
                .tickets
                .entry(t.request_key.clone())
                .or_default()
                .give(t.ticket, t.ticket);
            leases.tokens.entry(t.token_key.clone()).or_default().spare += t.tokens;
        }
    }

    /// Replaces the token estimate by the real count once the response is known:
    /// a surplus goes back to the lease, a shortfall comes from it or, when it
    /// has too little, is added to the counter.
    pub async fn settle(&self, admission: &Admission, actual_tokens: u64) {
        let mut owed = Vec::new();
        {
            let mut leases = self.leases();
            let current = leases.window;
            for t in &admission.taken {
                let lease = (t.window == current)
                    .then(|| leases.tokens.entry(t.token_key.clone()).or_default());
                match (lease, actual_tokens.checked_sub(t.tokens)) {
                    (Some(lease), None) => lease.spare += t.tokens - actual_tokens,
                    (_, Some(0)) | (None, None) => {}
                    (Some(lease), Some(more)) if lease.spare >= more => lease.spare -= more,
                    (_, Some(more)) => owed.push((t.token_key.clone(), more)),
                }
            }
        }
        for (key, more) in owed {
            if let Err(e) = self
                .table
                .update(&Update::new(key).add("n", saturating_counter(more)))
                .await
            {
                tracing::warn!(error = %e, "could not settle a token count");
            }
        }
    }
}

enum Refusal {
    Requests(Limits),
    Tokens(Limits),
    Store(ApiError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e.into())
    }
}

/// OpenAI's rate-limit headers for a standing.
pub fn insert_headers(h: &mut axum::http::HeaderMap, s: &Standing) {
    use axum::http::HeaderValue;
    let reset =
        HeaderValue::from_str(&reset_text(s.reset_ms)).unwrap_or(HeaderValue::from_static("60s"));
    h.insert(
        "x-ratelimit-limit-requests",
        HeaderValue::from(s.limit_requests),
    );
    h.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(s.remaining_requests),
    );
    h.insert("x-ratelimit-reset-requests", reset.clone());
    h.insert(
        "x-ratelimit-limit-tokens",
        HeaderValue::from(s.limit_tokens),
    );
    h.insert(
        "x-ratelimit-remaining-tokens",
        HeaderValue::from(s.remaining_tokens),
    );
    h.insert("x-ratelimit-reset-tokens", reset);
}

/// OpenAI's reset format: "1s", "6m0s", "250ms".
pub fn reset_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_shares_sum_to_the_limit() {
        for total in [0, 1, 7, 60, 499, 500, 501, 3000, 30_000, 123_457] {
            let limits = Limits {
                requests_per_minute: total,
                tokens_per_minute: 0,
            };
            let n = shards(&limits);
            assert!((1..=MAX_SHARDS).contains(&n));
            assert_eq!((0..n).map(|i| share(total, n, i)).sum::<u64>(), total);
        }
    }

    /// The claims a busy lease made ahead serve the next window's first request
    /// from memory. (One thread: background claims run only when the test waits.)
    #[tokio::test]
    async fn the_next_windows_first_request_is_served_from_the_claims_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let res = crate::store::Resources::named("t");
        let storage = crate::store::Storage::embedded(dir.path(), &res)
            .await
            .unwrap();
        let table = crate::store::counting::CountingTable::new(storage.table.clone());
        let limiter = RateLimiter::new(table.clone());
        let limits = Limits {
            requests_per_minute: 400,
            tokens_per_minute: 1_000_000,
        };
        let scopes = [Scope::tenant("t", limits)];
        let end = (crate::store::now_millis().div_euclid(60_000) + 1) * 60_000;
        for _ in 0..64 {
            limiter.admit(&scopes, 10, end - 2_000, 0).await.unwrap();
        }
        let ready = || {
            let mut leases = limiter.leases();
            let Some(next) = leases.next.as_mut() else {
                return false;
            };
            let tickets = next
                .tickets
                .values()
                .any(|l| l.count() > 0 && l.claim.is_idle());
            let tokens = next
                .tokens
                .values()
                .any(|l| l.spare > 0 && l.claim.is_idle());
            tickets && tokens
        };
        for _ in 0..1000 {
            if ready() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(ready(), "no claims ahead for the next window");
        let before = table.writes();
        limiter.admit(&scopes, 10, end + 10, 0).await.unwrap();
        assert_eq!(table.writes(), before, "the request waited for a claim");
    }

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(250), "250ms");
        assert_eq!(reset_text(1000), "1s");
        assert_eq!(reset_text(1001), "2s");
        assert_eq!(reset_text(360_000), "6m0s");
    }
}
