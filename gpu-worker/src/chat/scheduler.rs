//! Continuous batching: which sequences run in the next step.
//!
//! At every step, sequences that finished or whose client left have already been
//! removed; waiting sequences join (first come, first served) while the KV budget
//! holds their whole reservation (prompt + the most tokens they may generate) and
//! the running set has room. The step then takes one token from every decoding
//! sequence and fills what is left of the step's token budget with prompt chunks
//! of the sequences still prefilling, oldest first, so a long prompt is read over
//! several steps while running streams keep producing a token each step.

use std::collections::VecDeque;

/// Limits of the running batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most sequences in the running batch.
    pub max_running: usize,
    /// KV cache positions that running sequences may reserve in total.
    pub kv_budget_tokens: usize,
    /// Most tokens (decode + prefill) in one step.
    pub max_step_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_running: 64,
            kv_budget_tokens: 65_536,
            max_step_tokens: 512,
        }
    }
}

/// What the scheduler needs to know of a sequence.
pub trait Schedulable {
    /// KV positions the sequence may use in all (prompt + most generated tokens).
    fn reservation(&self) -> usize;
    /// Prompt tokens not yet read into the cache (0 once decoding).
    fn prefill_left(&self) -> usize;
}

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Read this many more prompt tokens.
    Prefill(usize),
    /// Feed the last sampled token.
    Decode,
}

#[derive(Debug)]
pub struct Scheduler<S> {
    config: SchedulerConfig,
    pub waiting: VecDeque<S>,
    pub running: Vec<S>,
    reserved: usize,
}

impl<S: Schedulable> Scheduler<S> {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved: 0,
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// Whether a sequence of this reservation could ever run.
    pub fn fits(&self, reservation: usize) -> bool {
        reservation <= self.config.kv_budget_tokens
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// KV positions reserved by running sequences.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// Moves waiting sequences into the running batch while they fit; returns how
    /// many joined.
    pub fn admit(&mut self) -> usize {
        let mut joined = 0;
        while let Some(next) = self.waiting.front() {
            let need = next.reservation();
            if self.running.len() >= self.config.max_running
                || self.reserved + need > self.config.kv_budget_tokens
            {
                break;
            }
            if let Some(seq) = self.waiting.pop_front() {
                self.reserved += need;
                self.running.push(seq);
                joined += 1;
            }
        }
        joined
    }

    /// Removes the running sequences `done` says are finished, returning them.
    pub fn retire(&mut self, mut done: impl FnMut(&S) -> bool) -> Vec<S> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if done(&self.running[i]) {
                let seq = self.running.swap_remove(i);
                self.reserved -= seq.reservation();
                out.push(seq);
            } else {
                i += 1;
            }
        }
        out
    }

    /// The next step's work: `(index into running, work)`, decodes first.
    pub fn plan(&self) -> Vec<(usize, Work)> {
        let mut plan: Vec<(usize, Work)> = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, s)| s.prefill_left() == 0)
            .map(|(i, _)| (i, Work::Decode))
            .take(self.config.max_step_tokens)
            .collect();
        let mut budget = self.config.max_step_tokens.saturating_sub(plan.len());
        // Running order is admission order except where retirements swapped; the
        // oldest prefilling sequences are the ones admitted first.
        for (i, s) in self.running.iter().enumerate() {
            if budget == 0 {
                break;
            }
            let left = s.prefill_left();
            if left > 0 {
                let n = left.min(budget);
                budget -= n;
                plan.push((i, Work::Prefill(n)));
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Fake {
        id: u32,
        reserve: usize,
        left: usize,
    }

    impl Schedulable for Fake {
        fn reservation(&self) -> usize {
            self.reserve
        }
        fn prefill_left(&self) -> usize {
            self.left
        }
    }

    fn fake(id: u32, reserve: usize, left: usize) -> Fake {
        Fake { id, reserve, left }
    }

    fn scheduler(max_running: usize, kv: usize, step: usize) -> Scheduler<Fake> {
        Scheduler::new(SchedulerConfig {
            max_running,
            kv_budget_tokens: kv,
            max_step_tokens: step,
        })
    }

    #[test]
    fn admission_stops_at_the_kv_budget_and_the_running_limit_in_order() {
        let mut s = scheduler(3, 100, 64);
        for (id, r) in [(1, 40), (2, 40), (3, 40), (4, 10)] {
            s.waiting.push_back(fake(id, r, 5));
        }
        assert_eq!(s.admit(), 2);
        // 3 does not fit; 4 would, but admission is first come, first served.
        assert_eq!(s.waiting.front().map(|f| f.id), Some(3));
        assert_eq!(s.reserved(), 80);
        let done = s.retire(|f| f.id == 1);
        assert_eq!(done.len(), 1);
        assert_eq!(s.reserved(), 40);
        assert_eq!(s.admit(), 2);
        assert_eq!(s.running.len(), 3);
        assert!(!s.fits(101) && s.fits(100));
    }

    #[test]
    fn a_step_decodes_everyone_and_chunks_prefill_into_the_rest() {
        let mut s = scheduler(8, 10_000, 10);
        s.waiting.push_back(fake(1, 100, 0));
        s.waiting.push_back(fake(2, 100, 0));
        s.waiting.push_back(fake(3, 100, 25));
        s.waiting.push_back(fake(4, 100, 4));
        s.admit();
        let plan = s.plan();
        assert_eq!(
            plan,
            vec![(0, Work::Decode), (1, Work::Decode), (2, Work::Prefill(8))]
        );
        // A long prompt never starves decoding streams: they still get their token.
        let tokens: usize = plan
            .iter()
            .map(|(_, w)| match w {
                Work::Decode => 1,
                Work::Prefill(n) => *n,
            })
            .sum();
        assert_eq!(tokens, 10);
    }
}
