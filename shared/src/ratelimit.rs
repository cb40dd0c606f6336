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

use std::sync::Arc;

use crate::error::{ApiError, ApiResult};
use crate::store::{Key, StoreError, Table, Update};

/// A shard takes at most this many requests per minute before another is added.
const REQUESTS_PER_SHARD: u64 = 500;
const MAX_SHARDS: u64 = 16;
const WINDOW_SECS: i64 = 60;

/// Requests and tokens per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

/// One limited scope of a request: the tenant, or the key.
#[derive(Clone, Debug)]
pub struct Scope {
    pub id: String,
    pub limits: Limits,
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

/// What one scope took for a request.
#[derive(Clone, Debug)]
struct Taken {
    request_key: Key,
    token_key: Key,
    tokens: u64,
}

#[derive(Clone)]
pub struct RateLimiter {
    table: Arc<dyn Table>,
}

fn shards(limits: &Limits) -> u64 {
    limits
        .requests_per_minute
        .div_ceil(REQUESTS_PER_SHARD)
        .clamp(1, MAX_SHARDS)
}

/// Shard `i`'s share of `total` over `n` shards (the shares sum to `total`).
fn share(total: u64, n: u64, i: u64) -> u64 {
    total / n + u64::from(i < total % n)
}

impl RateLimiter {
    pub fn new(table: Arc<dyn Table>) -> Self {
        RateLimiter { table }
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
        let reset_ms = ((window + 1) * 1000 * WINDOW_SECS - now_ms).max(1) as u64;
        let mut taken: Vec<Taken> = Vec::new();
        let mut standing: Option<Standing> = None;
        for scope in scopes {
            match self.take(scope, window, tokens, spread).await {
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
    /// and the token estimate on its token counter; gives back what it took when refused.
    async fn take(
        &self,
        scope: &Scope,
        window: i64,
        tokens: u64,
        spread: u64,
    ) -> Result<(Taken, Standing), Refusal> {
        let limits = scope.limits;
        let n = shards(&limits);
        let expires = (window + 2) * WINDOW_SECS;
        let store = |e: StoreError| Refusal::Store(e.into());
        let mut slot = None;
        for step in 0..n {
            let i = (spread + step) % n;
            let share_i = share(limits.requests_per_minute, n, i);
            if share_i == 0 {
                continue;
            }
            let key = Key::new(format!("RL#{}", scope.id), format!("{window}#r{i}"));
            let ticket = self.add(&key, "n", 1, expires).await.map_err(store)?;
            if ticket <= share_i as i64 {
                slot = Some((key, share_i, ticket as u64));
                break;
            }
            // Over this shard's share: the ticket is spent, the next shard may have room.
        }
        let Some((request_key, share_i, ticket)) = slot else {
            return Err(Refusal::Requests(limits));
        };
        let token_key = Key::new(format!("RL#{}", scope.id), format!("{window}#t"));
        let used = self
            .add(&token_key, "n", tokens as i64, expires)
            .await
            .map_err(store)?;
        if used > limits.tokens_per_minute as i64 {
            self.release(&[Taken {
                request_key,
                token_key,
                tokens,
            }])
            .await;
            return Err(Refusal::Tokens(limits));
        }
        let standing = Standing {
            limit_requests: limits.requests_per_minute,
            remaining_requests: (share_i - ticket) * n,
            limit_tokens: limits.tokens_per_minute,
            remaining_tokens: limits.tokens_per_minute.saturating_sub(used.max(0) as u64),
            reset_ms: 0,
        };
        Ok((
            Taken {
                request_key,
                token_key,
                tokens,
            },
            standing,
        ))
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

    /// Gives back tickets and tokens of a refused request. A returned ticket lets
    /// exactly one later request in, so this never admits more than the limit.
    async fn release(&self, taken: &[Taken]) {
        for t in taken {
            for (key, delta) in [(&t.request_key, -1), (&t.token_key, -(t.tokens as i64))] {
                if let Err(e) = self
                    .table
                    .update(&Update::new(key.clone()).add("n", delta))
                    .await
                {
                    tracing::warn!(error = %e, "could not release a rate-limit reservation");
                }
            }
        }
    }

    /// Replaces the token estimate by the real count once the response is known.
    pub async fn settle(&self, admission: &Admission, actual_tokens: u64) {
        for t in &admission.taken {
            let delta = actual_tokens as i64 - t.tokens as i64;
            if delta != 0 {
                if let Err(e) = self
                    .table
                    .update(&Update::new(t.token_key.clone()).add("n", delta))
                    .await
                {
                    tracing::warn!(error = %e, "could not settle a token count");
                }
            }
        }
    }
}

enum Refusal {
    Requests(Limits),
    Tokens(Limits),
    Store(ApiError),
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

    #[test]
    fn reset_texts() {
        assert_eq!(reset_text(250), "250ms");
        assert_eq!(reset_text(1000), "1s");
        assert_eq!(reset_text(1001), "2s");
        assert_eq!(reset_text(360_000), "6m0s");
    }
}
