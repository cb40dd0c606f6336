//! A request's ticket and tokens: from this host's lease, else from a claim on
//! the shared counter (its own, or the one in flight that it waits for; see
//! [`super::lease`]).

use std::sync::Arc;

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use super::lease::{ClaimGuard, Kind, Leases};
use super::{expires, RateLimiter, Refusal, CLAIM_SHARE, MAX_CLAIM, MAX_TOKEN_CLAIM};
use crate::billing::amounts::{from_counter, saturating_counter};
use crate::store::Key;

/// Claims one token request makes before it is refused (a lease another
/// request took from meanwhile is topped up).
const TOKEN_CLAIM_ATTEMPTS: u32 = 4;
/// Rounds (waits on other requests' claims, and its own claims) one request
/// goes through before it is refused.
const MAX_ROUNDS: u32 = 16;

/// What a request does next, decided with the leases locked.
enum Step<T> {
    Done(T),
    Wait(OwnedNotified),
    /// Claim this much, holding the lease's claim marker (none for an old window).
    Claim(u64, Option<ClaimGuard>),
}

/// What a claim of tokens came to.
enum Claimed {
    /// The request's tokens were taken; the tokens the window has left.
    Taken(u64),
    /// The limit had no room for the request.
    Short,
    /// Others took from the lease meanwhile: try again.
    Again,
}

/// A claim started in the background: a busy lease's refill, or a claim ahead
/// for the next window.
struct Background {
    key: Key,
    window: i64,
    size: u64,
    guard: ClaimGuard,
}

/// A window's first claim on a counter is a [`FIRST_CLAIM_SHARE`]th of the limit
/// it counts against, at least one and at most this many tickets (or tokens):
/// exact for a scope with a small limit, and room for a burst in one claim for a
/// scope with plenty (what a host may leave unused is that small share).
const MAX_FIRST_CLAIM: u64 = 32;
const MAX_FIRST_TOKEN_CLAIM: u64 = 1 << 15;
const FIRST_CLAIM_SHARE: u64 = 256;

/// The size of a lease's first claim in a window (later claims are sized by use).
fn first_claim(limit: u64, most: u64) -> u64 {
    (limit / FIRST_CLAIM_SHARE).clamp(1, most)
}

fn remaining(limit: u64, seen: i64, spare: u64) -> u64 {
    limit.saturating_sub(from_counter(seen).saturating_sub(spare))
}

impl RateLimiter {
    fn guard(&self, key: &Key, kind: Kind, done: Arc<Notify>) -> ClaimGuard {
        ClaimGuard {
            leases: self.leases.clone(),
            key: key.clone(),
            kind,
            done,
        }
    }

    /// The background claims a request that was served from `key`'s lease
    /// starts: a refill when `refill` (the lease's, taken with it locked) is
    /// set, and the claim ahead of `next` (the next window's counter).
    fn background(
        &self,
        leases: &mut Leases,
        kind: Kind,
        key: &Key,
        refill: Option<(u64, Arc<Notify>)>,
        next: Option<&Key>,
    ) -> Vec<Background> {
        let window = leases.window;
        let mut jobs = Vec::new();
        if let Some((size, done)) = refill {
            let guard = self.guard(key, kind, done);
            jobs.push(Background {
                key: key.clone(),
                window,
                size,
                guard,
            });
        }
        if let Some(next) = next {
            if let Some((size, done)) = leases.start_ahead(kind, key, next) {
                let guard = self.guard(next, kind, done);
                jobs.push(Background {
                    key: next.clone(),
                    window: window + 1,
                    size,
                    guard,
                });
            }
        }
        jobs
    }

