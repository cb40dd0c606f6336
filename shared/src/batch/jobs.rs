//! The jobs queue: its messages (a batch to validate, a chunk to run) and the
//! worker loop that drains it, in `gpu-worker work` and in `tenantai dev`.
//!
//! Each worker takes one message at a time and keeps it hidden while it works
//! (a heartbeat extends its visibility every third of the timeout); it deletes
//! the message only once the work is durable, and hands it back (visible again
//! after a short delay) when a backend could not serve. A message received too
//! often goes to the dead-letter queue (the queue's redrive policy), where the
//! dead-letter loop fails its lines (or its batch), so no batch waits forever.
//! When `stop` turns true the loops receive nothing more; work in flight gets
//! `grace` to finish and is then handed back at once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::batches::BatchRecord;
use super::chunk::{self, ChunkJob, Ran};
use super::lines::LineError;
use super::{batches, finalize, plan};
use crate::app::App;
use crate::billing::metering::stopped;
use crate::error::{ApiError, ApiResult};
use crate::store::{Message, Outgoing, Queue, Receive, Storage, StoreError, StoreResult};

/// The jobs queue's name ends with this (see [`crate::store::Resources::named`]).
const JOBS_SUFFIX: &str = "-jobs";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    Validate { tenant_id: String, batch_id: String },
    Chunk(ChunkJob),
}

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Messages worked on at once.
    pub workers: usize,
    /// Lines of one chunk in flight at once (the engine groups them).
    pub line_concurrency: usize,
    /// Most lines, and about the most tokens (their bound), of one chunk.
    pub chunk_lines: u64,
    pub chunk_tokens: u64,
    /// How long a received message stays hidden between heartbeats.
    pub visibility: Duration,
    /// After a stop, how long work in flight may go on before it is handed back.
    pub grace: Duration,
    /// Long-poll wait of one receive.
    pub wait: Duration,
    /// How long a message handed back stays hidden.
    pub retry_delay: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 2,
            line_concurrency: 64,
            chunk_lines: 500,
            chunk_tokens: 1_000_000,
            visibility: Duration::from_secs(120),
            grace: Duration::from_secs(90),
            wait: Duration::from_secs(20),
            retry_delay: Duration::from_secs(30),
        }
    }
}

impl WorkerConfig {
    /// Defaults, overridden by `TENANTAI_BATCH_*` environment variables.
    pub fn from_env() -> Result<WorkerConfig, String> {
        let num = |name: &str, default: u64| -> Result<u64, String> {
            std::env::var(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("{name} must be a whole number"))
            })
        };
        let d = WorkerConfig::default();
        let secs =
            |name: &str, default: Duration| num(name, default.as_secs()).map(Duration::from_secs);
        Ok(WorkerConfig {
            workers: usize::try_from(num("TENANTAI_BATCH_WORKERS", d.workers as u64)?.max(1))
                .unwrap_or(1),
            line_concurrency: usize::try_from(
                num("TENANTAI_BATCH_LINE_CONCURRENCY", d.line_concurrency as u64)?.max(1),
            )
            .unwrap_or(1),
            chunk_lines: num("TENANTAI_BATCH_CHUNK_LINES", d.chunk_lines)?.max(1),
            chunk_tokens: num("TENANTAI_BATCH_CHUNK_TOKENS", d.chunk_tokens)?.max(1),
            visibility: secs("TENANTAI_BATCH_VISIBILITY_SECS", d.visibility)?
                .max(Duration::from_secs(3)),
            grace: secs("TENANTAI_BATCH_GRACE_SECS", d.grace)?,
            wait: secs("TENANTAI_BATCH_WAIT_SECS", d.wait)?.min(crate::store::queue::MAX_WAIT),
            retry_delay: secs("TENANTAI_BATCH_RETRY_SECS", d.retry_delay)?,
        })
    }
}

/// The jobs queue and its dead-letter queue.
pub fn queues(storage: &Storage) -> StoreResult<(Arc<dyn Queue>, Arc<dyn Queue>)> {
    storage.queue_pair(JOBS_SUFFIX)
}

