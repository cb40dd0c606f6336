//! Metrics as CloudWatch Embedded Metric Format (EMF) lines: one JSON object per
//! request on stdout, which CloudWatch Logs turns into metrics without an API call.
//! On in Lambda (`AWS_LAMBDA_FUNCTION_NAME` set) or with `TENANTAI_EMF=1`.

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

/// What one embeddings request measured.
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
}

/// The EMF document of one request.
pub fn emf(m: &RequestMetrics<'_>, timestamp_ms: i64) -> serde_json::Value {
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "tenantai",
                "Dimensions": [["model"], []],
                "Metrics": [
                    {"Name": "latency_ms", "Unit": "Milliseconds"},
                    {"Name": "overhead_ms", "Unit": "Milliseconds"},
                    {"Name": "backend_ms", "Unit": "Milliseconds"},
                    {"Name": "cache_hits", "Unit": "Count"},
                    {"Name": "tokens", "Unit": "Count"},
                    {"Name": "inputs", "Unit": "Count"},
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
    })
}

pub fn record(m: &RequestMetrics<'_>) {
    if enabled() {
        let line = emf(m, crate::store::now_millis()).to_string();
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
        };
        let doc = emf(&m, 1_700_000_000_000);
        let metrics = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} declared but not carried");
        }
        assert_eq!(doc["cache_hits"], 1);
        assert_eq!(doc["model"], "m");
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
    }
}
