//! What one host holds of the shared counters: leases of tickets and tokens,
//! handed out from memory, and the one claim in flight per counter.
//!
//! Requests that find a lease empty while another request of the host is
//! claiming for it wait for that claim instead of sending their own: a claim is
//! sized for the requests waiting on it, so a burst (a new window's first
//! requests, a sudden rush) costs the table one write per counter rather than
//! one per request. A busy lease is refilled ahead of need: when a request
//! leaves less than half of the last claim, a claim is started in the
//! background, so the requests after it find tickets in memory, and near a
//! window's end it also claims for the next window (held until that window
//! starts), so a new window does not begin with every lease empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::store::Key;

/// What this host claimed in the current window and has not handed out yet.
#[derive(Default)]
pub(super) struct Leases {
    pub window: i64,
    pub tickets: HashMap<Key, TicketLease>,
    pub tokens: HashMap<Key, TokenLease>,
    /// What was claimed ahead for the next window.
    pub next: Option<Box<Leases>>,
}

impl Leases {
    fn new(window: i64) -> Leases {
        Leases {
            window,
            ..Leases::default()
        }
    }

    /// The leases of `window`; a new window drops the old one's (and starts
    /// with what was claimed ahead for it). `None` for a request from a window
    /// already over (its claims are made exactly).
    pub fn at(&mut self, window: i64) -> Option<&mut Leases> {
        if window > self.window {
            let next = self.next.take().filter(|n| n.window == window);
            *self = next.map_or_else(|| Leases::new(window), |n| *n);
        }
        (window == self.window).then_some(self)
    }

    /// Where a claim for `window` that has just been made goes: the current
    /// window's leases, or the next window's when it was claimed ahead. `None`
    /// when that window is over.
    pub fn filled(&mut self, window: i64) -> Option<&mut Leases> {
        if window == self.window + 1 {
            return Some(
                self.next
                    .get_or_insert_with(|| Box::new(Leases::new(window))),
            );
        }
        (window == self.window).then_some(self)
    }

    /// Starts the claim ahead of the next window's counter `next_key` for the
    /// busy lease of `key`, once per window: its size and the claim's marker.
    pub fn start_ahead(
        &mut self,
        kind: Kind,
        key: &Key,
        next_key: &Key,
    ) -> Option<(u64, Arc<Notify>)> {
        let (ahead, size) = match kind {
            Kind::Tickets => self
                .tickets
                .get_mut(key)
                .map(|l| (&mut l.ahead, l.next_claim))?,
            Kind::Tokens => self
                .tokens
                .get_mut(key)
                .map(|l| (&mut l.ahead, l.next_claim))?,
        };
        if *ahead || size < 4 {
            return None;
        }
        *ahead = true;
        let window = self.window + 1;
        let next = self
            .next
            .get_or_insert_with(|| Box::new(Leases::new(window)));
        let claim = next.claim(kind, next_key.clone());
        claim.is_idle().then(|| (size, claim.start().1))
    }

    fn claim(&mut self, kind: Kind, key: Key) -> &mut InFlight {
        match kind {
            Kind::Tickets => &mut self.tickets.entry(key).or_default().claim,
            Kind::Tokens => &mut self.tokens.entry(key).or_default().claim,
        }
    }

    /// The claim marker of `key`'s lease, in this window's leases or the next's.
    fn flight(&mut self, kind: Kind, key: &Key) -> Option<&mut InFlight> {
        let here = match kind {
            Kind::Tickets => self.tickets.contains_key(key),
            Kind::Tokens => self.tokens.contains_key(key),
        };
        if here {
            return Some(self.claim(kind, key.clone()));
        }
        self.next.as_mut()?.flight(kind, key)
    }
}

#[derive(Default)]
pub(super) struct TicketLease {
    /// Unused ticket numbers, as inclusive ranges; the lowest is handed out first.
    pub free: Vec<(u64, u64)>,
    /// The size of the next claim.
    pub next_claim: u64,
    /// A claim found the shard's share used up: no more claims this window.
    pub exhausted: bool,
    pub claim: InFlight,
    /// A claim for the next window was started.
    pub ahead: bool,
}

#[derive(Default)]
pub(super) struct TokenLease {
    pub spare: u64,
    /// The counter's value after this host's last change to it.
    pub seen: i64,
    pub next_claim: u64,
    pub claim: InFlight,
    pub ahead: bool,
}

impl TicketLease {
    /// The lowest unused ticket within `share`; tickets over it are dropped.
    pub fn take(&mut self, share: u64) -> Option<u64> {
        self.free.retain(|&(first, _)| first <= share);
        let (first, last) = self.free.first_mut()?;
        let ticket = *first;
        *last = (*last).min(share);
        if ticket == *last {
            self.free.remove(0);
        } else {
            *first += 1;
        }
        Some(ticket)
    }

    pub fn give(&mut self, first: u64, last: u64) {
        if first <= last {
            self.free.push((first, last));
            self.free.sort_unstable();
        }
    }

    /// Tickets in hand.
    pub fn count(&self) -> u64 {
        self.free.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// Whether a busy lease should be refilled now (see the module's doc).
    pub fn wants_refill(&self) -> bool {
        !self.exhausted && low(self.count(), self.next_claim) && self.claim.is_idle()
    }
}

impl TokenLease {
    pub fn wants_refill(&self) -> bool {
        low(self.spare, self.next_claim) && self.claim.is_idle()
    }
}

/// A lease that claims in blocks of at least four (a busy one) holding less
/// than half its next claim.
fn low(held: u64, next_claim: u64) -> bool {
    next_claim >= 4 && held < next_claim / 2
}

/// The claim in flight for one counter, if any, and what waits on it.
#[derive(Default)]
pub(super) struct InFlight {
    done: Option<Arc<Notify>>,
    /// What the requests waiting on it need (tickets or tokens), for the next claim's size.
    pub wanted: u64,
}

impl InFlight {
    pub fn is_idle(&self) -> bool {
        self.done.is_none()
    }