fn body(job: &Job) -> ApiResult<String> {
    serde_json::to_string(job).map_err(|e| ApiError::Internal(format!("job: {e}")))
}

pub async fn enqueue_validation(app: &App, b: &BatchRecord) -> ApiResult<()> {
    let (queue, _) = queues(&app.storage)?;
    let job = Job::Validate {
        tenant_id: b.tenant_id.clone(),
        batch_id: b.id.clone(),
    };
    queue.send(&Outgoing::new(body(&job)?)).await?;
    Ok(())
}

pub async fn enqueue_chunks(app: &App, chunks: &[ChunkJob]) -> ApiResult<()> {
    let (queue, _) = queues(&app.storage)?;
    for group in chunks.chunks(crate::store::queue::MAX_BATCH) {
        let msgs = group
            .iter()
            .map(|c| body(&Job::Chunk(c.clone())).map(Outgoing::new))
            .collect::<ApiResult<Vec<_>>>()?;
        queue.send_batch(&msgs).await?;
    }
    Ok(())
}

/// What handling a message came to.
#[derive(Debug, PartialEq)]
pub enum Handled {
    /// Done and durable: delete the message.
    Done,
    /// Not now: hand the message back.
    Retry(String),
}

/// Handles one message's job; `dead`: it came from the dead-letter queue, so
/// its work is given up (its lines, or its batch, fail).
pub async fn handle(
    app: &Arc<App>,
    cfg: &WorkerConfig,
    message: &str,
    dead: bool,
) -> ApiResult<Handled> {
    match handle_job(app, cfg, message, dead).await {
        // The batch is gone (its tenant was erased): nothing is left to do.
        Err(ApiError::NotFound {
            code: "batch_not_found",
            ..
        }) => {
            tracing::warn!(message, "a job of a batch that no longer exists; dropped");
            Ok(Handled::Done)
        }
        other => other,
    }
}

async fn handle_job(
    app: &Arc<App>,
    cfg: &WorkerConfig,
    message: &str,
    dead: bool,
) -> ApiResult<Handled> {
    let job: Job = match serde_json::from_str(message) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, message, "a jobs message that is no job; dropped");
            return Ok(Handled::Done);
        }
    };
    match (job, dead) {
        (
            Job::Validate {
                tenant_id,
                batch_id,
            },
            false,
        ) => plan::validate(app, cfg, &tenant_id, &batch_id).await?,
        (
            Job::Validate {
                tenant_id,
                batch_id,
            },
            true,
        ) => {
            let why = LineError {
                code: "validation_failed".into(),
                message: "The batch could not be validated; create it again.".into(),
                param: None,
                line: None,
            };
            batches::fail(app.storage.table.as_ref(), &tenant_id, &batch_id, vec![why]).await?;
        }
        (Job::Chunk(c), false) => {
            if let Ran::Retry(why) = chunk::run(app, &c, cfg.line_concurrency).await? {
                return Ok(Handled::Retry(why));
            }
            finalize::if_done(app, &c.tenant_id, &c.batch_id).await?;
        }
        (Job::Chunk(c), true) => {
            tracing::error!(batch_id = %c.batch_id, chunk = c.index, "a chunk was dead-lettered; its lines fail");
            chunk::fail_all(
                app,
                &c,
                "batch_line_failed",
                "This request could not be executed: its part of the batch failed repeatedly.",
            )
            .await?;
            finalize::if_done(app, &c.tenant_id, &c.batch_id).await?;
        }
    }
    Ok(Handled::Done)
}

/// Drains the jobs queue (and its dead-letter queue) until `stop` turns true
/// and the work in flight has ended or been handed back.
pub async fn run(app: Arc<App>, cfg: WorkerConfig, stop: watch::Receiver<bool>) -> StoreResult<()> {
    let (queue, dlq) = queues(&app.storage)?;
    let mut loops = Vec::new();
    for _ in 0..cfg.workers {
        loops.push(tokio::spawn(work_loop(
            app.clone(),
            cfg.clone(),
            queue.clone(),
            false,
            stop.clone(),
        )));
    }
    loops.push(tokio::spawn(work_loop(
        app.clone(),
        cfg.clone(),
        dlq,
        true,
        stop.clone(),
    )));
    for l in loops {
        if let Err(e) = l.await {
            tracing::error!(error = %e, "a jobs loop ended abnormally");
        }
    }
    Ok(())
}

