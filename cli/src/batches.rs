//! `tenantai batches`: a tenant's batches through the tenant API (its API key):
//! submit a JSONL file (upload, create, optionally wait with a progress bar and
//! download the results), list, show, cancel, download a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::output::print;
use tenantai::tenancy::text::escape_terminal;

#[derive(Args, Clone)]
pub struct TenantConn {
    /// Base URL of the instance (`--endpoint` names a batch's API endpoint here).
    #[arg(
        long = "base-url",
        env = "TENANTAI_ENDPOINT",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    base_url: String,
    /// The tenant's API key (scope `batches`, and the endpoint's own).
    #[arg(long, env = "TENANTAI_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum BatchCmd {
    /// Upload a JSONL file of requests and create a batch of it.
    Submit(SubmitArgs),
    /// The tenant's batches, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        conn: TenantConn,
    },
    /// One batch.
    Get {
        id: String,
        #[command(flatten)]
        conn: TenantConn,
    },
    /// Cancel a batch (its running chunks finish; the rest are not run).
    Cancel {
        id: String,
        #[command(flatten)]
        conn: TenantConn,
    },
    /// Download a file (a batch's output or error file) to a path.
    Download {
        file_id: String,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        conn: TenantConn,
    },
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The input: one request per line, `{"custom_id", "method": "POST", "url", "body"}`.
    file: PathBuf,
    /// The endpoint every line calls.
    #[arg(long, default_value = "/v1/embeddings", value_parser = ["/v1/embeddings", "/v1/chat/completions"])]
    endpoint: String,
    /// Metadata pairs KEY=VALUE (at most 16).
    #[arg(long = "metadata", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
    /// Wait until the batch ends, showing its progress, then download its files.
    #[arg(long)]
    wait: bool,
    /// Where the output file goes (with --wait); the error file gets `.errors` added.
    #[arg(long, default_value = "batch_output.jsonl")]
    out: PathBuf,
    /// Seconds between progress checks.
    #[arg(long, default_value_t = 1)]
    poll_secs: u64,
    #[command(flatten)]
    conn: TenantConn,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))
}

impl TenantConn {
    fn request(&self, method: Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let key = self
            .api_key
            .as_deref()
            .context("no API key: pass --api-key or set TENANTAI_API_KEY")?;
        tenantai::gateway::backend::install_crypto();
        let url = format!("{}/v1{path}", self.base_url.trim_end_matches('/'));
        Ok(reqwest::Client::new().request(method, url).bearer_auth(key))
    }

    async fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base_url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no message");
            bail!("{status}: {}", escape_terminal(msg));
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, path)?).await
    }
}

const COLS: &[&str] = &[
    "id",
    "status",
    "endpoint",
    "total",
    "completed",
    "failed",
    "output_file_id",
    "error_file_id",
];

/// A batch as one row of the table (the counts flattened).
fn row(b: &Value) -> Value {
    let mut r = b.clone();
    for k in ["total", "completed", "failed"] {
        r[k] = b["request_counts"][k].clone();
    }
    r
}

pub async fn batches(cmd: BatchCmd) -> anyhow::Result<()> {
    match cmd {
        BatchCmd::Submit(a) => submit(a).await,
        BatchCmd::List { limit, conn } => {
            let page = conn.get(&format!("/batches?limit={limit}")).await?;
            let rows: Vec<Value> = page["data"]
                .as_array()
                .map(|d| d.iter().map(row).collect())
                .unwrap_or_default();
            print(&json!({"data": rows}), COLS, conn.json);
            Ok(())
        }
        BatchCmd::Get { id, conn } => {
            let b = conn.get(&format!("/batches/{id}")).await?;
            print(&row(&b), COLS, conn.json);
            Ok(())
        }
        BatchCmd::Cancel { id, conn } => {
            let b = conn
                .json(conn.request(Method::POST, &format!("/batches/{id}/cancel"))?)
                .await?;
            print(&row(&b), COLS, conn.json);
            Ok(())
        }
        BatchCmd::Download { file_id, out, conn } => download(&conn, &file_id, &out).await,
    }
}

