//! A circuit breaker per backend: closed -> open after consecutive failures or
//! a high timeout rate -> half-open (one probe) after a cool-down -> closed
//! again on a successful probe (or open again on a failed one).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures_to_open: u32,
    /// Share of timeouts among the recent calls that opens it (with enough calls).
    pub timeout_rate_to_open: f64,
    /// How many recent calls the timeout rate looks at (and at least half of them must exist).
    pub window: usize,
    /// How long an open circuit refuses before it lets one probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            timeout_rate_to_open: 0.5,
            window: 20,
            open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else waits for its verdict.
    HalfOpen,
}

struct Circuit {
    state: State,
    consecutive_failures: u32,
    /// Whether each recent call timed out.
    recent: VecDeque<bool>,
}

pub struct Breakers {
    config: BreakerConfig,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            circuits: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, backend: &str, f: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut map = self.circuits.lock().unwrap_or_else(|p| p.into_inner());
        let circuit = map.entry(backend.to_string()).or_insert_with(|| Circuit {
            state: State::Closed,
            consecutive_failures: 0,
            recent: VecDeque::new(),
        });
        f(circuit)
    }

    pub fn state(&self, backend: &str) -> State {
        self.with(backend, |c| c.state)
    }

    /// May a call go to this backend now? If not, how long until it may be tried.
    pub fn allow(&self, backend: &str) -> Result<(), Duration> {
        let now = Instant::now();
        self.with(backend, |c| match c.state {
            State::Closed => Ok(()),
            State::Open { until } if now >= until => {
                c.state = State::HalfOpen;
                Ok(())
            }
            State::Open { until } => Err(until - now),
            State::HalfOpen => Err(Duration::from_secs(1)),
        })
    }

    pub fn record(&self, backend: &str, outcome: Outcome) {
        let config = &self.config;
        let opened = self.with(backend, |c| {
            c.recent.push_back(outcome == Outcome::Timeout);
            while c.recent.len() > config.window {
                c.recent.pop_front();
            }
            if outcome == Outcome::Success {
                c.consecutive_failures = 0;
                // A call that started before the circuit opened does not close it.
                if !matches!(c.state, State::Open { .. }) {
                    c.state = State::Closed;
                }
                return false;
            }
            c.consecutive_failures += 1;
            let timeouts = c.recent.iter().filter(|t| **t).count();
            let timeout_rate_high = c.recent.len() >= config.window / 2
                && timeouts as f64 >= config.timeout_rate_to_open * c.recent.len() as f64;
            let open = c.state == State::HalfOpen
                || c.consecutive_failures >= config.failures_to_open
                || timeout_rate_high;
            if open && !matches!(c.state, State::Open { .. }) {
                c.state = State::Open {
                    until: Instant::now() + config.open_for,
                };
                c.recent.clear();
                return true;
            }
            false
        });
        if opened {
            tracing::warn!(
                backend,
                open_for_ms = config.open_for.as_millis() as u64,
                "circuit opened"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(BreakerConfig {
            failures_to_open: 3,
            timeout_rate_to_open: 0.5,
            window: 10,
            open_for: Duration::from_millis(50),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let b = breakers();
        for _ in 0..2 {
            assert!(b.allow("w").is_ok());
            b.record("w", Outcome::Failure);
        }
        b.record("w", Outcome::Success); // a success resets the count
        for _ in 0..3 {
            b.record("w", Outcome::Failure);
        }
        assert!(matches!(b.state("w"), State::Open { .. }));
        assert!(b.allow("w").is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow("w").is_ok(), "one probe after the cool-down");
        assert_eq!(b.state("w"), State::HalfOpen);
        assert!(b.allow("w").is_err(), "only one probe at a time");
        b.record("w", Outcome::Failure);
        assert!(
            matches!(b.state("w"), State::Open { .. }),
            "a failed probe re-opens"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow("w").is_ok());
        b.record("w", Outcome::Success);
        assert_eq!(b.state("w"), State::Closed);
        assert!(b.allow("other").is_ok(), "circuits are per backend");
    }

    #[test]
    fn a_high_timeout_rate_opens() {
        let b = breakers();
        for i in 0..6 {
            b.record(
                "w",
                if i % 2 == 0 {
                    Outcome::Timeout
                } else {
                    Outcome::Success
                },
            );
        }
        assert!(
            matches!(b.state("w"), State::Open { .. }),
            "{:?}",
            b.state("w")
        );
    }
}