    /// Waits for the claim in flight, counting `need` towards the next one;
    /// `None` when no claim is in flight.
    pub fn wait(&mut self, need: u64) -> Option<OwnedNotified> {
        let done = self.done.as_ref()?;
        self.wanted = self.wanted.saturating_add(need);
        // Made while the leases are locked, so the claim's end cannot be missed.
        Some(done.clone().notified_owned())
    }

    /// Marks a claim as started; returns what the waiters wanted (the claim
    /// covers them) and the marker the claim holds until it ends.
    pub fn start(&mut self) -> (u64, Arc<Notify>) {
        let done = Arc::new(Notify::new());
        self.done = Some(done.clone());
        (std::mem::take(&mut self.wanted), done)
    }
}

/// Which lease of a counter a claim is for.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Tickets,
    Tokens,
}

/// Held by a claim while it runs: when it ends (also when its request is
/// dropped mid-claim) the lease's claim is marked over and its waiters wake.
pub(super) struct ClaimGuard {
    pub leases: Arc<Mutex<Leases>>,
    pub key: Key,
    pub kind: Kind,
    pub done: Arc<Notify>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = leases.flight(self.kind, &self.key) {
            if flight
                .done
                .as_ref()
                .is_some_and(|d| Arc::ptr_eq(d, &self.done))
            {
                flight.done = None;
            }
        }
        drop(leases);
        self.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_hand_out_the_lowest_ticket_within_the_share() {
        let mut lease = TicketLease::default();
        lease.give(5, 8);
        lease.give(2, 2);
        assert_eq!(lease.count(), 5);
        assert_eq!(lease.take(100), Some(2));
        assert_eq!(lease.take(100), Some(5));
        // A lowered share drops the tickets over it.
        assert_eq!(lease.take(6), Some(6));
        assert_eq!(lease.take(6), None);
        assert!(lease.free.is_empty());
    }

    #[test]
    fn only_a_busy_lease_running_low_is_refilled() {
        let mut lease = TicketLease {
            next_claim: 1,
            ..TicketLease::default()
        };
        // A quiet scope (claims of one) never claims ahead.
        assert!(!lease.wants_refill());
        lease.next_claim = 16;
        lease.give(1, 7);
        assert!(lease.wants_refill());
        lease.give(8, 8);
        assert!(!lease.wants_refill());
        lease.take(100);
        let (_, _done) = lease.claim.start();
        assert!(!lease.wants_refill(), "one claim at a time");
        lease.exhausted = true;
        assert!(!lease.wants_refill());
    }

    #[test]
    fn a_new_window_starts_with_what_was_claimed_ahead_for_it() {
        let mut leases = Leases::new(10);
        let (key, next) = (Key::new("RL#t", "10#r0"), Key::new("RL#t", "11#r0"));
        leases.tickets.entry(key.clone()).or_default().next_claim = 2;
        // A lease claiming in blocks of two is not busy enough to claim ahead.
        assert!(leases.start_ahead(Kind::Tickets, &key, &next).is_none());
        leases.tickets.entry(key.clone()).or_default().next_claim = 8;
        let (size, done) = leases.start_ahead(Kind::Tickets, &key, &next).unwrap();
        assert_eq!(size, 8);
        // Once per window.
        assert!(leases.start_ahead(Kind::Tickets, &key, &next).is_none());
        // The claim lands in the next window's leases, not this one's.
        leases
            .filled(11)
            .unwrap()
            .tickets
            .entry(next.clone())
            .or_default()
            .give(1, 8);
        assert!(leases
            .flight(Kind::Tickets, &next)
            .is_some_and(|f| !f.is_idle()));
        assert_eq!(leases.window, 10);
        assert!(leases.filled(12).is_none());
        drop(done);
        let current = leases.at(11).unwrap();
        assert!(
            !current.tickets.contains_key(&key),
            "the old window's leases are gone"
        );
        assert_eq!(current.tickets.get_mut(&next).unwrap().take(100), Some(1));
        assert!(current.next.is_none());
    }

    #[tokio::test]
    async fn waiters_wake_when_the_claim_ends_even_if_it_is_dropped() {
        let leases = Arc::new(Mutex::new(Leases::default()));
        let key = Key::new("RL#t", "0#t");
        let (guard, waiter) = {
            let mut l = leases.lock().unwrap();
            let lease = l.tokens.entry(key.clone()).or_default();
            assert!(lease.claim.wait(5).is_none(), "no claim in flight yet");
            let (wanted, done) = lease.claim.start();
            assert_eq!(wanted, 0);
            let waiter = lease.claim.wait(7).unwrap();
            let guard = ClaimGuard {
                leases: leases.clone(),
                key: key.clone(),
                kind: Kind::Tokens,
                done,
            };
            (guard, waiter)
        };
        drop(guard);
        waiter.await;
        let mut l = leases.lock().unwrap();
        let lease = l.tokens.get_mut(&key).unwrap();
        assert!(lease.claim.is_idle());
        // What the waiter wanted sizes the next claim.
        assert_eq!(lease.claim.start().0, 7);
    }
}
