//! The chat engine's metrics, rendered with the worker's in `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Histogram, SECONDS_BUCKETS};

const STEP_TOKENS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct ChatMetrics {
    /// Requests accepted and not yet in the running batch.
    pub waiting: AtomicU64,
    /// Sequences in the running batch.
    pub running: AtomicU64,
    pub completed: AtomicU64,
    pub prefill_tokens: AtomicU64,
    pub decode_tokens: AtomicU64,
    pub queue_wait: Histogram,
    pub time_to_first_token: Histogram,
    pub inter_token: Histogram,
    pub step_seconds: Histogram,
    pub step_tokens: Histogram,
    prefill_tps_bits: AtomicU64,
    decode_tps_bits: AtomicU64,
}

impl Default for ChatMetrics {
    fn default() -> Self {
        ChatMetrics {
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            prefill_tokens: AtomicU64::new(0),
            decode_tokens: AtomicU64::new(0),
            queue_wait: Histogram::new(SECONDS_BUCKETS),
            time_to_first_token: Histogram::new(SECONDS_BUCKETS),
            inter_token: Histogram::new(SECONDS_BUCKETS),
            step_seconds: Histogram::new(SECONDS_BUCKETS),
            step_tokens: Histogram::new(STEP_TOKENS),
            prefill_tps_bits: AtomicU64::new(0f64.to_bits()),
            decode_tps_bits: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl ChatMetrics {
    /// Records one step of `prefill` prompt tokens and `decode` generated tokens.
    pub fn record_step(&self, prefill: usize, decode: usize, seconds: f64) {
        self.prefill_tokens
            .fetch_add(prefill as u64, Ordering::Relaxed);
        self.decode_tokens
            .fetch_add(decode as u64, Ordering::Relaxed);
        self.step_seconds.observe(seconds);
        self.step_tokens.observe((prefill + decode) as f64);
        if seconds > 0.0 {
            let share = |n: usize| n as f64 / seconds;
            if prefill > 0 {
                self.prefill_tps_bits
                    .store(share(prefill).to_bits(), Ordering::Relaxed);
            }
            if decode > 0 {
                self.decode_tps_bits
                    .store(share(decode).to_bits(), Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        let gauges = [
            (
                "tenantai_chat_queue_depth",
                "Chat requests waiting to join the running batch.",
                self.waiting.load(Ordering::Relaxed) as f64,
            ),
            (
                "tenantai_chat_running_sequences",
                "Sequences in the running batch.",
                self.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "tenantai_chat_prefill_tokens_per_second",
                "Prompt tokens per second of the latest step that read prompts.",
                f64::from_bits(self.prefill_tps_bits.load(Ordering::Relaxed)),
            ),
            (
                "tenantai_chat_decode_tokens_per_second",
                "Generated tokens per second of the latest step that decoded.",
                f64::from_bits(self.decode_tps_bits.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters = [
            (
                "tenantai_chat_prefill_tokens_total",
                "Prompt tokens read.",
                &self.prefill_tokens,
            ),
            (
                "tenantai_chat_decode_tokens_total",
                "Tokens generated.",
                &self.decode_tokens,
            ),
            (
                "tenantai_chat_completed_total",
                "Generations finished.",
                &self.completed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.queue_wait.render(
            out,
            "tenantai_chat_queue_wait_seconds",
            "Time a request waited to join the running batch.",
        );
        self.time_to_first_token.render(
            out,
            "tenantai_chat_time_to_first_token_seconds",
            "Time from a request's arrival to its first token.",
        );
        self.inter_token.render(
            out,
            "tenantai_chat_inter_token_seconds",
            "Time between consecutive tokens of a sequence.",
        );
        self.step_seconds.render(
            out,
            "tenantai_chat_step_seconds",
            "Time per continuous-batching step.",
        );
        self.step_tokens.render(
            out,
            "tenantai_chat_step_tokens",
            "Tokens (prompt and generated) per step.",
        );
    }
}
