//! Metrics as CloudWatch Embedded Metric Format (EMF) lines: one JSON object per
//! request on stdout, which CloudWatch Logs turns into metrics without an API call.
//! On in Lambda (`AWS_LAMBDA_FUNCTION_NAME` set) or with `TENANTAI_EMF=1`; the
//! namespace is `TENANTAI_METRICS_NAMESPACE` (the CDK app sets `tenantai/<stage>`, so
//! two stages in one account do not mix), `tenantai` when unset.

use std::io::Write;
use std::sync::OnceLock;

use serde_json::json;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
            || std::env::var("TENANTAI_EMF").is_ok_and(|v| v == "1")
    })
}

/// The namespace metrics go to when `TENANTAI_METRICS_NAMESPACE` is unset.
pub const DEFAULT_NAMESPACE: &str = "tenantai";

/// The variable that names the namespace.
pub const NAMESPACE_VAR: &str = "TENANTAI_METRICS_NAMESPACE";

/// The namespace from a value of [`NAMESPACE_VAR`]: the trimmed value, or the default
/// when it is absent or blank.
pub fn namespace_from(value: Option<&str>) -> String {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => DEFAULT_NAMESPACE.to_string(),
    }
}

fn namespace() -> &'static str {
    static NS: OnceLock<String> = OnceLock::new();
    NS.get_or_init(|| namespace_from(std::env::var(NAMESPACE_VAR).ok().as_deref()))
}

/// What one request measured.
pub struct RequestMetrics<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub tenant_id: &'a str,
    pub latency_ms: f64,
    pub overhead_ms: f64,
    pub backend_ms: f64,
    pub cache_hit: bool,
    pub tokens: u64,
    pub inputs: usize,
    /// What the request cost, in micro-dollars (the dashboard's spend).
    pub cost_micros: u64,
}

/// The EMF document of one request, in `namespace`.
pub fn emf(m: &RequestMetrics<'_>, namespace: &str, timestamp_ms: i64) -> serde_json::Value {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [["model"], []],
                "Metrics": [
                    {"Name": "latency_ms", "Unit": "Milliseconds"},
                    {"Name": "overhead_ms", "Unit": "Milliseconds"},
                    {"Name": "backend_ms", "Unit": "Milliseconds"},
                    {"Name": "cache_hits", "Unit": "Count"},
                    {"Name": "tokens", "Unit": "Count"},
                    {"Name": "inputs", "Unit": "Count"},
                    {"Name": "cost_micros", "Unit": "Count"},
                ],
            }],
        },
        "model": m.model,
        "model_version": m.version,
        "tenant_id": m.tenant_id,
        "latency_ms": m.latency_ms,
        "overhead_ms": m.overhead_ms,
        "backend_ms": m.backend_ms,
        "cache_hits": u8::from(m.cache_hit),
        "tokens": m.tokens,
        "inputs": m.inputs,
        "cost_micros": m.cost_micros,
    })
}

pub fn record(m: &RequestMetrics<'_>) {
    if enabled() {
        let line = emf(m, namespace(), crate::store::now_millis()).to_string();
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_document_declares_every_metric_it_carries() {
        let m = RequestMetrics {
            model: "m",
            version: "1",
            tenant_id: "t",
            latency_ms: 3.5,
            overhead_ms: 0.4,
            backend_ms: 3.1,
            cache_hit: true,
            tokens: 12,
            inputs: 2,
            cost_micros: 40,
        };
        let doc = emf(&m, "tenantai/dev", 1_700_000_000_000);
        let metrics = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} declared but not carried");
        }
        assert_eq!(doc["cache_hits"], 1);
        assert_eq!(doc["model"], "m");
        assert_eq!(doc["cost_micros"], 40);
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "tenantai/dev"
        );
    }

    #[test]
    fn namespace_comes_from_the_variable_or_defaults() {
        assert_eq!(namespace_from(None), DEFAULT_NAMESPACE);
        assert_eq!(namespace_from(Some("  ")), DEFAULT_NAMESPACE);
        assert_eq!(namespace_from(Some("tenantai/prod")), "tenantai/prod");
    }
}
