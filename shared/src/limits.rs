//! Abuse limits: how big, how deep, how slow and how many requests a host
//! accepts. The values live in [`Limits`] (part of the app `Config`, each with a
//! `TENANTAI_*` override); the HTTP layers that apply them are in
//! `http::limits` (per route, per request) and `http::serve` (per listener).

use std::time::Duration;

use crate::error::{ApiError, ApiResult};

/// Deepest nesting of arrays and objects a JSON body may have. A fixed
/// property of the API (serde_json itself stops at 128).
pub const MAX_JSON_DEPTH: usize = 32;

/// Largest admin API body (tenants, models, overrides), in bytes.
pub const ADMIN_BODY_BYTES: usize = 1024 * 1024;
/// Largest small JSON body (a batch creation, a key, a secret rotation), in bytes.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
/// What a multipart upload may carry beyond its file: the form's other fields,
/// boundaries and part headers.
pub const UPLOAD_FORM_OVERHEAD: usize = 64 * 1024;

/// The limits of a host and its listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most header fields a request may carry (431 beyond).
    pub max_headers: usize,
    /// Most bytes of a request's head: request line and header fields (431 beyond).
    pub max_header_bytes: usize,
    /// Longest a request head may take to arrive, and an idle keep-alive
    /// connection may wait for its next one (the connection is closed past it).
    pub header_timeout: Duration,
    /// Most connections served at once (`tenantai dev`); those beyond are
    /// answered 503 (`/health` 200) and closed.
    pub max_connections: usize,
    /// Most requests handled at once (`tenantai dev`); those beyond are shed
    /// with a 503 and `Retry-After` (`/health` is never shed).
    pub max_in_flight: usize,
    /// The `Retry-After` of a shed request, in seconds.
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_in_flight: 256,
            retry_after_secs: 1,
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name} must be a whole number, not {v:?}")),
        Err(_) => Ok(default),
    }
}

impl Limits {
    /// Defaults, overridden by `TENANTAI_MAX_HEADERS`, `TENANTAI_MAX_HEADER_BYTES`,
    /// `TENANTAI_HEADER_TIMEOUT_SECS`, `TENANTAI_MAX_CONNECTIONS`,
    /// `TENANTAI_MAX_IN_FLIGHT` and `TENANTAI_RETRY_AFTER_SECS`.
    pub fn from_env() -> Result<Self, String> {
        let d = Limits::default();
        let limits = Limits {
            max_headers: env_number("TENANTAI_MAX_HEADERS", d.max_headers)?,
            max_header_bytes: env_number("TENANTAI_MAX_HEADER_BYTES", d.max_header_bytes)?,
            header_timeout: Duration::from_secs(env_number(
                "TENANTAI_HEADER_TIMEOUT_SECS",
                d.header_timeout.as_secs(),
            )?),
            max_connections: env_number("TENANTAI_MAX_CONNECTIONS", d.max_connections)?,
            max_in_flight: env_number("TENANTAI_MAX_IN_FLIGHT", d.max_in_flight)?,
            retry_after_secs: env_number("TENANTAI_RETRY_AFTER_SECS", d.retry_after_secs)?,
        };
        limits.validate()?;
        Ok(limits)
    }

    /// Every limit positive; the head fits hyper's smallest read buffer.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("TENANTAI_MAX_HEADERS", self.max_headers as u64),
            ("TENANTAI_MAX_HEADER_BYTES", self.max_header_bytes as u64),
            (
                "TENANTAI_HEADER_TIMEOUT_SECS",
                self.header_timeout.as_secs(),
            ),
            ("TENANTAI_MAX_CONNECTIONS", self.max_connections as u64),
            ("TENANTAI_MAX_IN_FLIGHT", self.max_in_flight as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.max_header_bytes < 1024 {
            return Err("TENANTAI_MAX_HEADER_BYTES must be at least 1024".into());
        }
        Ok(())
    }
}

/// Refuses JSON nested deeper than [`MAX_JSON_DEPTH`] before it is parsed (a
/// linear scan that skips strings); what is not JSON is left to the parser.
pub fn check_json_depth(bytes: &[u8]) -> ApiResult<()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::InvalidRequest {
                        message: format!(
                            "the JSON body is nested more than {MAX_JSON_DEPTH} levels deep"
                        ),
                        param: None,
                        code: Some("json_too_deep"),
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings_only() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_json_depth(deep(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let err = check_json_depth(deep(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(err.status(), 400);
        assert_eq!(err.body()["error"]["code"], "json_too_deep");
        let quoted = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert!(check_json_depth(quoted.as_bytes()).is_ok());
        // Unbalanced closers never underflow.
        assert!(check_json_depth(b"]]]]}}}{").is_ok());
    }

    #[test]
    fn limits_come_from_the_environment_and_must_be_positive() {
        assert!(Limits::default().validate().is_ok());
        let zero = Limits {
            max_in_flight: 0,
            ..Limits::default()
        };
        assert!(zero.validate().unwrap_err().contains("MAX_IN_FLIGHT"));
    }
}