    /// Runs background claims, each holding its lease's claim marker until it
    /// ends; `bound` is the tickets' shard share or the tokens' limit.
    fn spawn_claims(&self, jobs: Vec<Background>, kind: Kind, bound: u64) {
        for job in jobs {
            let me = self.clone();
            tokio::spawn(async move {
                let failed = match kind {
                    Kind::Tickets => me
                        .claim_tickets(&job.key, job.window, bound, job.size, false)
                        .await
                        .err(),
                    Kind::Tokens => me
                        .claim_tokens(&job.key, job.window, job.size, 0, bound)
                        .await
                        .err(),
                };
                if let Some(Refusal::Store(e)) = failed {
                    let what = match kind {
                        Kind::Tickets => "tickets",
                        Kind::Tokens => "tokens",
                    };
                    tracing::warn!(error = %e, what, "could not claim ahead");
                }
                drop(job.guard);
            });
        }
    }

    /// A ticket within `share` on the shard counter `key` (`next`: the same
    /// shard's counter of the next window, when it is time to claim ahead).
    /// `None` when the share is used up.
    pub(super) async fn ticket(
        &self,
        key: &Key,
        next: Option<&Key>,
        window: i64,
        share: u64,
    ) -> Result<Option<u64>, Refusal> {
        for _ in 0..MAX_ROUNDS {
            let step = {
                let mut leases = self.leases();
                match leases.at(window) {
                    None => Step::Claim(1, None),
                    Some(leases) => {
                        let lease = leases.tickets.entry(key.clone()).or_default();
                        if let Some(ticket) = lease.take(share) {
                            let refill = lease.wants_refill().then(|| {
                                let (wanted, done) = lease.claim.start();
                                (lease.next_claim + wanted, done)
                            });
                            let jobs = self.background(leases, Kind::Tickets, key, refill, next);
                            Step::Done((ticket, jobs))
                        } else if lease.exhausted {
                            return Ok(None);
                        } else if let Some(wait) = lease.claim.wait(1) {
                            Step::Wait(wait)
                        } else {
                            let (wanted, done) = lease.claim.start();
                            let size = match lease.next_claim {
                                0 => first_claim(share, MAX_FIRST_CLAIM),
                                n => n,
                            };
                            let claim = size.saturating_add(wanted);
                            Step::Claim(claim, Some(self.guard(key, Kind::Tickets, done)))
                        }
                    }
                }
            };
            match step {
                Step::Done((ticket, jobs)) => {
                    self.spawn_claims(jobs, Kind::Tickets, share);
                    return Ok(Some(ticket));
                }
                Step::Wait(wait) => wait.await,
                Step::Claim(claim, guard) => {
                    let got = self.claim_tickets(key, window, share, claim, true).await;
                    drop(guard);
                    return got;
                }
            }
        }
        Ok(None)
    }

    /// Claims `claim` tickets into the lease; with `keep`, the lowest is the
    /// caller's. Tickets over `share` are never handed out.
    async fn claim_tickets(
        &self,
        key: &Key,
        window: i64,
        share: u64,
        claim: u64,
        keep: bool,
    ) -> Result<Option<u64>, Refusal> {
        let total = from_counter(
            self.add(key, "n", saturating_counter(claim), expires(window))
                .await?,
        );
        let first = total.saturating_sub(claim) + 1;
        let mut leases = self.leases();
        let lease = leases
            .filled(window)
            .map(|l| l.tickets.entry(key.clone()).or_default());
        if first > share {
            if let Some(lease) = lease {
                lease.exhausted = true;
                // A ticket another request of this host gave back may still be free.
                return Ok(if keep { lease.take(share) } else { None });
            }
            return Ok(None);
        }
        let last = total.min(share);
        if let Some(lease) = lease {
            lease.give(if keep { first + 1 } else { first }, last);
            let left = share - last;
            lease.next_claim = (claim * 2).min(left / CLAIM_SHARE).clamp(1, MAX_CLAIM);
        }
        Ok(keep.then_some(first))
    }

