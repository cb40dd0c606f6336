//! `tenantai tenants export` and `tenantai tenants erase`: GDPR requests
//! through the admin API of a running instance.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::admin::Conn;
use crate::output::print;

fn error_text(status: reqwest::StatusCode, body: &Value) -> String {
    format!(
        "{status}: {}",
        body["error"]["message"].as_str().unwrap_or("no message")
    )
}

/// Makes an export archive and downloads it, checking its SHA-256.
pub async fn export(conn: &Conn, id: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
    let (status, made) = conn
        .call_status(Method::POST, &format!("/tenants/{id}/export"), &[], None)
        .await?;
    if !status.is_success() {
        bail!("{}", error_text(status, &made));
    }
    let export_id = made["id"]
        .as_str()
        .context("the answer names no export id")?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{id}-{export_id}.tar.gz")));
    let mut resp = conn
        .send(
            Method::GET,
            &format!("/tenants/{id}/exports/{export_id}"),
            &[],
            None,
        )
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!("download: {}", error_text(status, &body));
    }
    let mut file = tokio::fs::File::create(&path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = resp.chunk().await.context("download interrupted")? {
        sha.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    let digest = hex::encode(sha.finalize());
    if Some(digest.as_str()) != made["sha256"].as_str() {
        bail!(
            "the downloaded archive's SHA-256 {digest} differs from the export's {}",
            made["sha256"]
        );
    }
    if conn.json() {
        print(&made, &[], true);
    } else {
        let kinds = serde_json::json!({"data": made["index"]["kinds"].as_array().map(|ks| ks.iter().map(|k| serde_json::json!({
            "kind": k["name"], "items": k["items"], "objects": k["objects"].as_array().map_or(0, Vec::len),
        })).collect::<Vec<_>>())});
        print(&kinds, &["kind", "items", "objects"], false);
        println!(
            "\nexport {export_id} of {id}: {bytes} bytes, SHA-256 {digest}, written to {}",
            path.display()
        );
    }
    Ok(())
}

/// Erases a tenant, calling again while the server answers "in progress".
pub async fn erase(conn: &Conn, id: &str, confirm: &str) -> anyhow::Result<()> {
    if confirm != id {
        bail!("--confirm must repeat the tenant id ({id}): erasure cannot be undone");
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!("erasing {id}: revoking keys"));
    let path = format!("/tenants/{id}");
    loop {
        let (status, body) = conn
            .call_status(Method::DELETE, &path, &[("erase", "true")], None)
            .await?;
        match status.as_u16() {
            200 => {
                spinner.finish_and_clear();
                if conn.json() {
                    print(&body, &[], true);
                } else {
                    let r = &body["receipt"];
                    println!(
                        "erased {id} (receipt {} in the platform audit log, by {}); removed: {}",
                        r["id"].as_str().unwrap_or("-"),
                        r["actor"].as_str().unwrap_or("-"),
                        r["after"]["counts"]
                    );
                }
                return Ok(());
            }
            202 => {
                spinner.set_message(format!(
                    "erasing {id}: {} kinds done, sweep {}/{} segments, removed {}",
                    body["kinds_done"].as_array().map_or(0, Vec::len),
                    body["sweep_segments_done"],
                    body["sweep_segments"],
                    body["counts"]
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => {
                spinner.finish_and_clear();
                bail!("{}", error_text(status, &body));
            }
        }
    }
}
