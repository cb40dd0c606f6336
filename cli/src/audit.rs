//! `tenantai audit`: the audit trail of a running instance: listings with
//! filters, a JSONL export, and verification of the hash chains.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use tenantai::tenancy::audit::{AuditRecord, ChainCheck};

use crate::admin::Conn;
use crate::output::print;

#[derive(Args, Clone)]
pub struct AuditFilter {
    /// One tenant's chain (default: the platform's).
    #[arg(long)]
    tenant: Option<String>,
    /// From this time: Unix seconds or YYYY-MM-DD.
    #[arg(long)]
    from: Option<String>,
    /// Up to this time: Unix seconds or YYYY-MM-DD (the whole day).
    #[arg(long)]
    to: Option<String>,
    /// Only this admin's actions.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (`key.revoke`), or actions starting so (`key.`).
    #[arg(long)]
    action: Option<String>,
}

impl AuditFilter {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("tenant_id", &self.tenant),
            ("from", &self.from),
            ("to", &self.to),
            ("actor", &self.actor),
            ("action", &self.action),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Entries, newest first.
    List {
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The `next` token of the previous page.
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Matching entries, oldest first, one JSON object per line.
    Export {
        #[command(flatten)]
        filter: AuditFilter,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Check the hash chains (every tenant's and the platform's, or one
    /// tenant's, or an unfiltered JSONL export of one chain) and name the
    /// first broken link. Exits non-zero when one is broken.
    Verify {
        #[arg(long)]
        tenant: Option<String>,
        /// A file written by `tenantai audit export` (unfiltered, one chain).
        #[arg(long, conflicts_with = "tenant")]
        file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
}

const COLS: &[&str] = &["seq", "at", "actor", "action", "tenant_id", "target"];

pub async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::List {
            filter,
            limit,
            after,
            conn,
        } => {
            let mut q = filter.query();
            q.push(("limit", limit.to_string()));
            if let Some(a) = after {
                q.push(("after", a));
            }
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, body) = conn.call_status(Method::GET, "/audit", &q, None).await?;
            check(status, &body)?;
            print(&body, COLS, conn.json());
        }
        AuditCmd::Export { filter, out, conn } => export(&conn, &filter, out).await?,
        AuditCmd::Verify { tenant, file, conn } => verify(&conn, tenant, file).await?,
    }
    Ok(())
}

fn check(status: reqwest::StatusCode, body: &Value) -> anyhow::Result<()> {
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    Ok(())
}

async fn export(conn: &Conn, filter: &AuditFilter, out: Option<PathBuf>) -> anyhow::Result<()> {
    let q = filter.query();
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut resp = conn.send(Method::GET, "/audit/export", &q, None).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return check(status, &body);
    }
    // A CLI writing its own output: blocking writes are fine here.
    let mut sink: Box<dyn std::io::Write> = match &out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(chunk) = resp.chunk().await.context("export interrupted")? {
        sink.write_all(&chunk)?;
    }
    sink.flush()?;
    Ok(())
}

async fn verify(conn: &Conn, tenant: Option<String>, file: Option<PathBuf>) -> anyhow::Result<()> {
    let verdicts = match file {
        Some(path) => vec![verify_file(&path)?],
        None => {
            let chains = match tenant {
                Some(t) => vec![Some(t)],
                None => all_tenants(conn).await?,
            };
            let mut out = Vec::new();
            for chain in chains {
                let q: Vec<(&str, &str)> =
                    chain.iter().map(|t| ("tenant_id", t.as_str())).collect();
                let (status, body) = conn
                    .call_status(Method::GET, "/audit/verify", &q, None)
                    .await?;
                check(status, &body)?;
                out.push(body);
            }
            out
        }
    };
    let rows: Vec<Value> = verdicts
        .iter()
        .map(|v| {
            let broken = &v["first_broken"];
            json!({
                "chain": v["chain"], "entries": v["entries"], "ok": v["ok"],
                "head_hash": v["head_hash"],
                "first_broken": if broken.is_null() { Value::Null } else {
                    json!(format!("entry {} ({}): {}", broken["seq"], broken["id"].as_str().unwrap_or("-"), broken["reason"].as_str().unwrap_or("")))
                },
            })
        })
        .collect();
    let cols = ["chain", "entries", "ok", "head_hash", "first_broken"];
    print(&json!({ "data": rows }), &cols, conn.json());
    if verdicts.iter().any(|v| v["ok"] != true) {
        bail!("an audit chain is broken");
    }
    Ok(())
}

/// The platform's chain and every tenant's.
async fn all_tenants(conn: &Conn) -> anyhow::Result<Vec<Option<String>>> {
    let mut chains = vec![None];
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("limit", "100".to_string())];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, page) = conn.call_status(Method::GET, "/tenants", &q, None).await?;
        check(status, &page)?;
        for t in page["data"].as_array().into_iter().flatten() {
            chains.extend(t["id"].as_str().map(|s| Some(s.to_string())));
        }
        after = page["next"].as_str().map(str::to_string);
        if after.is_none() {
            return Ok(chains);
        }
    }
}

fn verify_file(path: &PathBuf) -> anyhow::Result<Value> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut check = ChainCheck::new(&path.display().to_string());
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: AuditRecord = serde_json::from_str(&line)
            .with_context(|| format!("line {} is not an audit entry", n + 1))?;
        if !check.push(&rec) {
            break;
        }
    }
    Ok(serde_json::to_value(check.finish(None))?)
}