    /// Takes `tokens` from the scope's token counter `key` (`next`: the next
    /// window's, when it is time to claim ahead); `None` when the limit has no
    /// room for them. Returns the tokens the window has left.
    pub(super) async fn tokens(
        &self,
        key: &Key,
        next: Option<&Key>,
        window: i64,
        tokens: u64,
        limit: u64,
    ) -> Result<Option<u64>, Refusal> {
        let mut claims = 0;
        for _ in 0..MAX_ROUNDS {
            let step = {
                let mut leases = self.leases();
                match leases.at(window) {
                    None => Step::Claim(tokens, None),
                    Some(leases) => {
                        let lease = leases.tokens.entry(key.clone()).or_default();
                        if lease.spare >= tokens {
                            lease.spare -= tokens;
                            let left = remaining(limit, lease.seen, lease.spare);
                            let refill = lease.wants_refill().then(|| {
                                let (wanted, done) = lease.claim.start();
                                (lease.next_claim + wanted, done)
                            });
                            let jobs = self.background(leases, Kind::Tokens, key, refill, next);
                            Step::Done((left, jobs))
                        } else if let Some(wait) = lease.claim.wait(tokens) {
                            Step::Wait(wait)
                        } else if claims >= TOKEN_CLAIM_ATTEMPTS {
                            return Ok(None);
                        } else {
                            let (wanted, done) = lease.claim.start();
                            let size = match (lease.next_claim, lease.seen) {
                                (0, 0) => first_claim(limit, MAX_FIRST_TOKEN_CLAIM),
                                (n, _) => n,
                            };
                            let claim = (tokens - lease.spare).max(size).saturating_add(wanted);
                            Step::Claim(claim, Some(self.guard(key, Kind::Tokens, done)))
                        }
                    }
                }
            };
            match step {
                Step::Done((left, jobs)) => {
                    self.spawn_claims(jobs, Kind::Tokens, limit);
                    return Ok(Some(left));
                }
                Step::Wait(wait) => wait.await,
                Step::Claim(claim, guard) => {
                    claims += 1;
                    let got = self.claim_tokens(key, window, claim, tokens, limit).await;
                    drop(guard);
                    match got? {
                        Claimed::Taken(left) => return Ok(Some(left)),
                        Claimed::Short => return Ok(None),
                        Claimed::Again => {}
                    }
                }
            }
        }
        Ok(None)
    }

    /// Claims `claim` tokens into the lease and takes `need` of them for the
    /// caller. What the limit has no room for goes straight back to the counter,
    /// so other hosts may use it once requests settle below their estimates.
    async fn claim_tokens(
        &self,
        key: &Key,
        window: i64,
        claim: u64,
        need: u64,
        limit: u64,
    ) -> Result<Claimed, Refusal> {
        let claim_i = saturating_counter(claim);
        let total = self.add(key, "n", claim_i, expires(window)).await?;
        let before = total.saturating_sub(claim_i);
        let usable = from_counter(
            saturating_counter(limit)
                .saturating_sub(before)
                .clamp(0, claim_i),
        );
        let mut seen = total;
        if usable < claim {
            let over = saturating_counter(claim - usable);
            seen = match self.add(key, "n", -over, expires(window)).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "could not give back unused tokens");
                    total
                }
            };
        }
        let mut leases = self.leases();
        let Some(lease) = leases
            .filled(window)
            .map(|l| l.tokens.entry(key.clone()).or_default())
        else {
            // An old window's request: exactly its tokens, or nothing.
            return Ok(if usable == claim {
                Claimed::Taken(remaining(limit, seen, 0))
            } else {
                Claimed::Short
            });
        };
        lease.spare += usable;
        lease.seen = lease.seen.max(seen);
        let left = limit.saturating_sub(from_counter(seen));
        lease.next_claim = (claim * 2).min(left / CLAIM_SHARE).min(MAX_TOKEN_CLAIM);
        if lease.spare >= need {
            lease.spare -= need;
            return Ok(Claimed::Taken(remaining(limit, lease.seen, lease.spare)));
        }
        Ok(if usable < claim {
            Claimed::Short
        } else {
            Claimed::Again
        })
    }
}
