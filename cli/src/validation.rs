//! `tenantai models validate` and the gate's refusals: a version's validation
//! against the live version, its figures for people (or JSON), and an exit
//! status that says whether it passed.

use std::time::Duration;

use anyhow::bail;
use reqwest::Method;
use serde_json::Value;

use crate::admin::Conn;
use crate::output::{line, print};
use tenantai::tenancy::text::escape_terminal;

/// A spinner while the server embeds the golden set and the corpus with both versions.
fn spinner(message: String) -> indicatif::ProgressBar {
    let s = indicatif::ProgressBar::new_spinner();
    s.enable_steady_tick(Duration::from_millis(120));
    s.set_message(message);
    s
}

/// Calls an action that runs the gate (validate, promote) with a spinner.
pub async fn call_gated(conn: &Conn, path: &str, what: String) -> anyhow::Result<(u16, Value)> {
    let s = spinner(what);
    let answer = conn.call_status(Method::POST, path, &[], None).await;
    s.finish_and_clear();
    let (status, body) = answer?;
    Ok((status.as_u16(), body))
}

/// Validates MODEL@VERSION; fails (a non-zero exit) when it is refused.
pub async fn validate(conn: &Conn, model: &str, version: &str) -> anyhow::Result<()> {
    let (status, body) = call_gated(
        conn,
        &format!("/models/{model}/versions/{version}/validate"),
        format!("validating {model}@{version} against the live version (embedding the golden set and the corpus with both)"),
    )
    .await?;
    if !(200..300).contains(&status) {
        bail!("{status}: {}", error_message(&body));
    }
    show(&body, conn.json());
    if body["outcome"] == "refused" {
        bail!("{model}@{version} did not pass validation");
    }
    Ok(())
}

/// The error message of an OpenAI-shaped error body, escaped.
pub fn error_message(body: &Value) -> String {
    escape_terminal(body["error"]["message"].as_str().unwrap_or("no message")).into_owned()
}

/// Prints a refusal's validation (a 409 `validation_failed`) before the error.
pub fn show_refusal(body: &Value, json: bool) {
    if body["error"]["code"] == "validation_failed" {
        show(&body["error"]["validation"], json);
    }
}

/// Prints a validation: outcome, versions, figures against the thresholds.
pub fn show(v: &Value, json: bool) {
    if json {
        print(v, &[], true);
        return;
    }
    let s = |key: &str| v[key].as_str().unwrap_or("-").to_string();
    let num = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    line(&format!("outcome:    {}", s("outcome")));
    let precision = v["precision"].as_str().unwrap_or("f32, not declared");
    line(&format!(
        "candidate:  {} ({precision}) at {}",
        s("candidate"),
        s("candidate_endpoint")
    ));
    if v["against"].is_string() {
        line(&format!(
            "against:    {} at {}",
            s("against"),
            s("against_endpoint")
        ));
    }
    let (f, t) = (&v["figures"], &v["thresholds"]);
    if f.is_object() {
        let verdict = |ok: bool| if ok { "ok" } else { "FAIL" };
        let (cmin, need) = (num(&f["cosine_min"]), num(&t["min_cosine"]));
        line(&format!(
            "cosine:     min {cmin:.5} (item {}), mean {:.5} over {} texts; needs min >= {need}: {}",
            f["worst_item"].as_str().unwrap_or("-"),
            num(&f["cosine_mean"]),
            f["items"],
            verdict(cmin >= need)
        ));
        let (omean, need) = (num(&f["overlap_mean"]), num(&t["min_mean_overlap"]));
        line(&format!(
            "top-{}:     overlap mean {omean:.3}, min {:.2} over {} queries x {} passages; needs mean >= {need}: {}",
            f["k"],
            num(&f["overlap_min"]),
            f["queries"],
            f["corpus"],
            verdict(omean >= need)
        ));
    }
    line(&format!("reason:     {}", s("reason")));
}
