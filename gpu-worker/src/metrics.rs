//! Worker metrics, rendered in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A cumulative histogram with fixed buckets.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_bits: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if value <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
const TOKEN_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0,
];
pub(crate) const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Everything `/metrics` reports.
pub struct Metrics {
    /// Inputs per forward pass.
    pub batch_size: Histogram,
    /// Padded tokens (rows x longest) per forward pass.
    pub batch_tokens: Histogram,
    /// Seconds an input waited in the queue before its forward pass began.
    pub queue_wait: Histogram,
    /// Seconds per forward pass (model + pooling).
    pub forward: Histogram,
    /// Real (unpadded) tokens embedded.
    pub tokens: AtomicU64,
    /// Padded tokens computed (tokens plus padding).
    pub padded_tokens: AtomicU64,
    /// Inputs embedded.
    pub inputs: AtomicU64,
    /// Real tokens per second of the latest forward pass (f64 bits).
    tokens_per_second_bits: AtomicU64,
    /// Inputs waiting in the queue.
    pub queue_depth: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            batch_size: Histogram::new(SIZE_BUCKETS),
            batch_tokens: Histogram::new(TOKEN_BUCKETS),
            queue_wait: Histogram::new(SECONDS_BUCKETS),
            forward: Histogram::new(SECONDS_BUCKETS),
            tokens: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            inputs: AtomicU64::new(0),
            tokens_per_second_bits: AtomicU64::new(0f64.to_bits()),
            queue_depth: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Records one forward pass.
    pub fn record_batch(&self, inputs: usize, tokens: usize, padded: usize, seconds: f64) {
        self.batch_size.observe(inputs as f64);
        self.batch_tokens.observe(padded as f64);
        self.forward.observe(seconds);
        self.inputs.fetch_add(inputs as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.padded_tokens
            .fetch_add(padded as u64, Ordering::Relaxed);
        if seconds > 0.0 {
            self.tokens_per_second_bits
                .store((tokens as f64 / seconds).to_bits(), Ordering::Relaxed);
        }
    }

    /// Counts one HTTP answer of `route` (a route template, not the raw path).
    pub fn record_request(&self, route: &'static str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route, status)).or_default() += 1;
        }
    }

    /// Counts one error by kind.
    pub fn record_error(&self, kind: &'static str) {
        if let Ok(mut map) = self.errors.lock() {
            *map.entry(kind).or_default() += 1;
        }
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.batch_size.render(
            &mut out,
            "tenantai_worker_batch_size",
            "Inputs per forward pass.",
        );
        self.batch_tokens.render(
            &mut out,
            "tenantai_worker_batch_tokens",
            "Padded tokens per forward pass.",
        );
        self.queue_wait.render(
            &mut out,
            "tenantai_worker_queue_wait_seconds",
            "Time an input waited in the queue.",
        );
        self.forward.render(
            &mut out,
            "tenantai_worker_forward_seconds",
            "Time per forward pass.",
        );
        let counters = [
            (
                "tenantai_worker_tokens_total",
                "Tokens embedded (without padding).",
                &self.tokens,
            ),
            (
                "tenantai_worker_padded_tokens_total",
                "Tokens computed, padding included.",
                &self.padded_tokens,
            ),
            (
                "tenantai_worker_inputs_total",
                "Inputs embedded.",
                &self.inputs,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let tps = f64::from_bits(self.tokens_per_second_bits.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP tenantai_worker_tokens_per_second Tokens per second of the latest forward pass.\n# TYPE tenantai_worker_tokens_per_second gauge\ntenantai_worker_tokens_per_second {tps}"
        );
        let _ = writeln!(
            out,
            "# HELP tenantai_worker_queue_depth Inputs waiting in the queue.\n# TYPE tenantai_worker_queue_depth gauge\ntenantai_worker_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP tenantai_worker_requests_total HTTP answers by route and status.\n# TYPE tenantai_worker_requests_total counter");
        if let Ok(map) = self.requests.lock() {
            for ((route, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "tenantai_worker_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# HELP tenantai_worker_errors_total Errors by kind.\n# TYPE tenantai_worker_errors_total counter");
        if let Ok(map) = self.errors.lock() {
            for (kind, n) in map.iter() {
                let _ = writeln!(out, "tenantai_worker_errors_total{{kind=\"{kind}\"}} {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_counters_and_labels() {
        let m = Metrics::default();
        m.record_batch(3, 30, 36, 0.02);
        m.record_error("too_long");
        m.record_request("/v1/embeddings", 200);
        let text = m.render();
        assert!(text.contains("tenantai_worker_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("tenantai_worker_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("tenantai_worker_tokens_total 30"));
        assert!(text.contains("tenantai_worker_tokens_per_second 1500"));
        assert!(text.contains("tenantai_worker_errors_total{kind=\"too_long\"} 1"));
        assert!(text
            .contains("tenantai_worker_requests_total{route=\"/v1/embeddings\",status=\"200\"} 1"));
    }
}