async fn work_loop(
    app: Arc<App>,
    cfg: WorkerConfig,
    queue: Arc<dyn Queue>,
    dead: bool,
    mut stop: watch::Receiver<bool>,
) {
    let opts = Receive {
        max: 1,
        wait: cfg.wait,
        visibility: cfg.visibility,
    };
    loop {
        if *stop.borrow() {
            return;
        }
        let received = tokio::select! {
            r = queue.receive(&opts) => r,
            _ = stopped(&mut stop) => return,
        };
        match received {
            Ok(messages) => {
                for m in messages {
                    work_on(&app, &cfg, &queue, m, dead, stop.clone()).await;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, dead, "jobs queue unreadable; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Works on one message under a heartbeat; deletes it when done, hands it
/// back when not (or when a stop's grace runs out).
async fn work_on(
    app: &Arc<App>,
    cfg: &WorkerConfig,
    queue: &Arc<dyn Queue>,
    m: Message,
    dead: bool,
    mut stop: watch::Receiver<bool>,
) {
    let task = {
        let (app, cfg, body) = (app.clone(), cfg.clone(), m.body.clone());
        tokio::spawn(async move { handle(&app, &cfg, &body, dead).await })
    };
    let abort = task.abort_handle();
    let beat = heartbeat(queue.as_ref(), &m.receipt, cfg.visibility);
    let deadline = async {
        stopped(&mut stop).await;
        tokio::time::sleep(cfg.grace).await;
    };
    let outcome = tokio::select! {
        r = task => r,
        _ = beat => {
            abort.abort();
            return;
        }
        _ = deadline => {
            abort.abort();
            tracing::warn!(message_id = %m.id, "stopping: work not finished within the grace period; handed back");
            give_back(queue.as_ref(), &m.receipt, Duration::ZERO).await;
            return;
        }
    };
    match outcome {
        Ok(Ok(Handled::Done)) => {
            if let Err(e) = queue.delete(&m.receipt).await {
                tracing::warn!(message_id = %m.id, error = %e, "a finished job's message was not deleted; it will be seen again (and skipped)");
            }
        }
        Ok(Ok(Handled::Retry(why))) => {
            tracing::warn!(message_id = %m.id, receives = m.receive_count, reason = %why, "job handed back to run again");
            give_back(queue.as_ref(), &m.receipt, cfg.retry_delay).await;
        }
        Ok(Err(e)) => {
            tracing::error!(message_id = %m.id, receives = m.receive_count, error = %e, "job failed; handed back");
            give_back(queue.as_ref(), &m.receipt, cfg.retry_delay).await;
        }
        Err(e) => {
            tracing::error!(message_id = %m.id, receives = m.receive_count, error = %e, "job panicked; handed back");
            give_back(queue.as_ref(), &m.receipt, cfg.retry_delay).await;
        }
    }
}

async fn give_back(queue: &dyn Queue, receipt: &str, after: Duration) {
    if let Err(e) = queue.change_visibility(receipt, after).await {
        tracing::warn!(error = %e, "a job's message could not be handed back; it reappears after its timeout");
    }
}

/// Keeps a message hidden while it is worked on; ends only if the message
/// was lost (its receipt no longer valid), which stops the work.
async fn heartbeat(queue: &dyn Queue, receipt: &str, visibility: Duration) {
    loop {
        tokio::time::sleep(visibility / 3).await;
        if let Err(e) = queue.change_visibility(receipt, visibility).await {
            match e {
                StoreError::Backend(_) => {
                    tracing::warn!(error = %e, "heartbeat failed; trying again")
                }
                e => {
                    tracing::error!(error = %e, "heartbeat refused: the message is no longer ours; stopping its work");
                    return;
                }
            }
        }
    }
}