async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let file = upload(&a.conn, &a.file).await?;
    let file_id = file["id"]
        .as_str()
        .context("the upload answered no file id")?;
    let metadata: serde_json::Map<String, Value> = a
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let body = json!({"input_file_id": file_id, "endpoint": a.endpoint, "completion_window": "24h",
                      "metadata": if metadata.is_empty() { Value::Null } else { Value::Object(metadata) }});
    // One key per submission: a retried create cannot make a second batch.
    let idempotency = uuid::Uuid::new_v4().to_string();
    let req = a
        .conn
        .request(Method::POST, "/batches")?
        .header("idempotency-key", idempotency)
        .json(&body);
    let b = a.conn.json(req).await?;
    let id = b["id"].as_str().context("the batch has no id")?.to_string();
    eprintln!("batch {id} created from {} ({file_id})", a.file.display());
    if !a.wait {
        print(&row(&b), COLS, a.conn.json);
        return Ok(());
    }
    let b = wait(&a.conn, &id, Duration::from_secs(a.poll_secs.max(1))).await?;
    if let Some(out) = b["output_file_id"].as_str() {
        download(&a.conn, out, &a.out).await?;
    }
    if let Some(errors) = b["error_file_id"].as_str() {
        let mut path = a.out.clone().into_os_string();
        path.push(".errors");
        download(&a.conn, errors, Path::new(&path)).await?;
    }
    print(&row(&b), COLS, a.conn.json);
    if b["status"] != "completed" {
        bail!("batch {id} ended {}", b["status"]);
    }
    Ok(())
}

/// Uploads the file as it is read, with a bar of bytes sent.
async fn upload(conn: &TenantConn, path: &Path) -> anyhow::Result<Value> {
    let f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata().await?.len();
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "uploading [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(f).inspect(move |c| {
        if let Ok(c) = c {
            counted.inc(c.len() as u64);
        }
    });
    let name = path
        .file_name()
        .map_or("input.jsonl".into(), |n| n.to_string_lossy().into_owned());
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
            .file_name(name)
            .mime_str("application/jsonl")?;
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part("file", part);
    let result = conn
        .json(conn.request(Method::POST, "/files")?.multipart(form))
        .await;
    bar.finish_and_clear();
    result
}

/// Polls the batch until it ends, with a bar of lines done.
async fn wait(conn: &TenantConn, id: &str, every: Duration) -> anyhow::Result<Value> {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {pos}/{len} lines ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    loop {
        let b = conn.get(&format!("/batches/{id}")).await?;
        let n = &b["request_counts"];
        bar.set_length(n["total"].as_u64().unwrap_or(0));
        bar.set_position(n["completed"].as_u64().unwrap_or(0) + n["failed"].as_u64().unwrap_or(0));
        let status = b["status"].as_str().unwrap_or("?").to_string();
        bar.set_message(status.clone());
        if ["completed", "failed", "expired", "cancelled"].contains(&status.as_str()) {
            bar.finish();
            return Ok(b);
        }
        tokio::time::sleep(every).await;
    }
}

/// Streams a file's content to `out`, with a bar of bytes received.
async fn download(conn: &TenantConn, file_id: &str, out: &Path) -> anyhow::Result<()> {
    let resp = conn
        .request(Method::GET, &format!("/files/{file_id}/content"))?
        .send()
        .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        bail!(
            "{status}: {}",
            escape_terminal(body["error"]["message"].as_str().unwrap_or("no message"))
        );
    }
    let bar = indicatif::ProgressBar::new(resp.content_length().unwrap_or(0));
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("downloading [{bar:40}] {bytes}/{total_bytes}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut f = tokio::fs::File::create(out)
        .await
        .with_context(|| format!("cannot write {}", out.display()))?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bar.inc(chunk.len() as u64);
        f.write_all(&chunk).await?;
    }
    f.flush().await?;
    bar.finish_and_clear();
    eprintln!("{file_id} -> {}", out.display());
    Ok(())
}
